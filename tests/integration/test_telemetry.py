"""Telemetry against a real Chromium and a local site: the events a page produces (console,
network, page lifecycle, interactions through the daemon's own /computer endpoints), each
checked against the published schema; resume, replay, gaps, filters, the history on disk,
the runtime configuration, a Chromium restart, and the official SDK."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from browser_support import SupervisedChromium, serving
from common import ADMIN_TOKEN, READ, WRITE, MakeClient
from helpers import Chromium, Xvfb, async_wait_until, free_port
from kernel import AsyncKernel
from telemetry_support import Frame, Stream, check, check_health, events, of_type, site_app

from agent.telemetry import capture

Client = TestClient[Any, Any]
WAIT = 20.0


@pytest.fixture
async def telemetry(make_client: MakeClient, xvfb: Xvfb, chromium: Chromium,
                    tmp_path: Path) -> Client:
    return await make_client(display=xvfb.name, cdp_address=chromium.address,
                             telemetry_dir=str(tmp_path / "telemetry"),
                             telemetry_categories="all")


async def open_stream(client: Client, query: str = "", headers: dict[str, str] | None = None
                      ) -> Stream:
    response = await client.get("/telemetry/stream" + query, headers=headers)
    return Stream(response)


async def until_all(stream: Stream, wanted: list[Any], timeout: float = WAIT) -> list[Frame]:
    """Frames until every predicate in `wanted` has matched some frame."""
    found: list[Frame] = []
    pending = list(wanted)
    async with asyncio.timeout(timeout):
        while pending:
            frame = await stream.frame(timeout)
            assert frame is not None, f"stream ended; saw {[f.type for f in found]}"
            found.append(frame)
            pending = [p for p in pending if not p(frame)]
    return found


def increasing(frames: list[Frame]) -> bool:
    ids = [f.id for f in frames if f.id is not None]
    return all(a < b for a, b in itertools.pairwise(ids))


async def capturing(client: Client) -> None:
    """Until the capture is attached to the page (so the next navigation is seen)."""
    async def ready() -> bool:
        body = check_health(await (await client.get("/health")).json())
        return bool(body["telemetry"]["state"] == "capturing" and body["telemetry"]["targets"])
    await async_wait_until(ready, timeout=WAIT, what="telemetry to attach")


PAGE = """<html><head><title>telemetry</title></head><body style="margin:0">
<div id=content style="height:200px;background:#ccc">content</div>
<script>
console.log('hello', 42, {a: 1});
console.warn('careful');
console.error('bad', 'thing');
fetch('/ok').then(r => r.json()).then(j => console.log('fetched', j.ok));
fetch('/missing');
fetch('http://127.0.0.1:REFUSED/nothing').catch(() => console.log('refused'));
fetch('/text');
fetch('/redirect');
// after two animation frames the content has been painted: moving it is a layout shift
addEventListener('load', () => requestAnimationFrame(() => requestAnimationFrame(() => {
  const block = document.createElement('div');
  block.style.height = '300px';
  block.textContent = 'pushes the content down';
  document.body.insertBefore(block, document.body.firstChild);
  setTimeout(function thrower() { throw new Error('boom'); }, 50);
})));
</script></body></html>"""


async def test_a_page_produces_the_expected_events_in_order(
        telemetry: Client, chromium: Chromium) -> None:
    await capturing(telemetry)
    refused = free_port()
    app = site_app({"/page": PAGE.replace("REFUSED", str(refused)),
                    "/second": "<html><body><p>second</p></body></html>"})
    async with serving(app) as site:
        stream = await open_stream(telemetry)
        url = f"{site}/page"
        await chromium.cdp("Page.navigate", {"url": url})
        frames = await until_all(stream, [
            lambda f: f.type == "page_navigation_settled" and f.data.get("url") == url,
            lambda f: f.type == "network_idle" and f.data.get("url") == url,
            lambda f: f.type == "console_error" and "boom" in f.data.get("text", ""),
            lambda f: f.type == "console_log" and f.data.get("args") == ["fetched", "true"],
            lambda f: f.type == "page_layout_shift",
        ])
        assert increasing(frames)
        kinds = [f.type for f in frames]
        order = [kinds.index(k) for k in ("page_navigation", "page_dom_content_loaded",
                                          "page_load", "page_layout_settled",
                                          "page_navigation_settled")]
        assert order == sorted(order), kinds
        nav = of_type(frames, "page_navigation")[0].data
        assert nav["url"] == url and "parent_frame_id" not in nav and "nav_seq" not in nav
        load = of_type(frames, "page_load")[0].data
        assert load["url"] == url and load["loader_id"] == nav["loader_id"]
        assert load["frame_id"] == nav["frame_id"] and load["nav_seq"] >= 1
        assert isinstance(load["cdp_timestamp"], float)

        logs = of_type(frames, "console_log")
        assert logs[0].data["args"] == ["hello", "42", "Object"]
        assert logs[0].data["text"] == "hello" and logs[0].data["level"] == "log"
        assert logs[0].data["stack_trace"]["callFrames"][0]["url"] == url
        assert [f.data["level"] for f in logs[:2]] == ["log", "warning"]
        errors = of_type(frames, "console_error")
        assert errors[0].data["args"] == ["bad", "thing"] and errors[0].data["level"] == "error"
        thrown = errors[-1]
        assert thrown.envelope is not None
        assert thrown.envelope["event"]["source"]["event"] == "Runtime.exceptionThrown"
        assert thrown.data["text"].startswith("Error: boom")
        assert thrown.data["source_url"] == url and thrown.data["line"] > 0
        assert thrown.data["column"] >= 0 and "level" not in thrown.data
        assert thrown.data["stack_trace"]["callFrames"][0]["functionName"] == "thrower"

        requests = {f.data["url"]: f.data for f in of_type(frames, "network_request")}
        responses = {f.data["url"]: f.data for f in of_type(frames, "network_response")}
        ok = responses[f"{site}/ok"]
        assert ok["status"] == 200 and ok["mime_type"] == "application/json"
        assert json.loads(ok["body"]) == {"ok": True, "n": ""} and ok["method"] == "GET"
        assert ok["duration_ms"] >= 0 and ok["encoded_data_length"] > 0
        assert ok["timing"]["receiveHeadersEnd"] >= ok["timing"]["sendStart"]
        assert ok["request_id"] == requests[f"{site}/ok"]["request_id"]
        assert requests[f"{site}/ok"]["resource_type"] == "Fetch"
        assert requests[f"{site}/ok"]["initiator_type"] == "script"
        assert responses[url]["resource_type"] == "Document"
        assert "<title>telemetry</title>" in responses[url]["body"]
        assert responses[f"{site}/missing"]["status"] == 404
        assert responses[f"{site}/missing"]["status_text"] == "Not Found"
        text = next(f for f in of_type(frames, "network_response")
                    if f.data["url"] == f"{site}/text")
        assert text.data["body"] == ("0123456789" * 1000)[:4096]
        assert text.envelope is not None and text.envelope["event"]["truncated"] is True
        failed = [f.data for f in of_type(frames, "network_loading_failed")]
        assert [(f["url"], f["error_text"]) for f in failed] == [
            (f"http://127.0.0.1:{refused}/nothing", "net::ERR_CONNECTION_REFUSED")]
        hops = [f.data for f in of_type(frames, "network_request")
                if f.data["url"] in (f"{site}/redirect", f"{site}/ok?n=redirected")]
        assert [h["is_redirect"] for h in hops] == [False, True]
        assert hops[1]["redirect_url"] == f"{site}/redirect"
        assert hops[0]["request_id"] == hops[1]["request_id"]
        assert responses[f"{site}/ok?n=redirected"]["status"] == 200

        shifts = of_type(frames, "page_layout_shift")
        assert shifts and shifts[0].data["layout_shift_details"]["value"] > 0
        assert shifts[0].data["layout_shift_details"]["had_recent_input"] is False
        settled = kinds.index("page_layout_settled")
        assert kinds.index("page_layout_shift") < settled
        idle = kinds.index("network_idle")
        last_response = max(i for i, k in enumerate(kinds)
                            if k in ("network_response", "network_loading_failed"))
        assert idle > last_response  # redirects and failures settled first

        await chromium.cdp("Page.navigate", {"url": f"{site}/second"})
        more = await stream.until(lambda f: f.type == "page_navigation_settled")
        assert increasing(frames + more)
        second = of_type(more, "page_load")[0].data
        assert second["url"] == f"{site}/second" and second["nav_seq"] == load["nav_seq"] + 1
        assert of_type(more, "network_idle")  # a page without subresources too
        stream.response.close()


async def test_new_tabs_cross_site_iframes_and_workers_are_seen_from_their_start(
        telemetry: Client, chromium: Chromium) -> None:
    await capturing(telemetry)
    port = free_port()
    app = site_app({
        "/main": "<script>console.log('from main');"
                 "new Worker('/worker.js')</script>"
                 f"<iframe src='http://localhost:{port}/frame'></iframe>",
        "/frame": "<script>console.log('from frame')</script>"})

    async def worker(request: web.Request) -> web.Response:
        return web.Response(text="console.log('from worker')",
                            content_type="application/javascript")
    app.router.add_get("/worker.js", worker)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    browser_ws = (await asyncio.to_thread(chromium.http_json, "/json/version"))[
        "webSocketDebuggerUrl"]
    stream = await open_stream(telemetry, "?type=console_log,page_tab_opened")
    created = await chromium.cdp("Target.createTarget", {"url": f"http://127.0.0.1:{port}/main"},
                                 ws_url=browser_ws)
    tab = created["targetId"]
    try:
        frames = await until_all(stream, [
            lambda f: f.data.get("text") == "from main",
            lambda f: f.data.get("text") == "from frame",
            lambda f: f.data.get("text") == "from worker"])
        opened = of_type(frames, "page_tab_opened")
        assert [f.data["target_id"] for f in opened] == [tab]
        by_text = {f.data.get("text"): f.data for f in of_type(frames, "console_log")}
        main = by_text["from main"]
        assert main["target_id"] == tab and main["target_type"] == "page"
        assert main["url"] == f"http://127.0.0.1:{port}/main"
        frame = by_text["from frame"]  # a cross-site iframe: a target of its own
        assert frame["target_type"] == "other" and frame["target_id"] != tab
        assert frame["url"] == f"http://localhost:{port}/frame"
        assert by_text["from worker"]["target_type"] == "other"
        assert by_text["from worker"]["session_id"] not in (main["session_id"],
                                                             frame["session_id"])
    finally:
        await chromium.cdp("Target.closeTarget", {"targetId": tab}, ws_url=browser_ws)
        stream.response.close()
        await runner.cleanup()


INTERACTIVE = """<body style='margin:0'>
<button id=b style='position:absolute;left:100px;top:100px;width:200px;height:80px'
  >press me</button>
