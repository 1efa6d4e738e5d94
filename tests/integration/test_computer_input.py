"""Mouse and keyboard through the API, checked from the page's side over CDP."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from computer_support import buttons_down, click, keys_down, open_page, post, screen_point
from helpers import Chromium, Xvfb, async_wait_until, cdp_call

from agent.computer.routes import COMPUTER

RECORDER = """
<style>body{margin:0;font:16px sans-serif} .box{position:absolute;width:200px;height:150px}</style>
<div id=a class=box style="left:40px;top:40px;background:#c00"></div>
<div id=b class=box style="left:300px;top:40px;background:#0c0"></div>
<input id=field style="position:absolute;left:40px;top:260px;width:500px;font-size:18px">
<textarea id=area style="position:absolute;left:40px;top:320px;width:500px;height:120px"></textarea>
<script>
window.events = [];
for (const type of ['click','dblclick','contextmenu','mousedown','mouseup','auxclick']) {
  document.addEventListener(type, e => {
    window.events.push({type, id: e.target.id, button: e.button, shift: e.shiftKey,
                        ctrl: e.ctrlKey, detail: e.detail, x: e.clientX, y: e.clientY});
    if (type === 'contextmenu' || e.button === 3 || e.button === 4) e.preventDefault();
  }, true);
}
window.moves = [];
document.addEventListener('mousemove', e => window.moves.push([e.clientX, e.clientY,
                                                               performance.now()]));
