"""Benchmark of the files slice, side by side in one run:

- a 1 GiB write (PUT /fs/write_file) and read (GET /fs/read_file) through the daemon,
  against `cp` of the same file on the same disk (curl is the HTTP client, so the figures
  are the daemon's, not a Python client's);
- the daemon's peak RSS above idle during those transfers, and during a 1 GiB directory
  zip download (GET /fs/download_dir_zip);
- the median latency from a file write to its watch event reaching an SSE reader;
- whether 10,000 files created in a watched directory give 10,000 CREATE events (reader
  connected) or an explicit OVERFLOW marker (reader connecting after the buffer filled).

Real parts: the daemon (`python -m agent`) as a process, real files on the local disk.
Run with `make bench` or `.venv/bin/python bench/files.py [--size-mib N] [--dir DIR]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from launcher import AUTH, TOKEN, running_daemon
from process_helpers import browser_user
from results import record

MIB = 1 << 20


class PeakRSS:
    """Samples a process's resident memory every few milliseconds in a thread."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def daemon(workdir: Path) -> Iterator[tuple[str, int]]:
    with running_daemon(cwd=workdir) as started:
        yield started.base, started.pid


def timed_run(argv: list[str]) -> float:
    os.sync()  # no dirty pages of an earlier step left to flush during this one
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def make_source(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)  # incompressible, so the zip cannot shortcut
    with open(path, "wb") as out:
        for offset in range(0, size, len(block)):
            out.write(block[:min(len(block), size - offset)])


def url(base: str, endpoint: str, **query: str) -> str:
    return f"{base}{endpoint}?{urllib.parse.urlencode(query)}"


def transfers(base: str, pid: int, work: Path, size: int, rounds: int) -> dict[str, Any]:
    """Each transfer `rounds` times, interleaved with cp; medians of the times, peaks of
    the RSS (this machine's disk and CPU are shared, so single runs are noisy)."""
    src = work / "source.bin"
    make_source(src, size)
    idle = psutil.Process(pid).memory_info().rss
    curl = ["curl", "-sS", "--fail", "-H", f"Authorization: Bearer {TOKEN}"]
    times: dict[str, list[float]] = {"cp": [], "write": [], "read": [], "read_null": [],
                                     "zip": []}
    peaks = {"write": 0, "read": 0, "zip": 0}
    zipdir = work / "zipdir"
    (zipdir / "nested" / "empty").mkdir(parents=True)
    for i in range(100):
        (zipdir / f"small-{i}.txt").write_text(f"file {i}\n" * 100)
    zipped = zipdir / "nested" / "source.bin"
    zip_ok = True
    for _ in range(rounds):
        times["cp"].append(timed_run(["cp", str(src), str(work / "copy-cp.bin")]))
        with PeakRSS(pid) as rss:
            times["write"].append(timed_run(
                [*curl, "-T", str(src),
                 url(base, "/fs/write_file", path=str(work / "copy-api.bin"))]))
        peaks["write"] = max(peaks["write"], rss.peak)
        assert (work / "copy-api.bin").stat().st_size == size
        with PeakRSS(pid) as rss:
            times["read"].append(timed_run(
                [*curl, "-o", str(work / "read-api.bin"),
                 url(base, "/fs/read_file", path=str(src))]))
            times["read_null"].append(timed_run(
                [*curl, "-o", "/dev/null", url(base, "/fs/read_file", path=str(src))]))
        peaks["read"] = max(peaks["read"], rss.peak)
        assert (work / "read-api.bin").stat().st_size == size
        for name in ("copy-cp.bin", "copy-api.bin", "read-api.bin"):
            (work / name).unlink()
        os.rename(src, zipped)
        with PeakRSS(pid) as rss:
            times["zip"].append(timed_run(
                [*curl, "-o", str(work / "dir.zip"),
                 url(base, "/fs/download_dir_zip", path=str(zipdir))]))
        peaks["zip"] = max(peaks["zip"], rss.peak)
        os.rename(zipped, src)
        check = subprocess.run(
            [sys.executable, "-c", "import sys, zipfile; "
             "print(zipfile.ZipFile(sys.argv[1]).testzip())", str(work / "dir.zip")],
            capture_output=True, text=True, check=True)
        zip_ok = zip_ok and check.stdout.strip() == "None"
        zip_size = (work / "dir.zip").stat().st_size
        (work / "dir.zip").unlink()
    shutil.rmtree(zipdir)
    src.unlink()
    results: dict[str, Any] = {key: statistics.median(values) for key, values in times.items()}
    results.update({f"{key}_rss": value for key, value in peaks.items()})
    results.update(idle_rss=idle, zip_ok=zip_ok, zip_size=zip_size, samples=times)
    return results


