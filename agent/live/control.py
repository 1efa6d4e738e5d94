"""Input from a live viewer, through the computer's own input queue.

Every message becomes the same action the /computer endpoints run (text through
`type_text`, so any Unicode arrives as /computer/type would type it), queued on the one
input connection: live input and API input never interleave inside an action. Each viewer
has a bounded queue; consecutive pointer moves collapse into the latest one.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from agent.computer.manager import ComputerManager
from agent.errors import AgentError, BadRequest, Forbidden, TooManyRequests

MAX_QUEUED = 256
MAX_TEXT = 10_000
BUTTON_NAMES = ("left", "middle", "right", "back", "forward")

Action = tuple[str, dict[str, Any]]


def _int(message: dict[str, Any], name: str, low: int = -65535, high: int = 65535) -> int:
    value = message.get(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return value


def _text(message: dict[str, Any], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise BadRequest(f"{name} must be a string of 1 to {MAX_TEXT} characters")
    return value


def parse(raw: str) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        raise BadRequest("messages are JSON objects") from None
    if not isinstance(message, dict):
        raise BadRequest("messages are JSON objects")
    return message


def to_actions(message: dict[str, Any]) -> list[Action]:
    """The computer actions one input message stands for."""
    kind = message.get("type")
    if kind == "move":
        return [("move_mouse", {"x": _int(message, "x", 0), "y": _int(message, "y", 0),
                                "smooth": False})]
    if kind == "button":
        action = message.get("action")
        button = message.get("button", "left")
        if action not in ("down", "up") or button not in BUTTON_NAMES:
            raise BadRequest("button messages need action down|up and a button name")
        return [("click_mouse", {"x": _int(message, "x", 0), "y": _int(message, "y", 0),
                                 "button": button, "click_type": action})]
    if kind == "wheel":
        return [("scroll", {"x": _int(message, "x", 0), "y": _int(message, "y", 0),
                            "delta_x": _int(message, "dx", -100, 100),
                            "delta_y": _int(message, "dy", -100, 100)})]
    if kind == "text":
        return [("type_text", {"text": _text(message, "text")})]
    if kind == "key":
        return [("press_key", {"keys": [_text(message, "keys")]})]
    if kind == "paste":
        return [("clipboard", {"text": _text(message, "text")}),
                ("press_key", {"keys": ["ctrl+v"]})]
    raise BadRequest(f"unknown message type {kind!r}")


class InputForwarder:
    """A viewer's input, in order, on the computer's input queue."""

    def __init__(self, computer: ComputerManager, may_act: bool,
                 report: Callable[[AgentError], Awaitable[None]]) -> None:
        self._computer = computer
        self._may_act = may_act
        self._report = report
        self._queue: deque[Action] = deque()
        self._ready = asyncio.Event()
        self._refused = False

    async def offer(self, message: dict[str, Any]) -> None:
        """Queue an input message (errors go back to the page, never end the stream)."""
        if not self._may_act:
            if not self._refused:  # once is enough to tell the page
                self._refused = True
                await self._report(Forbidden("this live view is read-only: input needs a "
                                             "link with the write scope"))
            return
        try:
            actions = to_actions(message)
        except AgentError as exc:
            await self._report(exc)
            return
        if len(self._queue) + len(actions) > MAX_QUEUED:
            await self._report(TooManyRequests("input is arriving faster than it can be "
                                               "played; dropped"))
            return
        self._queue.extend(actions)
        self._ready.set()

    async def run(self) -> None:
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            kind, params = self._queue.popleft()
            # Only the latest of consecutive pointer moves matters.
            while kind == "move_mouse" and self._queue and self._queue[0][0] == "move_mouse":
                kind, params = self._queue.popleft()
            try:
                if kind == "clipboard":
                    await self._computer.clipboard_write(params["text"])
                else:
                    await self._computer.perform(kind, params)
            except AgentError as exc:
                await self._report(exc)
