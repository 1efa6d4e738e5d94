"""A page from another origin, opened in a real Chromium, attacks the API and the DevTools
endpoint of a real daemon running without a token (the `make run` default): a no-cors
fetch, a CORS fetch, a form POST and WebSockets. Nothing may run, no file may appear."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from helpers import Chromium, Xvfb, async_wait_until, free_port
from support import Daemon, running_daemon

ATTACK = """
async function wsTry(url) {
  return await new Promise((resolve) => {
    let ws;
    try { ws = new WebSocket(url); } catch (e) { resolve("refused: " + e); return; }
    const timer = setTimeout(() => { resolve("timeout"); ws.close(); }, 5000);
    ws.onopen = () => { clearTimeout(timer); ws.close(); resolve("open"); };
    ws.onerror = () => { clearTimeout(timer); resolve("error"); };
  });
}

async function attack(api, devtools, marker) {
  const results = {};
  const body = JSON.stringify({command: "touch", args: [marker + "-fetch"]});
  try {
    await fetch(api + "/process/exec", {method: "POST", mode: "no-cors",
      headers: {"Content-Type": "text/plain"}, body});
    results.no_cors = "sent";
  } catch (e) { results.no_cors = "failed: " + e; }
  try {
    const r = await fetch(api + "/process/exec", {method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({command: "touch", args: [marker + "-cors"]})});
    results.cors = r.status;
  } catch (e) { results.cors = "failed: " + e; }
  try {
    const r = await fetch(devtools + "/json/new?about:blank", {method: "PUT", mode: "no-cors"});
    results.devtools_new = "sent";
  } catch (e) { results.devtools_new = "failed: " + e; }
  // A form POST (text/plain) whose body is the same JSON.
  await new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.name = "sink";
    frame.onload = resolve;
    document.body.appendChild(frame);
    const form = document.createElement("form");
    form.method = "POST"; form.action = api + "/process/exec";
    form.enctype = "text/plain"; form.target = "sink";
    const input = document.createElement("input");
    input.name = '{"command": "touch", "args": ["' + marker + '-form"], "x": "';
    input.value = '"}';
    form.appendChild(input);
    document.body.appendChild(form);
    form.submit();
    setTimeout(resolve, 5000);
  });
  results.ws_api = await wsTry(api.replace("http", "ws") + "/process/"
                               + "00000000-0000-4000-8000-000000000000/attach");
  results.ws_devtools = await wsTry(devtools.replace("http", "ws") + "/devtools/browser/x");
  results.ws_devtools_page = await wsTry(devtools.replace("http", "ws") + "/devtools/page/x");
  return JSON.stringify(results);
}
"""


@pytest.fixture
def daemon(xvfb: Xvfb, chromium: Chromium) -> Iterator[Daemon]:
    with running_daemon(xvfb.name, chromium.address, tokens=False) as running:
        yield running


@pytest.fixture
async def evil_origin() -> AsyncIterator[str]:
    """Another origin (same host, another port: same-site, cross-origin) serving the page."""
    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=f"<html><body><script>{ATTACK}</script></body></html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def targets(chromium: Chromium) -> int:
    return len(await asyncio.to_thread(chromium.http_json, "/json/list"))


async def test_a_hostile_page_reaches_neither_the_api_nor_devtools(
        daemon: Daemon, chromium: Chromium, evil_origin: str) -> None:
    marker = f"/tmp/agent-sec-{uuid.uuid4().hex}"
    before = await targets(chromium)
    await chromium.cdp("Page.navigate", {"url": evil_origin + "/"})
    await async_wait_until(lambda: chromium.evaluate("typeof attack === 'function'"),
                           timeout=15, what="the hostile page to load")
    raw = await chromium.evaluate(
        f"attack({json.dumps(daemon.base)}, {json.dumps(daemon.devtools)}, "
        f"{json.dumps(marker)})")
    results = json.loads(raw)
    assert results["ws_api"] != "open", results
    assert results["ws_devtools"] != "open", results
    assert results["ws_devtools_page"] != "open", results
    assert results["cors"] != 200, results
    # Whatever the page sent has been answered (the form's frame loaded, fetches
    # settled): nothing ran.
    for suffix in ("-fetch", "-cors", "-form"):
        assert not await asyncio.to_thread(os.path.exists, marker + suffix), suffix
    assert await targets(chromium) == before  # /json/new opened no tab
    # The same request from a real client runs: the refusals above are not an accident.
    async with aiohttp.ClientSession() as session:
        async with session.post(daemon.base + "/process/exec",
                                json={"command": "touch", "args": [marker + "-client"]}) as resp:
            assert resp.status == 200, await resp.text()
    assert await asyncio.to_thread(os.path.exists, marker + "-client")
    await asyncio.to_thread(os.unlink, marker + "-client")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io"])
async def test_dns_rebinding_hosts_are_refused(daemon: Daemon, host: str) -> None:
    """A page on a name that rebinds to 127.0.0.1 sends that name as its Host."""
    async with aiohttp.ClientSession() as session:
        for url in (daemon.base + "/computer/get_mouse_position",
                    daemon.devtools + "/json/version", daemon.base + "/health"):
            async with session.post(url, json={}, headers={"Host": host}) as resp:
                if "/json/" in url:
                    assert resp.status in (403, 405), url
                else:
                    assert resp.status == 403, url
                    assert (await resp.json())["code"] == "host_not_allowed"
            async with session.get(daemon.devtools + "/json/version",
                                   headers={"Host": host}) as resp:
                assert resp.status == 403
                assert (await resp.json())["code"] == "host_not_allowed"


async def test_a_foreign_origin_is_refused_even_with_a_token(
        xvfb: Xvfb, chromium: Chromium) -> None:
    with running_daemon(xvfb.name, chromium.address) as daemon:
        from support import ADMIN
        async with aiohttp.ClientSession() as session:
            for origin in ("http://evil.example", "null", f"http://127.0.0.1:{free_port()}"):
                async with session.post(daemon.base + "/computer/get_mouse_position",
                                        json={}, headers={**ADMIN, "Origin": origin}) as resp:
                    assert resp.status == 403
                    assert (await resp.json())["code"] == "origin_not_allowed"
                async with session.get(daemon.devtools + "/json/version",
                                       headers={**ADMIN, "Origin": origin}) as resp:
                    assert resp.status == 403
            # A cross-site GET carries no Origin, but says where it comes from.
            async with session.get(daemon.base + "/health",
                                   headers={"Sec-Fetch-Site": "cross-site"}) as resp:
                assert resp.status == 403
            # The daemon's own origin (its pages) is allowed.
            async with session.post(daemon.base + "/computer/get_mouse_position", json={},
                                    headers={**ADMIN, "Origin": daemon.base,
                                             "Sec-Fetch-Site": "same-origin"}) as resp:
                assert resp.status == 200