window.keys = [];
document.addEventListener('keydown', e => {
  window.keys.push({key: e.key, shift: e.shiftKey, ctrl: e.ctrlKey});
  if (e.key === 'Tab' && e.target.id === 'area') {
    e.preventDefault();
    document.execCommand('insertText', false, '\\t');
  }
});
</script>
"""


@pytest.fixture
async def client(make_client: Any, chromium: Chromium, xvfb: Xvfb) -> TestClient[Any, Any]:
    c: TestClient[Any, Any] = await make_client(display=xvfb.name, cdp_proxy_port=0)
    return c


@pytest.fixture
async def page(chromium: Chromium) -> Chromium:
    return await open_page(chromium, RECORDER)


async def events(page: Chromium, *types: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await page.evaluate("window.events")
    return [e for e in found if not types or e["type"] in types]


async def focus(client: TestClient[Any, Any], page: Chromium, selector: str) -> None:
    await click(client, await screen_point(page, selector))
    await async_wait_until(
        lambda: page.evaluate(f"document.activeElement === document.querySelector('{selector}')"
                              " && document.hasFocus()"),
        timeout=5, what=f"{selector} to have focus")
    await page.evaluate("window.events = []")


async def test_click_lands_on_the_element_under_the_point(client: Any, page: Chromium) -> None:
    point = await screen_point(page, "#b", 0.25, 0.75)
    await click(client, point)
    clicks = await async_wait_until(lambda: events(page, "click"), what="a click event")
    assert [c["id"] for c in clicks] == ["b"]
    ox, oy = await page.viewport_origin()
    assert (clicks[0]["x"] + ox, clicks[0]["y"] + oy) == point
    assert clicks[0]["button"] == 0
    assert keys_down(page.display) == [] and buttons_down(page.display) == 0


async def test_double_click_is_a_dblclick(client: Any, page: Chromium) -> None:
    await click(client, await screen_point(page, "#a"), num_clicks=2)
    dbl = await async_wait_until(lambda: events(page, "dblclick"), what="a dblclick")
    assert [d["id"] for d in dbl] == ["a"]
    assert [c["detail"] for c in await events(page, "click")] == [1, 2]


async def test_right_and_middle_clicks(client: Any, page: Chromium) -> None:
    await click(client, await screen_point(page, "#a"), button="right")
    menu = await async_wait_until(lambda: events(page, "contextmenu"), what="contextmenu")
    assert menu[0]["id"] == "a" and menu[0]["button"] == 2
    await click(client, await screen_point(page, "#b"), button="middle")
    middle = await async_wait_until(
        lambda: _matching(events(page, "auxclick"), lambda e: e["button"] == 1),
        what="a middle auxclick")
    assert [e["id"] for e in middle] == ["b"]


async def _matching(pending: Any, accept: Any) -> Any:
    return [e for e in await pending if accept(e)]


async def test_back_and_forward_buttons(client: Any, page: Chromium) -> None:
    await click(client, await screen_point(page, "#a"), button="back")
    await click(client, await screen_point(page, "#a"), button="forward")
    downs = await async_wait_until(
        lambda: _with_len(events(page, "mousedown"), 2), what="two mousedowns")
    assert [d["button"] for d in downs] == [3, 4]


async def _with_len(pending: Any, n: int) -> Any:
    value = await pending
    return value if len(value) >= n else None


async def test_down_and_up_are_separate(client: Any, page: Chromium) -> None:
    point = await screen_point(page, "#a")
    await click(client, point, click_type="down")
    await async_wait_until(lambda: events(page, "mousedown"), what="mousedown")
    assert buttons_down(page.display) != 0  # held on purpose
    assert await events(page, "mouseup") == []
    await click(client, point, click_type="up")
    await async_wait_until(lambda: events(page, "mouseup"), what="mouseup")
    assert buttons_down(page.display) == 0


async def test_shift_is_held_during_the_click(client: Any, page: Chromium) -> None:
    await click(client, await screen_point(page, "#b"), hold_keys=["shift"])
    clicks = await async_wait_until(lambda: events(page, "click"), what="a click")
    assert clicks[0]["shift"] is True and clicks[0]["ctrl"] is False
    assert keys_down(page.display) == []


async def test_typing_unicode_arrives_exactly(client: Any, page: Chromium) -> None:
    await focus(client, page, "#field")
    text = "Grüße, Ægir! ñandú €5 日本語 Привет 😀👍 ok"
    await post(client, "/computer/type", {"text": text})
    await async_wait_until(
        lambda: page.evaluate(f"document.querySelector('#field').value === {json.dumps(text)}"),
        timeout=10, what="the typed text")


async def test_newlines_and_tabs_become_return_and_tab(client: Any, page: Chromium) -> None:
    await focus(client, page, "#area")
    await post(client, "/computer/type", {"text": "one\ntwo\tthree\r\nfour", "delay": 5})
    want = "one\ntwo\tthree\nfour"
    await async_wait_until(
        lambda: page.evaluate(f"document.querySelector('#area').value === {json.dumps(want)}"),
        timeout=10, what="newlines and tabs")


async def test_thousand_mixed_characters_with_no_delay(client: Any, page: Chromium) -> None:
    rng = random.Random(7)
    pools = ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?-_()",
             "äöüÄÖÜßéèêñçåøæœ€£¥©", "日本語中文字漢字東京大阪", "ПриветмирΑβγδ",
             "😀👍🎉🚀", "".join(chr(0x4E00 + i) for i in range(120))]
    text = "".join(rng.choice(rng.choice(pools)) for _ in range(1000))
    await focus(client, page, "#area")
    await post(client, "/computer/type", {"text": text, "delay": 0})
    value = await async_wait_until(
        lambda: _value_when(page, "#area", len(text)), timeout=20, what="1000 characters")
    assert value == text


async def _value_when(page: Chromium, selector: str, length: int) -> str | None:
    value: str = await page.evaluate(f"document.querySelector('{selector}').value")
    return value if len(value) >= length else None


async def test_ctrl_a_then_typing_replaces(client: Any, page: Chromium) -> None:
    await focus(client, page, "#field")
    await post(client, "/computer/type", {"text": "old text"})
    await async_wait_until(lambda: page.evaluate("document.querySelector('#field').value"
                                                 " === 'old text'"), what="old text")
    await post(client, "/computer/press_key", {"keys": ["ctrl+a"]})
    await post(client, "/computer/type", {"text": "neu"})
    await async_wait_until(lambda: page.evaluate("document.querySelector('#field').value"
                                                 " === 'neu'"), what="the replacement")
    assert keys_down(page.display) == []


async def test_press_key_combos_and_hold(client: Any, page: Chromium) -> None:
    await focus(client, page, "#field")
    await post(client, "/computer/press_key", {"keys": ["Ctrl+Shift+Left", "F2"],
                                               "hold_keys": []})
    await post(client, "/computer/press_key", {"keys": ["a"], "hold_keys": ["shift"]})
    await post(client, "/computer/press_key", {"keys": ["Return"], "duration": 150})
    keys = await async_wait_until(lambda: _with_len(page.evaluate("window.keys"), 5),
                                  what="key events")
    names = [k["key"] for k in keys]
    assert "ArrowLeft" in names and "F2" in names and "A" in names and "Enter" in names
    left = next(k for k in keys if k["key"] == "ArrowLeft")
    assert left["shift"] and left["ctrl"]
    assert next(k for k in keys if k["key"] == "A")["shift"]
    assert keys_down(page.display) == []


async def _visibility(ws_url: str) -> str:
    result = await cdp_call(ws_url, "Runtime.evaluate",
                            {"expression": "document.visibilityState", "returnByValue": True})
    return str(result["result"]["value"])


async def test_ctrl_shift_tab_and_ctrl_tab_switch_tabs(client: Any, page: Chromium) -> None:
    """Chromium's own tab accelerators, seen as which tab is visible."""
    version = await asyncio.to_thread(page.http_json, "/json/version")
    pages = [t for t in await asyncio.to_thread(page.http_json, "/json/list")
             if t["type"] == "page"]
    assert len(pages) == 1
    first = pages[0]["webSocketDebuggerUrl"]
    created = await cdp_call(version["webSocketDebuggerUrl"], "Target.createTarget",
                             {"url": "data:text/html,<title>second</title>"})
    second_id = created["targetId"]
    try:
        second = next(t["webSocketDebuggerUrl"]
                      for t in await asyncio.to_thread(page.http_json, "/json/list")
                      if t["id"] == second_id)

        async def shows(visible: str, hidden: str) -> bool:
            return (await _visibility(visible) == "visible"
                    and await _visibility(hidden) == "hidden")

        await async_wait_until(lambda: shows(second, first), what="the new tab in front")
        await post(client, "/computer/press_key", {"keys": ["Ctrl+Shift+Tab"]})
        await async_wait_until(lambda: shows(first, second), what="the previous tab")
        await post(client, "/computer/press_key", {"keys": ["ctrl+Tab"]})
        await async_wait_until(lambda: shows(second, first), what="the next tab")
        assert keys_down(page.display) == []
    finally:
        await cdp_call(version["webSocketDebuggerUrl"], "Target.closeTarget",
                       {"targetId": second_id})
        await async_wait_until(lambda: page.evaluate("document.visibilityState === 'visible'"),
                               what="the first tab in front")


