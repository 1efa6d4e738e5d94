"""The daemon, started for real as `python -m agent`, leaves no process behind when it
stops: spawned trees (also ones that ignore TERM), terminals with jobs, an exec in flight,
and descendants that left their session (adopted by the daemon as a child subreaper) all
get TERM, then KILL after the grace period. Adopted orphans are reaped while it runs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import pytest
from helpers import SSEReader, async_wait_until, free_port
from process_helpers import b64, browser_user_env, pid_alive, processes_with_env

TOKEN = "shutdown-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[2]


def start_daemon(port: int, log_file: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "--host", "127.0.0.1", "--port", str(port),
         "--api-token", TOKEN, "--kill-grace", "1", "--display", ":0",
         "--cdp-proxy-port", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file,
        env={**os.environ, **browser_user_env()},
    )


def stat_fields(pid: int) -> list[bytes] | None:
    """(state, ppid, pgrp, session, ...) of a process; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def zombie_children(pid: int) -> list[int]:
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in children.read_text().split():
                fields = stat_fields(int(child))
                if fields is not None and fields[0] == b"Z":
                    found.append(int(child))
    return found


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class Daemon:
    def __init__(self, proc: subprocess.Popen[bytes], session: aiohttp.ClientSession,
                 env: dict[str, str]) -> None:
        self.proc = proc
        self.session = session
        self.env = env

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(path, json={**body, "env": self.env}) as resp:
            payload = await resp.json()
            assert resp.status == 200, payload
            return dict(payload)

    async def status(self, process_id: str) -> dict[str, Any]:
        async with self.session.get(f"/process/{process_id}/status") as resp:
            payload = await resp.json()
            assert resp.status == 200, payload
            return dict(payload)

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 30)


@pytest.fixture
def marker() -> Iterator[str]:
    """An environment variable name that tags the test's processes; whatever a failed
    test left behind is killed afterwards."""
    name = f"AGENT_TEST_MARKER_{uuid.uuid4().hex}"
    yield name
    for pid in processes_with_env(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def running_daemon(tmp_path: Path, marker: str) -> AsyncIterator[Daemon]:
    """A real daemon; on leaving, it must have stopped cleanly."""
    port = free_port()
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log_file:
        proc = start_daemon(port, log_file)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=AUTH) as session:

            async def up() -> bool:
                try:
                    async with session.get("/health") as resp:
                        return resp.status in (200, 503)
                except aiohttp.ClientConnectionError:
                    return False

            await async_wait_until(up, timeout=30, what="the daemon to listen")
            yield Daemon(proc, session, {marker: "1"})
    finally:
        if proc.poll() is None:  # the test failed: still stop its children
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stderr = log_path.read_text()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


async def test_no_orphan_after_the_daemon_stops(tmp_path: Path, marker: str) -> None:
    async with running_daemon(tmp_path, marker) as daemon:
        for args in (["-c", "sleep 301 & sleep 301 & wait"],
                     ["-c", "trap '' TERM; sleep 302 & wait"]):
            await daemon.call("/process/spawn", {"command": "sh", "args": args})
        shell = await daemon.call("/process/spawn", {
            "command": "bash", "args": ["--norc", "-i"], "allocate_tty": True})
        async with daemon.session.post(f"/process/{shell['process_id']}/stdin",
                                       json={"data_b64": b64("sleep 303 & sleep 304\n")}) as resp:
            assert resp.status == 200
        exec_call = asyncio.ensure_future(daemon.call("/process/exec", {
            "command": "sh", "args": ["-c", "sleep 305 & sleep 305"]}))

        # 2 + 2 + 1 + 3 + 2 processes carry the marker.
        await async_wait_until(lambda: len(processes_with_env(marker)) >= 10,
                               timeout=15, what="every test process to start")
        assert daemon.proc.poll() is None

        started = time.monotonic()
        await daemon.stop()
        stopped_in = time.monotonic() - started
        # the exec was answered or cut off; either way it is over
        await asyncio.gather(exec_call, return_exceptions=True)
    # The TERM-ignoring tree needs the grace period, nothing waits much longer.
    assert stopped_in < 15
    assert processes_with_env(marker) == [], "orphans left after the daemon stopped"


