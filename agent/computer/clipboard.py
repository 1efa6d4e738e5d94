"""The CLIPBOARD selection: a real selection owner, and reads converted from any owner.

X has no clipboard storage: the client owning the CLIPBOARD selection answers every
SelectionRequest itself. So the clipboard has its own connection, window and thread that
keeps serving requests (TARGETS, UTF8_STRING, text/plain, STRING, TIMESTAMP; INCR for
large texts) between API calls, for as long as it owns the selection. Reading asks the
current owner (Chromium, say) to convert the selection to UTF8_STRING on our window.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from Xlib import X, Xatom
from Xlib import display as xdisplay
from Xlib.protocol import event as xevent
from Xlib.protocol import request

from agent.computer.display import (
    CONNECTION_ERRORS,
    close_quietly,
    drain_events,
    end_session,
    open_display,
)
from agent.errors import AgentError, DisplayUnavailable, GatewayTimeout, PayloadTooLarge

log = logging.getLogger(__name__)

T = TypeVar("T")
CONVERT_TIMEOUT_S = 3.0
INCR_CHUNK = 64 * 1024
# Outgoing INCR transfers whose requestor stopped reading are dropped after this long.
INCR_STALE_S = 30.0


@dataclass
class _Outgoing:
    requestor: Any
    prop: int
    kind: int
    data: bytes
    offset: int = 0
    touched: float = field(default_factory=time.monotonic)


class ClipboardSession:
    def __init__(self, dpy: xdisplay.Display) -> None:
        self.dpy = dpy
        self._max_bytes = 16 << 20
        atom = dpy.intern_atom
        self.CLIPBOARD = atom("CLIPBOARD")
        self.TARGETS = atom("TARGETS")
        self.TIMESTAMP = atom("TIMESTAMP")
        self.UTF8 = atom("UTF8_STRING")
        self.TEXT = atom("TEXT")
        self.INCR = atom("INCR")
        self.PLAIN_UTF8 = atom("text/plain;charset=utf-8")
        self.PLAIN = atom("text/plain")
        self.PROP = atom("_BROWSER_AGENT_CLIPBOARD")
        self.TIME_PROP = atom("_BROWSER_AGENT_TIME")
        self.window = dpy.screen().root.create_window(
            -10, -10, 1, 1, 0, X.CopyFromParent, X.InputOnly, X.CopyFromParent,
            event_mask=X.PropertyChangeMask)
        self.text: str | None = None
        self.owned_at = 0
        self._outgoing: list[_Outgoing] = []
        dpy.sync()

    # -- events --------------------------------------------------------------------------

    def handle_pending(self) -> None:
        drain_events(self.dpy, self.handle_event)

    def handle_event(self, event: Any) -> None:
        if event.type == X.SelectionRequest:
            self._answer(event)
        elif event.type == X.SelectionClear:
            if event.atom == self.CLIPBOARD and event.window == self.window:
                self.text = None
        elif event.type == X.PropertyNotify and event.state == X.PropertyDelete:
            self._continue_incr(event)

    def close(self) -> None:
        if self.text is not None:
            request.SetSelectionOwner(display=self.dpy.display, window=X.NONE,
                                      selection=self.CLIPBOARD, time=self.owned_at)
        self.window.destroy()
        self.dpy.sync()

    def _targets(self) -> list[int]:
        return [self.TARGETS, self.TIMESTAMP, self.UTF8, self.PLAIN_UTF8, self.TEXT,
                self.PLAIN, Xatom.STRING]

    def _answer(self, event: Any) -> None:
        prop = event.property if event.property != X.NONE else event.target
        requestor = event.requestor
        target = event.target
        ok = False
        if (self.text is not None and event.selection == self.CLIPBOARD
                and (event.time == X.CurrentTime or event.time >= self.owned_at)):
            ok = True
            if target == self.TARGETS:
                requestor.change_property(prop, Xatom.ATOM, 32, self._targets())
            elif target == self.TIMESTAMP:
                requestor.change_property(prop, Xatom.INTEGER, 32, [self.owned_at])
            elif target in (self.UTF8, self.TEXT, self.PLAIN_UTF8):
                kind = self.UTF8 if target == self.TEXT else target
                self._send(requestor, prop, kind, self.text.encode("utf-8"))
            elif target in (Xatom.STRING, self.PLAIN):
                kind = Xatom.STRING if target == Xatom.STRING else target
                self._send(requestor, prop, kind, self.text.encode("latin-1", "replace"))
            else:
                ok = False
        reply = xevent.SelectionNotify(
            time=event.time, requestor=requestor, selection=event.selection, target=target,
            property=prop if ok else X.NONE)
        requestor.send_event(reply, event_mask=0)
        self.dpy.flush()

    def _send(self, requestor: Any, prop: int, kind: int, data: bytes) -> None:
        if len(data) <= INCR_CHUNK:
            requestor.change_property(prop, kind, 8, data)
            return
        now = time.monotonic()
        self._outgoing = [o for o in self._outgoing if now - o.touched < INCR_STALE_S]
        requestor.change_attributes(event_mask=X.PropertyChangeMask)
        self._outgoing.append(_Outgoing(requestor, prop, kind, data))
        requestor.change_property(prop, self.INCR, 32, [len(data)])

    def _continue_incr(self, event: Any) -> None:
        for transfer in self._outgoing:
            if transfer.requestor == event.window and transfer.prop == event.atom:
                chunk = transfer.data[transfer.offset:transfer.offset + INCR_CHUNK]
                transfer.offset += len(chunk)
                transfer.touched = time.monotonic()
                transfer.requestor.change_property(transfer.prop, transfer.kind, 8, chunk)
                if not chunk:
                    self._outgoing.remove(transfer)
                self.dpy.flush()
                return

    # -- waiting -------------------------------------------------------------------------

    def _wait_for(self, match: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """The first event `match` accepts; every other event is handled as usual."""
        self.dpy.flush()
        deadline = time.monotonic() + timeout
        while True:
            while self.dpy.pending_events():
                event = self.dpy.next_event()
                if match(event):
                    return event
                self.handle_event(event)
            left = deadline - time.monotonic()
            if left <= 0:
                raise GatewayTimeout(f"clipboard: no answer from the X server or the "
                                     f"selection owner while waiting for {what}")
            select.select([self.dpy.fileno()], [], [], left)

    def _server_time(self) -> int:
        """A real server timestamp (ICCCM: never take ownership at CurrentTime)."""
        self.window.change_property(self.TIME_PROP, Xatom.STRING, 8, b"", X.PropModeAppend)
        event = self._wait_for(
            lambda e: e.type == X.PropertyNotify and e.window == self.window
            and e.atom == self.TIME_PROP, CONVERT_TIMEOUT_S, "a timestamp")
        return int(event.time)

    # -- the API -------------------------------------------------------------------------

    def write(self, text: str) -> None:
        stamp = self._server_time()
        self.window.set_selection_owner(self.CLIPBOARD, stamp)
        owner = self.dpy.get_selection_owner(self.CLIPBOARD)
        if owner == X.NONE or int(owner.id) != int(self.window.id):
            raise DisplayUnavailable("could not take ownership of the clipboard")
        self.text = text
        self.owned_at = stamp

    def read(self, max_bytes: int = 16 << 20) -> str:
        """The clipboard's text; 413 past `max_bytes` (AGENT_CLIPBOARD_MAX)."""
        self._max_bytes = max_bytes
        owner = self.dpy.get_selection_owner(self.CLIPBOARD)
        if owner == X.NONE or isinstance(owner, int):
            return ""
        if int(owner.id) == int(self.window.id) and self.text is not None:
            if len(self.text.encode("utf-8", "surrogatepass")) > max_bytes:
                self._too_large()
            return self.text
        for target in (self.UTF8, Xatom.STRING):
            text = self._convert(target)
            if text is not None:
                return text
        return ""

    def _convert(self, target: int) -> str | None:
        self.window.delete_property(self.PROP)
        stamp = self._server_time()
        self.window.convert_selection(self.CLIPBOARD, target, self.PROP, stamp)
        event = self._wait_for(
            lambda e: e.type == X.SelectionNotify and e.requestor == self.window
            and e.selection == self.CLIPBOARD, CONVERT_TIMEOUT_S, "the selection owner")
        if event.property == X.NONE:
            return None
        reply = self.window.get_property(self.PROP, X.AnyPropertyType, 0,
                                         self._max_bytes // 4 + 1, True)
        if reply is None:
            return None
        if reply.property_type == self.INCR:
            data = self._read_incr()
        else:
            data = _as_bytes(reply.value)
            if reply.bytes_after or len(data) > self._max_bytes:
                self._too_large()
        encoding = "latin-1" if reply.property_type == Xatom.STRING else "utf-8"
        return data.decode(encoding, "replace")

    def _read_incr(self) -> bytes:
        parts: list[bytes] = []
        received = 0
        while True:
            self._wait_for(
                lambda e: e.type == X.PropertyNotify and e.window == self.window
                and e.atom == self.PROP and e.state == X.PropertyNewValue,
                CONVERT_TIMEOUT_S, "the next part of a large clipboard text")
            reply = self.window.get_property(self.PROP, X.AnyPropertyType, 0, 0x1FFFFFFF, True)
            chunk = _as_bytes(reply.value) if reply is not None else b""
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            received += len(chunk)
            if received > self._max_bytes:
                self._too_large()

    def _too_large(self) -> None:
        raise PayloadTooLarge(f"the clipboard holds more than {self._max_bytes} bytes "
                              "(AGENT_CLIPBOARD_MAX)", code="clipboard_too_large")


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin-1", "replace")
    return bytes(value)


class Clipboard:
    """The clipboard's thread: serves selection requests and runs API calls in order."""

    def __init__(self, display_name: str, max_bytes: int = 16 << 20) -> None:
        self.display_name = display_name
        self.max_bytes = max_bytes
        self._jobs: queue.SimpleQueue[tuple[Callable[[ClipboardSession], Any], Future[Any]]]
        self._jobs = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._closing = threading.Event()
        self._session: ClipboardSession | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def run(self, fn: Callable[[ClipboardSession], T]) -> T:
        if self._closing.is_set():
            raise DisplayUnavailable("the computer controller is shutting down")
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="x-clipboard",
                                                daemon=True)
                self._thread.start()
        done: Future[T] = Future()
        self._jobs.put((fn, done))
        os.write(self._wake_w, b"x")
        return await asyncio.wrap_future(done)

    async def write(self, text: str) -> None:
        await self.run(lambda s: s.write(text))

    async def read(self) -> str:
        return await self.run(lambda s: s.read(self.max_bytes))

    async def close(self) -> None:
        self._closing.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _loop(self) -> None:
        while not self._closing.is_set():
            while True:
                try:
                    fn, done = self._jobs.get_nowait()
                except queue.Empty:
                    break
                self._run_job(fn, done)
            fds = [self._wake_r]
            session = self._session
            if session is not None:
                try:
                    session.handle_pending()
                except CONNECTION_ERRORS as exc:
                    self._drop(exc)
                except Exception as exc:  # a bug must not kill the thread: start afresh
                    log.exception("clipboard event handling failed")
                    self._drop(exc)
                else:
                    fds.append(session.dpy.fileno())
            readable, _, _ = select.select(fds, [], [], None if len(fds) == 1 else 5.0)
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
        self._shutdown()

    def _run_job(self, fn: Callable[[ClipboardSession], Any], done: Future[Any]) -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            session = self._ensure()
            done.set_result(fn(session))
        except CONNECTION_ERRORS as exc:
            self._drop(exc)
            done.set_exception(DisplayUnavailable(
                f"X display {self.display_name} went away ({type(exc).__name__})"))
        except AgentError as exc:
            done.set_exception(exc)
        except Exception as exc:  # a bug: reported as a 500 by the error middleware
            log.exception("clipboard call failed")
            done.set_exception(exc)

    def _ensure(self) -> ClipboardSession:
        if self._session is None:
            dpy = open_display(self.display_name)
            try:
                self._session = ClipboardSession(dpy)
            except BaseException:
                dpy.close()
                raise
        return self._session

    def _drop(self, exc: BaseException) -> None:
        session, self._session = self._session, None
        if session is not None:
            log.warning("clipboard X connection lost: %s", exc)
            close_quietly(session.dpy)

    def _shutdown(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        end_session(session, "clipboard", flush=False)
