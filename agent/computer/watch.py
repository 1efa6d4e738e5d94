"""Waiting for the screen: a change after an action, or stillness (settle), from X DAMAGE.

A `ScreenWatch` owns its own X connection and thread. While someone waits (and for a short
while after), it holds a DAMAGE object on the root window at the raw-rectangles level:
every drawing operation on screen becomes a DamageNotify carrying the rectangle drawn.
Each rectangle is either a *change* (counted, timestamped) or *noise*:

- the text caret: Chromium repaints only the caret's box when it blinks, a rectangle 1
  or 2 device pixels wide (measured: 1x19 at 16 px text, every ~500 ms). Rectangles at
  most `CARET_MAX_WIDTH` wide and `CARET_MAX_HEIGHT` high are noise. The price: a real
  change that thin (a one-pixel line growing sideways) goes unseen;
- the mouse pointer: Xvfb draws it as a software sprite outside what DAMAGE reports, so
  pointer motion never shows up here at all (measured), and needs no filter.

Geometry was chosen over comparing captured pixels because it costs nothing per event,
needs no capture on the watch thread, and a blinking caret *does* change pixels.

Every wait is measured against a *mark*: the number of changes counted when the action
began, taken after a round trip to the X server (so drawing from before the action is
never mistaken for its effect). `change` completes once a change newer than the mark is
seen; `settle` once no change was seen for `settle_ms` since the later of the wait's start
and the last change (checked again after one more round trip, so a change still on its
way is not missed). Either completes as timed out at `timeout_ms`.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from Xlib import display as xdisplay
from Xlib.ext import damage

from agent.computer.display import CONNECTION_ERRORS, close_quietly, open_with
from agent.errors import BadRequest, DisplayUnavailable

log = logging.getLogger(__name__)

CARET_MAX_WIDTH = 3
CARET_MAX_HEIGHT = 100
DEFAULT_SETTLE_MS = 150
DEFAULT_TIMEOUT_MS = 3000
MAX_SETTLE_MS = 10_000
MAX_TIMEOUT_MS = 60_000
IDLE_STOP_S = 10.0  # the watch connection closes this long after its last wait
WAIT_FOR = ("change", "settle")


@dataclass(frozen=True)
class WaitSpec:
    kind: str  # "change" | "settle"
    settle_ms: int = DEFAULT_SETTLE_MS
    timeout_ms: int = DEFAULT_TIMEOUT_MS


@dataclass(frozen=True)
class WaitResult:
    settled: bool  # the condition was met (`change`: a change was seen; `settle`: still)
    timed_out: bool
    waited_ms: int
    changed: bool  # a change was seen after the mark

    def to_json(self) -> dict[str, Any]:
        return {"settled": self.settled, "timed_out": self.timed_out,
                "waited_ms": self.waited_ms, "changed": self.changed}

    def headers(self) -> dict[str, str]:
        return {"X-Wait-Settled": str(self.settled).lower(),
                "X-Wait-Timed-Out": str(self.timed_out).lower(),
                "X-Wait-Waited-Ms": str(self.waited_ms),
                "X-Wait-Changed": str(self.changed).lower()}


def combine(results: list[WaitResult]) -> WaitResult:
    """One answer for several waits (a batch): met only if every wait was met."""
    return WaitResult(all(r.settled for r in results), any(r.timed_out for r in results),
                      sum(r.waited_ms for r in results), any(r.changed for r in results))


def _bounded(raw: Mapping[str, Any], name: str, low: int, high: int, default: int) -> int:
    value = raw.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest.for_field(
            f"wait.{name}", f"must be from {low} to {high}",
            f"wait.{name} must be an integer from {low} to {high}")
    return value


def parse_wait(raw: Any) -> WaitSpec | None:
    """The `wait` object of a request (None when absent)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise BadRequest.for_field("wait", "must be an object")
    kind = raw.get("for")
    if kind not in WAIT_FOR:
        raise BadRequest.for_field("wait.for", "must be change or settle")
    settle = _bounded(raw, "settle_ms", 1, MAX_SETTLE_MS, DEFAULT_SETTLE_MS)
    timeout = _bounded(raw, "timeout_ms", 0, MAX_TIMEOUT_MS, DEFAULT_TIMEOUT_MS)
    return WaitSpec(str(kind), settle, timeout)


def is_noise(width: int, height: int) -> bool:
    """A caret blink (see the module's docstring)."""
    return width <= CARET_MAX_WIDTH and height <= CARET_MAX_HEIGHT


