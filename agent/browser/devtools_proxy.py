"""The public DevTools endpoint (beyond the Kernel spec; default port 9222).

Chromium's own DevTools server stays on loopback; this one, on the daemon's public
address, speaks the same protocol to CDP clients (Playwright's and Puppeteer's
connect-over-CDP, chrome-remote-interface):
- `/json/version`, `/json`, `/json/list` come from Chromium with every WebSocket URL
  rewritten to point back here (on the host and port the client used);
- `/devtools/browser/<any id>` is proxied to whatever browser endpoint Chromium has *now*,
  so a URL handed out once stays valid after Chromium restarts (the id in it changes
  with every start); `/devtools/page/<id>` and the other target endpoints go to the same
  path on Chromium;
- other `/json/*` calls (`new`, `activate`, `close`, `protocol`) are passed through.

It checks `Host` and `Origin` as the API does (a web page the browser opens must never
reach it), and needs the API's token with the write scope, as `Authorization: Bearer` or
as a `token` query parameter (for clients that can only be given a URL); a token given in
the query is carried into the WebSocket URLs answered, so such clients can follow them.

This is a second HTTP server on its own port, which is why this module, like routes.py,
speaks aiohttp; it has no routes in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import WSMsgType, web

from agent.auth import bearer_token, check_origin_for, has_scope, token_scope
from agent.browser.cdp import CdpManager, DiscoveryError, fetch_json
from agent.config import Settings
from agent.errors import (
    BrowserUnavailable,
    Forbidden,
    TooManyRequests,
    Unauthorized,
)
from agent.middleware import Handler, add_request_id, errors, request_context

log = logging.getLogger(__name__)

NEEDED_SCOPE = "write"
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade",
                         "content-length", "host", "origin", "authorization"})


class DevtoolsProxy:
    """Its own aiohttp runner and site; `start()` and `close()` from the slice's context."""

    def __init__(self, cdp: CdpManager, settings: Settings) -> None:
        self.cdp = cdp
        self.settings = settings
        self.host = settings.cdp_proxy_host or settings.listen_host
        self.port = settings.cdp_proxy_port
        self.error: str | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def enabled(self) -> bool:
        return self.port != 0

    async def start(self) -> None:
        if not self.enabled:
            return
        # The API's own request ids, access log and error JSON, then this endpoint's auth.
        app = web.Application(middlewares=[request_context, errors, self._auth])
        app.on_response_prepare.append(add_request_id)
        app.router.add_get("/json/version", self._json_version)
        app.router.add_get("/json", self._json_list)
        app.router.add_get("/json/list", self._json_list)
        app.router.add_route("*", "/json/{rest:.*}", self._json_other)
        app.router.add_get("/devtools/browser/{target_id}", self._browser_socket)
        app.router.add_get("/devtools/{kind}/{target_id}", self._target_socket)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            self.error = f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            log.error("DevTools endpoint off: %s", self.error)
            await runner.cleanup()
            await self._session.close()
            self._session = None
            return
        self._runner = runner
        log.info("DevTools endpoint on %s:%d", self.host, self.port)

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"daemon shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def snapshot(self) -> dict[str, Any]:
        """What /health says about the endpoint."""
        if not self.enabled:
            return {"proxy": "off"}
        body: dict[str, Any] = {"proxy": f"{self.host}:{self.port}"}
        if self.error:
            body["proxy_error"] = self.error
        return body

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._authorize(request)
        return await handler(request)

    def _authorize(self, request: web.Request) -> None:
        # As Chromium's own endpoint does: no foreign Host (DNS rebinding), no web page.
        check_origin_for(request, self.host, self.settings.allowed_hosts,
                         self.settings.allowed_origins)
        tokens = self.settings.tokens
        if not tokens:
            return
        presented = bearer_token(request) or request.query.get("token")
        if not presented:
            raise Unauthorized("missing token: send Authorization: Bearer <token> or ?token=",
                               headers={"WWW-Authenticate": "Bearer"})
        scope = token_scope(tokens, presented)
        if scope is None:
            raise Unauthorized("invalid token", headers={"WWW-Authenticate": "Bearer"})
        if not has_scope(scope, NEEDED_SCOPE):
            raise Forbidden(f"the DevTools endpoint needs the {NEEDED_SCOPE} scope; "
                            f"this token has {scope}")

    def _public_ws(self, request: web.Request, path: str) -> str:
        """ws://<the host the client used>/<path>, with ?token= if it came that way."""
        scheme = "wss" if request.scheme == "https" else "ws"
        url = f"{scheme}://{request.host}{path}"
        token = request.query.get("token")
        if token and bearer_token(request) is None:
            url += "?token=" + quote(token, safe="")
        return url

    async def _upstream_json(self, path: str) -> Any:
        try:
            return await fetch_json(self.cdp.address, path)
        except DiscoveryError as exc:
            raise BrowserUnavailable(f"Chromium's DevTools do not answer: {exc}") from None

    # ------------------------------------------------------------------ HTTP

    async def _json_version(self, request: web.Request) -> web.Response:
        info = await self._upstream_json("/json/version")
        if isinstance(info, dict) and "webSocketDebuggerUrl" in info:
            browser_path = _path_of(str(info["webSocketDebuggerUrl"]))
            info["webSocketDebuggerUrl"] = self._public_ws(request, browser_path)
        return _json_response(info)

    async def _json_list(self, request: web.Request) -> web.Response:
        targets = await self._upstream_json("/json/list")
        if isinstance(targets, list):
            for target in targets:
                self._rewrite_target(request, target)
        return _json_response(targets)

    def _rewrite_target(self, request: web.Request, target: Any) -> None:
        if not isinstance(target, dict) or "webSocketDebuggerUrl" not in target:
            return
        public = self._public_ws(request, _path_of(str(target["webSocketDebuggerUrl"])))
        target["webSocketDebuggerUrl"] = public
        frontend = target.get("devtoolsFrontendUrl")
        if isinstance(frontend, str) and "ws=" in frontend:
            head, _, _ = frontend.partition("ws=")
            target["devtoolsFrontendUrl"] = head + "ws=" + public.split("://", 1)[1]

    async def _json_other(self, request: web.Request) -> web.Response:
        assert self._session is not None
        query = [(k, v) for k, v in request.query.items() if k != "token"]
        url = f"http://{self.cdp.address}{request.path}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            async with self._session.request(request.method, url, params=query,
                                             headers=headers,
                                             data=await request.read()) as upstream:
                body = await upstream.read()
                content_type = upstream.headers.get("Content-Type", "application/json")
                status = upstream.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BrowserUnavailable(f"Chromium's DevTools do not answer: {exc}") from None
        if status == 200 and content_type.startswith("application/json"):
            with contextlib.suppress(ValueError):
                document = json.loads(body)
                self._rewrite_target(request, document)  # /json/new answers one target
                return _json_response(document)
        return web.Response(body=body, status=status,
                            headers={"Content-Type": content_type})

    # ------------------------------------------------------------------ WebSocket

    async def _browser_socket(self, request: web.Request) -> web.StreamResponse:
        # Whatever id the client holds: the browser endpoint of the Chromium running now.
        info = await self._upstream_json("/json/version")
        try:
            upstream_url = str(info["webSocketDebuggerUrl"])
        except (KeyError, TypeError):
            raise BrowserUnavailable("Chromium's /json/version has no WebSocket URL") from None
        return await self._bridge(request, upstream_url)

    async def _target_socket(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        target_id = request.match_info["target_id"]
        return await self._bridge(request, f"ws://{self.cdp.address}/devtools/{kind}/{target_id}")

    async def _bridge(self, request: web.Request, upstream_url: str) -> web.StreamResponse:
        assert self._session is not None
        if len(self._sockets) >= self.settings.max_streams:
            raise TooManyRequests(f"at most {self.settings.max_streams} DevTools connections "
                                  "may be open (AGENT_MAX_STREAMS)", code="too_many_streams")
        limit = self.settings.cdp_max_message_bytes  # either way (AGENT_CDP_MAX_MESSAGE)
        try:
            # No Origin header upstream: Chromium refuses WebSocket clients that send one.
            upstream = await self._session.ws_connect(upstream_url, max_msg_size=limit,
                                                      autoping=True, heartbeat=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BrowserUnavailable(f"Chromium's DevTools refused {request.path}: {exc}"
                                     ) from None
        client = web.WebSocketResponse(max_msg_size=limit, autoping=True, heartbeat=None)
        try:
            await client.prepare(request)
        except BaseException:
            await upstream.close()
            raise
        self._sockets.add(client)
        try:
            to_chromium = asyncio.create_task(_pump(client, upstream))
            to_client = asyncio.create_task(_pump(upstream, client))
            _done, pending = await asyncio.wait({to_chromium, to_client},
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            self._sockets.discard(client)
            await upstream.close()
            await client.close()
        return client


async def _pump(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    async for message in source:
        if message.type == WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:
            break


def _path_of(ws_url: str) -> str:
    """/devtools/browser/<id> of ws://127.0.0.1:9223/devtools/browser/<id>."""
    rest = ws_url.split("://", 1)[-1]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


def _json_response(document: Any) -> web.Response:
    return web.Response(text=json.dumps(document, indent=3),
                        content_type="application/json")
