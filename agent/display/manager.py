"""Changing the screen size: guards first, then RandR and the windows, on the computer's
input connection (so no input action runs half on the old size and half on the new).

X clients that watch the root window (the computer's input and capture connections, so
/computer bounds, screenshots and live viewers) follow through its ConfigureNotify.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from agent.computer.input import InputSession
from agent.computer.manager import ComputerManager
from agent.display import randr
from agent.errors import Conflict, Unavailable


class DisplayManager:
    def __init__(self, computer: ComputerManager,
                 guards: Sequence[Callable[[], str | None]]) -> None:
        self._computer = computer
        self._guards = guards
        self._lock = asyncio.Lock()

    async def size(self) -> randr.ScreenSize:
        return await self._computer.input.run(lambda s: randr.screen_size(s.dpy))

    async def resize(self, width: int, height: int) -> tuple[randr.ScreenSize, int]:
        """The new size, and how many application windows now fill it."""
        for guard in self._guards:
            reason = guard()
            if reason:
                raise Conflict(f"the display cannot change size now: {reason}")

        def change(session: InputSession) -> tuple[randr.ScreenSize, int]:
            size = randr.resize(session.dpy, width, height)
            if (size.width, size.height) != (width, height):
                raise Unavailable(f"the X server stayed at {size.width}x{size.height}")
            return size, randr.fill_screen(session.dpy, width, height)

        async with self._lock:
            return await self._computer.input.run(change)
