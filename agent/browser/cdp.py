"""One held DevTools connection to Chromium's browser endpoint.

Chromium is found through its own HTTP discovery (`/json/version`), never a remembered
WebSocket URL: the browser id in that URL changes on every start. A background task keeps
the connection up, reconnecting (within half a second) after Chromium restarts; every
(re)connection bumps `generation`, which is how a restart is known to be complete.
Commands can target the browser or, with `session_id`, a target attached in flat mode;
events are fanned out per session to short-lived subscriber queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agent.errors import BadGateway, BrowserUnavailable, GatewayTimeout

log = logging.getLogger(__name__)

Event = dict[str, Any]
# A subscriber queue gets events, then None once the connection it listened on is gone.
EventQueue = asyncio.Queue[Event | None]

RETRY_FIRST_S = 0.05
RETRY_MAX_S = 0.5
DISCOVERY_TIMEOUT_S = 2.0


class DevtoolsError(BadGateway):
    """Chromium answered a DevTools command with a protocol error."""

    code = "devtools_error"

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        self.method = method
        self.cdp_message = str(error.get("message", ""))
        self.cdp_code = error.get("code")
        super().__init__(f"DevTools {method} failed: {self.cdp_message or error}")


class DiscoveryError(Exception):
    """Chromium's HTTP discovery endpoint did not give a usable answer."""


async def fetch_json(address: str, path: str, timeout: float = DISCOVERY_TIMEOUT_S) -> Any:
    """GET http://{address}{path} and parse the JSON answer.

    A few lines of HTTP/1.1 instead of an HTTP client: Chromium's DevTools server answers
    small JSON documents with a Content-Length (and keeps the connection open after them).
    """
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\n"
                             "Connection: close\r\n\r\n".encode())
                await writer.drain()
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError) as exc:
        raise DiscoveryError(f"{address}{path}: {exc or type(exc).__name__}") from None
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        raise DiscoveryError(f"{address}{path}: answered {lines[0]!r}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise DiscoveryError(f"{address}{path}: not JSON: {exc}") from None


class CdpManager:
    """The daemon's DevTools connection; `start()` it, `close()` it, `send()` on it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.state = "connecting"  # connecting | connected | disconnected | closed
        self.generation = 0  # bumped on every successful (re)connection
        self.browser = ""  # Chromium's product string, e.g. "Chrome/156.0.8078.108"
        self.ws_url = ""
        self.error: str | None = None
        self._ws: ClientConnection | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._subscribers: dict[str | None, set[EventQueue]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Sees every event of every session first (the telemetry capture); must not block.
        self.on_event: Callable[[Event], None] | None = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self, first_attempt_s: float = DISCOVERY_TIMEOUT_S) -> None:
        """Start connecting; returns after the first attempt (or `first_attempt_s`), so
        the daemon starts with a known state (a few ms when Chromium answers)."""
        self._task = asyncio.create_task(self._run(), name="cdp-connection")
        await self.wait_for(lambda: self.state != "connecting", first_attempt_s)

    async def close(self) -> None:
        self.state = "closed"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._notify()

    async def _run(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                info = await fetch_json(self.address, "/json/version")
                url = str(info["webSocketDebuggerUrl"])
                ws = await connect(url, max_size=None, ping_interval=None, compression=None,
                                   open_timeout=DISCOVERY_TIMEOUT_S)
            except (DiscoveryError, KeyError, TypeError, OSError, TimeoutError,
                    InvalidHandshake, InvalidURI) as exc:
                error = str(exc) or type(exc).__name__
                if self.state == "connected" or self.error != error:
                    log.info("DevTools at %s not reachable: %s", self.address, error)
                self.state, self.error = "disconnected", error
                self._notify()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            self._ws, self.ws_url = ws, url
            self.browser = str(info.get("Browser", ""))
            self.generation += 1
            self.state, self.error = "connected", None
            log.info("DevTools connected: %s (%s)", self.browser, url)
            self._notify()
            try:
                await self._read(ws)
            finally:
                self._ws = None
                await ws.close()
                self._drop_all()
                if self.state != "closed":
                    self.state, self.error = "disconnected", "connection closed"
                    log.warning("DevTools connection to %s lost; reconnecting", self.address)
                self._notify()

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    message = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    log.warning("DevTools sent a non-JSON message; ignored")
                    continue
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is not None and not future.done():
                        future.set_result(message)
                    continue
                if self.on_event is not None:
                    try:
                        self.on_event(message)
                    except Exception:  # a bug there must not end the connection
                        log.exception("DevTools event handler failed")
                for queue in self._subscribers.get(message.get("sessionId"), ()):
                    queue.put_nowait(message)

    def _drop_all(self) -> None:
        """The connection is gone: fail waiting commands, end every subscription."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserUnavailable("Chromium's DevTools connection closed"))
        self._pending.clear()
        for queues in self._subscribers.values():
            for queue in queues:
                queue.put_nowait(None)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ----------------------------------------------------------------- state

    def snapshot(self) -> dict[str, Any]:
        """What /health reports about the connection."""
        body: dict[str, Any] = {"ok": self.state == "connected", "address": self.address,
                                "state": self.state}
        if self.browser:
            body["browser"] = self.browser
        if self.error and self.state != "connected":
            body["error"] = self.error
        return body

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds after some state change; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            return predicate()
        return True

    async def wait_connected(self, timeout: float, newer_than: int = 0) -> None:
        """Until connected to a Chromium started after generation `newer_than`."""
        ok = await self.wait_for(
            lambda: self.state == "connected" and self.generation > newer_than, timeout)
        if not ok:
            raise BrowserUnavailable(
                f"Chromium's DevTools at {self.address} did not answer within {timeout:g}s"
                + (f" ({self.error})" if self.error else ""))

    # ----------------------------------------------------------------- commands, events

    async def send(self, method: str, params: dict[str, Any] | None = None, *,
                   session_id: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Run one DevTools command; its `result`. Waits (within `timeout`, at most 5 s)
        for a connection if Chromium is just (re)starting."""
        if self._ws is None:
            await self.wait_connected(min(timeout, 5.0))
        ws = self._ws
        if ws is None:
            raise BrowserUnavailable("Chromium's DevTools connection is not up")
        self._next_id += 1
        message_id = self._next_id
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            await ws.send(json.dumps(message))
            async with asyncio.timeout(timeout):
                reply = await future
        except ConnectionClosed:
            raise BrowserUnavailable("Chromium's DevTools connection closed") from None
        except TimeoutError:
            raise GatewayTimeout(f"DevTools did not answer {method} within {timeout:g}s") from None
        finally:
            self._pending.pop(message_id, None)
        if "error" in reply:
            raise DevtoolsError(method, reply["error"])
        result = reply.get("result", {})
        return result if isinstance(result, dict) else {}

    @contextlib.contextmanager
    def events(self, session_id: str | None) -> Iterator[EventQueue]:
        """A queue of the events of one session (None: browser-level events); ends with a
        None item if the connection drops."""
        queue: EventQueue = asyncio.Queue()
        self._subscribers.setdefault(session_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._subscribers.get(session_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._subscribers[session_id]
