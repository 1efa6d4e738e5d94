"""The live view, watched and driven from a second (headless) Chromium that opens a minted
link; what the viewer shows is read from its canvas, what it does from the main browser."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from common import ADMIN, READ, TOKENS, MakeClient
from computer_support import open_page, screen_point, screenshot
from helpers import Chromium, Xvfb, async_wait_until, running_chromium

from agent.appkeys import SESSIONS
from agent.live.routes import SOCKETS
from agent.sessions import cookie_name

RED_PAGE = """<body style="margin:0;background:#fff">
<div id="box" style="position:absolute;left:200px;top:150px;width:120px;height:90px;
 background:#f00"></div></body>"""

BUTTON_PAGE = """<body style="margin:0">
<button id="b" style="position:absolute;left:300px;top:200px;width:160px;height:60px"
 onclick="window.clicks=(window.clicks||0)+1">press</button>
<script>window.clicks=0</script></body>"""

INPUT_PAGE = """<body style="margin:0"><input id="t" style="position:absolute;left:40px;
 top:40px;width:500px;font-size:20px"><script>document.getElementById('t').focus()</script>
</body>"""


@pytest.fixture(scope="module")
def viewer(xvfb: Xvfb) -> Iterator[Chromium]:
    """A second Chromium, headless, with a window large enough for the whole screen."""
    with running_chromium(xvfb.name, 1500, 1000, extra_flags=("--headless=new",)) as browser:
        yield browser


async def live_client(make_client: MakeClient, xvfb: Xvfb,
                      chromium: Chromium) -> TestClient[Any, Any]:
    return await make_client(display=xvfb.name, cdp_address=chromium.address)


async def mint(client: TestClient[Any, Any], headers: dict[str, str] | None = None,
               **body: Any) -> dict[str, Any]:
    resp = await client.post("/live/links", json=body, headers=headers or ADMIN)
    data = await resp.json()
    assert resp.status == 201, data
    return dict(data)


async def open_viewer(viewer: Chromium, client: TestClient[Any, Any],
                      scope: str = "write") -> None:
    """Open a fresh link in the viewer and wait until its canvas shows a frame."""
    link = await mint(client, scope=scope)
    await viewer.cdp("Page.navigate", {"url": link["url"]})
    await wait_for_frames(viewer)


async def wait_for_frames(viewer: Chromium) -> None:
    async def shown() -> bool:
        try:
            return bool(await viewer.evaluate(
                "location.pathname === '/live' && !!window.live && live.frames > 0 "
                "&& live.canInput !== null"))
        except RuntimeError:  # the link's page moving on to /live
            return False

    await async_wait_until(shown, timeout=20, what="the viewer to show a frame")


async def canvas_pixel(viewer: Chromium, x: int, y: int) -> list[int]:
    value = await viewer.evaluate(
        f"Array.from(document.getElementById('screen').getContext('2d')"
        f".getImageData({x}, {y}, 1, 1).data)")
    return list(value)


def is_red(pixel: list[int]) -> bool:
    return pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


async def viewer_point(viewer: Chromium, x: int, y: int) -> tuple[float, float]:
    """Where screen point (x, y) is in the viewer's page (the canvas may be scaled)."""
    left, top, scale_x, scale_y = await viewer.evaluate(
        "(() => { const c = document.getElementById('screen');"
        " const r = c.getBoundingClientRect();"
        " return [r.left, r.top, r.width / c.width, r.height / c.height]; })()")
    return left + (x + 0.5) * scale_x, top + (y + 0.5) * scale_y


async def viewer_click(viewer: Chromium, x: int, y: int) -> None:
    """A real click on the viewer's canvas at screen coordinates (x, y)."""
    px, py = await viewer_point(viewer, x, y)
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        await viewer.cdp("Input.dispatchMouseEvent", {
            "type": kind, "x": px, "y": py, "button": "left",
            "buttons": 1 if kind == "mousePressed" else 0, "clickCount": 1})


