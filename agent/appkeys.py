"""Typed application keys shared across slices (kept apart from app.py to avoid cycles)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agent.config import Settings
from agent.identity import FsUser
from agent.sessions import SessionStore

SETTINGS = web.AppKey("settings", Settings)
# The browser user's file-system identity: every file operation a client asks for runs
# in its threads (agent/identity.py).
FS_USER = web.AppKey("fs_user", FsUser)

# name → probe answering {"ok": bool, ...}; /health runs them all. The slice that owns a
# component (the X display, the DevTools connection) adds the probe reporting its state.
HealthProbe = Callable[[], Awaitable[dict[str, Any]]]
HEALTH_PROBES = web.AppKey("health_probes", dict[str, HealthProbe])

# Browser sessions of the daemon's own pages (sessions.py): minted by /live/links, accepted
# by the auth middleware as a cookie.
SESSIONS = web.AppKey("sessions", SessionStore)

# Checks run before the X screen changes size: each returns None, or why not now (409).
# A slice whose work cannot follow a resize (a replay recording) adds one.
ResizeGuard = Callable[[], str | None]
RESIZE_GUARDS = web.AppKey("resize_guards", list[ResizeGuard])
