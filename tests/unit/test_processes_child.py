"""Exit statuses, reaping through the pidfd, and TERM → KILL over a whole session."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

from agent.processes.child import Child, ExitStatus, live_sessions, terminate_all


def test_exit_status_from_returncode() -> None:
    assert ExitStatus.from_returncode(0) == ExitStatus(0)
    assert ExitStatus.from_returncode(3) == ExitStatus(3)
    assert ExitStatus.from_returncode(-signal.SIGKILL) == ExitStatus(137, "KILL")
    assert ExitStatus.from_returncode(-signal.SIGTERM) == ExitStatus(143, "TERM")


def _start(script: str) -> Child:
    popen = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                             stdout=subprocess.PIPE)
    return Child(popen)


def _group(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return 0


async def _line(child: Child) -> bytes:
    assert child.popen.stdout is not None
    return await asyncio.to_thread(child.popen.stdout.readline)


async def test_reaped_with_its_status() -> None:
    child = _start("exit 9")
    assert (await asyncio.wait_for(child.wait(), 10)) == ExitStatus(9)
    assert child.status == ExitStatus(9)
    assert child.popen.returncode == 9  # reaped: no zombie left behind
    assert child.popen.stdout is not None
    child.popen.stdout.close()


async def test_terminate_reaches_jobs_in_other_groups() -> None:
    # A background job moved to a group of its own is still in the session.
    child = _start("python3 -c 'import os; os.setpgid(0, 0); os.execvp(\"sleep\", "
                   "[\"sleep\", \"300\"])' & (trap '' TERM; exec sleep 301) & "
                   "echo started; wait")
    assert await _line(child) == b"started\n"
    groups: set[int] = set()
    deadline = time.monotonic() + 10
    while len(groups) < 2:  # the shell's group and the job's own
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
        groups = {_group(p) for p in live_sessions({child.pid}).get(child.pid, [])} - {0}
    started = time.monotonic()
    await terminate_all([child], grace_s=0.3)
    assert time.monotonic() - started < 5
    assert child.status is not None
    assert live_sessions({child.pid}) == {}
    assert child.popen.stdout is not None
    child.popen.stdout.close()


async def test_terminate_many_at_once() -> None:
    children = [_start("echo up; sleep 300") for _ in range(5)]
    for child in children:
        assert await _line(child) == b"up\n"
    await terminate_all(children, grace_s=2)
    assert all(c.status == ExitStatus(143, "TERM") for c in children)
    for child in children:
        assert child.popen.stdout is not None
        child.popen.stdout.close()