<input id=name style='position:absolute;left:100px;top:250px;width:300px;height:40px'>
<input id=pw type=password style='position:absolute;left:100px;top:320px;width:300px;height:40px'>
<input id=card autocomplete='cc-number'
  style='position:absolute;left:100px;top:390px;width:300px;height:40px'>
<input id=otp autocomplete='one-time-code'
  style='position:absolute;left:100px;top:460px;width:300px;height:40px'>
<div style='height:5000px'></div></body>"""


async def post(client: Client, path: str, body: dict[str, Any]) -> None:
    response = await client.post(path, json=body)
    assert response.status == 200, await response.text()


async def test_clicks_keys_and_scrolls_through_the_computer_endpoints(
        telemetry: Client, chromium: Chromium) -> None:
    await capturing(telemetry)
    stream = await open_stream(telemetry, "?type=interaction_click,interaction_key"
                                          "&type=interaction_scroll_settled")
    await chromium.open(INTERACTIVE)
    ox, oy = await chromium.viewport_origin()
    await post(telemetry, "/computer/click_mouse", {"x": ox + 200, "y": oy + 140})
    click = (await stream.until(lambda f: f.type == "interaction_click"))[-1]
    assert {k: click.data[k] for k in ("x", "y", "tag", "text", "selector")} == {
        "x": 200, "y": 140, "tag": "BUTTON", "text": "press me", "selector": "button#b"}
    assert click.data["url"].startswith("data:text/html")

    for field, text in (("name", "hi"), ("pw", "secret"), ("card", "4111"),
                        ("otp", "123456"), ("name", "Z")):
        top = {"name": 250, "pw": 320, "card": 390, "otp": 460}[field]
        await post(telemetry, "/computer/click_mouse", {"x": ox + 250, "y": oy + top + 20})
        await post(telemetry, "/computer/type", {"text": text})
    frames = await stream.until(lambda f: f.type == "interaction_key" and f.data["key"] == "Z")
    keys = [(f.data["key"], f.data["selector"], f.data["tag"])
            for f in of_type(frames, "interaction_key")]
    # xdotool holds Shift for the capital: a key press of its own
    assert keys == [("h", "input#name", "INPUT"), ("i", "input#name", "INPUT"),
                    ("Shift", "input#name", "INPUT"), ("Z", "input#name", "INPUT")]
    clicked = [f.data["selector"] for f in of_type(frames, "interaction_click")]
    assert clicked == ["input#name", "input#pw", "input#card", "input#otp", "input#name"]
    assert await chromium.evaluate("pw.value + card.value + otp.value") == "secret4111123456"

    await post(telemetry, "/computer/scroll", {"x": ox + 600, "y": oy + 300, "delta_y": 5})
    # Wheel scrolling is animated: on a busy machine it may pause long enough to settle
    # more than once. The settled positions chain up to where the page came to rest.
    settled: list[Frame] = []
    async with asyncio.timeout(WAIT):
        while True:
            settled += of_type(await stream.until(
                lambda f: f.type == "interaction_scroll_settled"), "interaction_scroll_settled")
            if settled[-1].data["to_y"] == await chromium.evaluate("window.scrollY"):
                break
    assert settled[-1].data["to_y"] > 0
    positions = [(f.data["from_x"], f.data["from_y"], f.data["to_x"], f.data["to_y"])
                 for f in settled]
    assert positions[0][:2] == (0, 0)
    assert all(a[2:] == b[:2] for a, b in itertools.pairwise(positions))
    assert all(f.data["target_selector"] == "html" for f in settled)
    stream.response.close()


async def test_resume_replay_filters_and_gaps(make_client: MakeClient, xvfb: Xvfb,
                                              chromium: Chromium, tmp_path: Path) -> None:
    client = await make_client(display=xvfb.name, cdp_address=chromium.address,
                               telemetry_dir=str(tmp_path / "t"), telemetry_categories="console",
                               telemetry_buffer=40)
    await capturing(client)
    live = await open_stream(client)  # from now on
    await chromium.open("<script>for (let i = 0; i < 30; i++) console.log('n' + i);"
                        "console.error('last')</script>")
    got = await live.until(lambda f: f.type == "console_error")
    texts = [f.data["text"] for f in events(got)]
    assert texts == [f"n{i}" for i in range(30)] + ["last"]
    first, last = got[0].id, got[-1].id
    assert first is not None and last is not None and last - first == 30
    live.response.close()

    # replay=all: the buffer from its oldest event; follow=false ends the stream
    replay = await (await open_stream(client, "?replay=all&follow=false")).rest()
    assert [f.id for f in replay] == list(range(replay[0].id or 0, last + 1))
    # Last-Event-ID: exactly the events after it, none lost
    resumed = await (await open_stream(client, "?follow=false",
                                       {"Last-Event-ID": str(first + 9)})).rest()
    assert [f.id for f in resumed] == list(range(first + 10, last + 1))
    assert [f.data["text"] for f in resumed][:2] == ["n10", "n11"]
    # a type filter: other events are not sent; an id-only frame moves past them at the end
    only = await (await open_stream(client, "?follow=false&type=console_error",
                                    {"Last-Event-ID": str(first - 1)})).rest()
    assert [(f.id, f.type) for f in only] == [(last, "console_error")]

    skipped = await (await open_stream(client, "?follow=false&type=console_log",
                                       {"Last-Event-ID": str(last - 3)})).rest()
    assert [(f.id, f.type) for f in skipped] == [(last - 2, "console_log"),
                                                 (last - 1, "console_log"), (last, "")]

    # 60 more: the 40-event buffer no longer holds the first 20 a reader at `last` missed
    await chromium.open("<script>for (let i = 0; i < 60; i++) console.log('m' + i)</script>")

    async def published() -> bool:
        body = await (await client.get("/health")).json()
        return bool(body["telemetry"]["last_seq"] == last + 60)
    await async_wait_until(published, timeout=WAIT, what="60 more events")
    behind = await open_stream(client, "?follow=false", {"Last-Event-ID": str(last)})
    frames = await behind.rest()
    gap = frames[0]
    assert gap.envelope is None and gap.id == last + 20
    assert gap.comments == [f"gap: events {last + 1}..{last + 20} (20) were dropped because "
                            "this reader fell behind the buffer"]
    assert [f.id for f in frames[1:]] == list(range(last + 21, last + 61))
    assert [f.data["text"] for f in frames[1:]] == [f"m{i}" for i in range(20, 60)]

    bad = await client.get("/telemetry/stream", headers={"Last-Event-ID": "x"})
    assert bad.status == 400


async def test_a_slow_reader_gets_a_gap_marker_and_never_holds_up_capture(
        make_client: MakeClient, xvfb: Xvfb, chromium: Chromium, tmp_path: Path) -> None:
    await chromium.open("")
    client = await make_client(display=xvfb.name, cdp_address=chromium.address,
                               telemetry_dir=str(tmp_path / "t"), telemetry_categories="console",
                               telemetry_buffer=40)
    await capturing(client)
    stream = await open_stream(client)  # and then not read for a while
    start = (await (await client.get("/health")).json())["telemetry"]["last_seq"]
    # 600 events of 20 kB: 12 MB, more than the sockets between us can hold
    await chromium.open("<script>for (let i = 0; i < 600; i++) "
                        "console.log('s' + i, 'z'.repeat(20000))</script>")

    async def published() -> bool:
        body = await (await client.get("/health")).json()
        return bool(body["telemetry"]["last_seq"] >= start + 600)
    await async_wait_until(published, timeout=WAIT, what="capture to go on regardless")

    frames = await stream.until(lambda f: f.data.get("text") == "s599")
    gaps = [f for f in frames if f.envelope is None]
    assert gaps and all(g.comments[0].startswith("gap: events") for g in gaps)
    assert increasing(frames)
    delivered = [f for f in events(frames) if f.data.get("text", "").startswith("s")]
    missed = sum(int(g.comments[0].split("(")[1].split(")")[0]) for g in gaps)
    assert len(delivered) + missed == 600
    assert delivered[-1].data["text"] == "s599"
    stream.response.close()


async def test_an_oversized_event_is_sent_without_its_data(telemetry: Client,
                                                           chromium: Chromium) -> None:
    await capturing(telemetry)
    stream = await open_stream(telemetry, "?type=console_log")
    # 30 arguments of 50,000 characters: about 3 MB of text and args
    await chromium.open("<script>console.log(...Array(30).fill('x'.repeat(50000)));"
                        "console.log('small')</script>")
    frames = events(await stream.until(lambda f: f.data.get("text") == "small"))
    big = frames[-2].envelope
    assert big is not None and big["event"]["truncated"] is True and "data" not in big["event"]
    assert big["event"]["type"] == "console_log"
    stream.response.close()


async def test_history_pages_like_the_sdk(make_client: MakeClient, xvfb: Xvfb,
                                          chromium: Chromium, tmp_path: Path) -> None:
    directory = tmp_path / "history"
    await chromium.open("")  # no console messages of an earlier page to replay
    client = await make_client(display=xvfb.name, cdp_address=chromium.address,
                               telemetry_dir=str(directory), telemetry_categories="console")
    await capturing(client)
    stream = await open_stream(client)
    await chromium.open("<script>for (let i = 0; i < 25; i++) console.log('h' + i);"
                        "console.error('end')</script>")
    live = events(await stream.until(lambda f: f.type == "console_error"))
    stream.response.close()
    seqs = [f.id for f in live]

    pages: list[list[dict[str, Any]]] = []
    offset: str | None = None
    while True:
        query = "?limit=10" + (f"&offset={offset}" if offset else "")
        response = await client.get("/telemetry/events" + query)
        assert response.status == 200
        page = [check(e) for e in await response.json()]
        pages.append(page)
        offset = response.headers["X-Next-Offset"]
        if response.headers["X-Has-More"] == "false":
            assert offset == "0"
            break
    history = [e for page in pages for e in page]
    assert [len(p) for p in pages[:-1]] == [10] * (len(pages) - 1)
    assert [e["seq"] for e in history] == seqs
    assert [e["event"]["data"]["text"] for e in history] == \
        [f"h{i}" for i in range(25)] + ["end"]

    newest = await client.get("/telemetry/events?order=desc&limit=3")
    assert [e["seq"] for e in await newest.json()] == seqs[::-1][:3]
    nxt = newest.headers["X-Next-Offset"]
    older = await client.get(f"/telemetry/events?order=desc&limit=3&offset={nxt}")
    assert [e["seq"] for e in await older.json()] == seqs[::-1][3:6]
    errors = await client.get("/telemetry/events?type=console_error&category=console&limit=5")
    assert [e["event"]["data"]["text"] for e in await errors.json()] == ["end"]
    none = await client.get("/telemetry/events?category=network")
    assert await none.json() == []
    future = await client.get("/telemetry/events?since=2999-01-01T00:00:00Z")
    assert await future.json() == []
    old = await client.get("/telemetry/events?until=1h")
    assert await old.json() == []
    recent = await client.get("/telemetry/events?since=10m&limit=1000")
    assert [e["seq"] for e in await recent.json()] == seqs
    for bad in ("order=desc&since=5m", "since=yesterday", "limit=0", "limit=1001",
                "order=sideways", "category=nonsense"):
        response = await client.get("/telemetry/events?" + bad)
        assert response.status == 400, bad
    files = sorted(directory.iterdir())
    assert files and all(f.name.startswith("events-") for f in files)
    assert directory.stat().st_mode & 0o777 == 0o700
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [e["seq"] for e in lines] == seqs

    # a daemon started later on the same directory continues the numbering and the history
    await client.close()
    again = await make_client(display=xvfb.name, cdp_address=chromium.address,
                              telemetry_dir=str(directory), telemetry_categories="console")
    await capturing(again)
    stream = await open_stream(again)
    await chromium.open("<script>console.log('after restart')</script>")
    later = events(await stream.until(lambda f: f.data.get("text") == "after restart"))
    assert later[-1].id is not None and later[-1].id > seqs[-1]
    stream.response.close()


async def test_config_changes_take_effect(make_client: MakeClient, xvfb: Xvfb,
                                          chromium: Chromium, tmp_path: Path) -> None:
    client = await make_client(display=xvfb.name, cdp_address=chromium.address,
                               telemetry_dir=str(tmp_path / "t"))
    config = await (await client.get("/telemetry/config", headers=READ)).json()
    assert config == {"browser": {k: {"enabled": False}
                                  for k in ("console", "network", "page", "interaction")}}
    health = check_health(await (await client.get("/health")).json())
    assert health["telemetry"]["state"] == "off"
    assert not (tmp_path / "t").exists()  # nothing captured, nothing written

    refused = await client.put("/telemetry/config", json={"browser": {}}, headers=READ)
    assert refused.status == 403
    changed = await client.put("/telemetry/config", headers=WRITE,
                               json={"browser": {"network": {"enabled": False}}})
    assert changed.status == 200
    assert await changed.json() == {"browser": {"console": {"enabled": True},
                                                "network": {"enabled": False},
                                                "page": {"enabled": True},
                                                "interaction": {"enabled": True}}}
    await capturing(client)
    stream = await open_stream(client)
    await chromium.open("<script>fetch('data:,x'); console.log('seen')</script>")
    frames = await stream.until(lambda f: f.type == "page_load" and "seen" in f.data["url"])
    assert [f for f in frames if f.data.get("text") == "seen"]
    assert not [f for f in frames if f.type.startswith("network_")]

    # page events off, console stays: takes effect for the next events at once
    await client.put("/telemetry/config", json={"browser": {"page": {"enabled": False},
                                                            "network": {"enabled": False}}})
    await chromium.open("<script>console.log('no page events')</script>")
    frames = await stream.until(lambda f: f.data.get("text") == "no page events")
    assert [f.type for f in events(frames)] == ["console_log"]

    unchanged = await client.put("/telemetry/config", json={})
    assert (await unchanged.json())["browser"]["console"] == {"enabled": True}
    bad = await client.put("/telemetry/config", json={"browser": {"console": {"enabled": 3}}})
    assert bad.status == 400

    # all off: the capture lets go of the page (no DevTools session left on it)
    off = {k: {"enabled": False} for k in ("console", "network", "page", "interaction")}
    await client.put("/telemetry/config", json={"browser": off})
    health = await (await client.get("/health")).json()
    assert health["telemetry"]["state"] == "off"

    async def detached() -> bool:
        targets = await asyncio.to_thread(chromium.http_json, "/json/list")
        return not any(t.get("type") == "page" and t.get("attached") for t in targets)
    await async_wait_until(detached, timeout=WAIT, what="the page to have no DevTools client")
    await chromium.open("<script>console.log('not captured')</script>")
    body = await (await client.get("/telemetry/stream?replay=all&follow=false")).text()
    assert "not captured" not in body and "no page events" in body


# --------------------------------------------------------------------- Chromium restarts

async def test_capture_survives_a_chromium_restart(make_client: MakeClient,
                                                   supervised: SupervisedChromium,
                                                   tmp_path: Path) -> None:
    client = await make_client(display=supervised.display, cdp_address=supervised.address,
                               telemetry_dir=str(tmp_path / "t"), telemetry_categories="all")
    await capturing(client)
    stream = await open_stream(client)
    before = supervised.chromium_pid()
    await asyncio.to_thread(supervised.restart)
    assert supervised.chromium_pid() != before
    frames = await stream.until(lambda f: f.type == "monitor_reconnected")
    kinds = [f.type for f in events(frames)]
    assert kinds.index("monitor_disconnected") < kinds.index("monitor_reconnected")
    gone = of_type(frames, "monitor_disconnected")[0]
    assert gone.data == {"reason": "chrome_restarted"}
    assert of_type(frames, "monitor_reconnected")[0].data["reconnect_duration_ms"] >= 0
    await capturing(client)

    browser = Chromium(supervised.display, 0, 0, port=supervised.port)
    await browser.cdp("Page.navigate", {"url": "data:text/html,<script>console.log('back')"
                                               "</script>"})
    more = await stream.until(lambda f: f.data.get("text") == "back")
    assert increasing(frames + more)
    assert more[-1].id is not None and frames[-1].id is not None
    assert more[-1].id > frames[-1].id
    stream.response.close()


def supervisorctl(supervised: SupervisedChromium, action: str) -> None:
    subprocess.run(["supervisorctl", "-s", f"unix://{supervised.socket}", action, "chromium"],
                   check=True, capture_output=True, timeout=60)


async def test_a_chromium_that_stays_down_is_reported_once_and_capture_comes_back(
        make_client: MakeClient, supervised: SupervisedChromium, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Chromium stopped (`supervisorctl stop`) for longer than the capture waits: one
    `monitor_reconnect_failed`, /health says failed; started again, capture comes back by
    itself with `monitor_reconnected`."""
    monkeypatch.setattr(capture, "GIVE_UP_S", 1.0)  # instead of 30 s
    client = await make_client(display=supervised.display, cdp_address=supervised.address,
                               telemetry_dir=str(tmp_path / "t"), telemetry_categories="all")
    await capturing(client)
    stream = await open_stream(client)
    await asyncio.to_thread(supervisorctl, supervised, "stop")
    try:
        frames = await stream.until(lambda f: f.type == "monitor_reconnect_failed")
        health = check_health(await (await client.get("/health")).json())
        assert health["telemetry"]["state"] == "failed", health
    finally:
        await asyncio.to_thread(supervisorctl, supervised, "start")
    more = await stream.until(lambda f: f.type == "monitor_reconnected", timeout=WAIT)
    kinds = [f.type for f in events(frames + more)]
    assert kinds.count("monitor_reconnect_failed") == 1, kinds
    assert (kinds.index("monitor_disconnected") < kinds.index("monitor_reconnect_failed")
            < kinds.index("monitor_reconnected")), kinds
    assert of_type(frames, "monitor_reconnect_failed")[0].data == {
        "reason": "reconnect_exhausted"}
    assert of_type(more, "monitor_reconnected")[0].data["reconnect_duration_ms"] >= 1000
    assert increasing(frames + more)
    await capturing(client)
    stream.response.close()


