"""Benchmark of the computer slice, each pair side by side in one run (interleaved):

- HTTP click (POST /computer/click_mouse) vs `xdotool mousemove X Y click 1`;
- HTTP full-screen PNG of a changing screen vs one `ffmpeg -f x11grab` PNG frame;
- HTTP PNG of an unchanged screen vs the same ffmpeg frame: not a like-for-like pair (the
  daemon answers from the image it encoded last, which X DAMAGE says is still the screen;
  ffmpeg captures and encodes afresh), so it is printed with no target: what an agent
  polling a still screen sees, not a capture speed;
- HTTP clipboard write + read vs `xclip -i` + `xclip -o`;
- 1,000 mixed Unicode characters typed with delay=0, checked in the page over CDP;
- the daemon's resident memory, idle after start and idle after all of the above.

Real parts: Xvfb at 1920x1080, Chromium showing a page, the daemon as a process
(`python -m agent`), a plain keep-alive HTTP client (http.client), the tools as processes.
Run with `make bench` or `.venv/bin/python bench/computer.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import running_chromium, running_xvfb, wait_until
from launcher import TOKEN, running_daemon
from results import record

WIDTH, HEIGHT = 1920, 1080

PAGE = """<!doctype html><meta charset=utf-8>
<style>body{margin:0;font:16px sans-serif;background:#f4f6fb}
#wash{position:fixed;left:0;top:0;width:100%;height:100%;pointer-events:none;opacity:.5}
#ticker{position:fixed;right:10px;top:10px;font:20px monospace;background:#fff;padding:4px}
textarea{position:absolute;left:40px;top:460px;width:1200px;height:300px;font-size:16px}
.card{display:inline-block;margin:8px;padding:12px;width:260px;background:#fff;
box-shadow:0 1px 3px #0003;border-radius:6px}</style>
<div id=ticker>0</div><div id=wash></div>
<h1>Benchmark page</h1>
""" + "".join(
    f"<div class=card><b>Card {i}</b><p>Lorem ipsum dolor sit amet, consectetur adipiscing"
    f" elit. Größe, naïve café — 日本語 {i}</p></div>" for i in range(12)
) + """
<textarea id=area></textarea>
<script>
window.animate = false;
window.washing = false;
let n = 0;
function tick() {
  if (window.animate) { ticker.textContent = String(n++); }
  if (window.washing) { wash.style.background = `hsl(${(n++ * 37) % 360} 60% 50%)`; }
  requestAnimationFrame(tick);
}
requestAnimationFrame(tick);
</script>"""


class Client:
    """A keep-alive HTTP/1.1 client: what an orchestrator talking to the VM would hold."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "application/json"}

    def post(self, path: str, body: Any = None) -> bytes:
        payload = json.dumps(body).encode() if body is not None else b""
        self.conn.request("POST", path, body=payload, headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status} {data[:300]!r}")
        return data


class Page:
    """CDP on the page target, one persistent connection."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def eval(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


@contextmanager
def daemon(display: str) -> Iterator[tuple[int, int]]:
    with running_daemon("--display", display) as started:
        yield started.port, started.pid


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def side_by_side(rounds: int, ours: Callable[[], object],
                 theirs: Callable[[], object]) -> tuple[list[float], list[float]]:
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        a.append(timed(ours))
        b.append(timed(theirs))
    return a, b


def run(cmd: list[str], env: dict[str, str], data: bytes | None = None) -> bytes:
    return subprocess.run(cmd, env=env, input=data, capture_output=True, check=True,
                          timeout=30).stdout


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / (1 << 20)


def report(name: str, ours: list[float], theirs: list[float], baseline: str,
           target: float) -> bool:
    mo, mt = statistics.median(ours), statistics.median(theirs)
    ratio = mt / mo if mo else float("inf")
    ok = ratio >= target
    verdict = f"(target >= {target:g}x) {'PASS' if ok else 'FAIL'}" if target else "(no target)"
    print(f"{name:34s} daemon {mo:8.2f} ms | {baseline:28s} {mt:8.2f} ms | "
          f"{ratio:6.1f}x {verdict}")
    record(name, mo, "ms", baseline=mt, ratio=ratio, target=f">= {target:g}x" if target else None,
           ok=ok if target else None)
    return ok


def unicode_text(n: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    pools = ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?-()",
             "äöüÄÖÜßéèêñçåøæœ€£¥©", "日本語中文字漢字東京大阪", "ПриветмирΑβγδ",
             "😀👍🎉🚀", "".join(chr(0x4E00 + i) for i in range(150)), "\n"]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with running_xvfb(WIDTH, HEIGHT) as xvfb, \
            running_chromium(xvfb.name, WIDTH, HEIGHT, ("--kiosk",)) as chromium, \
            daemon(xvfb.name) as (port, pid):
        env = {**os.environ, "DISPLAY": xvfb.name}
        targets = chromium.http_json("/json/list")
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        print(f"Xvfb {xvfb.name} {WIDTH}x{HEIGHT}, Chromium (DevTools {chromium.port}), "
              f"daemon pid {pid}; {args.rounds} rounds per pair, interleaved; medians\n")
        with connect(url, max_size=None) as ws:
            results = bench(Page(ws), Client(port), pid, args.rounds, xvfb.name, env)
    print(f"\n{sum(results)}/{len(results)} targets met")
    return 0 if all(results) else 1


def bench(page: Page, client: Client, pid: int, rounds: int, display: str,
          env: dict[str, str]) -> list[bool]:
    results: list[bool] = []
    page.call("Page.navigate", url="data:text/html;charset=utf-8," + quote(PAGE))
    wait_until(lambda: page.eval("document.readyState === 'complete' && 'animate' in window"),
               timeout=15, what="the page")
    page.eval("window.animate = false")
    client.post("/computer/get_mouse_position")  # opens the read connection
    client.post("/computer/move_mouse", {"x": 5, "y": 5, "smooth": False})
    time.sleep(1.0)
    idle_rss = rss_mib(pid)

    # clicks on an empty part of the page
    x, y = 1700, 1000
    ours, theirs = side_by_side(
        rounds,
        lambda: client.post("/computer/click_mouse", {"x": x, "y": y}),
        lambda: run(["xdotool", "mousemove", str(x), str(y), "click", "1"], env))
    results.append(report("click", ours, theirs, "xdotool mousemove+click", 30))

    # full-screen PNG while every pixel changes each frame: whole fresh captures
    ffmpeg = ["ffmpeg", "-loglevel", "error", "-f", "x11grab", "-video_size",
              f"{WIDTH}x{HEIGHT}", "-i", f"{display}+0,0", "-frames:v", "1",
              "-vcodec", "png", "-f", "image2pipe", "-"]
    for flag, name, target in (("washing", "full PNG (whole screen changing)", 15.0),
                               ("animate", "full PNG (a counter changing)", 0.0)):
        page.eval(f"window.{flag} = true")
        shots: list[str] = []

        def shot(into: list[str] = shots) -> None:
            into.append(hashlib.sha1(client.post("/computer/screenshot")).hexdigest())

        ours, theirs = side_by_side(rounds, shot, lambda: run(ffmpeg, env))
        ok = report(name, ours, theirs, "ffmpeg x11grab PNG frame", target)
        if target:
            results.append(ok)
        print(f"{'':34s} ({len(set(shots))} of {len(shots)} daemon images differ)")
        if flag == "animate":
            busy_click = statistics.median(
                timed(lambda: client.post("/computer/click_mouse", {"x": x, "y": y}))
                for _ in range(rounds))
            print(f"{'':34s} (a click while the counter changes: {busy_click:.2f} ms)")
        page.eval(f"window.{flag} = false")

    # the same with nothing changing on screen
    time.sleep(0.5)
    png_size = len(client.post("/computer/screenshot"))
    ours, theirs = side_by_side(rounds, lambda: client.post("/computer/screenshot"),
                                lambda: run(ffmpeg, env))
    report("full-screen PNG (unchanged screen)", ours, theirs, "ffmpeg x11grab PNG frame", 0)
    print(f"{'':34s} (the daemon's answer is its last image, still the screen: no capture)")
    jpeg = statistics.median(
        timed(lambda: client.post("/computer/screenshot", {"format": "jpeg"}))
        for _ in range(5))
    print(f"{'':34s} (PNG {png_size // 1024} KiB; JPEG q80 of the same screen {jpeg:.2f} ms)")

    # clipboard write + read
    sample = "Clipboard ✓ Grüße 日本 😀 " * 4

    def ours_clip() -> None:
        client.post("/computer/clipboard/write", {"text": sample})
        got = json.loads(client.post("/computer/clipboard/read"))["text"]
        assert got == sample

    def xclip_clip() -> None:
        subprocess.run(["xclip", "-selection", "clipboard", "-i", "-loops", "1"],
                       env=env, input=sample.encode(), check=True, timeout=10,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        got = run(["xclip", "-selection", "clipboard", "-o"], env).decode()
        assert got == sample

    ours, theirs = side_by_side(rounds, ours_clip, xclip_clip)
    results.append(report("clipboard write + read", ours, theirs, "xclip -i + xclip -o", 1))

    # 1,000 mixed Unicode characters with delay=0, into a focused textarea
    client.post("/computer/click_mouse", {"x": 300, "y": 600})
    wait_until(lambda: page.eval("document.activeElement.id === 'area'"), timeout=5,
               what="the textarea's focus")
    text = unicode_text(1000)
    typing_ms = timed(lambda: client.post("/computer/type", {"text": text, "delay": 0}))
    try:
        wait_until(lambda: len(page.eval("area.value")) >= len(text), timeout=10,
                   what="the typed text")
    except AssertionError:
        pass
    got = page.eval("area.value")
    intact = got == text
    differing = sum(1 for a, b in zip(got, text, strict=False) if a != b)
    print(f"{'type 1,000 mixed Unicode chars':34s} daemon {typing_ms:8.1f} ms | arrived "
          f"intact: {intact} ({len(got)} chars, {differing} differ) "
          f"{'PASS' if intact else 'FAIL'}")
    results.append(intact)
    record("type 1,000 mixed Unicode chars", typing_ms, "ms", target="arrives intact",
           ok=intact)

    time.sleep(3.0)
    after_rss = rss_mib(pid)
    rss_ok = idle_rss <= 80 and after_rss <= 80
    print(f"{'daemon RSS':34s} idle after start {idle_rss:.1f} MiB, idle after the "
          f"benchmarks {after_rss:.1f} MiB (target <= 80) {'PASS' if rss_ok else 'FAIL'}")
    results.append(rss_ok)
    record("daemon RSS after the benchmarks", after_rss, "MiB", target="<= 80", ok=rss_ok)
    return results


if __name__ == "__main__":
    sys.exit(main())
