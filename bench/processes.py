"""Benchmark of the processes slice against a real daemon (`python -m agent`), printed side
by side in one run:

1. `exec` of `true` through HTTP against `subprocess.run(["true"])` in this Python
   (target: HTTP median at most 10 ms);
2. streamed output throughput of `head -c 1G /dev/zero` through the SSE stream, counting
   decoded bytes (target: at least 100 MB/s);
3. 100 processes spawned at once, each writing 10 MB, every byte checked by SHA-256.

Usage: python bench/processes.py [--exec-runs N] [--stream-bytes N] [--procs N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from process_helpers import browser_user_env  # noqa: E402

TOKEN = "bench-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    def __init__(self, max_processes: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--host", "127.0.0.1", "--port", str(self.port),
             "--api-token", TOKEN, "--log-level", "warning", "--cdp-proxy-port", "0",
             "--max-processes", str(max_processes)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._log,
            env={**os.environ, **browser_user_env()},
        )
        self.peak_rss = 0
        self._sampler: asyncio.Task[None] | None = None

    async def wait_up(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with session.get("/health") as resp:
                    await resp.read()
                    return
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the daemon did not start") from None
                await asyncio.sleep(0.05)

    async def _sample(self) -> None:
        me = psutil.Process(self.proc.pid)
        while True:
            self.peak_rss = max(self.peak_rss, me.memory_info().rss)
            await asyncio.sleep(0.05)

    def watch_memory(self) -> None:
        self.peak_rss = 0
        self._sampler = asyncio.ensure_future(self._sample())

    def stop_watching(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


async def stream_output(session: aiohttp.ClientSession, process_id: str,
                        digest: Any = None, go: bool = False) -> tuple[int, int, int | None]:
    """Read a process's SSE stream to the end: (decoded bytes, gap events, exit code).
    With `go`, once the stream is open a line on stdin tells the process to start, so that
    no output is written before its reader is there."""
    size = gaps = 0
    exit_code: int | None = None
    async with session.get(f"/process/{process_id}/stdout/stream",
                           timeout=aiohttp.ClientTimeout(total=None)) as resp:
        resp.raise_for_status()
        if go:
            async with session.post(f"/process/{process_id}/stdin",
                                    json={"data_b64": base64.b64encode(b"go\n").decode()}) as r:
                r.raise_for_status()
        buf = bytearray()
        scan = 0
        async for chunk in resp.content.iter_any():
            buf += chunk
            while True:
                end = buf.find(b"\n\n", scan)
                if end < 0:
                    scan = max(len(buf) - 1, 0)
                    break
                frame = bytes(buf[:end])
                del buf[:end + 2]
                scan = 0
                start = frame.find(b"data: ")
                if start < 0:
                    continue
                event = json.loads(frame[start + 6:])
                if "data_b64" in event:
                    data = base64.b64decode(event["data_b64"])
                    size += len(data)
                    if digest is not None:
                        digest.update(data)
                elif event.get("event") == "gap":
                    gaps += 1
                elif event.get("event") == "exit":
                    exit_code = int(event["exit_code"])
    return size, gaps, exit_code


async def spawn(session: aiohttp.ClientSession, **body: Any) -> str:
    async with session.post("/process/spawn", json=body) as resp:
        payload = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"spawn failed: {payload}")
        return str(payload["process_id"])


async def bench_exec(session: aiohttp.ClientSession, runs: int) -> dict[str, float]:
    for _ in range(10):  # warm up the connection and the code paths
        async with session.post("/process/exec", json={"command": "true"}) as resp:
            await resp.read()
    http = []
    for _ in range(runs):
        started = time.perf_counter()
        async with session.post("/process/exec", json={"command": "true"}) as resp:
            body = await resp.json()
        http.append((time.perf_counter() - started) * 1000)
        assert body["exit_code"] == 0, body
    http.sort()
    return {"http_median": statistics.median(http), "http_p90": http[int(len(http) * 0.9)]}


def bench_local_exec(runs: int) -> float:
    """Median ms of `subprocess.run(["true"])` in this Python: the reference."""
    local = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["true"], check=True)
        local.append((time.perf_counter() - started) * 1000)
    return statistics.median(local)


async def bench_stream(session: aiohttp.ClientSession, daemon: Daemon,
                       total: int) -> dict[str, float]:
    daemon.watch_memory()
    process_id = await spawn(session, command="sh",
                             args=["-c", f"read go; exec head -c {total} /dev/zero"])
    started = time.perf_counter()
    size, gaps, exit_code = await stream_output(session, process_id, go=True)
    elapsed = time.perf_counter() - started
    daemon.stop_watching()
    assert exit_code == 0, exit_code
    return {"bytes": size, "gaps": gaps, "seconds": elapsed,
            "mb_s": size / elapsed / 1e6, "peak_rss_mb": daemon.peak_rss / 1e6,
            "complete": float(size == total)}


async def bench_many(session: aiohttp.ClientSession, daemon: Daemon, procs: int,
                     each: int) -> dict[str, float]:
    expected = {}
    for i in range(procs):
        line = f"proc-{i}\n".encode()
        content = (line * (each // len(line) + 1))[:each]
        expected[i] = hashlib.sha256(content).hexdigest()

    async def one(i: int) -> tuple[int, int, bool, int | None]:
        process_id = await spawn(session, command="sh",
                                 args=["-c", f"read go; yes proc-{i} | head -c {each}"])
        digest = hashlib.sha256()
        size, gaps, exit_code = await stream_output(session, process_id, digest, go=True)
        return size, gaps, digest.hexdigest() == expected[i], exit_code

    daemon.watch_memory()
    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(procs)))
    elapsed = time.perf_counter() - started
    daemon.stop_watching()
    total = sum(r[0] for r in results)
    return {
        "bytes": total,
        "expected_bytes": procs * each,
        "gaps": sum(r[1] for r in results),
        "digests_ok": sum(r[2] for r in results),
        "exits_ok": sum(r[3] == 0 for r in results),
        "seconds": elapsed,
        "mb_s": total / elapsed / 1e6,
        "peak_rss_mb": daemon.peak_rss / 1e6,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exec-runs", type=int, default=200)
    parser.add_argument("--stream-bytes", type=int, default=1 << 30)
    parser.add_argument("--procs", type=int, default=100)
    parser.add_argument("--each-bytes", type=int, default=10_000_000)
    args = parser.parse_args()

    daemon = Daemon(max_processes=max(args.procs + 8, 64))
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(daemon.base, headers=AUTH,
                                         connector=connector) as session:
            await daemon.wait_up(session)
            ex = await bench_exec(session, args.exec_runs)
            ex["local_median"] = await asyncio.to_thread(bench_local_exec, args.exec_runs)
            st = await bench_stream(session, daemon, args.stream_bytes)
            many = await bench_many(session, daemon, args.procs, args.each_bytes)
    finally:
        daemon.stop()

    ok = {
        "exec": ex["http_median"] <= 10,
        "stream": st["mb_s"] >= 100 and st["complete"] == 1 and st["gaps"] == 0,
        "many": many["bytes"] == many["expected_bytes"] and many["gaps"] == 0
        and many["digests_ok"] == args.procs and many["exits_ok"] == args.procs,
    }
    rows = [
        ("measure", "through the daemon", "reference", "result"),
        (f"exec `true`, {args.exec_runs} runs",
         f"median {ex['http_median']:.2f} ms, p90 {ex['http_p90']:.2f} ms",
         f"subprocess.run median {ex['local_median']:.2f} ms",
         f"{'OK' if ok['exec'] else 'MISS'} (target: median <= 10 ms)"),
        (f"stream `head -c {args.stream_bytes} /dev/zero`",
         f"{st['mb_s']:.0f} MB/s decoded ({st['bytes']} B in {st['seconds']:.2f} s, "
         f"{st['gaps']} gaps)",
         f"daemon peak RSS {st['peak_rss_mb']:.0f} MB",
         f"{'OK' if ok['stream'] else 'MISS'} (target: >= 100 MB/s)"),
        (f"{args.procs} spawns x {args.each_bytes} B at once",
         f"{many['bytes']}/{many['expected_bytes']} B, {many['digests_ok']}/{args.procs} "
         f"sha256 ok, {many['gaps']} gaps, {many['seconds']:.2f} s",
         f"{many['mb_s']:.0f} MB/s, daemon peak RSS {many['peak_rss_mb']:.0f} MB",
         f"{'OK' if ok['many'] else 'MISS'} (target: every byte)"),
    ]
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(3)]
    print(f"processes benchmark: daemon `python -m agent`, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}")
    for row in rows:
        cells = zip(row[:3], widths, strict=True)
        print("".join(cell.ljust(width) for cell, width in cells) + row[3])
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
