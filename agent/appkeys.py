"""Typed application keys shared across slices (kept apart from app.py to avoid cycles)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agent.config import Settings

SETTINGS = web.AppKey("settings", Settings)

# name → probe answering {"ok": bool, ...}; /health runs them all. Slices that own a
# component (the X display, the DevTools connection) replace the default probe with one
# reporting their manager's own state.
HealthProbe = Callable[[], Awaitable[dict[str, Any]]]
HEALTH_PROBES = web.AppKey("health_probes", dict[str, HealthProbe])
