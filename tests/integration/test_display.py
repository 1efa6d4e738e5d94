"""GET/PATCH /display on an X server of its own (started at 1920x1080), with a Chromium of
its own: the screen, screenshots, input bounds, Chromium's window and live viewers follow."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from common import ADMIN, MakeClient
from computer_support import open_page, screenshot
from helpers import Chromium, Xvfb, async_wait_until, running_chromium, running_xvfb

FULL = (1920, 1080)

CORNER_PAGE = """<body style="margin:0;height:100vh">
<script>window.downs=[];addEventListener('mousedown',
 e => window.downs.push([e.screenX, e.screenY, e.clientX, e.clientY]))</script></body>"""


@pytest.fixture(scope="module")
def big_xvfb() -> Iterator[Xvfb]:
    with running_xvfb(*FULL) as server:
        yield server


@pytest.fixture(scope="module")
def big_chromium(big_xvfb: Xvfb) -> Iterator[Chromium]:
    with running_chromium(big_xvfb.name, *FULL) as browser:
        yield browser


async def patch(client: TestClient[Any, Any], width: int, height: int,
                expect: int = 200) -> dict[str, Any]:
    resp = await client.patch("/display", json={"width": width, "height": height})
    body = await resp.json()
    assert resp.status == expect, body
    return dict(body)


async def window_size(chromium: Chromium) -> list[int]:
    return list(await chromium.evaluate(
        "[window.outerWidth, window.outerHeight, window.screenX, window.screenY]"))


async def test_resize_and_back(make_client: MakeClient, big_xvfb: Xvfb,
                               big_chromium: Chromium) -> None:
    client = await make_client(display=big_xvfb.name, cdp_address=big_chromium.address)
    resp = await client.get("/display")
    assert await resp.json() == {"width": 1920, "height": 1080, "max_width": 1920,
                                 "max_height": 1080}
    try:
        for width, height in ((1280, 720), FULL):
            result = await patch(client, width, height)
            assert result["width"] == width and result["height"] == height
            assert result["windows_fitted"] >= 1
            shot = await screenshot(client)
            assert shot.size == (width, height)
            await async_wait_until(
                lambda w=width, h=height: _fills(big_chromium, w, h), timeout=10,
                what=f"Chromium's window to fill {width}x{height}")
            await open_page(big_chromium, CORNER_PAGE)
            resp = await client.post("/computer/click_mouse",
                                     json={"x": width - 1, "y": height - 1})
            assert resp.status == 200
            await async_wait_until(lambda: big_chromium.evaluate("window.downs.length === 1"),
                                   timeout=10, what="the corner click")
            downs = await big_chromium.evaluate("window.downs")
            assert downs[0][:2] == [width - 1, height - 1]
            # Past the new edge is out of bounds for input.
            resp = await client.post("/computer/click_mouse", json={"x": width, "y": 0})
            assert resp.status == 400
    finally:
        await client.patch("/display", json={"width": FULL[0], "height": FULL[1]})


async def _fills(chromium: Chromium, width: int, height: int) -> bool:
    return await window_size(chromium) == [width, height, 0, 0]


async def test_sizes_out_of_bounds_are_refused(make_client: MakeClient, big_xvfb: Xvfb,
                                               big_chromium: Chromium) -> None:
    client = await make_client(display=big_xvfb.name, cdp_address=big_chromium.address)
    body = await patch(client, 2560, 1080, expect=400)
    assert "started at 1920x1080" in body["message"]
    assert body["details"][0]["field"] == "width"
    await patch(client, 100, 100, expect=400)
    await patch(client, 100_000, 720, expect=400)
    resp = await client.get("/display")
    assert (await resp.json())["width"] == 1920


async def test_resize_refused_while_a_replay_records(make_client: MakeClient, big_xvfb: Xvfb,
                                                     big_chromium: Chromium) -> None:
    replays = Path(tempfile.mkdtemp(prefix="agent-replays-"))
    try:
        client = await make_client(display=big_xvfb.name, cdp_address=big_chromium.address,
                                   replays_dir=str(replays / "replays"))
        async with client.post("/replays", json={"framerate": 5}) as resp:
            assert resp.status == 201, await resp.text()
            replay_id = (await resp.json())["replay_id"]
        body = await patch(client, 1280, 720, expect=409)
        assert "a replay is recording" in body["message"] and replay_id in body["message"]
        shot = await screenshot(client)
        assert shot.size == FULL
        async with client.post(f"/replays/{replay_id}/stop") as resp:
            assert resp.status == 200, await resp.text()
        await patch(client, 1280, 720)
        await patch(client, *FULL)
    finally:
        shutil.rmtree(replays, ignore_errors=True)


async def test_live_viewers_follow_a_resize(make_client: MakeClient, big_xvfb: Xvfb,
                                            big_chromium: Chromium) -> None:
    client = await make_client(display=big_xvfb.name, cdp_address=big_chromium.address)
    url = str(client.make_url("/live/stream"))
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                url, headers=ADMIN) as ws:
            assert (await ws.receive_json())["type"] == "hello"
            assert await _next_size(ws) == [1920, 1080]
            await patch(client, 1280, 720)
            assert await _next_size(ws) == [1280, 720]
    finally:
        await client.patch("/display", json={"width": FULL[0], "height": FULL[1]})


async def _next_size(ws: aiohttp.ClientWebSocketResponse) -> list[int]:
    """The next size message; frames (acknowledged) and pointer updates are skipped."""
    while True:
        message = await ws.receive(timeout=10)
        if message.type == aiohttp.WSMsgType.BINARY:
            seq = int.from_bytes(message.data[1:5], "big")
            await ws.send_json({"type": "ack", "seq": seq})
            continue
        data = json.loads(message.data)
        if data["type"] == "size":
            return [data["width"], data["height"]]