# --------------------------------------------------------------------- the official SDK

@pytest.fixture
async def sdk(telemetry: Client) -> AsyncIterator[AsyncKernel]:
    client = AsyncKernel(api_key=ADMIN_TOKEN, base_url=str(telemetry.make_url("")).rstrip("/"),
                         max_retries=0, timeout=60)
    async with client:
        yield client


async def test_the_sdk_streams_and_pages_telemetry(sdk: AsyncKernel, telemetry: Client,
                                                   chromium: Chromium) -> None:
    await capturing(telemetry)
    stream = await sdk.browsers.telemetry.stream("this-browser", type=["console_log"])
    await chromium.open("<script>console.log('via sdk'); console.error('skipped')</script>")

    async def first_log() -> Any:
        async for envelope in stream:
            if envelope.event.type == "console_log" and envelope.event.data.text == "via sdk":
                return envelope
        raise AssertionError("the stream ended")

    envelope = await asyncio.wait_for(first_log(), WAIT)
    assert envelope.seq >= 1 and envelope.event.category == "console"
    assert envelope.event.data.args == ["via sdk"]
    await stream.close()

    seen = []
    async for item in sdk.browsers.telemetry.events("this-browser", limit=3,
                                                    category=["console"]):
        seen.append(item)
    texts = [item.event.data.text for item in seen]
    assert "via sdk" in texts and "skipped" in texts
    assert [item.seq for item in seen] == sorted(item.seq for item in seen)
    replayed = await sdk.browsers.telemetry.stream("this-browser", replay="all")

    async def first_any() -> Any:
        async for item in replayed:
            return item
        raise AssertionError("the stream ended")

    assert (await asyncio.wait_for(first_any(), WAIT)).seq == 1
    await replayed.close()
