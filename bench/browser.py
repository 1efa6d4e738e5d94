"""Benchmark of the browser slice, against the obvious alternatives, each pair interleaved
(one of each in turn, so the machine's noise hits both alike) and judged; exits 1 when a
target is missed (targets: /curl median at most 50 ms; the DevTools endpoint adds at most
5 ms per round trip and 50 ms per connection, medians):

- POST /curl (a GET through Chromium's network stack, via the daemon) against the same
  GET made directly with aiohttp, both to a local server;
- a DevTools round trip (`Browser.getVersion` on an open WebSocket) through the daemon's
  public DevTools endpoint against Chromium's own endpoint, and the same for opening a
  connection (discovery + WebSocket handshake + first call).

Real parts: Xvfb, Chromium and the daemon (`python -m agent`) as processes. Run with
`make bench` or `.venv/bin/python bench/browser.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import websockets
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import free_port, running_chromium, running_xvfb
from launcher import AUTH, devtools_ok, running_daemon
from results import record


async def timed_pair(first: Callable[[], Awaitable[Any]],
                     second: Callable[[], Awaitable[Any]], rounds: int,
                     warmup: int = 5) -> tuple[list[float], list[float]]:
    """Both actions timed in turn, `rounds` times each."""
    for _ in range(warmup):
        await first()
        await second()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for action, into in ((first, samples[0]), (second, samples[1])):
            started = time.perf_counter()
            await action()
            into.append((time.perf_counter() - started) * 1000)
    return samples


def row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    return f"{name:<52} {statistics.median(samples):9.2f} ms   p90 {p90:8.2f} ms"


def browser_url(http_base: str, headers: dict[str, str]) -> str:
    request = urllib.request.Request(f"{http_base}/json/version", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(json.loads(resp.read())["webSocketDebuggerUrl"])


async def cdp_round_trips(direct_url: str, proxied_url: str, rounds: int,
                          headers: dict[str, str]) -> tuple[list[float], list[float]]:
    async with websockets.connect(direct_url, max_size=None) as direct, \
            websockets.connect(proxied_url, max_size=None, additional_headers=headers) as proxied:
        counter = 0

        def call(ws: Any) -> Callable[[], Awaitable[None]]:
            async def one() -> None:
                nonlocal counter
                counter += 1
                await ws.send(json.dumps({"id": counter, "method": "Browser.getVersion"}))
                while json.loads(await ws.recv()).get("id") != counter:
                    pass
            return one

        return await timed_pair(call(direct), call(proxied), rounds)


async def cdp_connects(direct_base: str, proxied_base: str, rounds: int,
                       headers: dict[str, str]) -> tuple[list[float], list[float]]:
    def connect_and_call(http_base: str, auth: dict[str, str]) -> Callable[[], Awaitable[None]]:
        async def one() -> None:
            async with aiohttp.ClientSession(headers=auth) as session:
                async with session.get(f"{http_base}/json/version") as resp:
                    url = (await resp.json())["webSocketDebuggerUrl"]
            async with websockets.connect(url, additional_headers=auth) as ws:
                await ws.send(json.dumps({"id": 1, "method": "Browser.getVersion"}))
                await ws.recv()
        return one

    return await timed_pair(connect_and_call(direct_base, {}),
                            connect_and_call(proxied_base, headers), rounds, warmup=2)


async def bench(rounds: int, daemon: str, proxy: str, chromium: str) -> bool:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello from the local server")

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    target = f"http://127.0.0.1:{port}/hello"
    try:
        async with aiohttp.ClientSession() as session:
            async def direct() -> None:
                async with session.get(target) as resp:
                    assert await resp.text() == "hello from the local server"

            async def via_curl() -> None:
                async with session.post(f"{daemon}/curl", json={"url": target},
                                        headers=AUTH) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                    assert body["body"] == "hello from the local server"

            direct_ms, curl_ms = await timed_pair(direct, via_curl, rounds)

        direct_ws = await asyncio.to_thread(browser_url, f"http://{chromium}", {})
        proxied_ws = await asyncio.to_thread(browser_url, f"http://{proxy}", AUTH)
        cdp_direct, cdp_proxied = await cdp_round_trips(direct_ws, proxied_ws, rounds * 4,
                                                        AUTH)
        connect_direct, connect_proxied = await cdp_connects(
            f"http://{chromium}", f"http://{proxy}", rounds, AUTH)
    finally:
        await runner.cleanup()

    print(f"browser slice, {rounds} rounds (CDP round trips: {rounds * 4})")
    print(row("GET local server, aiohttp directly", direct_ms))
    print(row("GET local server, POST /curl through Chromium", curl_ms))
    print(f"{'  curl overhead (median)':<52} "
          f"{statistics.median(curl_ms) - statistics.median(direct_ms):9.2f} ms")
    print(row("Browser.getVersion, Chromium's endpoint", cdp_direct))
    print(row("Browser.getVersion, daemon's DevTools endpoint", cdp_proxied))
    print(f"{'  proxy overhead per round trip (median)':<52} "
          f"{statistics.median(cdp_proxied) - statistics.median(cdp_direct):9.2f} ms")
    print(row("connect + first call, Chromium's endpoint", connect_direct))
    print(row("connect + first call, daemon's DevTools endpoint", connect_proxied))
    median = statistics.median
    # (figure, value in ms, baseline in ms, limit in ms)
    figures = [
        ("/curl median", median(curl_ms), median(direct_ms), 50.0),
        ("DevTools endpoint: added per round trip (medians)",
         median(cdp_proxied) - median(cdp_direct), median(cdp_direct), 5.0),
        ("DevTools endpoint: added per connection (medians)",
         median(connect_proxied) - median(connect_direct), median(connect_direct), 50.0),
    ]
    results = []
    for name, value, baseline, limit in figures:
        ok = value <= limit
        print(f"{'OK  ' if ok else 'MISS'} {name} <= {limit:g} ms")
        record(name, value, "ms", baseline=baseline, target=f"<= {limit:g} ms", ok=ok)
        results.append(ok)
    return all(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with running_xvfb(1280, 800) as display, \
            running_chromium(display.name, 1280, 800) as chromium:
        proxy_port = free_port()
        with running_daemon("--display", display.name, "--cdp-address", chromium.address,
                            "--cdp-proxy-port", str(proxy_port),
                            "--cdp-proxy-host", "127.0.0.1", ready=devtools_ok) as daemon:
            ok = asyncio.run(bench(args.rounds, daemon.base, f"127.0.0.1:{proxy_port}",
                                   chromium.address))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