async def test_processes_that_left_their_session_are_stopped_too(tmp_path: Path,
                                                                 marker: str) -> None:
    files = [tmp_path / f"escapee{n}.pid" for n in range(3)]
    scripts = [
        # A grandchild in a session of its own; its parent stays.
        f'setsid sh -c "echo \\$\\$ > {files[0]}; exec sleep 1000" & sleep 1000',
        # A daemonizing double fork: the middle process exits, its child is orphaned.
        f"setsid sh -c 'sleep 1000 & echo $! > {files[1]}' & sleep 1000",
        # An escapee that ignores TERM and keeps forking, until KILLed.
        f"setsid sh -c 'trap \"\" TERM; echo $$ > {files[2]}; "
        "while :; do sleep 0.2; done' & sleep 1000",
    ]
    async with running_daemon(tmp_path, marker) as daemon:
        spawned = [await daemon.call("/process/spawn", {"command": "sh", "args": ["-c", s]})
                   for s in scripts]
        await async_wait_until(lambda: all(read_pid(f) for f in files), timeout=15,
                               what="every escapee to write its pid")
        escapees = [read_pid(f) for f in files]
        assert all(isinstance(pid, int) for pid in escapees)
        for pid, proc in zip(escapees, spawned, strict=True):
            assert pid is not None
            assert (await daemon.status(proc["process_id"]))["state"] == "running"
            fields = stat_fields(pid)
            assert fields is not None and fields[0] != b"Z"
            # It left the session the daemon started the process in.
            assert int(fields[3]) != proc["pid"] == os.getsid(proc["pid"])
        # The double-forked one was orphaned at once, and adopted by the daemon, not init.
        assert escapees[1] is not None
        await async_wait_until(
            lambda: (stat_fields(escapees[1]) or [b"", b"0"])[1] == str(daemon.proc.pid).encode(),
            timeout=10, what="the daemon to adopt the orphan")

        started = time.monotonic()
        await daemon.stop()
        stopped_in = time.monotonic() - started
    assert stopped_in < 15
    for pid in escapees:
        assert pid is not None
        assert not pid_alive(pid), f"escapee {pid} survived the daemon"
        # Reaped by the daemon before it exited, not left a zombie for init to collect.
        fields = stat_fields(pid)
        assert fields is None or fields[1] != b"1", f"escapee {pid} left a zombie of init"
    assert processes_with_env(marker) == [], "orphans left after the daemon stopped"


async def test_orphans_are_reaped_and_exit_codes_stay_right(tmp_path: Path,
                                                            marker: str) -> None:
    pid_file = tmp_path / "orphan.pid"
    async with running_daemon(tmp_path, marker) as daemon:
        leader = await daemon.call("/process/spawn", {"command": "sh", "args": [
            "-c", f'sh -c "echo \\$\\$ > {pid_file}; exec sleep 1000" & exit 5']})
        await async_wait_until(lambda: read_pid(pid_file), timeout=15,
                               what="the orphan to write its pid")
        orphan = read_pid(pid_file)
        assert orphan is not None

        async def leader_exit() -> Any:
            state = await daemon.status(leader["process_id"])
            return state["state"] == "exited" and state

        assert (await async_wait_until(leader_exit, timeout=15))["exit_code"] == 5
        await async_wait_until(
            lambda: (stat_fields(orphan) or [b"", b"0"])[1] == str(daemon.proc.pid).encode(),
            timeout=10, what="the daemon to adopt the orphan")

        # Many children exiting at once while the adopted one dies: each status is its own.
        os.kill(orphan, signal.SIGKILL)
        execs = [daemon.call("/process/exec", {"command": "sh", "args": ["-c", f"exit {n}"]})
                 for n in range(12)]
        spawns = [await daemon.call("/process/spawn", {"command": "sh", "args": [
                      "-c", f"sleep 1000 & exit {20 + n}"]}) for n in range(4)]
        results = await asyncio.gather(*execs)
        assert [r["exit_code"] for r in results] == list(range(12))
        for n, proc in enumerate(spawns):

            async def exited(process_id: str = proc["process_id"]) -> Any:
                state = await daemon.status(process_id)
                return state["state"] == "exited" and state

            assert (await async_wait_until(exited, timeout=15))["exit_code"] == 20 + n

        await async_wait_until(lambda: stat_fields(orphan) is None, timeout=10,
                               what="the daemon to reap the orphan that exited")
        await async_wait_until(lambda: not zombie_children(daemon.proc.pid), timeout=10,
                               what="no zombie child of the daemon")
        # The orphaned `sleep`s of the spawned shells are adopted and alive until the stop.
        assert len(processes_with_env(marker)) == 4
        await daemon.stop()
    assert processes_with_env(marker) == [], "orphans left after the daemon stopped"


