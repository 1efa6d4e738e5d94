"""The live view's pure parts: band bookkeeping, frame packing, pace, and input parsing."""

from __future__ import annotations

import asyncio
import io
import struct
from typing import Any

import pytest
from PIL import Image

from agent.computer.screen import DamageGrab, Region
from agent.errors import BadRequest
from agent.live import stream
from agent.live.control import to_actions
from agent.live.stream import BAND, Screen, Viewer, merge_bands, pack_frame


def test_merge_bands_joins_touching_full_width_bands() -> None:
    marks = {0: (0, 0, 100, 64), 1: (0, 64, 100, 128), 3: (10, 192, 20, 200)}
    assert merge_bands(marks) == [(0, 0, 100, 128), (10, 192, 20, 200)]


def test_tall_boxes_are_cut_into_strips() -> None:
    assert stream.split_tall([(0, 0, 10, 600), (5, 5, 6, 6)], 256) == [
        (0, 0, 10, 256), (0, 256, 10, 512), (0, 512, 10, 600), (5, 5, 6, 6)]


def test_pack_frame_layout() -> None:
    data = pack_frame(7, (1920, 1080), [((1, 2, 11, 22), b"abc")])
    assert struct.unpack(">BIHHH", data[:11]) == (1, 7, 1920, 1080, 1)
    assert struct.unpack(">HHHHI", data[11:23]) == (1, 2, 10, 20, 3)
    assert data[23:] == b"abc"


def _grab(image: Image.Image, areas: list[Region], full: bool = False) -> DamageGrab:
    """A grab as screen.py makes it: BGRX bytes of each damaged area."""
    bgrx = image.convert("RGBA")
    out = []
    for r in areas:
        tile = bgrx.crop((r.x, r.y, r.x + r.width, r.y + r.height))
        red, green, blue, alpha = tile.split()
        out.append((r, Image.merge("RGBA", (blue, green, red, alpha)).tobytes()))
    return DamageGrab(image.width, image.height, (0, 0), full, out)


def test_screen_reports_only_pixels_that_changed() -> None:
    screen = Screen()
    white = Image.new("RGB", (300, 200), "white")
    update = screen.apply(_grab(white, [Region(0, 0, 300, 200)], full=True))
    assert update.changed == [(0, 0, 300, 200)] and update.size == (300, 200)
    # Damage over a wide area, but only ten rows of it really changed: the box keeps the
    # damaged columns and only the changed rows.
    drawn = white.copy()
    drawn.paste((255, 0, 0), (100, 70, 110, 80))
    changed = screen.apply(_grab(drawn, [Region(50, 0, 200, 200)])).changed
    assert changed == [(50, 70, 250, 80)]
    # The same pixels again: damage, but nothing to send.
    assert screen.apply(_grab(drawn, [Region(0, 0, 300, 200)])).changed == []
    box, raw = screen.cut(changed)[0]
    assert box == (50, 70, 250, 80)
    tile = Image.open(io.BytesIO(stream.encode_tile(box, raw, 80)[1]))
    assert tile.size == (200, 10)
    r, g, b = tile.convert("RGB").getpixel((55, 5))
    assert r > 200 and g < 60 and b < 60


class _Hub:
    def __init__(self) -> None:
        self.encoded: list[list[Any]] = []
        self.demand = asyncio.Event()

    async def encode(self, boxes: list[Any], quality: int) -> list[Any]:
        self.encoded.append(boxes)
        return [(box, b"x") for box in boxes]


async def test_slow_viewer_gets_merged_latest_state() -> None:
    hub = _Hub()
    sent: list[bytes] = []
    texts: list[dict[str, Any]] = []

    async def send_bytes(data: bytes) -> None:
        sent.append(data)

    async def send_json(message: dict[str, Any]) -> None:
        texts.append(message)

    viewer = Viewer(hub, send_bytes, send_json)  # type: ignore[arg-type]
    task = asyncio.create_task(viewer.run())
    try:
        size = (640, 480)
        for i in range(stream.MAX_IN_FLIGHT):
            viewer.mark([(0, i * BAND, 10, i * BAND + 10)], size)
            await _settle()
        assert len(sent) == stream.MAX_IN_FLIGHT
        assert not viewer.ready
        # Unacknowledged: a hundred changes pile up as marks, not frames.
        for i in range(100):
            viewer.mark([(i, 5, i + 1, 6), (0, 300, 640, 310)], size)
            await _settle()
        assert len(sent) == stream.MAX_IN_FLIGHT
        viewer.ack(1)
        assert viewer.ready and hub.demand.is_set()
        await _settle()
        assert len(sent) == stream.MAX_IN_FLIGHT + 1
        assert hub.encoded[-1] == [(0, 5, 100, 6), (0, 300, 640, 310)]
        assert texts[0] == {"type": "size", "width": 640, "height": 480}
    finally:
        task.cancel()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_input_messages_map_to_computer_actions() -> None:
    assert to_actions({"type": "text", "text": "日本"}) == [("type_text", {"text": "日本"})]
    assert to_actions({"type": "button", "action": "down", "button": "right", "x": 3,
                       "y": 4}) == [("click_mouse", {"x": 3, "y": 4, "button": "right",
                                                     "click_type": "down"})]
    assert to_actions({"type": "paste", "text": "p"})[1] == ("press_key", {"keys": ["ctrl+v"]})
    for bad in ({"type": "move", "x": -1, "y": 0}, {"type": "wheel", "x": 0, "y": 0,
                                                    "dx": 0, "dy": 1000},
                {"type": "text", "text": ""}, {"type": "nope"},
                {"type": "button", "action": "hold", "x": 0, "y": 0}):
        with pytest.raises(BadRequest):
            to_actions(bad)