async def test_unknown_key_is_a_400_naming_it_and_nothing_stays_down(
        client: Any, page: Chromium) -> None:
    body = await post(client, "/computer/press_key",
                      {"keys": ["shift+a", "ctrl+frobnicate"], "hold_keys": ["alt"]}, 400)
    assert "frobnicate" in body["message"]
    assert body["details"][0]["field"] == "keys.1"
    body = await post(client, "/computer/click_mouse",
                      {"x": 10, "y": 10, "hold_keys": ["hyperdrive"]}, 400)
    assert "hyperdrive" in body["message"]
    assert keys_down(page.display) == []
    assert await page.evaluate("window.keys.length") == 0


async def test_scroll_moves_the_page(client: Any, chromium: Chromium) -> None:
    await open_page(chromium, "<body style='margin:0;width:4000px;height:6000px;"
                        "background:linear-gradient(#fff,#00f)'>tall</body>")
    ox, oy = await chromium.viewport_origin()
    await post(client, "/computer/scroll", {"x": ox + 300, "y": oy + 300, "delta_y": 5})
    down = await async_wait_until(lambda: chromium.evaluate("window.scrollY"), what="scrollY")
    assert down > 0
    await post(client, "/computer/scroll", {"x": ox + 300, "y": oy + 300, "delta_x": 3})
    assert await async_wait_until(lambda: chromium.evaluate("window.scrollX"), what="scrollX") > 0
    await post(client, "/computer/scroll", {"x": ox + 300, "y": oy + 300, "delta_y": -50})
    await async_wait_until(lambda: chromium.evaluate("window.scrollY === 0"), what="scroll up")


DRAGGABLE = """
<style>body{margin:0}</style>
<div id=handle style="position:absolute;left:100px;top:100px;width:80px;height:80px;
     background:#08f"></div>
<script>
const h = document.getElementById('handle');
let grab = null;
h.addEventListener('mousedown', e => {
  grab = [e.clientX - h.offsetLeft, e.clientY - h.offsetTop];
});
document.addEventListener('mousemove', e => {
  if (!grab) return;
  h.style.left = (e.clientX - grab[0]) + 'px';
  h.style.top = (e.clientY - grab[1]) + 'px';
});
document.addEventListener('mouseup', () => { grab = null; window.dropped = true; });
</script>
"""


