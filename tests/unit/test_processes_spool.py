"""The output spool: every reader gets every byte from the start (late ones too), resume
from any event, a cap on disk with an explicit gap, lost writes reported as gaps, files
removed with the spool, and stale spool directories of dead daemons cleaned up."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until

from agent.errors import BadRequest
from agent.processes import spool as spool_module
from agent.processes.child import ExitStatus
from agent.processes.output import Chunk, Exited, Missed
from agent.processes.spool import Spool, SpoolDirectory


async def collect(spool: Spool, after: int = 0) -> list[tuple[int | None, object]]:
    return [pair async for pair in spool.read(after)]


def data_of(pairs: list[tuple[int | None, object]]) -> bytes:
    return b"".join(item.data for _, item in pairs if isinstance(item, Chunk))


async def test_every_reader_gets_everything_then_exit(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "p"), 1 << 20)
    readers = [asyncio.ensure_future(collect(spool)) for _ in range(3)]
    await asyncio.sleep(0)
    spool.append("stdout", b"a")
    spool.append("stderr", b"bc")
    spool.finish(ExitStatus(3))
    results = await asyncio.gather(*readers)
    late = await collect(spool)
    for result in [*results, late]:
        assert result == [
            (1, Chunk("stdout", b"a", 0)),
            (2, Chunk("stderr", b"bc", 1)),
            (3, Exited(ExitStatus(3), 3)),
        ]
    spool.close()


async def test_a_late_reader_gets_every_byte_from_disk_not_memory(tmp_path: Path) -> None:
    """50 MB written with nobody reading: all of it is on disk and comes back in order."""
    spool = Spool(str(tmp_path / "p"), 1 << 30)
    expected = bytearray()
    for i in range(50):
        chunk = bytes([i]) * (1 << 20)
        spool.append("stdout", chunk)
        expected += chunk
    fds = len(os.listdir("/proc/self/fd"))
    spool.finish(ExitStatus(0))
    assert len(os.listdir("/proc/self/fd")) < fds  # the writer's fds are closed at the exit
    on_disk = sum(f.stat().st_size for f in (tmp_path / "p").iterdir())
    assert on_disk >= len(expected)
    pairs = await collect(spool)
    assert data_of(pairs) == expected
    assert not any(isinstance(item, Missed) for _, item in pairs)
    spool.close()
    assert not (tmp_path / "p").exists()


async def test_resume_from_any_event(tmp_path: Path) -> None:
    """Small writes across several segments and index points: every Last-Event-ID resumes
    exactly after that event."""
    spool = Spool(str(tmp_path / "p"), 4 << 20)
    parts = [f"line {i}\n".encode() * (i % 50 + 1) for i in range(3000)]
    for part in parts:
        spool.append("stdout", part)
    spool.finish(ExitStatus(0))
    assert len(list((tmp_path / "p").iterdir())) > 1  # several segments
    assert sum(map(len, parts)) > 2 * spool_module.INDEX_EVERY
    for after in (0, 1, 2, 999, 1000, 1777, 2999, 3000):
        pairs = await collect(spool, after)
        assert pairs[0][0] == after + 1
        assert data_of(pairs) == b"".join(parts[after:])
        assert pairs[-1] == (3001, Exited(ExitStatus(0), sum(map(len, parts))))
    spool.check_resume_point(3001)
    with pytest.raises(BadRequest):
        spool.check_resume_point(3002)
    spool.close()


async def test_cap_drops_the_oldest_with_an_explicit_gap(tmp_path: Path) -> None:
    cap = 1 << 20
    spool = Spool(str(tmp_path / "p"), cap)
    total = 0
    for _ in range(100):
        spool.append("stdout", b"x" * 50_000)
        total += 50_000
    spool.finish(ExitStatus(0))
    assert spool.disk_bytes <= cap
    pairs = await collect(spool)
    missed = pairs[0][1]
    assert pairs[0][0] is None and isinstance(missed, Missed)
    chunks = [item for _, item in pairs if isinstance(item, Chunk)]
    assert missed.bytes is not None
    assert missed.bytes + sum(len(c.data) for c in chunks) == total
    assert missed.events + len(chunks) == 100
    assert sum(len(c.data) for c in chunks) >= cap * 3 // 4  # most of the cap is kept
    # Resuming from an id that is gone: the count of events is known, the bytes are not.
    resumed = [item for _, item in await collect(spool, after=1)]
    assert isinstance(resumed[0], Missed) and resumed[0].bytes is None
    spool.close()


async def test_a_reader_inside_a_dropped_segment_gets_a_gap(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "p"), 1 << 20)
    reader = spool.read()
    spool.append("stdout", b"a" * 1000)
    seq, first = await reader.__anext__()
    assert seq == 1 and isinstance(first, Chunk)
    for _ in range(60):  # far past the cap while the reader waits
        spool.append("stdout", b"b" * 50_000)
    spool.finish(ExitStatus(0))
    rest = [pair async for pair in reader]
    chunks = [item for _, item in rest if isinstance(item, Chunk)]
    gaps = [item for _, item in rest if isinstance(item, Missed)]
    received = 1000 + sum(len(c.data) for c in chunks)
    assert sum(g.bytes or 0 for g in gaps) + received == 1000 + 60 * 50_000
    assert isinstance(rest[-1][1], Exited)
    spool.close()


async def test_a_write_that_fails_is_a_gap_never_a_torn_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(str(tmp_path / "p"), 1 << 20)
    spool.append("stdout", b"one")
    real_pwrite = os.pwrite

    def full_disk(fd: int, data: bytes, offset: int) -> int:
        real_pwrite(fd, data[:5], offset)  # a partial write, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_module.os, "pwrite", full_disk)
    spool.append("stdout", b"lost!")
    monkeypatch.setattr(spool_module.os, "pwrite", real_pwrite)
    spool.append("stderr", b"three")
    spool.finish(ExitStatus(0))
    assert spool.lost == 5
    pairs = await collect(spool)
    assert pairs == [
        (1, Chunk("stdout", b"one", 0)),
        (None, Missed(1, 5)),
        (3, Chunk("stderr", b"three", 8)),
        (4, Exited(ExitStatus(0), 13)),
    ]
    spool.close()


async def test_close_ends_readers_and_removes_the_files(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "p"), 1 << 20)
    spool.append("stdout", b"x")
    reader = asyncio.ensure_future(collect(spool))
    await asyncio.sleep(0.01)
    spool.close()
    assert [seq for seq, _ in await asyncio.wait_for(reader, 5)] == [1]
    assert not (tmp_path / "p").exists()


def test_spool_directory_is_private_and_stale_ones_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f"{SpoolDirectory.PREFIX}{dead.stdout.strip()}-abc"
    stale.mkdir()
    (stale / "x").write_bytes(b"old")
    live = tmp_path / f"{SpoolDirectory.PREFIX}1-abc"  # pid 1 is alive
    live.mkdir()
    other = tmp_path / "unrelated"
    other.mkdir()
    directory = SpoolDirectory(str(tmp_path))
    assert not stale.exists() and live.exists() and other.exists()
    assert os.stat(directory.path).st_mode & 0o777 == 0o700
    directory.remove()
    assert not Path(directory.path).exists()


def test_processes_of_a_dead_daemon_are_stopped_by_the_next(tmp_path: Path) -> None:
    """What a SIGKILLed daemon leaves: its spool directory naming a live process (with a
    child in its session). The next daemon's spool directory stops that whole session, and
    leaves alone a process whose pid no longer matches its recorded start time."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"{SpoolDirectory.PREFIX}{dead}-abc"
    orphan = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        for name, proc in (("one", orphan), ("two", bystander)):
            (stale / name).mkdir(parents=True)
            spool_module.record_owner(str(stale / name), proc.pid)
        owner = stale / "two" / spool_module.OWNER
        pid, started = owner.read_text().split()
        owner.write_text(f"{pid} {int(started) - 1}\n")  # another process with that pid
        wait_until(lambda: len(spool_module.session_members(orphan.pid)) == 2,
                   what="the orphan's child to start")
        members = spool_module.session_members(orphan.pid)
        assert len(members) == 2
        SpoolDirectory(str(tmp_path)).remove()
        assert orphan.wait(10) == -9
        # Every member gone, or a zombie for init to reap: none running.
        wait_until(lambda: not spool_module.session_members(orphan.pid), timeout=10,
                   what=f"the session's processes {members} to die")
        assert bystander.poll() is None
        assert not stale.exists()
    finally:
        for proc in (orphan, bystander):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
