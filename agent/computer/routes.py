"""HTTP routes of the computer slice (not served yet)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Adds nothing yet."""
