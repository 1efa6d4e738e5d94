"""Benchmark of replays (screen recording), at 1920x1080 with a page that animates every
frame, in one run:

- through the daemon (`python -m agent`), at 10 and 30 fps: CPU used by recording (ffmpeg's
  and the daemon's own, in cores), the frame rate achieved, MB per minute;
- stop-to-download: from `POST /replays/{id}/stop` to the first byte of the 200 download,
  for a recording of `--long` seconds (60 by default);
- the encoder settings side by side at 30 fps (ffmpeg run directly with the recorder's
  command line, one setting changed at a time), against ffmpeg's defaults for libx264
  (preset medium, CRF 23, no tune) as the baseline.

"Achieved" counts the frames in the file that differ from the one before: the page changes
on every animation frame, so a frame ffmpeg did not grab in time shows up as a repeat (the
file is constant-rate, so repeats fill the gaps). The page's own paint rate is printed
beside it, since Chromium may paint slower than asked on a busy machine.

Real parts: Xvfb, Chromium, the daemon as a process, ffmpeg, ffprobe.
Run with `make bench` or `.venv/bin/python bench/replays.py [--seconds N] [--long N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.replays.recorder import record_argv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import Chromium, free_port, running_chromium, running_xvfb, wait_until

ROOT = Path(__file__).resolve().parent.parent

TOKEN = "bench-token"
WIDTH, HEIGHT = 1920, 1080

# Text, cards and a moving, colour-changing band: something like a page being used, with a
# change on every animation frame so repeated frames in the video are visible.
PAGE = """<!doctype html><meta charset=utf-8>
<style>body{margin:0;font:16px sans-serif;background:#f4f6fb}
#band{position:fixed;left:0;width:100%;height:120px;opacity:.6}
#ticker{position:fixed;right:10px;top:10px;font:28px monospace;background:#fff;padding:4px}
.card{display:inline-block;margin:8px;padding:12px;width:260px;background:#fff;
box-shadow:0 1px 3px #0003;border-radius:6px}</style>
<div id=ticker>0</div><div id=band></div><h1>Benchmark page</h1>
""" + "".join(
    f"<div class=card><b>Card {i}</b><p>Lorem ipsum dolor sit amet, consectetur adipiscing"
    f" elit. Größe, naïve café — 日本語 {i}</p></div>" for i in range(24)
) + """
<script>
window.painted = 0;
function tick() {
  window.painted++;
  ticker.textContent = String(window.painted);
  band.style.top = (window.painted * 7 % 960) + 'px';
  band.style.background = `hsl(${(window.painted * 37) % 360} 60% 50%)`;
  requestAnimationFrame(tick);
}
requestAnimationFrame(tick);
</script>"""


@dataclass
class Result:
    label: str
    cores: float
    daemon_cores: float | None
    nominal_fps: float
    achieved_fps: float
    painted_fps: float
    mb_per_min: float


class Api:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=payload, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def first_byte(self, path: str) -> tuple[int, float, http.client.HTTPResponse]:
        started = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        resp = self.conn.getresponse()
        resp.read(1)
        return resp.status, time.perf_counter() - started, resp


@contextmanager
def daemon(display: str, replays: str, log: Path) -> Iterator[tuple[psutil.Process, Api]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--port", str(port), "--display", display,
             "--api-token", TOKEN, "--host", "127.0.0.1", "--cdp-proxy-port", "0",
             "--replays-dir", replays, "--replays-max-active", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def up() -> bool:
        try:
            return Api(port).call("GET", "/health")[0] in (200, 503)
        except OSError:
            return False

    try:
        wait_until(up, timeout=30, what="the daemon to listen")
        yield psutil.Process(proc.pid), Api(port)
    finally:
        proc.terminate()
        proc.wait(30)


def painted(chromium: Chromium) -> int:
    return int(asyncio.run(chromium.evaluate("window.painted")))


def distinct_frames(path: Path) -> tuple[int, int, float]:
    """(frames, frames that differ from the one before, duration) of a video."""
    w, h = 96, 54
    raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-vf",
                          f"scale={w}:{h}", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         capture_output=True, check=True).stdout
    size = w * h
    hashes = [hashlib.blake2b(raw[i:i + size], digest_size=8).digest()
              for i in range(0, len(raw) - size + 1, size)]
    changes = sum(1 for a, b in itertools.pairwise(hashes) if a != b) + 1
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return len(hashes), changes, float(out)


def cpu_of(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def through_daemon(api: Api, daemon_proc: psutil.Process, chromium: Chromium, fps: int,
                   seconds: float, work: Path) -> Result:
    status, body = api.call("POST", "/replays", {"framerate": fps})
    assert status == 201, body
    replay_id = json.loads(body)["replay_id"]
    [ffmpeg] = [c for c in daemon_proc.children()
                if c.name() == "ffmpeg" and "x11grab" in c.cmdline()]
    time.sleep(1.0)  # past x264's start-up
    c0, d0, p0, t0 = cpu_of(ffmpeg), cpu_of(daemon_proc), painted(chromium), time.monotonic()
    time.sleep(seconds)
    c1, d1, p1, t1 = cpu_of(ffmpeg), cpu_of(daemon_proc), painted(chromium), time.monotonic()
    status, body = api.call("POST", f"/replays/{replay_id}/stop")
    assert status == 200, body
    status, body = api.call("GET", f"/replays/{replay_id}")
    assert status == 200
    video = work / f"daemon-{fps}.mp4"
    video.write_bytes(body)
    frames, changes, duration = distinct_frames(video)
    api.call("DELETE", f"/replays/{replay_id}")
    return Result(f"daemon, {fps} fps", (c1 - c0) / (t1 - t0), (d1 - d0) / (t1 - t0),
                  frames / duration, changes / duration, (p1 - p0) / (t1 - t0),
                  len(body) / 1e6 / duration * 60)


def stop_to_download(api: Api, seconds: float) -> tuple[float, float, int, str]:
    """(stop answered, first byte of the 200 download) in seconds after the stop, size,
    and the recording's id."""
    status, body = api.call("POST", "/replays", {"framerate": 10})
    assert status == 201, body
    replay_id = json.loads(body)["replay_id"]
    time.sleep(seconds)
    started = time.perf_counter()
    status, body = api.call("POST", f"/replays/{replay_id}/stop")
    stopped = time.perf_counter() - started
    assert status == 200, body
    status, _, resp = api.first_byte(f"/replays/{replay_id}")
    first = time.perf_counter() - started
    assert status == 200
    size = int(resp.headers["Content-Length"])
    resp.read()
    api.call("DELETE", f"/replays/{replay_id}")
    return stopped, first, size, replay_id


def variant_argv(display: str, fps: int, preset: str, tune: str | None, crf: str
                 ) -> list[str]:
    argv = record_argv("ffmpeg", display, fps)
    argv[argv.index("-preset") + 1] = preset
    argv[argv.index("-crf") + 1] = crf
    if tune is None:
        at = argv.index("-tune")
        del argv[at:at + 2]
    else:
        argv[argv.index("-tune") + 1] = tune
    return argv


def direct(display: str, chromium: Chromium, label: str, argv: list[str], fps: int,
           seconds: float, work: Path) -> Result:
    video = work / f"{label.replace(' ', '_').replace(',', '')}.mp4"
    with open(video, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        ps = psutil.Process(proc.pid)
        time.sleep(1.0)
        c0, p0, t0 = cpu_of(ps), painted(chromium), time.monotonic()
        time.sleep(seconds)
        c1, p1, t1 = cpu_of(ps), painted(chromium), time.monotonic()
        proc.send_signal(2)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:  # starved on a busy machine: keep its fragments
            proc.kill()
            proc.wait()
    frames, changes, duration = distinct_frames(video)
    return Result(label, (c1 - c0) / (t1 - t0), None, frames / duration, changes / duration,
                  (p1 - p0) / (t1 - t0), video.stat().st_size / 1e6 / duration * 60)


def row(r: Result) -> str:
    daemon_cores = f"{r.daemon_cores:.3f}" if r.daemon_cores is not None else "-"
    return (f"{r.label:<38} {r.cores:>6.2f} {daemon_cores:>7} {r.nominal_fps:>7.1f} "
            f"{r.achieved_fps:>8.1f} {r.painted_fps:>7.1f} {r.mb_per_min:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20,
                        help="seconds measured per setting (default 20)")
    parser.add_argument("--long", type=float, default=60,
                        help="length of the stop-to-download recording (default 60)")
    parser.add_argument("--skip-variants", action="store_true",
                        help="only the daemon's own settings")
    args = parser.parse_args()

    print(f"replays at {WIDTH}x{HEIGHT}, {psutil.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    header = (f"{'':<38} {'cores':>6} {'daemon':>7} {'fps':>7} {'achieved':>8} "
              f"{'painted':>7} {'MB/min':>7}")
    with tempfile.TemporaryDirectory(prefix="bench-replays-") as tmp, \
            running_xvfb(WIDTH, HEIGHT) as xvfb, \
            running_chromium(xvfb.name, WIDTH, HEIGHT) as chromium:
        work = Path(tmp)
        asyncio.run(chromium.open(PAGE))
        results: list[Result] = []
        log = work / "daemon.log"
        with daemon(xvfb.name, str(work / "replays"), log) as (daemon_proc, api):
            for fps in (10, 30):
                results.append(through_daemon(api, daemon_proc, chromium, fps, args.seconds,
                                              work))
            stopped, first, size, long_id = stop_to_download(api, args.long)
        print(header)
        for result in results:
            print(row(result))
        print(f"stop-to-download after a {args.long:.0f} s recording at 10 fps "
              f"({size / 1e6:.1f} MB): stop answered in {stopped:.3f} s, first byte of the "
              f"download at {first:.3f} s")
        for line in log.read_text(errors="replace").splitlines():
            if long_id in line and "finished" in line:
                print("  the daemon's log:", line.split(" - ")[-1].strip())

        if not args.skip_variants:
            print(f"\nencoder settings at 30 fps, ffmpeg run directly ({args.seconds:.0f} s "
                  "each); ours first, the baseline last")
            variants: list[tuple[str, list[str]]] = [
                ("ours: ultrafast, zerolatency, crf 28",
                 variant_argv(xvfb.name, 30, "ultrafast", "zerolatency", "28")),
                ("ultrafast, no tune, crf 28",
                 variant_argv(xvfb.name, 30, "ultrafast", None, "28")),
                ("superfast, zerolatency, crf 28",
                 variant_argv(xvfb.name, 30, "superfast", "zerolatency", "28")),
                ("veryfast, zerolatency, crf 28",
                 variant_argv(xvfb.name, 30, "veryfast", "zerolatency", "28")),
                ("ultrafast, zerolatency, crf 23",
                 variant_argv(xvfb.name, 30, "ultrafast", "zerolatency", "23")),
                ("ultrafast, zerolatency, crf 33",
                 variant_argv(xvfb.name, 30, "ultrafast", "zerolatency", "33")),
                ("baseline: libx264 defaults (medium)",
                 variant_argv(xvfb.name, 30, "medium", None, "23")),
            ]
            print(header)
            ours: Result | None = None
            for label, argv in variants:
                result = direct(xvfb.name, chromium, label, argv, 30, args.seconds, work)
                ours = ours or result
                print(row(result) + (f"   cpu x{result.cores / ours.cores:.2f}"
                                     if result is not ours else ""))
    print(f"load average {os.getloadavg()[0]:.1f} at the end (the machine is shared: "
          "figures vary between runs)")


if __name__ == "__main__":
    main()
