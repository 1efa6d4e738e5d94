"""Screenshots: the page's known colours at known places, exact regions, encodings,
and reuse of the last image only while nothing on screen changed."""

from __future__ import annotations

import io
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from computer_support import open_page, post, screenshot
from helpers import Chromium, Xvfb, async_wait_until
from PIL import Image

from agent.computer.manager import ComputerManager

COLOURS = """
<style>body{margin:0;background:#fff} div{position:absolute}</style>
<div id=red style="left:20px;top:30px;width:200px;height:100px;background:rgb(255,0,0)"></div>
<div id=blue style="left:300px;top:30px;width:150px;height:120px;background:rgb(0,64,255)">
</div>
<div id=green style="left:20px;top:200px;width:333px;height:77px;background:rgb(0,200,0)">
</div>
"""


@pytest.fixture
async def client(make_client: Any, chromium: Chromium, xvfb: Xvfb) -> TestClient[Any, Any]:
    c: TestClient[Any, Any] = await make_client(display=xvfb.name, cdp_proxy_port=0)
    return c


@pytest.fixture
async def origin(chromium: Chromium) -> tuple[int, int]:
    await open_page(chromium, COLOURS)
    return await chromium.viewport_origin()


async def test_full_screen_png_has_the_page_colours(client: Any, xvfb: Xvfb,
                                                    origin: tuple[int, int]) -> None:
    ox, oy = origin
    resp = await client.post("/computer/screenshot")
    assert resp.status == 200 and resp.content_type == "image/png"
    image = Image.open(io.BytesIO(await resp.read()))
    assert image.format == "PNG" and image.size == (xvfb.width, xvfb.height)
    image = image.convert("RGB")
    assert image.getpixel((ox + 120, oy + 80)) == (255, 0, 0)
    assert image.getpixel((ox + 375, oy + 90)) == (0, 64, 255)
    assert image.getpixel((ox + 100, oy + 230)) == (0, 200, 0)
    assert image.getpixel((ox + 600, oy + 400)) == (255, 255, 255)


async def test_regions_are_exact(client: Any, origin: tuple[int, int]) -> None:
    ox, oy = origin
    # exactly the green box: every pixel green, the size to the pixel
    image = await screenshot(client, region={"x": ox + 20, "y": oy + 200, "width": 333,
                                             "height": 77})
    assert image.size == (333, 77)
    assert image.convert("RGB").getcolors() == [(333 * 77, (0, 200, 0))]
    # one pixel wider on each side: white border
    image = await screenshot(client, region={"x": ox + 19, "y": oy + 199, "width": 335,
                                             "height": 79})
    rgb = image.convert("RGB")
    assert image.size == (335, 79)
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((1, 1)) == (0, 200, 0)
    assert rgb.getpixel((334, 78)) == (255, 255, 255) and rgb.getpixel((333, 77)) == (0, 200, 0)
    image = await screenshot(client, region={"x": 0, "y": 0, "width": 1, "height": 1})
    assert image.size == (1, 1)


async def test_jpeg_webp_and_downscaling(client: Any, xvfb: Xvfb,
                                         origin: tuple[int, int]) -> None:
    ox, oy = origin
    for fmt, mime in (("jpeg", "image/jpeg"), ("webp", "image/webp")):
        resp = await client.post("/computer/screenshot", json={"format": fmt, "quality": 90})
        assert resp.status == 200 and resp.content_type == mime
        image = Image.open(io.BytesIO(await resp.read())).convert("RGB")
        assert image.size == (xvfb.width, xvfb.height)
        r, g, b = image.getpixel((ox + 120, oy + 80))
        assert r > 230 and g < 30 and b < 30
    image = await screenshot(client, scale_to={"width": 640, "height": 640})
    assert image.size == (640, round(640 * xvfb.height / xvfb.width))
    image = await screenshot(client, region={"x": ox + 20, "y": oy + 30, "width": 200,
                                             "height": 100}, scale_to={"width": 50, "height": 50})
    assert image.size == (50, 25)
    assert image.convert("RGB").getpixel((25, 12)) == (255, 0, 0)
    image = await screenshot(client, region={"x": 0, "y": 0, "width": 30, "height": 20},
                             scale_to={"width": 300, "height": 300})
    assert image.size == (30, 20)  # never upscaled


