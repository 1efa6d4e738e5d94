"""HTTP routes of the live view: the page and its assets, the frame/input WebSocket, and
the single-use links that open a browser session for the daemon's pages (sessions.py)."""

from __future__ import annotations

import asyncio
import contextlib
import html
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from agent.appkeys import SESSIONS, SETTINGS
from agent.auth import SCOPE_KEY, bearer_token, has_scope
from agent.computer.routes import COMPUTER
from agent.errors import AgentError, BadRequest, Forbidden
from agent.live.control import InputForwarder, parse
from agent.live.stream import LiveHub
from agent.sessions import (
    LINK_TTL_DEFAULT_S,
    SESSION_TTL_DEFAULT_S,
    cookie_name,
)
from agent.slices import Lifecycle
from agent.spec import request_json

HUB = web.AppKey("live_hub", LiveHub)
SOCKETS = web.AppKey("live_sockets", set[web.WebSocketResponse])
ASSETS = {"live.js": "text/javascript", "live.css": "text/css"}
# The page runs only its own files and talks only to its own origin; no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' blob:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

routes = web.RouteTableDef()


def _static(name: str) -> str:
    return resources.files("agent.live").joinpath("static", name).read_text(encoding="utf-8")


@routes.post("/live/links")
async def create_link(request: web.Request) -> web.Response:
    if request.app[SETTINGS].tokens and bearer_token(request) is None:
        # Authenticated by a session cookie: a session must not renew itself for ever.
        raise Forbidden("links are minted with an API token, not from a browser session")
    body = await request_json(request)
    granted = request.get(SCOPE_KEY, "read")
    scope = body.get("scope") or ("read" if granted == "read" else "write")
    if not has_scope(granted, scope):
        raise Forbidden.for_field(
            "scope", f"must not exceed {granted}",
            f"a {scope} link needs the {scope} scope; this caller has {granted}")
    expires_in = int(body.get("expires_in_s") or LINK_TTL_DEFAULT_S)
    session_ttl = int(body.get("session_expires_in_s") or SESSION_TTL_DEFAULT_S)
    link = request.app[SESSIONS].mint(scope, str(body.get("path") or "/live"), expires_in,
                                      session_ttl)
    path = f"/live/open?code={link.code}"
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
    return web.json_response({
        "url": f"{request.scheme}://{request.host}{path}",
        "path": path,
        "scope": scope,
        "target": link.path,
        "expires_at": expires_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "session_expires_in_s": session_ttl,
    }, status=201)


@routes.get("/live/open")
async def open_link(request: web.Request) -> web.Response:
    code = request.query.get("code", "")
    session, target = request.app[SESSIONS].redeem(code)
    # A page that moves on by itself, not a redirect: after a navigation that started on
    # another site, a redirect would not carry the new SameSite=Strict cookie; a refresh
    # from this page is a same-origin navigation that does.
    page = ("<!doctype html><meta charset=utf-8><title>Opening…</title>"
            f'<meta http-equiv="refresh" content="0;url={html.escape(target)}">'
            f'<p><a href="{html.escape(target)}">Continue</a></p>')
    response = web.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)
    response.set_cookie(cookie_name(request.url.port), session.id, max_age=session.ttl_s, path="/",
                        httponly=True, samesite="Strict", secure=request.secure)
    return response


@routes.get("/live")
async def live_page(request: web.Request) -> web.Response:
    return web.Response(text=_static("live.html"), content_type="text/html",
                        headers=PAGE_HEADERS)


@routes.get("/live/assets/{name}")
async def live_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise BadRequest(f"no such asset {name!r}")
    return web.Response(text=_static(name), content_type=ASSETS[name],
                        headers={"Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff"})


@routes.get("/live/stream")
async def live_stream(request: web.Request) -> web.WebSocketResponse:
    # No permessage-deflate: frames are JPEG already, deflating them only costs CPU.
    ws = web.WebSocketResponse(heartbeat=20.0, compress=False,
                               max_msg_size=request.app[SETTINGS].max_body_bytes)
    if not ws.can_prepare(request).ok:
        raise BadRequest("this endpoint speaks WebSocket: send a GET with Upgrade: websocket",
                         code="websocket_required")
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    may_act = has_scope(request.get(SCOPE_KEY, "read"), "write")
    lock = asyncio.Lock()

    async def send_bytes(data: bytes) -> None:
        async with lock:
            await ws.send_bytes(data)

    async def send_json(message: dict[str, Any]) -> None:
        async with lock:
            await ws.send_json(message)

    async def report(exc: AgentError) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await send_json({"type": "error", **exc.to_json()})

    forwarder = InputForwarder(request.app[COMPUTER], may_act, report)
    await send_json({"type": "hello", "input": may_act})
    expiry = _end_with_session(request, ws)
    hub = request.app[HUB]
    async with hub.viewer(send_bytes, send_json) as viewer:
        player = asyncio.create_task(forwarder.run(), name="live-input")
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    message = parse(msg.data)
                except AgentError as exc:
                    await report(exc)
                    continue
                if message.get("type") == "ack":
                    seq = message.get("seq")
                    if isinstance(seq, int):
                        viewer.ack(seq)
                else:
                    hub.poke()
                    await forwarder.offer(message)
        finally:
            request.app[SOCKETS].discard(ws)
            if expiry is not None:
                expiry.cancel()
            player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await player
    return ws


def _end_with_session(request: web.Request,
                      ws: web.WebSocketResponse) -> asyncio.TimerHandle | None:
    """A stream opened with a session cookie closes (4401) when the session expires."""
    if bearer_token(request) is not None:
        return None
    session_id = request.cookies.get(cookie_name(request.url.port))
    if not session_id:
        return None
    store = request.app[SESSIONS]
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[bool]] = set()

    def expire() -> None:
        task = loop.create_task(ws.close(code=4401, message=b"session expired"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return loop.call_later(max(0.0, store.seconds_left(session_id)), expire)


async def _close_sockets(app: web.Application) -> None:
    sockets = app[SOCKETS]
    for ws in list(sockets):
        await ws.close(code=1001, message=b"server shutting down")


def setup(app: web.Application) -> Lifecycle:
    hub = LiveHub(app[COMPUTER])
    app[HUB] = hub
    app[SOCKETS] = set()
    app.router.add_routes(routes)

    async def probe() -> dict[str, Any]:
        return {"ok": True, "viewers": hub.viewer_count, **app[SESSIONS].counts()}

    return Lifecycle("live", begin_shutdown=lambda: _close_sockets(app), close=hub.close,
                     probes={"live": probe})