async def sse_frames(resp: aiohttp.ClientResponse) -> Any:
    data = None
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and data is not None:
            yield data
            data = None


async def start_watch(session: aiohttp.ClientSession, base: str, path: Path) -> str:
    async with session.post(f"{base}/fs/watch", json={"path": str(path)}) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["watch_id"])


async def watch_latency(base: str, work: Path, rounds: int) -> list[float]:
    watched = work / "latency"
    watched.mkdir()
    target = watched / "file.txt"
    target.write_text("")
    async with aiohttp.ClientSession(headers=AUTH) as session:
        watch_id = await start_watch(session, base, watched)
        async with session.get(f"{base}/fs/watch/{watch_id}/events") as resp:
            frames = sse_frames(resp).__aiter__()
            samples = []
            for i in range(rounds):
                await asyncio.sleep(0.15)  # past the per-path WRITE interval
                started = time.perf_counter()
                fd = os.open(target, os.O_WRONLY | os.O_APPEND)
                os.write(fd, f"{i}\n".encode())
                os.close(fd)
                event = await asyncio.wait_for(frames.__anext__(), 5)
                samples.append((time.perf_counter() - started) * 1000)
                assert event["type"] == "WRITE", event
    shutil.rmtree(watched)
    return samples


def create_files(directory: Path, count: int) -> None:
    for i in range(count):
        os.close(os.open(directory / f"f{i:05}", os.O_CREAT | os.O_WRONLY, 0o644))


async def count_events(frames: Any, expected: int, timeout: float) -> tuple[int, list[Any]]:
    creates, markers = 0, []

    async def read() -> None:
        nonlocal creates
        async for event in frames:
            if event["type"] == "CREATE":
                creates += 1
            elif event["type"] == "OVERFLOW":
                markers.append(event)
            if creates + sum(m.get("missed") or 0 for m in markers) >= expected:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        pass
    return creates, markers