async def test_viewer_shows_the_screen(make_client: MakeClient, xvfb: Xvfb,
                                       chromium: Chromium, viewer: Chromium) -> None:
    client = await live_client(make_client, xvfb, chromium)
    await open_page(chromium, "<body style='margin:0;background:#fff'></body>")
    await open_viewer(viewer, client)
    await open_page(chromium, RED_PAGE)
    x, y = await screen_point(chromium, "#box")
    await async_wait_until(lambda: _red_at(viewer, x, y), timeout=10,
                           what="the red box to show in the viewer")
    outside = await canvas_pixel(viewer, x + 100, y)
    assert not is_red(outside), outside
    size = await viewer.evaluate("[document.getElementById('screen').width,"
                                 " document.getElementById('screen').height]")
    assert size == [xvfb.width, xvfb.height]
    # The pointer is drawn where X has it.
    resp = await client.post("/computer/move_mouse", json={"x": 500, "y": 400, "smooth": False})
    assert resp.status == 200
    await async_wait_until(
        lambda: viewer.evaluate("(() => { const c = document.getElementById('cursor');"
                                " const s = document.getElementById('screen');"
                                " return !c.hidden && c.offsetLeft === 500 * s.clientWidth"
                                " / s.width && c.offsetTop === 400 * s.clientHeight"
                                " / s.height; })()"),
        timeout=10, what="the viewer to draw the pointer")


async def _red_at(viewer: Chromium, x: int, y: int) -> bool:
    return is_red(await canvas_pixel(viewer, x, y))


async def test_click_in_viewer_clicks_the_button(make_client: MakeClient, xvfb: Xvfb,
                                                 chromium: Chromium, viewer: Chromium) -> None:
    client = await live_client(make_client, xvfb, chromium)
    await open_page(chromium, BUTTON_PAGE)
    await open_viewer(viewer, client)
    assert await viewer.evaluate("live.canInput") is True
    x, y = await screen_point(chromium, "#b")
    await viewer_click(viewer, x, y)
    await async_wait_until(lambda: chromium.evaluate("window.clicks === 1"), timeout=10,
                           what="the button to be clicked through the viewer")
    # In a narrow window the screen is shown scaled down; clicks still land.
    await viewer.evaluate("document.querySelector('main').style.width = '640px'")
    assert await viewer.evaluate("document.getElementById('screen').clientWidth") == 640
    await viewer_click(viewer, x, y)
    await async_wait_until(lambda: chromium.evaluate("window.clicks === 2"), timeout=10,
                           what="a click through the scaled-down viewer")


# Not where BUTTON_PAGE's button is: Chromium takes a click within a few pixels and the
# double-click interval of the previous one as the next of its series (1, 2, 3, 1, ...),
# and the test before this one ends with two clicks on that button.
TALL_PAGE = """<body style="margin:0;height:5000px">
<div id="d" style="position:absolute;left:640px;top:360px;width:160px;height:60px;
 background:#0a0" ondblclick="window.doubles=(window.doubles||0)+1"></div>
<script>window.doubles=0</script></body>"""


async def test_double_click_and_wheel_through_viewer(make_client: MakeClient, xvfb: Xvfb,
                                                     chromium: Chromium,
                                                     viewer: Chromium) -> None:
    client = await live_client(make_client, xvfb, chromium)
    await open_page(chromium, TALL_PAGE)
    await open_viewer(viewer, client)
    px, py = await viewer_point(viewer, *await screen_point(chromium, "#d"))
    for count in (1, 2):
        for kind in ("mousePressed", "mouseReleased"):
            await viewer.cdp("Input.dispatchMouseEvent", {
                "type": kind, "x": px, "y": py, "button": "left", "clickCount": count})
    await async_wait_until(lambda: chromium.evaluate("window.doubles === 1"), timeout=10,
                           what="a double click through the viewer")
    await viewer.cdp("Input.dispatchMouseEvent", {
        "type": "mouseWheel", "x": px, "y": py, "deltaX": 0, "deltaY": 300})
    await async_wait_until(lambda: chromium.evaluate("window.scrollY > 0"), timeout=10,
                           what="the wheel to scroll the page")


