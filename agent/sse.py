"""The one server-sent-events writer (API.md, "SSE").

Frames carry `id: <sequence>` and one JSON object in `data:`; a comment frame keeps idle
streams alive; `Last-Event-ID` (header, or the `last_event_id` query parameter for
clients that cannot set headers) says where a reconnecting reader resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from types import TracebackType

from aiohttp import web

from agent.appkeys import SETTINGS
from agent.errors import BadRequest
from agent.streams import StreamEvent


def last_event_id(request: web.Request) -> int:
    """The sequence a reader already has (0 when it has nothing)."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw.strip() == "":
        return 0
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadRequest(f"Last-Event-ID must be an integer, got {raw!r}") from None
    if value < 0:
        raise BadRequest("Last-Event-ID must not be negative")
    return value


class SSEWriter:
    def __init__(self, request: web.Request, keepalive_s: float) -> None:
        self._request = request
        self._keepalive_s = keepalive_s
        self._lock = asyncio.Lock()
        self._response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "X-SSE-Content-Type": "application/json",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        self._keepalive: asyncio.Task[None] | None = None
        self._activity = asyncio.Event()

    @property
    def response(self) -> web.StreamResponse:
        return self._response

    async def __aenter__(self) -> SSEWriter:
        await self._response.prepare(self._request)
        if self._keepalive_s > 0:
            self._keepalive = asyncio.create_task(self._keep_alive())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if exc_type is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._response.write_eof()

    async def event(self, event: StreamEvent) -> None:
        """One event: `id:` when it has one, its data as one `data:` line of JSON."""
        body = event.data if isinstance(event.data, bytes) else json.dumps(
            event.data, separators=(",", ":"), ensure_ascii=False).encode()
        head = b"data: " if event.id is None else b"id: %d\ndata: " % event.id
        await self._write(b"".join((head, body, b"\n\n")))

    async def write_frame(self, frame: bytes) -> None:
        """Frames already in SSE form (several at once, id-only frames, comments)."""
        await self._write(frame)

    async def comment(self, text: str = "keepalive") -> None:
        await self._write(f": {text}\n\n".encode())

    async def _write(self, frame: bytes) -> None:
        async with self._lock:
            await self._response.write(frame)
        self._activity.set()

    async def _keep_alive(self) -> None:
        while True:
            self._activity.clear()
            try:
                # Not wait_for: on 3.11 it swallows a cancel that arrives just as the
                # event is set (after a final send), and __aexit__ would then wait forever.
                async with asyncio.timeout(self._keepalive_s):
                    await self._activity.wait()
            except TimeoutError:
                try:
                    await self.comment()
                except (ConnectionError, RuntimeError):
                    return


async def stream(request: web.Request,
                 events: AsyncGenerator[StreamEvent, None]) -> web.StreamResponse:
    """Serve a domain's events as an event stream until they end or the client goes; the
    events' generator is closed either way (its cleanup runs)."""
    async with open_sse(request) as sse, contextlib.aclosing(events) as items:
        async for event in items:
            await sse.event(event)
    return sse.response


def open_sse(request: web.Request) -> SSEWriter:
    """`async with open_sse(request) as sse: await sse.event(StreamEvent({...}, n))`."""
    return SSEWriter(request, request.app[SETTINGS].sse_keepalive_s)
