"""The X server going away and coming back, held keys on shutdown, cursor state."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from computer_support import buttons_down, keys_down, post
from helpers import Xvfb, async_wait_until, free_display
from Xlib import Xcursorfont
from Xlib import display as xdisplay

from agent.computer.manager import ComputerManager

ENDPOINTS: list[tuple[str, dict[str, Any] | None]] = [
    ("/computer/click_mouse", {"x": 10, "y": 10}),
    ("/computer/type", {"text": "é"}),
    ("/computer/screenshot", None),
    ("/computer/get_mouse_position", None),
    ("/computer/clipboard/read", None),
    ("/computer/clipboard/write", {"text": "x"}),
    ("/computer/cursor", {"hidden": True}),
]


@pytest.fixture
def own_xvfb() -> Iterator[Xvfb]:
    """A private X server that this test may kill and restart."""
    server = Xvfb(free_display(), 640, 480)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_x_server_restart_gives_503_then_works(make_client: Any, own_xvfb: Xvfb) -> None:
    client = await make_client(display=own_xvfb.name, cdp_proxy_port=0)
    for path, body in ENDPOINTS:  # every connection opened and working
        await post(client, path, body)
    own_xvfb.stop()
    for path, body in ENDPOINTS:
        resp = await client.post(path, json=body)
        answer = await resp.json()
        assert resp.status == 503, (path, answer)
        assert answer["code"] == "display_unavailable"
    health = await client.get("/health")
    assert (await health.json())["display"]["ok"] is False
    own_xvfb.start()
    for path, body in ENDPOINTS:
        await post(client, path, body)
    assert await post(client, "/computer/get_mouse_position") == {"x": 10, "y": 10}
    assert await post(client, "/computer/clipboard/read") == {"text": "x"}
    await post(client, "/computer/cursor", {"hidden": False})


async def test_never_started_display_is_503(make_client: Any) -> None:
    client = await make_client(display=f":{free_display()}", cdp_proxy_port=0)
    answer = await post(client, "/computer/click_mouse", {"x": 1, "y": 1}, 503)
    assert answer["code"] == "display_unavailable"
    answer = await post(client, "/computer/screenshot", None, 503)
    assert answer["code"] == "display_unavailable"


async def test_shutdown_during_a_held_key_releases_it(own_xvfb: Xvfb) -> None:
    computer = ComputerManager(own_xvfb.name)
    hold = asyncio.create_task(computer.perform(
        "press_key", {"keys": ["a", "ctrl+b"], "hold_keys": ["shift"], "duration": 20_000}))
    await async_wait_until(lambda: len(keys_down(own_xvfb.name)) == 4, timeout=5,
                           what="the keys to be held")
    await computer.close()
    with pytest.raises(Exception) as info:
        await hold
    assert getattr(info.value, "code", "") == "display_unavailable"
    assert keys_down(own_xvfb.name) == []
    assert buttons_down(own_xvfb.name) == 0


def framebuffer_pixels(fbdir: Path, x: int, y: int, size: int) -> int:
    """How many pixels of the size x size square at (x, y) are not black, read from the
    X server's own framebuffer (Xvfb -fbdir: an XWD file, the software cursor drawn in)."""
    raw = (fbdir / "Xvfb_screen0").read_bytes()
    fields = struct.unpack(">25I", raw[:100])
    header, bits_per_pixel, bytes_per_line, colors = fields[0], fields[11], fields[12], fields[19]
    assert bits_per_pixel == 32
    start = header + colors * 12
    lit = 0
    for row in range(y, y + size):
        line = raw[start + row * bytes_per_line:start + (row + 1) * bytes_per_line]
        lit += sum(1 for col in range(x, x + size) if line[col * 4:col * 4 + 3] != b"\0\0\0")
    return lit


async def test_cursor_hides_and_shows_in_the_framebuffer(
        make_client: Any, tmp_path: Path) -> None:
    """The pointer (a window's arrow, as Chromium sets one; Xvfb's own is blank) drawn on a
    black screen disappears from the X server's framebuffer while hidden, and comes back
    when shown. Screenshots never contain the pointer, so they cannot tell."""
    server = Xvfb(free_display(), 320, 240, extra_args=("-fbdir", str(tmp_path), "-br"))
    server.start()
    page = xdisplay.Display(server.name)  # a window's own cursor, as Chromium sets one
    try:
        font = page.open_font("cursor")
        arrow = font.create_glyph_cursor(font, Xcursorfont.left_ptr, Xcursorfont.left_ptr + 1,
                                         (65535, 65535, 65535), (0, 0, 0))
        page.screen().root.change_attributes(cursor=arrow)
        page.sync()
        client = await make_client(display=server.name, cdp_proxy_port=0)
        await post(client, "/computer/move_mouse", {"x": 100, "y": 100, "smooth": False})
        await async_wait_until(lambda: framebuffer_pixels(tmp_path, 85, 85, 30) > 20,
                               what="the pointer drawn")
        assert framebuffer_pixels(tmp_path, 200, 160, 30) == 0  # the screen is black
        await post(client, "/computer/cursor", {"hidden": True})
        await async_wait_until(lambda: framebuffer_pixels(tmp_path, 85, 85, 30) == 0,
                               what="the pointer gone")
        await post(client, "/computer/move_mouse", {"x": 200, "y": 160, "smooth": False})
        await post(client, "/computer/cursor", {"hidden": False})
        await async_wait_until(lambda: framebuffer_pixels(tmp_path, 185, 145, 30) > 20,
                               what="the pointer back")
    finally:
        page.close()
        server.stop()


async def test_cursor_state_is_kept(make_client: Any, own_xvfb: Xvfb) -> None:
    client = await make_client(display=own_xvfb.name, cdp_proxy_port=0)
    assert await post(client, "/computer/cursor", {"hidden": True}) == {"ok": True}
    assert await post(client, "/computer/cursor", {"hidden": True}) == {"ok": True}
    await post(client, "/computer/move_mouse", {"x": 30, "y": 30, "smooth": False})
    assert await post(client, "/computer/cursor", {"hidden": False}) == {"ok": True}
    answer = await post(client, "/computer/cursor", {}, 400)
    assert answer["details"][0]["field"] == "hidden"