@pytest.mark.parametrize("smooth", [False, True])
async def test_drag_moves_a_draggable_element(client: Any, chromium: Chromium,
                                              smooth: bool) -> None:
    await open_page(chromium, DRAGGABLE)
    x, y = await screen_point(chromium, "#handle")
    path = [[x, y], [x + 150, y + 40], [x + 300, y + 120]]
    body: dict[str, Any] = {"path": path, "smooth": smooth, "delay": 30}
    body.update({"duration_ms": 300} if smooth else {"steps_per_segment": 5,
                                                     "step_delay_ms": 10})
    await post(client, "/computer/drag_mouse", body)
    await async_wait_until(lambda: chromium.evaluate("window.dropped === true"), what="mouseup")
    left, top = await chromium.evaluate("[handle.offsetLeft, handle.offsetTop]")
    assert (left, top) == (400, 220)
    assert buttons_down(chromium.display) == 0


HTML5_DND = """
<style>body{margin:0}</style>
<div id=src draggable=true style="position:absolute;left:60px;top:60px;width:100px;height:60px;
     background:#f80">drag me</div>
<div id=dst style="position:absolute;left:400px;top:200px;width:200px;height:150px;
     background:#ccc"></div>
<script>
dst.addEventListener('dragover', e => e.preventDefault());
dst.addEventListener('drop', e => { e.preventDefault(); window.dropped = 'dst'; });
</script>
"""


async def test_drag_and_drop_between_elements(client: Any, chromium: Chromium) -> None:
    await open_page(chromium, HTML5_DND)
    start = await screen_point(chromium, "#src")
    end = await screen_point(chromium, "#dst")
    await post(client, "/computer/drag_mouse", {"path": [start, end], "duration_ms": 400})
    await async_wait_until(lambda: chromium.evaluate("window.dropped === 'dst'"),
                           timeout=5, what="the drop event")


async def test_smooth_move_curves_takes_its_time_and_ends_on_target(
        client: Any, page: Chromium) -> None:
    ox, oy = await page.viewport_origin()
    await post(client, "/computer/move_mouse", {"x": ox + 20, "y": oy + 500, "smooth": False})
    assert await post(client, "/computer/get_mouse_position") == {"x": ox + 20, "y": oy + 500}
    await page.evaluate("window.moves = []")
    target = {"x": ox + 700, "y": oy + 520}
    started = time.monotonic()
    await post(client, "/computer/move_mouse", {**target, "duration_ms": 500})
    elapsed_ms = (time.monotonic() - started) * 1000
    # It takes its time (a busy machine only makes it longer, so no tight upper bound;
    # 10 times the duration would be a bug, not load).
    assert 450 <= elapsed_ms <= 5000, elapsed_ms
    assert await post(client, "/computer/get_mouse_position") == target
    moves = await async_wait_until(lambda: _with_len(page.evaluate("window.moves"), 10),
                                   what="mousemove events")
    # The page saw the pointer travel for about the duration, not jump at the end.
    assert moves[-1][2] - moves[0][2] >= 350, moves
    assert (moves[-1][0] + ox, moves[-1][1] + oy) == (target["x"], target["y"])
    straight = [(20, 500), (700, 520)]
    deviation = max(_off_line((m[0], m[1]), *straight) for m in moves)
    assert deviation > 2, "the path should curve"
    assert len(moves) >= 8  # Chromium coalesces moves to frames


def _off_line(p: tuple[float, float], a: tuple[int, int], b: tuple[int, int]) -> float:
    (x, y), (x1, y1), (x2, y2) = p, a, b
    return abs((x2 - x1) * (y1 - y) - (x1 - x) * (y2 - y1)) / math.hypot(x2 - x1, y2 - y1)


