"""The app factory: middlewares (request id, access log, errors, auth), our own routes
(/health, /spec.*), every slice's routes, and their `/browsers/{id}` aliases."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from agent import __version__, ratelimit, slices
from agent.appkeys import FS_USER, HEALTH_PROBES, RESIZE_GUARDS, SESSIONS, SETTINGS
from agent.auth import (
    CREDENTIALS,
    SCOPE_KEY,
    authenticate,
    check_origin,
    has_scope,
    optional_scope,
    session_scope,
)
from agent.browser import routes as browser_routes
from agent.computer import routes as computer_routes
from agent.config import Settings, check_identity
from agent.display import routes as display_routes
from agent.docs import routes as docs_routes
from agent.errors import Forbidden, NotFound, TooManyRequests
from agent.files import routes as files_routes
from agent.identity import FsUser
from agent.live import routes as live_routes
from agent.logs import routes as logs_routes
from agent.middleware import Handler, add_request_id, errors, request_context
from agent.openapi import is_stream, spec_json, spec_text
from agent.playwright import routes as playwright_routes
from agent.processes import routes as processes_routes
from agent.replays import routes as replays_routes
from agent.sessions import SessionStore
from agent.spec import ALIAS_PREFIX, operation_for
from agent.telemetry import routes as telemetry_routes

__all__ = ["SETTINGS", "create_app"]

log = logging.getLogger(__name__)


SLICES = (computer_routes, files_routes, processes_routes, logs_routes, browser_routes,
          playwright_routes, telemetry_routes, live_routes, display_routes, replays_routes,
          docs_routes)


@web.middleware
async def origin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host and Origin first, on every request (even a 404): no web page reaches us."""
    check_origin(request)
    return await handler(request)


class StreamSlots:
    """Streams (SSE, WebSockets) open at once, and how many may be (AGENT_MAX_STREAMS)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


STREAMS = web.AppKey("streams", StreamSlots)


@web.middleware
async def stream_slots(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every operation the spec says is a stream takes a slot while it runs."""
    op = operation_for(request)
    if op is None or not is_stream(op.method, op.path):
        return await handler(request)
    slots = request.app[STREAMS]
    if slots.open >= slots.limit:
        raise TooManyRequests(f"at most {slots.limit} event streams and WebSockets may be "
                              "open at once (AGENT_MAX_STREAMS); close one first",
                              code="too_many_streams")
    slots.open += 1
    try:
        return await handler(request)
    finally:
        slots.open -= 1


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Scope per operation from the spec's x-scope; the /browsers/{id} check after it."""
    if request.match_info.http_exception is not None:
        return await handler(request)  # unknown route or method: the router's 404/405
    settings = request.app[SETTINGS]
    op = operation_for(request)
    needed = op.scope if op is not None else "admin"
    if needed != "none":
        websocket = op is not None and bool(op.raw.get("x-websocket"))
        granted = authenticate(request, settings.tokens, websocket=websocket)
        if not has_scope(granted, needed):
            raise Forbidden(f"{request.method} {request.path} needs the {needed} scope; "
                            f"this token has {granted}")
        request[SCOPE_KEY] = granted
    browser_id = request.match_info.get("browser_id")
    if browser_id is not None and settings.browser_id and browser_id != settings.browser_id:
        raise NotFound(f"no such browser: {browser_id}")
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    probes = request.app[HEALTH_PROBES]
    names = list(probes)
    results = await asyncio.gather(*(probes[name]() for name in names))
    healthy = all(result.get("ok") for result in results)
    body: dict[str, Any] = {"status": "ok" if healthy else "degraded"}
    scope = optional_scope(request)
    if scope is not None and has_scope(scope, "read"):  # details only for a caller
        body["version"] = __version__
        body.update(zip(names, results, strict=True))
    return web.json_response(body, status=200 if healthy else 503)


async def get_spec_yaml(request: web.Request) -> web.Response:
    return web.Response(text=spec_text(), content_type="application/yaml")


async def get_spec_json(request: web.Request) -> web.Response:
    return web.Response(text=spec_json(), content_type="application/json")


def add_browser_aliases(app: web.Application) -> None:
    """Every route also answers under /browsers/{id}/... (what the Kernel SDKs call)."""
    for route in list(app.router.routes()):
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        path = resource.canonical
        if path.startswith("/browsers/"):
            continue
        if route.method == "GET":
            app.router.add_get(ALIAS_PREFIX + path, route.handler)
        else:
            app.router.add_route(route.method, ALIAS_PREFIX + path, route.handler)


async def _close_fs_user(app: web.Application) -> None:
    app[FS_USER].close()


def server_options(settings: Settings) -> dict[str, Any]:
    """Options of the HTTP server (aiohttp's request handler) that hosts the app. The
    keep-alive timeout also bounds how long a connection may take to send its request
    headers: aiohttp closes a connection idle at that point, however slowly bytes come."""
    return {"handler_cancellation": True, "keepalive_timeout": settings.header_timeout_s}


_TOO_MANY = json.dumps({"code": "too_many_connections",
                        "message": "the daemon has too many open connections "
                                   "(AGENT_MAX_CONNECTIONS); try again later"}).encode()
_TOO_MANY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                      b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
                      + str(len(_TOO_MANY)).encode() + b"\r\n\r\n" + _TOO_MANY)


def limit_connections(server: web.Server, limit: int) -> None:
    """Past `limit` open connections, a new one is answered 503 and closed at once."""
    admit = server.connection_made

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        admit(handler, transport)
        if len(server.connections) > limit:
            log.warning("refusing a connection: %d open (AGENT_MAX_CONNECTIONS)", limit)
            transport.write(_TOO_MANY_RESPONSE)
            handler.force_close()
            transport.close()

    server.connection_made = connection_made  # type: ignore[method-assign]


def create_app(settings: Settings) -> web.Application:
    check_identity(settings)
    app = web.Application(
        # Rate limits count after authentication: the bucket is the accepted token's.
        middlewares=[request_context, errors, origin_guard, auth, ratelimit.rate_limit,
                     stream_slots],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[STREAMS] = StreamSlots(settings.max_streams)
    app[FS_USER] = FsUser(settings.default_user)
    app.on_cleanup.append(_close_fs_user)
    app[HEALTH_PROBES] = {}  # the slices' probes (agent.slices.wire)
    sessions = SessionStore()
    app[SESSIONS] = sessions
    # The session cookie of the daemon's own pages, beside bearer tokens (sessions.py).
    app[CREDENTIALS] = [lambda request: session_scope(request, sessions)]
    app[RESIZE_GUARDS] = []
    app.on_response_prepare.append(add_request_id)
    ratelimit.setup(app)
    app.router.add_get("/health", health)
    app.router.add_get("/spec.yaml", get_spec_yaml)
    app.router.add_get("/spec.json", get_spec_json)
    slices.wire(app, [slice_routes.setup(app) for slice_routes in SLICES])
    add_browser_aliases(app)
    return app