async def test_unicode_text_typed_in_viewer_arrives(make_client: MakeClient, xvfb: Xvfb,
                                                    chromium: Chromium,
                                                    viewer: Chromium) -> None:
    client = await live_client(make_client, xvfb, chromium)
    await open_page(chromium, INPUT_PAGE)
    await open_viewer(viewer, client)
    await viewer.evaluate("document.getElementById('screen').focus()")
    text = "Grüße, 日本 é ß!"
    for char in text + "x":
        await viewer.cdp("Input.dispatchKeyEvent",
                         {"type": "keyDown", "key": char, "text": char})
        await viewer.cdp("Input.dispatchKeyEvent", {"type": "keyUp", "key": char})
    # A key without text (Backspace) goes as a key press.
    await viewer.cdp("Input.dispatchKeyEvent", {
        "type": "rawKeyDown", "key": "Backspace", "code": "Backspace",
        "windowsVirtualKeyCode": 8})
    await viewer.cdp("Input.dispatchKeyEvent", {
        "type": "keyUp", "key": "Backspace", "code": "Backspace", "windowsVirtualKeyCode": 8})
    await async_wait_until(
        lambda: chromium.evaluate(f"document.getElementById('t').value === {json.dumps(text)}"),
        timeout=15, what="the typed text to arrive")


async def test_several_viewers_and_a_still_screen(make_client: MakeClient, xvfb: Xvfb,
                                                  chromium: Chromium,
                                                  viewer: Chromium) -> None:
    """Two viewers at once both see a change; while the screen is still, no frame comes."""
    client = await live_client(make_client, xvfb, chromium)
    await open_page(chromium, "<body style='margin:0;background:#fff'></body>")
    await open_viewer(viewer, client)
    url = str(client.make_url("/live/stream"))
    async with aiohttp.ClientSession() as session, session.ws_connect(url,
                                                                      headers=ADMIN) as ws:
        assert (await ws.receive_json())["type"] == "hello"
        # Still (a blank page, nothing moving): the stream goes quiet, pings aside. A
        # stream that kept sending (refreshes, keepalive frames) never would.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                seq = await _next_frame(ws, timeout=1.0)
            except TimeoutError:
                break
            await ws.send_json({"type": "ack", "seq": seq})
            assert asyncio.get_running_loop().time() < deadline, "the stream never went quiet"
        frames_before = await viewer.evaluate("live.frames")
        await open_page(chromium, RED_PAGE)
        await _next_frame(ws)
        x, y = await screen_point(chromium, "#box")
        await async_wait_until(lambda: _red_at(viewer, x, y), timeout=10,
                               what="the red box in the first viewer")
        assert await viewer.evaluate("live.frames") > frames_before


async def _next_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> int:
    """The sequence number of the next binary frame (text messages are skipped)."""
    while True:
        message = await ws.receive(timeout=timeout)
        if message.type == aiohttp.WSMsgType.BINARY:
            return int.from_bytes(message.data[1:5], "big")
        assert message.type == aiohttp.WSMsgType.TEXT, message


async def test_screenshots_stay_fresh_while_viewers_watch(make_client: MakeClient,
                                                          xvfb: Xvfb,
                                                          chromium: Chromium) -> None:
    """The live view empties the damage region the screenshot cache also relies on."""
    client = await live_client(make_client, xvfb, chromium)
    await open_page(chromium, "<body style='margin:0;background:#fff'></body>")
    url = str(client.make_url("/live/stream"))
    async with aiohttp.ClientSession() as session, session.ws_connect(url,
                                                                      headers=ADMIN) as ws:
        assert (await ws.receive_json())["type"] == "hello"
        await ws.send_json({"type": "ack", "seq": await _next_frame(ws)})
        before = await screenshot(client)
        await open_page(chromium, RED_PAGE)
        await ws.send_json({"type": "ack", "seq": await _next_frame(ws)})
        x, y = await screen_point(chromium, "#box")
        assert not is_red(list(before.getpixel((x, y))))

        async def red_in_screenshot() -> bool:
            return is_red(list((await screenshot(client)).getpixel((x, y))))

        # A screenshot answered from a stale cache would never turn red.
        await async_wait_until(red_in_screenshot, timeout=10, what="a fresh screenshot")