async def many_files(base: str, work: Path, count: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession(headers=AUTH) as session:
        # A reader connected while the files are created.
        live = work / "live"
        live.mkdir()
        watch_id = await start_watch(session, base, live)
        async with session.get(f"{base}/fs/watch/{watch_id}/events") as resp:
            started = time.perf_counter()
            creating = asyncio.create_task(asyncio.to_thread(create_files, live, count))
            results["live"] = await count_events(sse_frames(resp), count, 60)
            results["live_s"] = time.perf_counter() - started
            await creating
        # A reader that connects only after all the files were created.
        late = work / "late"
        late.mkdir()
        watch_id = await start_watch(session, base, late)
        await asyncio.to_thread(create_files, late, count)
        await asyncio.sleep(1.0)  # let the daemon log every event before connecting
        async with session.get(f"{base}/fs/watch/{watch_id}/events") as resp:
            results["late"] = await count_events(sse_frames(resp), count, 60)
    shutil.rmtree(live)
    shutil.rmtree(late)
    return results


def mib(value: float) -> str:
    return f"{value / MIB:8.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="transfer size (1024)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--files", type=int, default=10_000, help="files for the watch test")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each transfer (3)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="bench-files-", dir=args.dir))
    user = browser_user()
    if user is not None:  # the daemon acts as the browser user: its directory
        shutil.chown(work, user, user)
        work.chmod(0o755)
    try:
        with daemon(work) as (base, pid):
            t = transfers(base, pid, work, size, args.rounds)
            latency = asyncio.run(watch_latency(base, work, 50))
            many = asyncio.run(many_files(base, work, args.files))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gib = size / (1 << 30)
    print(f"files bench: {args.size_mib} MiB transfers on {work.parent} (same disk), "
          f"curl as the client, median of {args.rounds} interleaved rounds")
    print(f"{'operation':<44} {'time':>9} {'rate':>12} {'vs cp':>8}   all rounds")
    for name, key in (("cp of the file (baseline)", "cp"),
                      ("PUT /fs/write_file (streamed, atomic)", "write"),
                      ("GET /fs/read_file (sendfile) to disk", "read"),
                      ("GET /fs/read_file to /dev/null", "read_null"),
                      ("GET /fs/download_dir_zip to disk", "zip")):
        seconds = t[key]
        rounds = " ".join(f"{v:.2f}" for v in t["samples"][key])
        print(f"{name:<44} {seconds:8.2f}s {gib * 1024 / seconds:8.0f} MiB/s "
              f"{seconds / t['cp']:7.2f}x   {rounds}")
        if key != "cp":
            record(f"{name}, {args.size_mib} MiB", gib * 1024 / seconds, "MiB/s",
                   baseline=gib * 1024 / t["cp"], ratio=t["cp"] / seconds)
    print(f"daemon RSS idle {mib(t['idle_rss'])}; peak above idle: "
          f"write {mib(t['write_rss'] - t['idle_rss'])}, "
          f"read {mib(t['read_rss'] - t['idle_rss'])}, "
          f"dir zip {mib(t['zip_rss'] - t['idle_rss'])} (limit 100 MiB)")
    print(f"dir zip: {t['zip_size'] / MIB:.0f} MiB archive, entries verified: {t['zip_ok']}")
    ordered = sorted(latency)
    print(f"write → watch event at the SSE reader: median {statistics.median(latency):.2f} ms, "
          f"p90 {ordered[int(len(ordered) * 0.9) - 1]:.2f} ms, max {ordered[-1]:.2f} ms "
          f"({len(latency)} writes; target ≤ 100 ms)")
    creates, markers = many["live"]
    print(f"{args.files} files created, reader connected: {creates} CREATE events, "
          f"{len(markers)} overflow markers, in {many['live_s']:.2f}s")
    creates, markers = many["late"]
    missed = sum(m.get("missed") or 0 for m in markers)
    print(f"{args.files} files created, reader connecting afterwards: {creates} CREATE events "
          f"+ {len(markers)} OVERFLOW marker(s) reporting {missed} missed "
          f"(buffer 4096 events; {creates + missed} accounted for)")

    live_creates, live_markers = many["live"]
    peak = max(t["write_rss"], t["read_rss"], t["zip_rss"]) - t["idle_rss"]
    watch_ms = statistics.median(latency)
    # (figure, value, unit, target, met)
    checks = [
        ("daemon RSS above idle (write, read, dir zip)", peak / MIB, "MiB", "<= 100 MiB",
         peak <= 100 * MIB),
        ("dir zip entries verified", float(bool(t["zip_ok"])), "", "all", bool(t["zip_ok"])),
        ("write -> watch event at the SSE reader (median)", watch_ms, "ms", "<= 100 ms",
         watch_ms <= 100),
        (f"CREATE events at a connected reader ({args.files} files)", float(live_creates),
         f"/{args.files}", "every one", live_creates == args.files and not live_markers),
        (f"a late reader: events + missed ({args.files} files)", float(creates + missed),
         f"/{args.files}", "every one", creates + missed == args.files),
    ]
    for name, value, unit, target, ok in checks:
        print(f"{'OK  ' if ok else 'MISS'} {name} (target: {target})")
        record(name, value, unit, target=target, ok=ok)
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
