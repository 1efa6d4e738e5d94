"""The daemon, started for real as `python -m agent`, leaves no process behind when it
stops: spawned trees (also ones that ignore TERM), terminals with jobs, and an exec in
flight all get TERM, then KILL after the grace period."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import BinaryIO

import aiohttp
from helpers import async_wait_until, free_port
from process_helpers import b64, processes_with_env

TOKEN = "shutdown-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[2]


def start_daemon(port: int, log_file: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "--host", "127.0.0.1", "--port", str(port),
         "--api-token", TOKEN, "--kill-grace", "1", "--display", ":0",
         "--cdp-proxy-port", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file,
    )


async def test_no_orphan_after_the_daemon_stops(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "daemon.log"
    log_file = log_path.open("wb")
    marker = f"AGENT_TEST_MARKER_{uuid.uuid4().hex}"
    daemon = start_daemon(port, log_file)
    log_file.close()
    base = f"http://127.0.0.1:{port}"
    env = {marker: "1"}
    try:
        async with aiohttp.ClientSession(base, headers=AUTH) as session:

            async def up() -> bool:
                try:
                    async with session.get("/health") as resp:
                        return resp.status in (200, 503)
                except aiohttp.ClientConnectionError:
                    return False

            await async_wait_until(up, timeout=30, what="the daemon to listen")

            async def start(body: dict[str, object]) -> str:
                async with session.post("/process/spawn", json={**body, "env": env}) as resp:
                    payload = await resp.json()
                    assert resp.status == 200, payload
                    return str(payload["process_id"])

            await start({"command": "sh", "args": ["-c", "sleep 301 & sleep 301 & wait"]})
            await start({"command": "sh", "args": ["-c", "trap '' TERM; sleep 302 & wait"]})
            shell = await start({"command": "bash", "args": ["--norc", "-i"],
                                 "allocate_tty": True})
            async with session.post(f"/process/{shell}/stdin",
                                    json={"data_b64": b64("sleep 303 & sleep 304\n")}) as resp:
                assert resp.status == 200
            exec_call = asyncio.ensure_future(session.post("/process/exec", json={
                "command": "sh", "args": ["-c", "sleep 305 & sleep 305"], "env": env}))

            # 2 + 2 + 1 + 3 + 2 processes carry the marker.
            await async_wait_until(lambda: len(processes_with_env(marker)) >= 10,
                                   timeout=15, what="every test process to start")
            assert daemon.poll() is None

            started = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            await asyncio.to_thread(daemon.wait, 30)
            stopped_in = time.monotonic() - started
            with_exec_answer = await asyncio.gather(exec_call, return_exceptions=True)
            assert with_exec_answer  # answered or cut off; either way it is over
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    stderr = log_path.read_text()
    assert daemon.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    # The TERM-ignoring tree needs the grace period, nothing waits much longer.
    assert stopped_in < 15, stderr
    assert processes_with_env(marker) == [], "orphans left after the daemon stopped"
