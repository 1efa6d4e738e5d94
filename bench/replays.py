"""Benchmark of replays (screen recording), at 1920x1080 with a page that animates every
frame, in one run:

- through the daemon (`python -m agent`), at 10 and 30 fps: CPU used by recording (ffmpeg's
  and the daemon's own, in cores), the frame rate achieved, MB per minute;
- stop-to-download: from `POST /replays/{id}/stop` to the first byte of the 200 download,
  for a recording of `--long` seconds (60 by default);
- the encoder settings side by side (the recorder's command line, one setting changed at a
  time, against libx264's defaults, preset medium and CRF 23, as the baseline), compared
  by CPU time per frame on one lossless capture of the animated screen: CPU time, unlike
  wall time, stays meaningful on a busy machine.

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
import re
import resource
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
from helpers import Chromium, running_chromium, running_xvfb
from launcher import TOKEN, running_daemon
from results import record

ROOT = Path(__file__).resolve().parent.parent

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
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=payload, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def reconnect(self) -> None:
        """A fresh connection (the daemon closes ones idle past its header timeout)."""
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        self.conn.connect()

    def first_byte(self, path: str) -> tuple[int, float, http.client.HTTPResponse]:
        started = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        resp = self.conn.getresponse()
        resp.read(1)
        return resp.status, time.perf_counter() - started, resp


@contextmanager
def daemon(display: str, replays: str, log: Path) -> Iterator[tuple[psutil.Process, Api]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    with log.open("wb") as out, running_daemon(
            "--display", display, "--replays-dir", replays, "--replays-max-active", "1",
            "--log-level", "info", env=env, output=out) as started:
        yield psutil.Process(started.pid), Api(started.port)


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
    api.reconnect()
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


VARIANTS: tuple[tuple[str, str, str | None, str], ...] = (
    # label, preset, tune, crf: ours first, the baseline last
    ("ours: ultrafast, zerolatency, crf 28", "ultrafast", "zerolatency", "28"),
    ("ultrafast, no tune, crf 28", "ultrafast", None, "28"),
    ("superfast, zerolatency, crf 28", "superfast", "zerolatency", "28"),
    ("veryfast, zerolatency, crf 28", "veryfast", "zerolatency", "28"),
    ("ultrafast, zerolatency, crf 23", "ultrafast", "zerolatency", "23"),
    ("ultrafast, zerolatency, crf 33", "ultrafast", "zerolatency", "33"),
    ("baseline: libx264 defaults (medium)", "medium", None, "23"),
)


def encode_argv(source: Path, dest: Path, preset: str, tune: str | None, crf: str
                ) -> list[str]:
    """The recorder's encoding (from its own command line), reading a file instead of X."""
    argv = record_argv("ffmpeg", ":0", 30)
    argv[argv.index("-preset") + 1] = preset
    argv[argv.index("-crf") + 1] = crf
    if tune is None:
        at = argv.index("-tune")
        del argv[at:at + 2]
    else:
        argv[argv.index("-tune") + 1] = tune
    at = argv.index("-f")  # "-f x11grab ... -i :0" becomes "-i source"
    del argv[at:argv.index("-i") + 2]
    argv[at:at] = ["-i", str(source)]
    argv[-1] = str(dest)
    argv.insert(1, "-y")
    return argv


def child_cpu(argv: list[str]) -> tuple[float, str]:
    """CPU seconds (user + system) a command takes, and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr[-500:]}")
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            result.stderr)


def frames_in(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def encoder_settings(display: str, seconds: float, work: Path) -> None:
    """CPU time per frame, which a busy machine changes far less than wall time: grab the
    animated screen once (lossless, every frame kept), then encode that same input with
    each setting. Cores at 30 fps = 30 x (grab + encode CPU seconds per frame)."""
    source = work / "screen.mkv"
    grab_cpu, log = child_cpu(["ffmpeg", "-nostdin", "-v", "info", "-f", "x11grab",
                               "-framerate", "30", "-i", display, "-t", str(seconds),
                               "-c:v", "rawvideo", "-f", "null", "-"])
    counts = re.findall(r"frame=\s*(\d+)", log)
    grabbed = int(counts[-1]) if counts else 0
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "x11grab",
                    "-framerate", "30", "-i", display, "-t", str(seconds), "-c:v",
                    "libx264rgb", "-preset", "ultrafast", "-qp", "0", str(source)],
                   check=True)
    grab_per_frame = grab_cpu / max(grabbed, 1)  # as many as the machine let it grab
    decode_cpu, _ = child_cpu(["ffmpeg", "-nostdin", "-v", "error", "-i", str(source),
                               "-f", "null", "-"])
    frames = frames_in(source)
    print(f"\nencoder settings, offline: {frames} frames of the animated 1920x1080 screen "
          f"grabbed losslessly in {seconds:.0f} s (of {seconds * 30:.0f} asked for: the fewer, "
          "the more each differs from the one before, and the dearer it is to encode than "
          "in a real 30 fps recording), encoded with each setting; grabbing costs "
          f"{grab_per_frame * 1000:.1f} ms CPU per frame, decoding the input "
          f"{decode_cpu / frames * 1000:.1f} ms (subtracted)")
    print(f"{'':<38} {'ms/frame':>8} {'cores@30':>8} {'cores@10':>8} {'KB/frame':>8}")
    ours = 0.0
    for index, (label, preset, tune, crf) in enumerate(VARIANTS):
        out = work / "variant.mp4"
        cpu, _ = child_cpu(encode_argv(source, out, preset, tune, crf))
        per_frame = max(cpu - decode_cpu, 0.0) / frames
        ours = ours or per_frame
        kb_frame = out.stat().st_size / 1e3 / frames
        cores30 = 30 * (per_frame + grab_per_frame)
        cores10 = 10 * (per_frame + grab_per_frame)
        print(f"{label:<38} {per_frame * 1000:>8.1f} {cores30:>8.2f} {cores10:>8.2f} "
              f"{kb_frame:>8.1f}" + (f"   encode x{per_frame / ours:.2f}" if index else ""))
        if index == len(VARIANTS) - 1:  # the baseline, against ours
            record("encode CPU per frame, the recorder's settings", ours * 1000, "ms",
                   baseline=per_frame * 1000, ratio=per_frame / ours if ours else None)


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
            fps = f"{round(result.nominal_fps)} fps"
            record(f"recording at {fps}: CPU (ffmpeg and daemon)", result.cores, "cores")
            record(f"recording at {fps}: frames achieved", result.achieved_fps, "fps",
                   baseline=result.painted_fps)
            record(f"recording at {fps}: size", result.mb_per_min, "MB/min")
        print(f"stop-to-download after a {args.long:.0f} s recording at 10 fps "
              f"({size / 1e6:.1f} MB): stop answered in {stopped:.3f} s, first byte of the "
              f"download at {first:.3f} s")
        record(f"stop -> first byte of the download, {args.long:.0f} s recording", first, "s")
        for line in log.read_text(errors="replace").splitlines():
            if long_id in line and "finished" in line:
                print("  the daemon's log:", line.split(" - ")[-1].strip())

        if not args.skip_variants:
            encoder_settings(xvfb.name, args.seconds, work)
    print(f"load average {os.getloadavg()[0]:.1f} at the end (the machine is shared: "
          "figures vary between runs)")


if __name__ == "__main__":
    main()