async def test_sigterm_under_load_ends_every_client_cleanly(tmp_path: Path,
                                                           marker: str) -> None:
    """SIGTERM while output streams are followed, uploads and a file write are half sent,
    and spawns keep coming: every stream ends with its process's exit event, every upload
    is placed whole or not at all (and leaves no staging file), spawns are refused or
    answered, and the daemon exits 0 within its grace time."""
    dest = tmp_path / "dest"
    dest.mkdir()
    owner = os.stat(tmp_path)  # the browser user's, as file operations act as that user
    os.chown(dest, owner.st_uid, owner.st_gid)
    first_part = os.urandom(1 << 20)
    hold = asyncio.Event()  # the half-sent bodies never finish on their own

    async def half_sent() -> AsyncIterator[bytes]:
        yield first_part
        await hold.wait()
        yield b"never"

    async with running_daemon(tmp_path, marker) as daemon:
        session = daemon.session

        async def follow(process_id: str) -> list[dict[str, Any]]:
            events = []
            async with session.get(f"/process/{process_id}/stdout/stream") as resp:
                reader = SSEReader(resp)
                while (frame := await reader.event(timeout=60)) is not None:
                    events.append(frame.data)
            return events

        ticking = [await daemon.call("/process/spawn", {
            "command": "sh", "args": ["-c", "while :; do echo tick; sleep 0.05; done"]})
            for _ in range(3)]
        streams = [asyncio.ensure_future(follow(p["process_id"])) for p in ticking]

        async def upload(n: int) -> int:
            form = aiohttp.FormData()
            form.add_field("files[0][file]", half_sent(), filename="x")
            form.add_field("files[0][dest_path]", str(dest / f"upload-{n}"))
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post("/fs/upload", data=form) as resp:
                    return resp.status
            return 0

        async def write() -> int:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.put(f"/fs/write_file?path={dest}/written",
                                       data=half_sent()) as resp:
                    return resp.status
            return 0

        transfers = [asyncio.ensure_future(upload(n)) for n in range(2)]
        transfers.append(asyncio.ensure_future(write()))
        spawned: list[int] = []

        async def keep_spawning() -> None:
            while daemon.proc.poll() is None:
                try:
                    async with session.post("/process/spawn", json={
                            "command": "true", "env": daemon.env}) as resp:
                        spawned.append(resp.status)
                except aiohttp.ClientError:
                    return
                await asyncio.sleep(0.02)

        spawner = asyncio.ensure_future(keep_spawning())
        await async_wait_until(lambda: any(tmp_path.rglob(".agent-upload-*")), timeout=15,
                               what="the uploads to reach the disk")
        await async_wait_until(lambda: len(spawned) >= 3, timeout=15, what="spawns")

        started = time.monotonic()
        await daemon.stop()
        stopped_in = time.monotonic() - started
        hold.set()
        results = await asyncio.wait_for(asyncio.gather(*streams, *transfers, spawner,
                                                        return_exceptions=True), 15)
    assert stopped_in < 10, stopped_in  # kill grace 1 s, handlers' shutdown timeout 3 s
    for events in results[:3]:
        assert isinstance(events, list), events
        assert events and events[-1] == {"event": "exit", "exit_code": 128 + 15}, events[-3:]
        assert all(base64.b64decode(e["data_b64"]).strip(b"tick\n") == b""
                   for e in events[:-1])
    for status_code in results[3:6]:
        assert status_code in (0, 503), status_code  # cut off, or refused: never placed
    # The bodies never completed: nothing placed, and no staging file left behind.
    assert await asyncio.to_thread(lambda: sorted(p.name for p in dest.iterdir())) == []
    assert not await asyncio.to_thread(lambda: list(tmp_path.rglob(".agent-upload-*")))
    assert set(spawned) <= {200, 503}, spawned
    assert processes_with_env(marker) == []
