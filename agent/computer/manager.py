"""The computer controller: what the routes call.

Three X connections, each on its own thread: *input* (XTEST; every action and batch runs
there one at a time, in arrival order), *read* (screenshots, pointer position) so that
reads never wait behind a long drag or typing run, and the *clipboard* owner. Actions are
parsed up front (key names, limits), so a bad request fails before any input happens.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.computer import keys
from agent.computer.clipboard import Clipboard
from agent.computer.display import XConnection
from agent.computer.input import ABANDON_CHECK_S, Abandoned, InputSession, input_factory
from agent.computer.screen import (
    ENCODERS,
    CaptureSession,
    DamageGrab,
    Region,
    Shot,
    ShotRequest,
    release_free_memory,
)
from agent.computer.watch import ScreenWatch, WaitResult, WaitSpec, parse_wait
from agent.errors import AgentError, BadRequest, DisplayUnavailable
from agent.openapi import with_defaults

T = TypeVar("T")

IDLE_RELEASE_S = 2.0


@dataclass(frozen=True)
class Action:
    kind: str
    run: Callable[[InputSession], None]
    points: tuple[tuple[int, int, str], ...] = ()  # checked against the screen first
    hides_cursor: bool | None = None  # set_cursor's new state, kept across reconnects
    wait: WaitSpec | None = None  # what to wait for on screen once the action is done


@dataclass(frozen=True)
class BatchOutcome:
    waits: list[tuple[int, WaitResult]]  # (action index, result) of each action that waited
    shot: Shot | None = None  # the closing screenshot, when the batch ends with one
    shot_wait: WaitResult | None = None


def _point(params: Mapping[str, Any]) -> tuple[int, int]:
    return int(params["x"]), int(params["y"])


def _optional_int(params: Mapping[str, Any], name: str) -> int | None:
    value = params.get(name)
    return None if value is None else int(value)


def prepare(kind: str, params: Mapping[str, Any]) -> Action:
    """A validated action, ready to run on the input connection."""
    action = _prepare(kind, params)
    wait = parse_wait(params.get("wait"))
    if wait is None:
        return action
    return Action(action.kind, action.run, action.points, action.hides_cursor, wait)


def _shot_request(params: Mapping[str, Any]) -> ShotRequest:
    region = params.get("region")
    scale = params.get("scale_to") or {}
    return ShotRequest(
        region=Region(int(region["x"]), int(region["y"]), int(region["width"]),
                      int(region["height"])) if region else None,
        format=str(params.get("format") or "png"),
        quality=params.get("quality"),
        scale_width=scale.get("width"),
        scale_height=scale.get("height"),
    )


# Each action: its request schema in the spec, and how to build it from parameters that
# the spec has checked (types, enums, bounds) and filled (defaults), nested in a batch
# too. Integers may arrive as integral floats (JSON Schema counts 5.0 as an integer).
Builder = Callable[[Mapping[str, Any], list[int]], Action]


def _click(p: Mapping[str, Any], hold: list[int]) -> Action:
    x, y = _point(p)
    button, click_type, clicks = p["button"], p["click_type"], int(p["num_clicks"])
    return Action("click_mouse", lambda s: s.click(x, y, button, click_type, clicks, hold),
                  ((x, y, ""),))


def _move(p: Mapping[str, Any], hold: list[int]) -> Action:
    x, y = _point(p)
    smooth, move_ms = bool(p["smooth"]), _optional_int(p, "duration_ms")
    return Action("move_mouse", lambda s: s.move(x, y, smooth, move_ms, hold), ((x, y, ""),))


def _type(p: Mapping[str, Any], hold: list[int]) -> Action:
    text, delay = str(p["text"]), int(p["delay"])
    return Action("type_text", lambda s: s.type_text(text, delay))


def _press(p: Mapping[str, Any], hold: list[int]) -> Action:
    combos = keys.parse_keys(p.get("keys"), "keys")
    if not combos:
        raise BadRequest.for_field("keys", "must name at least one key")
    hold_ms = int(p["duration"])
    return Action("press_key", lambda s: s.press_keys(combos, hold_ms, hold))


def _scroll(p: Mapping[str, Any], hold: list[int]) -> Action:
    x, y = _point(p)
    dx, dy = int(p["delta_x"]), int(p["delta_y"])
    return Action("scroll", lambda s: s.scroll(x, y, dx, dy, hold), ((x, y, ""),))


def _drag(p: Mapping[str, Any], hold: list[int]) -> Action:
    path = [(int(x), int(y)) for x, y in p["path"]]
    button, delay, smooth = p["button"], int(p["delay"]), bool(p["smooth"])
    steps, step_delay = int(p["steps_per_segment"]), int(p["step_delay_ms"])
    drag_ms = _optional_int(p, "duration_ms")
    return Action(
        "drag_mouse",
        lambda s: s.drag(path, button, delay, steps, step_delay, smooth, drag_ms, hold),
        tuple((x, y, f"path.{i}") for i, (x, y) in enumerate(path)))


def _cursor(p: Mapping[str, Any], hold: list[int]) -> Action:
    hidden = bool(p["hidden"])
    return Action("set_cursor", lambda s: s.set_cursor(hidden), hides_cursor=hidden)


def _sleep(p: Mapping[str, Any], hold: list[int]) -> Action:
    pause_ms = int(p["duration_ms"])
    return Action("sleep", lambda s: s.sleep(pause_ms))


ACTIONS: dict[str, tuple[str, Builder]] = {
    "click_mouse": ("ClickMouseRequest", _click),
    "move_mouse": ("MoveMouseRequest", _move),
    "type_text": ("TypeTextRequest", _type),
    "press_key": ("PressKeyRequest", _press),
    "scroll": ("ScrollRequest", _scroll),
    "drag_mouse": ("DragMouseRequest", _drag),
    "set_cursor": ("SetCursorRequest", _cursor),
    "sleep": ("SleepAction", _sleep),
}


def _prepare(kind: str, params: Mapping[str, Any]) -> Action:
    entry = ACTIONS.get(kind)
    if entry is None:
        raise BadRequest.for_field(
            "type", f"must be one of {', '.join(ACTIONS)}", f"unknown action type {kind!r}")
    schema, build = entry
    return build(with_defaults(schema, params), keys.parse_hold_keys(params.get("hold_keys")))


def _in_batch(exc: AgentError, index: int, kind: str) -> AgentError:
    """The same error, saying which action of the batch failed."""
    details: list[dict[str, Any]] = [{
        "code": "batch_action_failed", "field": f"actions.{index}", "index": index,
        "action": kind, "message": f"actions[{index}] ({kind}): {exc.message}",
    }]
    for detail in exc.details or []:
        inner = dict(detail)
        if "field" in inner:
            inner["field"] = f"actions.{index}.{kind}.{inner['field']}"
        details.append(inner)
    wrapped = type(exc)(f"actions[{index}] ({kind}) failed: {exc.message}", details=details,
                        code=exc.code, headers=exc.headers, extra=exc.extra, status=exc.status)
    return wrapped


class ComputerManager:
    def __init__(self, display_name: str, clipboard_max_bytes: int = 16 << 20) -> None:
        self.display_name = display_name
        self._cursor_hidden = False
        self._closing = threading.Event()
        self._encoders = ThreadPoolExecutor(max_workers=ENCODERS,
                                            thread_name_prefix="encode")
        self.input: XConnection[InputSession] = XConnection(
            display_name, "input", input_factory(self._closing, lambda: self._cursor_hidden))
        self.reads: XConnection[CaptureSession] = XConnection(
            display_name, "read", lambda dpy: CaptureSession(dpy, self._encoders))
        self.watch = ScreenWatch(display_name)
        self.clipboard = Clipboard(display_name, clipboard_max_bytes)
        self._trim_timer: asyncio.TimerHandle | None = None
        self._trim_task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        self._closing.set()
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        await asyncio.gather(self.input.close(), self.reads.close(), self.clipboard.close(),
                             asyncio.to_thread(self.watch.close))
        self._encoders.shutdown(wait=False)

    # -- waiting for the screen ----------------------------------------------------------

    async def _mark(self) -> int:
        if self._closing.is_set():
            raise DisplayUnavailable("the computer controller is shutting down")
        return await asyncio.to_thread(self.watch.mark)

    async def _wait(self, spec: WaitSpec, mark: int) -> WaitResult:
        return await asyncio.wrap_future(self.watch.wait(spec, mark))

    def _wait_in_job(self, spec: WaitSpec, mark: int, session: InputSession) -> WaitResult:
        """A wait inside an input job (a batch): it stops when its caller goes away."""
        future = self.watch.wait(spec, mark)
        while True:
            try:
                return future.result(timeout=ABANDON_CHECK_S)
            except FutureTimeout:
                if self._closing.is_set() or (
                        session.abandoned is not None and session.abandoned.is_set()):
                    future.cancel()
                    raise Abandoned("the caller went away") from None

    # -- input ---------------------------------------------------------------------------

    async def perform(self, kind: str, params: Mapping[str, Any]) -> WaitResult | None:
        """Run one action; with a `wait`, then wait for the screen and say how that went."""
        action = prepare(kind, params)
        mark = await self._mark() if action.wait is not None else 0

        def run(session: InputSession) -> None:
            for x, y, field in action.points:
                session.check_point(x, y, field)
            action.run(session)

        await self._run_input(run)
        if action.hides_cursor is not None:
            self._cursor_hidden = action.hides_cursor
        if action.wait is None:
            return None
        return await self._wait(action.wait, mark)

    async def _run_input(self, fn: Callable[[InputSession], None]) -> None:
        """Run an input job in turn. If its caller is cancelled (the client went away) the
        job is dropped if it has not started, or stops at its next pause, releasing what
        it pressed: a long drag nobody waits for does not hold up the actions behind it."""
        abandoned = threading.Event()

        def job(session: InputSession) -> None:
            if abandoned.is_set():
                return
            session.abandoned = abandoned
            try:
                fn(session)
            finally:
                session.abandoned = None

        try:
            await self.input.run(job)
        except asyncio.CancelledError:
            abandoned.set()
            raise

    async def batch(self, actions: Sequence[Mapping[str, Any]],
                    wait: Any = None) -> BatchOutcome:
        """Run the actions in order (each waiting for the screen when it says so, the last
        one also for the batch's `wait`); a final `screenshot` item is taken at the end."""
        prepared: list[Action] = []
        closing_shot: tuple[ShotRequest, WaitSpec | None] | None = None
        for index, item in enumerate(actions):
            kind = str(item.get("type"))
            try:
                extra = sorted(k for k in item if k not in ("type", kind))
                if kind == "screenshot":
                    if index != len(actions) - 1:
                        raise BadRequest.for_field(
                            "type", "screenshot may only be the last action",
                            "a screenshot may only end a batch")
                elif kind not in ACTIONS:
                    prepare(kind, {})
                if extra:
                    raise BadRequest.for_field(
                        extra[0], f"not allowed with type {kind}",
                        f"only the {kind} field may accompany type {kind}",
                        detail_code="unexpected_field")
                params = item.get(kind, {} if kind == "screenshot" else None)
                if not isinstance(params, Mapping):
                    raise BadRequest.for_field(
                        kind, "is required",
                        f"type {kind} needs its parameters in the {kind} field",
                        detail_code="missing_field")
                if kind == "screenshot":
                    closing_shot = (_shot_request(params), parse_wait(params.get("wait")))
                else:
                    prepared.append(prepare(kind, params))
            except AgentError as exc:
                raise _in_batch(exc, index, kind) from None
        final_wait = parse_wait(wait)
        if final_wait is not None and not prepared:
            raise BadRequest.for_field(
                "wait", "the batch has no input action", "wait needs an input action to follow")
        if final_wait is not None:
            last = prepared[-1]
            prepared[-1] = Action(last.kind, last.run, last.points, last.hides_cursor,
                                  last.wait or final_wait)
        needs_watch = closing_shot is not None and closing_shot[1] is not None
        first_mark = await self._mark() if needs_watch else 0
        position = [0]
        waits: list[tuple[int, WaitResult]] = []

        def run(session: InputSession) -> None:
            for index, action in enumerate(prepared):
                position[0] = index
                for x, y, field in action.points:
                    session.check_point(x, y, field)
            for index, action in enumerate(prepared):
                position[0] = index
                mark = self.watch.mark() if action.wait is not None else 0
                action.run(session)
                if action.hides_cursor is not None:
                    self._cursor_hidden = action.hides_cursor
                if action.wait is not None:
                    waits.append((index, self._wait_in_job(action.wait, mark, session)))

        try:
            if prepared:
                await self._run_input(run)
        except AgentError as exc:
            index = position[0]
            raise _in_batch(exc, index, prepared[index].kind) from None
        if closing_shot is None:
            return BatchOutcome(waits)
        request, shot_wait = closing_shot
        try:
            shot, result = await self._screenshot(request, shot_wait, first_mark)
        except AgentError as exc:
            raise _in_batch(exc, len(actions) - 1, "screenshot") from None
        return BatchOutcome(waits, shot, result)

    # -- reads ---------------------------------------------------------------------------

    async def mouse_position(self) -> tuple[int, int]:
        return await self.reads.run(lambda s: s.pointer())

    async def screenshot(self, params: Mapping[str, Any]) -> Shot:
        return (await self.screenshot_waiting(params))[0]

    async def screenshot_waiting(self, params: Mapping[str, Any]
                                 ) -> tuple[Shot, WaitResult | None]:
        """The screen as an image; with a `wait`, taken once the screen changed or settled
        after the request arrived (or the wait timed out), and how that wait went."""
        request = _shot_request(params)
        spec = parse_wait(params.get("wait"))
        mark = await self._mark() if spec is not None else 0
        return await self._screenshot(request, spec, mark)

    async def _screenshot(self, request: ShotRequest, spec: WaitSpec | None,
                          mark: int) -> tuple[Shot, WaitResult | None]:
        result = await self._wait(spec, mark) if spec is not None else None
        shot = await self.reads.run(lambda s: s.screenshot(request))
        if not shot.reused:
            self._trim_later()
        return shot, result

    def _trim_later(self) -> None:
        """Once screenshots have stopped for a while, drop the capture buffer (a full-screen
        shared memory segment) and hand the encoders' freed memory back to the system."""
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        loop = asyncio.get_running_loop()

        def trim() -> None:
            self._trim_timer = None
            self._trim_task = loop.create_task(self._release_idle())

        self._trim_timer = loop.call_later(IDLE_RELEASE_S, trim)

    async def _release_idle(self) -> None:
        try:
            await self.reads.run(lambda s: s.release_idle())
        except AgentError:
            pass  # the display is gone: nothing to release
        release_free_memory()

    async def grab_damage(self, full: bool, consume: Callable[[DamageGrab], T]) -> T:
        """For the live view: what was drawn since its previous grab (screen.py), handed
        to `consume` on the capture thread (no hop to another thread for the pixels)."""
        result = await self.reads.run(lambda s: consume(s.grab_damage(full)))
        self._trim_later()
        return result

    async def display_ok(self) -> None:
        """Raises DisplayUnavailable unless the X server answers a round trip."""
        await self.reads.run(lambda s: s.dpy.sync())

    # -- clipboard -----------------------------------------------------------------------

    async def clipboard_read(self) -> str:
        return await self.clipboard.read()

    async def clipboard_write(self, text: str) -> None:
        await self.clipboard.write(text)