async def test_paste_in_viewer_pastes_in_the_page(make_client: MakeClient, xvfb: Xvfb,
                                                  chromium: Chromium,
                                                  viewer: Chromium) -> None:
    client = await live_client(make_client, xvfb, chromium)
    await open_page(chromium, INPUT_PAGE)
    await open_viewer(viewer, client)
    text = "päste 日本 end"
    await viewer.evaluate(
        "(() => { document.getElementById('screen').focus();"
        " const data = new DataTransfer();"
        f" data.setData('text/plain', {json.dumps(text)});"
        " document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data,"
        " bubbles: true, cancelable: true})); return true; })()")
    await async_wait_until(
        lambda: chromium.evaluate(f"document.getElementById('t').value === {json.dumps(text)}"),
        timeout=15, what="the pasted text in the page")
    resp = await client.post("/computer/clipboard/read")
    assert (await resp.json())["text"] == text


async def test_read_scope_viewer_cannot_click(make_client: MakeClient, xvfb: Xvfb,
                                              chromium: Chromium, viewer: Chromium) -> None:
    client = await live_client(make_client, xvfb, chromium)
    await open_page(chromium, BUTTON_PAGE)
    await open_viewer(viewer, client, scope="read")
    assert await viewer.evaluate("live.canInput") is False
    assert "view only" in await viewer.evaluate("document.getElementById('mode').textContent")
    x, y = await screen_point(chromium, "#b")
    await viewer_click(viewer, x, y)
    # The daemon refuses input on a read session whatever the page sends.
    link = await mint(client, scope="read")
    async with aiohttp.ClientSession() as browser:
        async with browser.get(link["url"]) as resp:
            cookie = resp.cookies[cookie_name(client.port)].value
        base = str(client.make_url(""))
        async with browser.ws_connect(
                base.replace("http", "ws") + "/live/stream",
                headers={"Cookie": f"{cookie_name(client.port)}={cookie}", "Origin": base}) as ws:
            hello = await ws.receive_json()
            assert hello == {"type": "hello", "input": False}
            for action in ("down", "up"):
                await ws.send_json({"type": "button", "action": action, "button": "left",
                                    "x": x, "y": y})
            while True:
                message = await ws.receive()
                if message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    if data["type"] == "error":
                        assert data["code"] == "forbidden"
                        break
    # Input queued after anything either viewer could have sent has run by now.
    resp = await client.post("/computer/move_mouse", json={"x": 5, "y": 5})
    assert resp.status == 200
    assert await chromium.evaluate("window.clicks") == 0


async def test_viewer_reconnects_by_itself(make_client: MakeClient, xvfb: Xvfb,
                                           chromium: Chromium, viewer: Chromium) -> None:
    client = await live_client(make_client, xvfb, chromium)
    await open_page(chromium, "<body style='margin:0;background:#fff'></body>")
    await open_viewer(viewer, client)
    assert await viewer.evaluate("live.connects") == 1
    for ws in list(client.server.app[SOCKETS]):
        await ws.close()
    await async_wait_until(lambda: viewer.evaluate("live.connects === 2 && live.connected"),
                           timeout=10, what="the viewer to reconnect")
    await open_page(chromium, RED_PAGE)
    x, y = await screen_point(chromium, "#box")
    await async_wait_until(lambda: _red_at(viewer, x, y), timeout=10,
                           what="frames after the reconnection")


ALLOWED_ORIGIN = "http://127.0.0.1:1"


