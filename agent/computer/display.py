"""A persistent X connection that lives on one thread and survives X server restarts.

Xlib connections are not meant to be shared between threads, so each `XConnection` owns a
single-thread executor and every use of the connection runs there, in arrival order. The
connection is opened lazily; when the X server goes away the failing call becomes a 503
`display_unavailable`, the connection is dropped, and the next call opens a fresh one, so a
restarted X server is picked up without restarting the daemon.

The per-connection state (keyboard mapping, capture buffers...) lives in a *session*
object made by a factory when the connection opens, and is thrown away with it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import select
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

from Xlib import display as xdisplay
from Xlib import error as xerror

from agent.errors import DisplayUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class Session(Protocol):
    dpy: xdisplay.Display

    def handle_event(self, event: Any) -> None: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=Session)

# What python-xlib raises when the server is gone or the socket broke.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    xerror.ConnectionClosedError,
    xerror.DisplayError,
    OSError,
    EOFError,
)


def _reachable(name: str) -> bool:
    """Whether a local display's socket accepts connections. python-xlib leaks the socket
    of a failed connection attempt, so a display that is down is detected here first."""
    match = re.fullmatch(r"(?:unix)?:(\d+)(?:\.\d+)?", name)
    if match is None:
        return True  # a remote display: let python-xlib try
    number = int(match.group(1))
    path = f"/tmp/.X11-unix/X{number}"
    for family, address in ((socket.AF_UNIX, path), (socket.AF_UNIX, "\0" + path),
                            (socket.AF_INET, ("127.0.0.1", 6000 + number))):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(2.0)
            try:
                probe.connect(address)
            except OSError:
                continue
            return True
    return False


def open_display(name: str) -> xdisplay.Display:
    if not _reachable(name):
        raise DisplayUnavailable(f"X display {name} is not available (nothing listens on it)")
    try:
        dpy = xdisplay.Display(name)
    except xerror.DisplayNameError as exc:
        raise DisplayUnavailable(f"bad X display name {name!r}: {exc}") from None
    except CONNECTION_ERRORS as exc:
        raise DisplayUnavailable(f"X display {name} is not available: {exc}") from None
    # Errors of requests without replies would otherwise be printed to stderr.
    dpy.set_error_handler(lambda err, request: log.debug("X error on %s: %s", name, err))
    return dpy


def open_with(name: str, setup: Callable[[xdisplay.Display], T]) -> T:
    """A new connection to `name` handed to `setup`; closed again if `setup` fails, and a
    connection lost meanwhile is DisplayUnavailable."""
    dpy = open_display(name)
    try:
        return setup(dpy)
    except CONNECTION_ERRORS as exc:
        close_quietly(dpy)
        raise DisplayUnavailable(
            f"X display {name} went away ({type(exc).__name__})") from None
    except BaseException:
        close_quietly(dpy)
        raise


def drain_events(dpy: xdisplay.Display, handle: Callable[[Any], None]) -> None:
    """Handle what the server sent so far; raises if the connection is closed."""
    readable, _, _ = select.select([dpy.fileno()], [], [], 0)
    if not readable and not dpy.display.event_queue:
        return
    while dpy.pending_events():
        handle(dpy.next_event())


class XConnection(Generic[S]):
    def __init__(self, display_name: str, name: str,
                 factory: Callable[[xdisplay.Display], S]) -> None:
        self.display_name = display_name
        self.name = name
        self._factory = factory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"x-{name}")
        self._session: S | None = None
        self.closing = threading.Event()  # set on close(): long actions stop waiting
        self.submitted = 0  # jobs taken in turn so far: arrival order, as callers can see it

    async def run(self, fn: Callable[[S], T]) -> T:
        """Run `fn(session)` on this connection's thread (FIFO with every other call)."""
        if self.closing.is_set():
            raise DisplayUnavailable("the computer controller is shutting down")
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self._executor, self._call, fn)
        self.submitted += 1
        return await pending

    def _call(self, fn: Callable[[S], T]) -> T:
        session = self._ensure()
        try:
            drain_events(session.dpy, session.handle_event)
            return fn(session)
        except CONNECTION_ERRORS as exc:
            self._drop(f"{type(exc).__name__}: {exc}")
            raise DisplayUnavailable(
                f"X display {self.display_name} went away ({type(exc).__name__})") from None

    def _ensure(self) -> S:
        if self._session is not None:
            return self._session
        session = open_with(self.display_name, self._factory)
        log.info("X connection %s opened on %s", self.name, self.display_name)
        self._session = session
        return session

    def _drop(self, reason: str) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        log.warning("X connection %s on %s lost: %s", self.name, self.display_name, reason)
        end_session(session, self.name, flush=False)  # the server is gone: nothing to flush

    def _shutdown(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        end_session(session, self.name, flush=True)

    async def close(self) -> None:
        self.closing.set()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._shutdown)
        finally:
            self._executor.shutdown(wait=False)


def end_session(session: Any, name: str, flush: bool) -> None:
    """Let a session tidy up on its connection (`session.close()`, then a flush so that
    it reaches the server), then close the connection, whatever fails on the way."""
    try:
        session.close()
        if flush:
            session.dpy.flush()
    except Exception:
        log.debug("closing session %s failed", name, exc_info=True)
    close_quietly(session.dpy)


def close_quietly(dpy: xdisplay.Display) -> None:
    try:
        dpy.close()
    except Exception:
        log.debug("closing X connection failed", exc_info=True)