async def test_automatic_move_duration_and_instant_move(client: Any, page: Chromium) -> None:
    await post(client, "/computer/move_mouse", {"x": 10, "y": 10, "smooth": False})
    started = time.monotonic()
    await post(client, "/computer/move_mouse", {"x": 900, "y": 600})
    elapsed = time.monotonic() - started
    assert 0.08 <= elapsed <= 1.5
    assert await post(client, "/computer/get_mouse_position") == {"x": 900, "y": 600}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/computer/click_mouse", {"x": 1280, "y": 10}),
        ("/computer/click_mouse", {"x": -1, "y": 10}),
        ("/computer/move_mouse", {"x": 10, "y": 800}),
        ("/computer/scroll", {"x": 5000, "y": 5, "delta_y": 1}),
        ("/computer/drag_mouse", {"path": [[10, 10], [10, 9999]]}),
        ("/computer/screenshot", {"region": {"x": 1200, "y": 0, "width": 100, "height": 10}}),
        ("/computer/screenshot", {"region": {"x": -1, "y": 0, "width": 10, "height": 10}}),
        ("/computer/screenshot", {"region": {"x": 0, "y": 0, "width": 0, "height": 10}}),
    ],
)
async def test_outside_the_screen_is_a_400(client: Any, xvfb: Xvfb, path: str,
                                           body: dict[str, Any]) -> None:
    answer = await post(client, path, body, 400)
    assert answer["code"] == "bad_request"
    assert "screen" in answer["message"] or "at least 1" in answer["message"] \
        or "negative" in answer["message"]
    assert buttons_down(xvfb.name) == 0


async def test_batch_runs_in_order(client: Any, page: Chromium) -> None:
    field = await screen_point(page, "#field")
    await post(client, "/computer/batch", {"actions": [
        {"type": "click_mouse", "click_mouse": {"x": field[0], "y": field[1]}},
        {"type": "sleep", "sleep": {"duration_ms": 50}},
        {"type": "type_text", "type_text": {"text": "héllo"}},
        {"type": "press_key", "press_key": {"keys": ["BackSpace"]}},
        {"type": "type_text", "type_text": {"text": "ø"}},
        {"type": "move_mouse", "move_mouse": {"x": 5, "y": 5, "smooth": False}},
        {"type": "set_cursor", "set_cursor": {"hidden": False}},
    ]})
    await async_wait_until(lambda: page.evaluate("document.querySelector('#field').value"
                                                 " === 'héllø'"), what="batch typing")
    assert await post(client, "/computer/get_mouse_position") == {"x": 5, "y": 5}


async def test_batch_names_the_failing_action(client: Any, page: Chromium) -> None:
    body = await post(client, "/computer/batch", {"actions": [
        {"type": "move_mouse", "move_mouse": {"x": 5, "y": 5, "smooth": False}},
        {"type": "press_key", "press_key": {"keys": ["Return"]}},
        {"type": "press_key", "press_key": {"keys": ["ctrl+nope"]}},
    ]}, 400)
    assert "actions[2]" in body["message"] and "press_key" in body["message"]
    assert body["details"][0]["index"] == 2 and body["details"][0]["action"] == "press_key"
    assert "nope" in body["message"]
    body = await post(client, "/computer/batch", {"actions": [
        {"type": "sleep", "sleep": {"duration_ms": 1}},
        {"type": "click_mouse", "click_mouse": {"x": 99999, "y": 5}},
    ]}, 400)
    assert body["details"][0]["index"] == 1 and "click_mouse" in body["message"]
    body = await post(client, "/computer/batch", {"actions": [
        {"type": "scroll", "click_mouse": {"x": 1, "y": 5}},
    ]}, 400)
    assert body["details"][0]["index"] == 0
    assert keys_down(page.display) == []


async def test_reads_are_not_held_up_by_a_long_drag(client: Any, xvfb: Xvfb,
                                                    chromium: Chromium) -> None:
    await open_page(chromium, DRAGGABLE)
    x, y = await screen_point(chromium, "#handle")
    drag = asyncio.create_task(post(client, "/computer/drag_mouse", {
        "path": [[x, y], [x + 200, y + 100]], "duration_ms": 6000}))
    # The drag is under way: its button is down.
    await async_wait_until(lambda: buttons_down(xvfb.name) != 0, timeout=10,
                           what="the drag to press its button")
    await post(client, "/computer/screenshot")
    await post(client, "/computer/get_mouse_position")
    await post(client, "/computer/clipboard/read")
    # All three were answered while the drag still held its button: none waited for it.
    assert not drag.done() and buttons_down(xvfb.name) != 0
    await drag
    assert buttons_down(xvfb.name) == 0


