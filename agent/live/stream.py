"""The live view's frame stream: damage-driven tiles, latest state per viewer.

One *hub* runs while at least one viewer is connected. Each tick it asks the computer's
read connection for the areas X DAMAGE saw drawn on (screen.py, the same capture path as
screenshots), compares their rows with its own copy of the screen, and marks what really
changed on every viewer. A viewer keeps, per 64-row band, only the bounding box of what
changed there since its last frame: its backlog is bounded by the screen, never by time.
It sends a frame (the marked boxes as JPEG tiles, cut from the hub's current copy) only
when fewer than MAX_IN_FLIGHT of its frames are unacknowledged, so a slow viewer gets
fewer, fresher frames; its JPEG quality follows how fast its acknowledgements come back.
While the screen is still nothing is sent (the WebSocket's own pings keep it alive), and
the hub looks for damage 20 times a second instead of 60.

Binary frame layout (big-endian): u8 kind=1, u32 seq, u16 screen width, u16 screen height,
u16 tile count, then per tile u16 x, y, w, h, u32 length, and that many JPEG bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from agent.computer.manager import ComputerManager
from agent.computer.screen import DamageGrab
from agent.errors import AgentError

log = logging.getLogger(__name__)

TICK_S = 1 / 60  # while the screen changes or a viewer gives input
IDLE_TICK_S = 1 / 20  # after a second of stillness
ACTIVE_S = 1.0
BAND = 64
STRIP_ROWS = 256  # taller tiles are cut: smaller images decode sooner in the page
MAX_IN_FLIGHT = 2
QUALITY_MAX, QUALITY_MIN, QUALITY_START = 80, 30, 70
SLOW_ACK_S, FAST_ACK_S = 0.25, 0.08
RETRY_S = 0.5

Box = tuple[int, int, int, int]  # left, top, right, bottom
SendBytes = Callable[[bytes], Awaitable[None]]
SendJson = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Update:
    changed: list[Box]
    size: tuple[int, int]
    pointer: tuple[int, int]


class Screen:
    """The hub's copy of the screen (BGRX rows, as captured), changed on one thread, read
    by encoders."""

    def __init__(self) -> None:
        self.size = (0, 0)
        self.pixels: bytearray | None = None
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.pixels = None
            self.size = (0, 0)

    def apply(self, grab: DamageGrab) -> Update:
        """Copy a grab in (on the capture thread); the boxes whose rows changed (per band,
        the damaged columns). Comparing rows is a memcmp each: cheap next to JPEG."""
        width, height = grab.width, grab.height
        with self.lock:
            if grab.full or self.pixels is None or self.size != (width, height):
                self.pixels = bytearray(width * height * 4)
                self.size = (width, height)
                self._copy_all(grab)
                return Update([(0, 0, width, height)], (width, height), grab.pointer)
            pixels = memoryview(self.pixels)
            changed: list[Box] = []
            for region, raw in grab.areas:
                source = memoryview(raw)
                stride = region.width * 4
                band_rows: dict[int, list[int]] = {}
                for row in range(region.height):
                    y = region.y + row
                    at = (y * width + region.x) * 4
                    line = source[row * stride:(row + 1) * stride]
                    if pixels[at:at + stride] != line:
                        pixels[at:at + stride] = line
                        first_last = band_rows.setdefault(y // BAND, [y, y])
                        first_last[1] = y
                for first, last in band_rows.values():
                    changed.append((region.x, first, region.x + region.width, last + 1))
            return Update(changed, (width, height), grab.pointer)

    def _copy_all(self, grab: DamageGrab) -> None:
        assert self.pixels is not None
        pixels = memoryview(self.pixels)
        width = grab.width
        for region, raw in grab.areas:
            stride = region.width * 4
            if region.x == 0 and region.width == width:
                start = region.y * width * 4
                pixels[start:start + len(raw)] = raw
                continue
            for row in range(region.height):
                at = ((region.y + row) * width + region.x) * 4
                pixels[at:at + stride] = raw[row * stride:(row + 1) * stride]

    def cut(self, boxes: list[Box]) -> list[tuple[Box, bytes]]:
        """The BGRX pixels of each box (clipped to the screen), copied out."""
        tiles: list[tuple[Box, bytes]] = []
        with self.lock:
            if self.pixels is None:
                return []
            width, height = self.size
            pixels = memoryview(self.pixels)
            for left, top, right, bottom in boxes:
                right, bottom = min(right, width), min(bottom, height)
                if right <= left or bottom <= top:
                    continue
                if left == 0 and right == width:
                    raw = bytes(pixels[top * width * 4:bottom * width * 4])
                else:
                    raw = b"".join(pixels[(y * width + left) * 4:(y * width + right) * 4]
                                   for y in range(top, bottom))
                tiles.append(((left, top, right, bottom), raw))
        return tiles


def encode_tile(box: Box, raw: bytes, quality: int) -> tuple[Box, bytes]:
    image = Image.frombuffer("RGB", (box[2] - box[0], box[3] - box[1]), raw, "raw", "BGRX",
                             0, 1)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return box, buffer.getvalue()


def split_tall(boxes: list[Box], rows: int = STRIP_ROWS) -> list[Box]:
    """Tall boxes cut into strips (the page decodes them in parallel)."""
    out: list[Box] = []
    for left, top, right, bottom in boxes:
        for y in range(top, bottom, rows):
            out.append((left, y, right, min(bottom, y + rows)))
    return out


def merge_bands(marks: dict[int, Box]) -> list[Box]:
    """Boxes to send: the marked box of each band, joined with the band below when both
    span the same columns and touch (a scroll becomes one tile, not seventeen)."""
    boxes: list[Box] = []
    for index in sorted(marks):
        box = marks[index]
        if boxes:
            last = boxes[-1]
            if last[0] == box[0] and last[2] == box[2] and last[3] == box[1]:
                boxes[-1] = (last[0], last[1], last[2], box[3])
                continue
        boxes.append(box)
    return boxes


def pack_frame(seq: int, size: tuple[int, int], tiles: list[tuple[Box, bytes]]) -> bytes:
    parts = [struct.pack(">BIHHH", 1, seq, size[0], size[1], len(tiles))]
    for (left, top, right, bottom), data in tiles:
        parts.append(struct.pack(">HHHHI", left, top, right - left, bottom - top, len(data)))
        parts.append(data)
    return b"".join(parts)


class Viewer:
    """One connected page: what changed since its last frame, and its pace."""

    def __init__(self, hub: LiveHub, send_bytes: SendBytes, send_json: SendJson) -> None:
        self.hub = hub
        self._send_bytes = send_bytes
        self._send_json = send_json
        self._marks: dict[int, Box] = {}
        self._size: tuple[int, int] = (0, 0)
        self._size_sent: tuple[int, int] = (0, 0)
        self._pointer: tuple[int, int] | None = None
        self._pointer_sent: tuple[int, int] | None = None
        self._wake = asyncio.Event()
        self._in_flight: dict[int, float] = {}
        self._seq = 0
        self.quality = QUALITY_START
        self.frames_sent = 0
        self._busy = False  # encoding or sending a frame

    @property
    def ready(self) -> bool:
        """Whether grabbing now serves this viewer: it may take a frame, and has nothing
        waiting yet (while one frame is encoded, the next one's changes are grabbed)."""
        return len(self._in_flight) < MAX_IN_FLIGHT and (not self._busy or not self._marks)

    # -- called by the hub ---------------------------------------------------------------

    def mark(self, boxes: list[Box], size: tuple[int, int]) -> None:
        if size != self._size:
            self._size = size
            self._marks.clear()
            self._in_flight.clear()  # frames of the old size no longer matter
        for left, top, right, bottom in boxes:
            first, last = top // BAND, (bottom - 1) // BAND
            for index in range(first, last + 1):
                y0, y1 = max(top, index * BAND), min(bottom, (index + 1) * BAND)
                old = self._marks.get(index)
                if old is not None:
                    self._marks[index] = (min(old[0], left), min(old[1], y0),
                                          max(old[2], right), max(old[3], y1))
                else:
                    self._marks[index] = (left, y0, right, y1)
        self._wake.set()

    def point(self, pointer: tuple[int, int]) -> None:
        self._pointer = pointer
        if pointer != self._pointer_sent:
            self._wake.set()

    # -- called by the page --------------------------------------------------------------

    def ack(self, seq: int) -> None:
        sent = self._in_flight.pop(seq, None)
        if sent is None:
            return
        took = time.monotonic() - sent
        if took > SLOW_ACK_S:
            self.quality = max(QUALITY_MIN, self.quality - 10)
        elif took < FAST_ACK_S:
            self.quality = min(QUALITY_MAX, self.quality + 5)
        self._wake.set()
        self.hub.demand.set()

    # -- the sender ----------------------------------------------------------------------

    async def run(self) -> None:
        """Send until cancelled or the connection breaks (the page left)."""
        with contextlib.suppress(ConnectionError):
            await self._send_loop()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._size != self._size_sent:
                self._size_sent = self._size
                await self._send_json({"type": "size", "width": self._size[0],
                                       "height": self._size[1]})
            if self._pointer is not None and self._pointer != self._pointer_sent:
                self._pointer_sent = self._pointer
                await self._send_json({"type": "pointer", "x": self._pointer[0],
                                       "y": self._pointer[1]})
            if not self._marks or len(self._in_flight) >= MAX_IN_FLIGHT:
                continue
            marks, self._marks = self._marks, {}
            size = self._size
            self._busy = True
            try:
                tiles = await self.hub.encode(merge_bands(marks), self.quality)
                if not tiles or size != self._size:
                    continue
                self._seq += 1
                self._in_flight[self._seq] = time.monotonic()
                await self._send_bytes(pack_frame(self._seq, size, tiles))
                self.frames_sent += 1
            finally:
                self._busy = False
                self.hub.demand.set()


class LiveHub:
    """Grabs the screen's damage while viewers are connected and hands it to them."""

    def __init__(self, computer: ComputerManager) -> None:
        self._computer = computer
        self._viewers: set[Viewer] = set()
        self._screen = Screen()
        self._encode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="live-encode")
        self._task: asyncio.Task[None] | None = None
        self._pointer: tuple[int, int] | None = None
        self._closed = False
        self.demand = asyncio.Event()  # set when a viewer may take a frame again
        self._active_until = 0.0  # monotonic; the hub ticks fast until then

    def poke(self) -> None:
        """Input is coming: look for its effect at the fast rate."""
        self._active_until = time.monotonic() + ACTIVE_S

    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    @contextlib.asynccontextmanager
    async def viewer(self, send_bytes: SendBytes, send_json: SendJson) -> Any:
        """A viewer that gets frames while the context is open."""
        viewer = Viewer(self, send_bytes, send_json)
        self._viewers.add(viewer)
        self.demand.set()
        with self._screen.lock:
            size = self._screen.size if self._screen.pixels is not None else None
        if size is not None and self._task is not None:
            viewer.mark([(0, 0, *size)], size)
            if self._pointer is not None:
                viewer.point(self._pointer)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="live-hub")
        sender = asyncio.create_task(viewer.run(), name="live-viewer")
        try:
            yield viewer
        finally:
            self._viewers.discard(viewer)
            self.demand.set()  # the hub loop looks again (and ends when nobody is left)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def encode(self, boxes: list[Box], quality: int) -> list[tuple[Box, bytes]]:
        """JPEG tiles of `boxes` from the current screen: one job on an encoder thread (on
        a busy machine every hop between threads costs a scheduling delay)."""
        def job() -> list[tuple[Box, bytes]]:
            return [encode_tile(box, raw, quality)
                    for box, raw in self._screen.cut(split_tall(boxes))]

        return await asyncio.get_running_loop().run_in_executor(self._encode_pool, job)

    async def _run(self) -> None:
        full = True
        while self._viewers and not self._closed:
            if not any(viewer.ready for viewer in self._viewers):
                # Every viewer is still busy with its last frame: let damage pile up in
                # the X server (a bounding box) instead of grabbing what nobody can take.
                self.demand.clear()
                await self.demand.wait()
                continue
            started = time.monotonic()
            try:
                update = await self._computer.grab_damage(full, self._screen.apply)
            except AgentError as exc:
                log.warning("live view: %s", exc.message)
                full = True
                await asyncio.sleep(RETRY_S)
                continue
            full = False
            if update.changed or update.pointer != self._pointer:
                self.poke()
            self._pointer = update.pointer
            for viewer in list(self._viewers):
                if update.changed:
                    viewer.mark(update.changed, update.size)
                viewer.point(update.pointer)
            tick = TICK_S if started < self._active_until else IDLE_TICK_S
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))
        # Nobody watches: forget the copy, so the next viewer starts from a full grab.
        self._screen.reset()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._encode_pool.shutdown(wait=False)
