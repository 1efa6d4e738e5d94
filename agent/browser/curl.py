"""POST /curl: an HTTP request made by Chromium itself.

The request is a navigation of a hidden target (`Target.createTarget` with `hidden`: no
tab in the strip, no window, no focus change), rewritten on the way out with the `Fetch`
domain (method, body, merged headers) and stopped at the response stage, before anything
is rendered, run or downloaded. So it is Chromium's network stack end to end: the
profile's cookie jar (and Set-Cookie answers update it), the browser's proxy settings,
BoringSSL, HTTP/2, Chromium's default headers.

Decisions (documented in the OpenAPI description of /curl):
- redirects are followed the way the browser follows them (Chromium's limit: 19
  redirects, 20 requests in all; 303, and 301/302 after POST, become GET); the result
  is the last response. The caller's custom headers are sent on every hop, except
  Authorization, Proxy-Authorization and Cookie once the redirect leaves the original
  origin.
- the browser's HTTP cache is bypassed, as on a hard reload, so every call reaches the
  server (Chromium adds `Cache-Control: no-cache` and `Pragma: no-cache`); service
  workers of the target origin are bypassed too.
- response headers are the raw ones Chromium received (multi-value headers such as
  Set-Cookie as separate items); the body is after content decoding (gzip, br, zstd).
- past `timeout_ms` the request is cancelled and the answer is a 504; a transport
  failure is a 502 with Chromium's net error (`net::ERR_CONNECTION_REFUSED`, -102).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import re
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agent.browser.cdp import CdpManager, DevtoolsError, EventQueue
from agent.browser.net_errors import net_error_code
from agent.errors import (
    AgentError,
    BadGateway,
    BadRequest,
    BrowserUnavailable,
    GatewayTimeout,
    PayloadTooLarge,
)
from agent.errors import field_error as _field_error

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
NO_BODY_STATUSES = frozenset({204, 205, 304})
# Framing and routing headers belong to Chromium's HTTP stack; overriding them would
# produce a request the stack cannot send (or lie about the one it sends).
RESERVED_HEADERS = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
    "trailer", "host", "proxy-connection",
})
CROSS_ORIGIN_DROPPED = frozenset({"authorization", "proxy-authorization", "cookie"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# How long a final response waits for its raw headers (Network.responseReceivedExtraInfo),
# which come on a different channel than the Fetch pause; they normally come first.
RAW_HEADERS_GRACE_S = 1.0
IDLE_TARGETS = 2
IDLE_TARGET_S = 60.0


class CurlTransportError(BadGateway):
    """The request did not get a response: Chromium's net error, as BrowserCurlTransportError."""

    code = "curl_transport_error"

    def __init__(self, url: str, error_text: str) -> None:
        name = error_text.strip() or "net::ERR_FAILED"
        if not name.startswith("net::"):
            name = "net::" + name
        extra: dict[str, Any] = {"net_error_name": name}
        number = net_error_code(name)
        if number is not None:
            extra["net_error"] = number
        super().__init__(f"request to {url} failed: {name}", extra=extra)


@dataclass(frozen=True)
class CurlRequest:
    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    timeout_ms: int = 30000
    response_encoding: str = "utf8"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CurlRequest:
        """Checks beyond the schema (which request_json already applied)."""
        request = cls(
            url=str(data["url"]),
            method=str(data.get("method", "GET")),
            headers=dict(data.get("headers") or {}),
            body=data.get("body"),
            timeout_ms=int(data.get("timeout_ms", 30000)),
            response_encoding=str(data.get("response_encoding", "utf8")),
        )
        request.check()
        return request

    def check(self) -> None:
        details: list[dict[str, Any]] = []
        try:
            parts = urlsplit(self.url)
            valid_url = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises on a bad port
        except ValueError:
            valid_url = False
        if not valid_url or any(ch in self.url for ch in "\r\n\t "):
            details.append(_field_error("url", "must be an absolute http or https URL"))
        for name, value in self.headers.items():
            if not _TOKEN.match(name):
                details.append(_field_error(f"headers.{name}", "is not a valid header name"))
            elif name.lower() in RESERVED_HEADERS:
                details.append(_field_error(
                    f"headers.{name}", "is set by Chromium's HTTP stack and cannot be overridden"))
            elif any(ch in value for ch in "\r\n\0"):
                details.append(_field_error(f"headers.{name}", "must not contain CR, LF or NUL"))
        if self.body is not None and self.method in ("GET", "HEAD"):
            details.append(_field_error("body", f"is not allowed with {self.method}"))
        if details:
            message = details[0]["message"] if len(details) == 1 else (
                f"{len(details)} invalid fields: " + ", ".join(d["field"] for d in details))
            raise BadRequest(message, details=details)


