"""The agent loop, act -> look, side by side in one run for the same 20 navigations:

- what peers do: click a link, sleep a fixed 1 s, take a screenshot;
- ours: one batch, the click then a screenshot that waits for the screen to settle.

Each navigation clicks a link to a page the local server answers after a delay: most
pages are quick (50-300 ms), a few slow (1.1-1.5 s), as on the web. Reported: the median
loop time (click sent -> screenshot received) and how many screenshots show the new page
(its colour at the middle of the viewport). Target: ours at least 3x faster, 20/20 right.

Real parts: Xvfb, Chromium with its normal window (the tab's loading indicator is what
the screen shows while a page loads) and reduced motion, as the stack starts it
(CHROMIUM_REDUCED_MOTION), the daemon as a process, a threaded HTTP server.
Run with `make bench` or `.venv/bin/python bench/agent_loop.py`.
"""

from __future__ import annotations

import http.server
import io
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from computer import Client, Page, daemon
from PIL import Image
from results import record
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import free_port, running_chromium, running_xvfb, wait_until

WIDTH, HEIGHT = 1280, 800
NAVIGATIONS = 20
DELAYS_MS = [50, 120, 200, 80, 1100, 150, 300, 60, 250, 1500,
             100, 180, 70, 1300, 220, 90, 280, 130, 1200, 160]
NEW_PAGE = (0, 160, 0)
FIXED_SLEEP_S = 1.0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        parts = urlparse(self.path).path.strip("/").split("/")
        if len(parts) != 3 or parts[0] not in ("start", "slow"):
            self.send_error(404)  # the favicon
            return
        if parts[0] == "start":
            body = (f"<body style='margin:0;background:#fff'><a id=go href='/slow/{parts[1]}"
                    f"/{parts[2]}' style='display:block;margin:40px;padding:40px;"
                    "background:#00f;color:#fff;font-size:30px'>next page</a></body>")
        else:
            time.sleep(int(parts[2]) / 1000)
            body = (f"<body style='margin:0;background:rgb{NEW_PAGE}'>"
                    f"<h1>page {parts[1]}</h1></body>")
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:
            pass  # a slow page the fixed-sleep loop navigated away from before it came

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def site() -> Iterator[int]:
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def shows_new_page(png: bytes, centre: tuple[int, int]) -> bool:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return bool(image.getpixel(centre) == NEW_PAGE)


def open_start(page: Page, port: int, key: str, delay: int) -> tuple[int, int, tuple[int, int]]:
    """Show the start page; the link's screen point and the viewport's middle."""
    page.call("Page.navigate", url=f"http://127.0.0.1:{port}/start/{key}/{delay}")
    wait_until(lambda: page.eval("document.readyState === 'complete' && "
                                 "!!document.getElementById('go')"), timeout=15,
               what="the start page")
    page.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    x, y, cx, cy = page.eval(
        "(() => { const r = go.getBoundingClientRect();"
        " const ox = window.screenX + (window.outerWidth - window.innerWidth) / 2;"
        " const oy = window.screenY + (window.outerHeight - window.innerHeight);"
        " return [Math.round(ox + r.left + r.width / 2), Math.round(oy + r.top + r.height / 2),"
        " Math.round(ox + innerWidth / 2), Math.round(oy + innerHeight * 0.6)]; })()")
    time.sleep(0.3)  # let the start page's own drawing finish before the loop is timed
    return int(x), int(y), (int(cx), int(cy))


def main() -> int:
    with running_xvfb(WIDTH, HEIGHT) as xvfb, \
            running_chromium(xvfb.name, WIDTH, HEIGHT, reduced_motion=True) as chromium, \
            daemon(xvfb.name) as (port, _pid), site() as web_port:
        targets = chromium.http_json("/json/list")
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        client = Client(port)
        client.post("/computer/screenshot")  # opens the daemon's connections
        fixed: list[float] = []
        settled: list[float] = []
        fixed_ok = settled_ok = 0
        print(f"{NAVIGATIONS} navigations, page delays {DELAYS_MS} ms; interleaved\n")
        with connect(url, max_size=None) as ws:
            page = Page(ws)
            for i, delay in enumerate(DELAYS_MS[:NAVIGATIONS]):
                x, y, centre = open_start(page, web_port, f"f{i}", delay)
                started = time.perf_counter()
                client.post("/computer/click_mouse", {"x": x, "y": y})
                time.sleep(FIXED_SLEEP_S)
                png = client.post("/computer/screenshot")
                fixed.append((time.perf_counter() - started) * 1000)
                fixed_ok += shows_new_page(png, centre)

                x, y, centre = open_start(page, web_port, f"s{i}", delay)
                started = time.perf_counter()
                png = client.post("/computer/batch", {"actions": [
                    {"type": "click_mouse", "click_mouse": {"x": x, "y": y}},
                    {"type": "screenshot", "screenshot": {"wait": {"for": "settle"}}}]})
                settled.append((time.perf_counter() - started) * 1000)
                settled_ok += shows_new_page(png, centre)
    mf, ms = statistics.median(fixed), statistics.median(settled)
    ratio = mf / ms if ms else float("inf")
    ok = ratio >= 3 and settled_ok == NAVIGATIONS
    print(f"{'click -> sleep 1 s -> screenshot':40s} median {mf:7.1f} ms, "
          f"new page in {fixed_ok}/{NAVIGATIONS} screenshots")
    print(f"{'click + settle-waiting screenshot':40s} median {ms:7.1f} ms, "
          f"new page in {settled_ok}/{NAVIGATIONS} screenshots")
    print(f"{'':40s} {ratio:.1f}x faster (target >= 3x with {NAVIGATIONS}/{NAVIGATIONS} "
          f"right) {'PASS' if ok else 'FAIL'}")
    record("loop: click + settle screenshot", ms, "ms", baseline=mf, ratio=ratio,
           target=">= 3x", ok=ratio >= 3)
    record("settle screenshots showing the new page", settled_ok, f"/{NAVIGATIONS}",
           target=f"{NAVIGATIONS}/{NAVIGATIONS}", ok=settled_ok == NAVIGATIONS)
    record("fixed 1 s sleep screenshots showing the new page", fixed_ok, f"/{NAVIGATIONS}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