def _resolve(future: Future[Any], outcome: Any) -> None:
    """Complete a future unless its caller gave up on it (cancelled) in the meantime."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass


@dataclass
class _Waiter:
    spec: WaitSpec
    mark: int
    started: float
    future: Future[WaitResult]
    deadline: float = 0.0
    quiet_from: float = 0.0  # settle: when the current quiet spell began

    def __post_init__(self) -> None:
        self.deadline = self.started + self.spec.timeout_ms / 1000
        self.quiet_from = self.started


@dataclass
class _Watching:
    """What the watch thread owns while it runs."""

    dpy: xdisplay.Display
    damage_id: int
    event_type: int
    waiters: list[_Waiter] = field(default_factory=list)


class ScreenWatch:
    """Change counting on the root window, on a connection and thread of its own."""

    def __init__(self, display_name: str) -> None:
        self.display_name = display_name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._requests: list[tuple[str, Any]] = []
        self._closed = False
        self._seq = 0  # changes counted since the watch started (only grows)
        self._last_change = 0.0
        self._started: Future[None] | None = None

    # -- from any other thread ---------------------------------------------------------

    def mark(self) -> int:
        """The change count now, after a round trip: later changes are newer than it."""
        done: Future[int] = Future()
        self._submit("mark", done)
        return done.result()

    def wait(self, spec: WaitSpec, mark: int, started: float | None = None) -> Future[WaitResult]:
        """A future for the wait's result, measured from `started` (default: now)."""
        done: Future[WaitResult] = Future()
        waiter = _Waiter(spec, mark, time.monotonic() if started is None else started, done)
        self._submit("wait", waiter)
        return done

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._poke()
        if thread is not None:
            thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _submit(self, kind: str, item: Any) -> None:
        with self._lock:
            if self._closed:
                raise DisplayUnavailable("the computer controller is shutting down")
            self._requests.append((kind, item))
            if self._thread is None or not self._thread.is_alive():
                started: Future[None] = Future()
                self._thread = threading.Thread(target=self._main, args=(started,),
                                                name="x-watch", daemon=True)
                self._thread.start()
            else:
                started = Future()
                started.set_result(None)
        self._poke()
        started.result()  # raises DisplayUnavailable when the display cannot be opened

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    # -- the watch thread --------------------------------------------------------------

    def _open(self) -> _Watching:
        return open_with(self.display_name, _start_watching)

    def _main(self, started: Future[None]) -> None:
        try:
            state = self._open()
        except Exception as exc:
            self._fail_requests(exc)
            started.set_exception(exc)
            return
        started.set_result(None)
        idle_since = time.monotonic()
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                    requests, self._requests = self._requests, []
                self._drain_wake()
                self._read_events(state)
                for kind, item in requests:
                    if kind == "mark":
                        state.dpy.sync()
                        self._read_events(state)
                        item.set_result(self._seq)
                    elif not item.future.cancelled():
                        state.waiters.append(item)
                self._check(state)
                now = time.monotonic()
                if state.waiters:
                    idle_since = now
                elif now - idle_since >= IDLE_STOP_S:
                    with self._lock:
                        if not self._requests:
                            self._thread = None
                            self._release(state)
                            return
                    continue
                readable, _, _ = select.select([state.dpy.fileno(), self._wake_r], [], [],
                                               self._next_timeout(state, now))
                del readable
        except CONNECTION_ERRORS as exc:
            log.warning("X watch connection on %s lost: %s", self.display_name, exc)
            error = DisplayUnavailable(
                f"X display {self.display_name} went away ({type(exc).__name__})")
            for waiter in state.waiters:
                _resolve(waiter.future, error)
            state.waiters = []
            with self._lock:
                self._thread = None
            self._fail_requests(error)
            close_quietly(state.dpy)
            return
        error = DisplayUnavailable("the computer controller is shutting down")
        for waiter in state.waiters:
            _resolve(waiter.future, error)
        self._fail_requests(error)
        self._release(state)

    @staticmethod
    def _release(state: _Watching) -> None:
        try:
            state.dpy.damage_destroy(state.damage_id)
            state.dpy.flush()
        except CONNECTION_ERRORS:
            pass
        close_quietly(state.dpy)

    def _fail_requests(self, exc: BaseException) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for kind, item in requests:
            future = item if kind == "mark" else item.future
            _resolve(future, exc)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _read_events(self, state: _Watching) -> None:
        readable, _, _ = select.select([state.dpy.fileno()], [], [], 0)
        if not readable and not state.dpy.display.event_queue:
            return
        while state.dpy.pending_events():
            event = state.dpy.next_event()
            if event.type != state.event_type:
                continue
            if is_noise(int(event.area.width), int(event.area.height)):
                continue
            self._seq += 1
            self._last_change = time.monotonic()

    def _check(self, state: _Watching) -> None:
        """Complete the waits whose condition holds or whose time is up."""
        if not state.waiters:
            return
        now = time.monotonic()
        synced = False
        keep: list[_Waiter] = []
        for waiter in state.waiters:
            if waiter.future.cancelled():
                continue
            changed = self._seq > waiter.mark
            if changed:
                waiter.quiet_from = max(waiter.started, self._last_change)
            met = changed if waiter.spec.kind == "change" else (
                now - waiter.quiet_from >= waiter.spec.settle_ms / 1000)
            if met and waiter.spec.kind == "settle" and not synced:
                # Make sure no change is still on its way before calling it still.
                state.dpy.sync()
                self._read_events(state)
                synced = True
                if self._seq > waiter.mark:
                    waiter.quiet_from = max(waiter.started, self._last_change)
                met = now - waiter.quiet_from >= waiter.spec.settle_ms / 1000
            if met or now >= waiter.deadline:
                waited = round((now - waiter.started) * 1000)
                _resolve(waiter.future, WaitResult(met, not met, max(0, waited),
                                                   self._seq > waiter.mark))
            else:
                keep.append(waiter)
        state.waiters = keep

    def _next_timeout(self, state: _Watching, now: float) -> float:
        if not state.waiters:
            return IDLE_STOP_S / 4
        times = [w.deadline for w in state.waiters]
        times += [w.quiet_from + w.spec.settle_ms / 1000 for w in state.waiters
                  if w.spec.kind == "settle"]
        return min(max(0.0, min(times) - now), 0.25)


def _start_watching(dpy: xdisplay.Display) -> _Watching:
    if not dpy.has_extension("DAMAGE"):
        raise DisplayUnavailable("the X server has no DAMAGE extension")
    dpy.damage_query_version()
    damage_id = dpy.screen().root.damage_create(damage.DamageReportRawRectangles)
    # DamageCreate reports the whole window once: read and drop it.
    dpy.sync()
    while dpy.pending_events():
        dpy.next_event()
    return _Watching(dpy, damage_id, dpy.extension_event.DamageNotify)