async def test_bad_screenshot_options_are_400(client: Any) -> None:
    for body in ({"format": "gif"}, {"quality": 0}, {"region": {"x": 0, "y": 0}},
                 {"scale_to": {"width": 0, "height": 10}}):
        answer = await post(client, "/computer/screenshot", body, 400)
        assert answer["code"] == "bad_request" and answer["details"]


async def test_unchanged_screen_reuses_the_image_until_something_is_drawn(
        chromium: Chromium, xvfb: Xvfb, origin: tuple[int, int]) -> None:
    ox, oy = origin
    computer = ComputerManager(xvfb.name)
    try:
        # quiet screen: the second answer is the first image again
        await async_wait_until(lambda: _reused(computer), timeout=10, what="a quiet screen")
        first = await computer.screenshot({})
        again = await computer.screenshot({})
        assert again.reused and again.data == first.data
        # drawing invalidates it: the new colour shows up in a fresh capture
        await chromium.evaluate("document.getElementById('red').style.background = '#ff0'")

        async def yellow() -> bool:
            shot = await computer.screenshot({})
            image = Image.open(io.BytesIO(shot.data)).convert("RGB")
            return image.getpixel((ox + 120, oy + 80)) == (255, 255, 0) and not shot.reused

        await async_wait_until(yellow, timeout=10, what="the repaint to be captured")
        # the full screen patched band by band equals a capture from scratch
        await chromium.evaluate("document.getElementById('blue').style.top = '400px'")
        whole = {"x": 0, "y": 0, "width": xvfb.width, "height": xvfb.height}

        async def patched_equals_fresh() -> bool:
            """Judged only when nothing was drawn from the patched shot to the check
            after the fresh one (a blinking caret may draw in between)."""
            await async_wait_until(lambda: _reused(computer), timeout=10,
                                   what="a quiet screen")
            patched = await computer.screenshot({})
            # a capture from scratch (or, on a later try, one with nothing drawn since)
            fresh = await computer.screenshot({"region": whole})
            if not (await computer.screenshot({})).reused:
                return False
            assert (Image.open(io.BytesIO(patched.data)).tobytes()
                    == Image.open(io.BytesIO(fresh.data)).tobytes())
            return True

        await async_wait_until(patched_equals_fresh, timeout=20,
                               what="a comparison with nothing drawn in between")
        # a region asked for the first time is captured, then reused
        region = {"region": {"x": 0, "y": 0, "width": 64, "height": 64}}
        await async_wait_until(lambda: _reused(computer, region), timeout=10,
                               what="region reuse")

        async def rebuilt_after_rest() -> bool:
            """Once screenshots rest, the capture connection and the kept images go; the
            full PNG of a screen still unchanged comes back from the bands, with no capture
            (judged only when nothing was drawn in between)."""
            await async_wait_until(lambda: _reused(computer), timeout=10, what="a quiet screen")
            before = await computer.screenshot({})
            await computer.reads.run(lambda s: s.release_idle())
            assert not await computer.reads.run(lambda s: s.capturing)
            after = await computer.screenshot({})
            if await computer.reads.run(lambda s: s.capturing):
                return False  # something was drawn: captured again
            assert after.data == before.data and not after.reused
            return True

        await async_wait_until(rebuilt_after_rest, timeout=20,
                               what="a rest with nothing drawn in between")
    finally:
        await computer.close()


async def _reused(computer: ComputerManager, body: dict[str, Any] | None = None) -> bool:
    await computer.screenshot(body or {})
    return (await computer.screenshot(body or {})).reused