async def test_links_are_single_use_and_bounded_by_scope(make_client: MakeClient,
                                                         xvfb: Xvfb,
                                                         chromium: Chromium) -> None:
    client = await make_client(display=xvfb.name, cdp_address=chromium.address,
                               allowed_origins=(ALLOWED_ORIGIN,))
    link = await mint(client, scope="read")
    assert link["target"] == "/live"
    async with aiohttp.ClientSession() as browser:
        async with browser.get(link["url"]) as resp:
            assert resp.status == 200
            assert list(resp.cookies) == [f"agent_session_{client.port}"]
            cookie = resp.cookies[cookie_name(client.port)]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
            assert cookie["path"] == "/"
            assert 'url=/live"' in await resp.text()
        async with browser.get(link["url"]) as resp:
            assert resp.status == 404
            assert (await resp.json())["code"] == "link_invalid"
        session = {"Cookie": f"{cookie.key}={cookie.value}"}
        base = str(client.make_url(""))
        async with browser.get(base + "/live", headers=session) as resp:
            assert resp.status == 200
        # The session is read: enough to watch, not to act.
        async with browser.post(base + "/computer/get_mouse_position", headers=session) as resp:
            assert resp.status == 200
        async with browser.post(base + "/computer/move_mouse", headers=session,
                                json={"x": 1, "y": 1}) as resp:
            assert resp.status == 403
        # Another origin cannot use it, even with the cookie; not even one allowed to call
        # the API (AGENT_ALLOWED_ORIGINS: with a token of its own, not with the cookie).
        async with browser.get(base + "/live", headers={**session,
                                                        "Origin": ALLOWED_ORIGIN}) as resp:
            assert resp.status == 401
        async with browser.get(base + "/live", headers={**session,
                                                        "Origin": "http://127.0.0.1:2"}) as resp:
            assert resp.status == 403
        async with browser.get(base + "/live", headers={**session,
                                                        "Sec-Fetch-Site": "same-site"}) as resp:
            assert resp.status == 403
        async with browser.get(base + "/live") as resp:
            assert resp.status == 401
        # A session cannot mint links (and so outlive its expiry).
        async with browser.post(base + "/live/links", headers=session, json={}) as resp:
            assert resp.status == 403
        # The cookie of a daemon on another port of the same host is not this one's.
        async with browser.get(base + "/live", headers={
                "Cookie": f"agent_session_1={cookie.value}"}) as resp:
            assert resp.status == 401
    # A read caller cannot mint a write link; a bad target is refused.
    resp = await client.post("/live/links", json={"scope": "write"}, headers=READ)
    assert resp.status == 403
    resp = await client.post("/live/links", json={"path": "//evil.example/"})
    assert resp.status == 400
    resp = await client.post("/live/links", json={"expires_in_s": 100_000})
    assert resp.status == 400


async def test_stream_ends_with_its_session(make_client: MakeClient, xvfb: Xvfb,
                                            chromium: Chromium) -> None:
    client = await live_client(make_client, xvfb, chromium)
    # A session shorter than the API allows, straight from the store, to see it end.
    link = client.server.app[SESSIONS].mint("read", "/live", 60, session_ttl_s=1)
    base = str(client.make_url(""))
    async with aiohttp.ClientSession() as browser:
        async with browser.get(f"{base}/live/open?code={link.code}") as resp:
            cookie = resp.cookies[cookie_name(client.port)]
        headers = {"Cookie": f"{cookie.key}={cookie.value}", "Origin": base}
        async with browser.ws_connect(base.replace("http", "ws") + "/live/stream",
                                      headers=headers) as ws:
            while (await ws.receive(timeout=10)).type in (aiohttp.WSMsgType.TEXT,
                                                          aiohttp.WSMsgType.BINARY):
                pass
            assert ws.close_code == 4401
        async with browser.get(base + "/live", headers=headers) as resp:
            assert resp.status == 401


async def test_token_never_reaches_page_or_log(make_client: MakeClient, xvfb: Xvfb,
                                               chromium: Chromium, viewer: Chromium,
                                               caplog: pytest.LogCaptureFixture) -> None:
    client = await live_client(make_client, xvfb, chromium)
    with caplog.at_level(logging.DEBUG):
        await open_page(chromium, RED_PAGE)
        link = await mint(client)
        await viewer.cdp("Page.navigate", {"url": link["url"]})
        await wait_for_frames(viewer)
        page = await viewer.evaluate(
            "Promise.all(['/live', '/live/assets/live.js', '/live/assets/live.css'].map("
            "u => fetch(u).then(r => r.text()))).then(a => a.join('\\n') + "
            "document.documentElement.outerHTML + document.cookie + location.href)")
    assert "frames" in page  # the script really was read
    assert await viewer.evaluate("document.cookie") == ""  # HttpOnly
    for token in TOKENS:
        assert token not in page
    # The daemon's own log (aiohttp's access log is off in the daemon, see __main__).
    log_text = "\n".join(record.getMessage() for record in caplog.records
                         if record.name.startswith("agent"))
    assert "GET /live/open" in log_text and "GET /live/assets/live.js" in log_text
    for token in TOKENS:
        assert token not in log_text
    assert link["url"].split("code=")[1] not in log_text