async def test_an_action_whose_client_left_stops_and_lets_the_next_one_run(
        client: Any, xvfb: Xvfb) -> None:
    """A 100-second drag whose client gives up is abandoned at its next step: the button
    comes up and the next action runs at once instead of waiting behind it."""
    drag = {"path": [[100, 100], [900, 100]], "smooth": False, "steps_per_segment": 100,
            "step_delay_ms": 1000}
    with pytest.raises(TimeoutError):
        await client.post("/computer/drag_mouse", json=drag,
                          timeout=aiohttp.ClientTimeout(total=1.5))
    await async_wait_until(lambda: buttons_down(xvfb.name) == 0, timeout=10,
                           what="the abandoned drag to release its button")
    began = time.monotonic()
    await post(client, "/computer/move_mouse", {"x": 40, "y": 50, "smooth": False})
    assert time.monotonic() - began < 30  # the drag alone had 98 s left
    assert await post(client, "/computer/get_mouse_position") == {"x": 40, "y": 50}


async def test_input_actions_run_one_at_a_time_in_arrival_order(
        client: Any, page: Chromium) -> None:
    """Each request arrives once the one before has taken its turn (the second while the
    first is typing); they run one at a time, in that order."""
    await focus(client, page, "#field")
    line = client.app[COMPUTER].input
    first = asyncio.create_task(post(client, "/computer/type", {"text": "aaaaaa", "delay": 100}))
    await async_wait_until(lambda: page.evaluate(
        "document.querySelector('#field').value.length > 0"), what="the first to be typing")
    tasks = [first]
    for body, path in (({"text": "bbb"}, "type"), ({"keys": ["c"]}, "press_key")):
        taken = line.submitted
        tasks.append(asyncio.create_task(post(client, f"/computer/{path}", body)))
        await async_wait_until(lambda n=taken: line.submitted > n, what=f"{path} in turn")
    await asyncio.gather(*tasks)
    await async_wait_until(lambda: page.evaluate(
        "document.querySelector('#field').value === 'aaaaaabbbc'"), what="ordered input")


async def test_hold_keys_on_move_scroll_and_drag(client: Any, page: Chromium) -> None:
    """The modifiers are down for the whole action, as the page sees it, and up after."""
    await page.evaluate("""(() => {
        window.mods = [];
        for (const type of ['mousemove', 'wheel', 'mousedown', 'mouseup'])
          document.addEventListener(type, e => window.mods.push(
            {type, shift: e.shiftKey, ctrl: e.ctrlKey, alt: e.altKey}), true);
        return true; })()""")
    ox, oy = await page.viewport_origin()

    async def seen(action: str, body: dict[str, Any], types: set[str]) -> list[dict[str, Any]]:
        await page.evaluate("window.mods = []")
        await post(client, f"/computer/{action}", body)
        found = await async_wait_until(
            lambda: _with_len(page.evaluate("window.mods"), 1), what=f"events of {action}")
        return [m for m in found if m["type"] in types]

    moves = await seen("move_mouse", {"x": ox + 100, "y": oy + 100, "smooth": False,
                                      "hold_keys": ["shift"]}, {"mousemove"})
    assert moves and all(m["shift"] and not m["ctrl"] for m in moves), moves
    # shift (not ctrl: ctrl+wheel would zoom the shared browser for later tests)
    wheels = await seen("scroll", {"x": ox + 120, "y": oy + 120, "delta_y": 2,
                                   "hold_keys": ["shift"]}, {"wheel"})
    assert wheels and all(m["shift"] and not m["ctrl"] for m in wheels), wheels
    drags = await seen("drag_mouse", {"path": [[ox + 60, oy + 60], [ox + 160, oy + 90]],
                                      "smooth": False, "steps_per_segment": 4,
                                      "step_delay_ms": 10, "hold_keys": ["ctrl"]},
                       {"mousemove", "mousedown", "mouseup"})
    assert {m["type"] for m in drags} == {"mousemove", "mousedown", "mouseup"}, drags
    assert all(m["ctrl"] and not m["shift"] for m in drags), drags
    # Released afterwards: a plain move carries no modifier.
    plain = await seen("move_mouse", {"x": ox + 10, "y": oy + 10, "smooth": False},
                       {"mousemove"})
    assert plain and not any(m["shift"] or m["ctrl"] or m["alt"] for m in plain), plain
    assert keys_down(page.display) == []