@dataclass(frozen=True)
class CurlResult:
    status: int
    headers: dict[str, list[str]]
    body: str
    duration_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "headers": self.headers, "body": self.body,
                "duration_ms": self.duration_ms}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def _header_list(headers: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in headers.items()]


def _raw_headers(extra_info: Mapping[str, Any]) -> dict[str, list[str]]:
    """Chromium joins repeated response headers with newlines in ExtraInfo."""
    headers: dict[str, list[str]] = {}
    for name, value in (extra_info.get("headers") or {}).items():
        headers.setdefault(str(name), []).extend(str(value).split("\n"))
    return headers


def _fetch_headers(entries: list[Mapping[str, Any]]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for entry in entries:
        headers.setdefault(str(entry.get("name", "")), []).append(str(entry.get("value", "")))
    return headers


class _Exchange:
    """The state of one request: the pauses of its navigation, hop by hop."""

    def __init__(self, cdp: CdpManager, request: CurlRequest, session_id: str,
                 deadline: float) -> None:
        self.cdp = cdp
        self.request = request
        self.session_id = session_id
        self.deadline = deadline
        self.network_id: str | None = None
        self.first_hop = True
        self.responses_seen = 0
        self.raw: dict[str, list[dict[str, Any]]] = {}
        self.final: dict[str, Any] | None = None
        self.final_since = 0.0
        self.origin = _origin(request.url)

    async def send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        remaining = max(self.deadline - time.monotonic(), 0.1)
        return await self.cdp.send(method, params, session_id=self.session_id,
                                   timeout=remaining)

    async def run(self, queue: EventQueue) -> tuple[int, dict[str, list[str]], bytes]:
        while True:
            wait: float | None = None
            if self.final is not None:
                raw = self._raw_for_final()
                wait = self.final_since + RAW_HEADERS_GRACE_S - time.monotonic()
                if raw is not None or wait <= 0:
                    return await self._finish(self.final, raw)
            try:
                event = await asyncio.wait_for(queue.get(), wait) if wait else await queue.get()
            except TimeoutError:
                continue
            if event is None:
                raise BrowserUnavailable("Chromium's DevTools connection closed during the request")
            await self._handle(event)

    async def _handle(self, event: dict[str, Any]) -> None:
        method = event.get("method")
        params: dict[str, Any] = event.get("params") or {}
        if method == "Fetch.requestPaused":
            await self._paused(params)
        elif method == "Network.responseReceivedExtraInfo":
            self.raw.setdefault(str(params.get("requestId")), []).append(params)
        elif method == "Network.loadingFailed":
            if params.get("requestId") == self.network_id and self.final is None:
                raise CurlTransportError(self.request.url, str(params.get("errorText", "")))
        elif method == "agent.navigated":
            error_text = params.get("errorText")
            if self.final is None and error_text:
                raise CurlTransportError(self.request.url, str(error_text))
            if self.final is None:
                raise BadGateway(f"Chromium loaded {self.request.url} without letting the "
                                 "daemon intercept it")

    async def _paused(self, p: dict[str, Any]) -> None:
        request_id = p["requestId"]
        network_id = p.get("networkId")
        if self.network_id is None:
            self.network_id = network_id
        if network_id != self.network_id or self.final is not None:
            # Nothing else is meant to load in the hidden target.
            await self.send("Fetch.failRequest", {"requestId": request_id,
                                                  "errorReason": "Aborted"})
            return
        if "responseErrorReason" in p:
            # Let the failure run its course: Network.loadingFailed then names the net error.
            await self.send("Fetch.continueRequest", {"requestId": request_id})
            return
        if "responseStatusCode" in p:
            self.responses_seen += 1
            status = int(p["responseStatusCode"])
            locations = [h for h in p.get("responseHeaders", [])
                         if str(h.get("name", "")).lower() == "location"]
            if status in REDIRECT_STATUSES and locations:
                await self.send("Fetch.continueRequest", {"requestId": request_id})
                return
            self.final, self.final_since = p, time.monotonic()
            return
        await self._continue_request(p)

    async def _continue_request(self, p: dict[str, Any]) -> None:
        request = p.get("request") or {}
        custom = dict(self.request.headers)
        if not self.first_hop and _origin(str(request.get("url", ""))) != self.origin:
            custom = {k: v for k, v in custom.items() if k.lower() not in CROSS_ORIGIN_DROPPED}
        overridden = {name.lower() for name in custom}
        merged = {name: str(value) for name, value in (request.get("headers") or {}).items()
                  if name.lower() not in overridden}
        merged.update(custom)
        params: dict[str, Any] = {"requestId": p["requestId"], "interceptResponse": True,
                                  "headers": _header_list(merged)}
        if self.first_hop:
            params["method"] = self.request.method
            if self.request.body is not None:
                params["postData"] = base64.b64encode(self.request.body.encode()).decode()
            self.first_hop = False
        await self.send("Fetch.continueRequest", params)

    def _raw_for_final(self) -> dict[str, Any] | None:
        """The raw headers of the final hop: the n-th ExtraInfo of the navigation."""
        seen = self.raw.get(str(self.network_id), [])
        if len(seen) >= self.responses_seen:
            return seen[self.responses_seen - 1]
        return None

    async def _finish(self, final: dict[str, Any], raw: dict[str, Any] | None
                      ) -> tuple[int, dict[str, list[str]], bytes]:
        status = int(final["responseStatusCode"])
        if raw is not None and int(raw.get("statusCode", status)) == status:
            headers = _raw_headers(raw)
        else:
            headers = _fetch_headers(final.get("responseHeaders", []))
        try:
            answer = await self.send("Fetch.getResponseBody", {"requestId": final["requestId"]})
        except DevtoolsError:
            if status in NO_BODY_STATUSES or self.request.method == "HEAD":
                return status, headers, b""
            raise
        text = str(answer.get("body", ""))
        body = base64.b64decode(text) if answer.get("base64Encoded") else text.encode()
        return status, headers, body


@dataclass(eq=False)
class _Target:
    target_id: str
    session_id: str
    generation: int  # of the DevTools connection it lives on (and dies with)
    expiry: asyncio.TimerHandle | None = None


class CurlTargets:
    """The hidden targets requests are made in (a manager: `close()` it).

    Each request takes a target of its own, so requests run concurrently. A new target
    costs a renderer start (Network.enable waits for it: 15-70 ms here), so a target
    whose request went well is kept warm for the next one; at most IDLE_TARGETS wait,
    each for IDLE_TARGET_S. A target whose request failed or timed out is closed.
    """

    def __init__(self, cdp: CdpManager, max_body_bytes: int = 64 << 20) -> None:
        self.cdp = cdp
        self.max_body_bytes = max_body_bytes  # AGENT_CURL_MAX_BYTES
        self._idle: list[_Target] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def acquire(self, timeout: float) -> _Target:
        while self._idle:
            target = self._idle.pop()
            self._cancel_expiry(target)
            if target.generation == self.cdp.generation:
                return target
        return await self._create(timeout)

    def release(self, target: _Target, paused_request: str | None) -> None:
        """Back to the pool once `paused_request` (the answered one) is aborted; closed
        instead when there is none (the request failed)."""
        if paused_request is None or not self._keepable(target):
            self._spawn(self._close(target))
        else:
            self._spawn(self._recycle(target, paused_request))

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for target in idle:
            self._cancel_expiry(target)
        await asyncio.gather(*(self._close(target) for target in idle))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def idle_count(self) -> int:
        return len(self._idle)

    async def _create(self, timeout: float) -> _Target:
        generation = self.cdp.generation
        created = await self.cdp.send("Target.createTarget", {
            "url": "about:blank", "hidden": True, "background": True,
        }, timeout=timeout)
        target = _Target(str(created["targetId"]), "", generation)
        try:
            attached = await self.cdp.send("Target.attachToTarget",
                                           {"targetId": target.target_id, "flatten": True},
                                           timeout=timeout)
            target.session_id = str(attached["sessionId"])
            send = functools.partial(self.cdp.send, session_id=target.session_id,
                                     timeout=timeout)
            await asyncio.gather(
                send("Network.enable", {}),
                send("Network.setCacheDisabled", {"cacheDisabled": True}),
                send("Network.setBypassServiceWorker", {"bypass": True}),
                send("Fetch.enable", {"patterns": [
                    {"urlPattern": "*", "requestStage": "Request"}]}),
            )
        except BaseException:
            self._spawn(self._close(target))
            raise
        return target

    def _keepable(self, target: _Target) -> bool:
        return (not self._closed and target.generation == self.cdp.generation
                and len(self._idle) < IDLE_TARGETS)

    async def _recycle(self, target: _Target, paused_request: str) -> None:
        try:
            await self.cdp.send("Fetch.failRequest", {"requestId": paused_request,
                                                      "errorReason": "Aborted"},
                                session_id=target.session_id, timeout=5.0)
        except AgentError:
            await self._close(target)
            return
        if not self._keepable(target):
            await self._close(target)
            return
        target.expiry = asyncio.get_running_loop().call_later(
            IDLE_TARGET_S, self._expire, target)
        self._idle.append(target)

    def _expire(self, target: _Target) -> None:
        if target in self._idle:
            self._idle.remove(target)
            self._spawn(self._close(target))

    @staticmethod
    def _cancel_expiry(target: _Target) -> None:
        if target.expiry is not None:
            target.expiry.cancel()
            target.expiry = None

    async def _close(self, target: _Target) -> None:
        if target.generation != self.cdp.generation or self.cdp.state != "connected":
            return  # gone with the connection it was made on
        try:
            await self.cdp.send("Target.closeTarget", {"targetId": target.target_id},
                                timeout=5.0)
        except AgentError as exc:
            log.debug("closing curl target %s: %s", target.target_id, exc.message)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _navigate(cdp: CdpManager, url: str, session_id: str, queue: EventQueue,
                    timeout: float) -> None:
    """Page.navigate answers only once the navigation ends; its result joins the events."""
    try:
        result = await cdp.send("Page.navigate", {"url": url}, session_id=session_id,
                                timeout=timeout)
    except DevtoolsError as exc:
        result = {"errorText": exc.cdp_message or "net::ERR_FAILED"}
    except AgentError:
        return  # the connection is gone: the queue gets its None
    queue.put_nowait({"method": "agent.navigated", "params": result})


async def _exchange(targets: CurlTargets, request: CurlRequest, deadline: float
                    ) -> tuple[int, dict[str, list[str]], bytes, float]:
    cdp = targets.cdp
    timeout = request.timeout_ms / 1000
    target = await targets.acquire(timeout)
    answered: str | None = None
    try:
        with cdp.events(target.session_id) as queue:
            exchange = _Exchange(cdp, request, target.session_id, deadline)
            started = time.monotonic()
            navigation = asyncio.create_task(
                _navigate(cdp, request.url, target.session_id, queue, timeout))
            try:
                status, headers, body = await exchange.run(queue)
            finally:
                navigation.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await navigation
            if exchange.final is not None:
                answered = str(exchange.final["requestId"])
            return status, headers, body, started
    finally:
        targets.release(target, answered)


async def curl(targets: CurlTargets, request: CurlRequest) -> CurlResult:
    """Make `request` through Chromium; the response, or a 502/504/503 AgentError."""
    cdp = targets.cdp
    if cdp.state != "connected":
        # Chromium (re)starting: a short wait, and a 503 rather than a 504 if it is down.
        await cdp.wait_connected(min(5.0, request.timeout_ms / 2000))
    deadline = time.monotonic() + request.timeout_ms / 1000
    try:
        async with asyncio.timeout(request.timeout_ms / 1000):
            status, headers, body, started = await _exchange(targets, request, deadline)
    except TimeoutError:
        raise GatewayTimeout(
            f"no response from {request.url} within {request.timeout_ms} ms") from None
    duration_ms = round((time.monotonic() - started) * 1000)
    if len(body) > targets.max_body_bytes:
        raise PayloadTooLarge(
            f"the response body of {request.url} is {len(body)} bytes, more than the "
            f"{targets.max_body_bytes}-byte limit (AGENT_CURL_MAX_BYTES)",
            code="response_too_large")
    if request.response_encoding == "base64":
        text = base64.b64encode(body).decode("ascii")
    else:
        text = body.decode("utf-8", errors="replace")
    return CurlResult(status=status, headers=headers, body=text, duration_ms=duration_ms)
