"""Changing the screen size: guards, the RandR change, then Chromium's windows.

Chromium runs without a window manager, so nothing tells its window about a new screen:
every browser window is set to fill the screen over DevTools (Browser.setWindowBounds).
X clients that watch the root window (the computer's input and capture connections,
hence /computer bounds, screenshots and live viewers) follow through its ConfigureNotify.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from agent.browser.cdp import CdpManager
from agent.computer.manager import Computer
from agent.display import randr
from agent.errors import AgentError, Conflict, Unavailable

log = logging.getLogger(__name__)

WINDOW_WAIT_S = 3.0


class DisplayManager:
    def __init__(self, computer: Computer, cdp: CdpManager,
                 guards: Sequence[Callable[[], str | None]]) -> None:
        self._computer = computer
        self._cdp = cdp
        self._guards = guards
        self._lock = asyncio.Lock()

    async def size(self) -> randr.ScreenSize:
        return await self._computer.input.run(lambda s: randr.screen_size(s.dpy))

    async def resize(self, width: int, height: int) -> tuple[randr.ScreenSize, bool]:
        """The new size, and whether Chromium's windows were made to fill it."""
        for guard in self._guards:
            reason = guard()
            if reason:
                raise Conflict(f"the display cannot change size now: {reason}")
        async with self._lock:
            # On the input connection: no action runs half on the old size.
            size = await self._computer.input.run(
                lambda s: randr.resize(s.dpy, width, height))
            if (size.width, size.height) != (width, height):
                raise Unavailable(f"the X server stayed at {size.width}x{size.height}")
            try:
                await self._fit_windows(width, height)
            except AgentError as exc:
                log.warning("Chromium's windows did not follow the new size: %s", exc.message)
                return size, False
            return size, True

    async def _fit_windows(self, width: int, height: int) -> None:
        targets = await self._cdp.send("Target.getTargets", timeout=WINDOW_WAIT_S)
        windows: set[int] = set()
        for target in targets.get("targetInfos", []):
            if target.get("type") == "page":
                found = await self._cdp.send("Browser.getWindowForTarget",
                                             {"targetId": target["targetId"]},
                                             timeout=WINDOW_WAIT_S)
                windows.add(int(found["windowId"]))
        for window in windows:
            await self._cdp.send("Browser.setWindowBounds", {
                "windowId": window, "bounds": {"windowState": "normal"}},
                timeout=WINDOW_WAIT_S)
            await self._cdp.send("Browser.setWindowBounds", {
                "windowId": window,
                "bounds": {"left": 0, "top": 0, "width": width, "height": height}},
                timeout=WINDOW_WAIT_S)
