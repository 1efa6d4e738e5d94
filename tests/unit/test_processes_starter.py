"""The starter: children that are this process's own, a helper that recovers from being
killed, and nothing left behind (no helper, no waiting clone, no zombie) once closed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.processes.launch import DEFAULT_PATH
from agent.processes.starter import Request, Starter

ENV = {"PATH": DEFAULT_PATH}


def _children() -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as children:
            found.update(int(pid) for pid in children.read().split())
    return found


def _waiting_clone(starter: Starter) -> int:
    """The clone waiting for the next request: a child of ours running the helper too."""
    for pid in _children():
        if pid != starter.pid and b"startd.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError("no waiting clone")


def _wait_for_clone(starter: Starter) -> int:
    deadline = time.monotonic() + 10  # the helper makes one as it starts and after each exec
    while time.monotonic() < deadline:
        try:
            return _waiting_clone(starter)
        except AssertionError:
            time.sleep(0.005)
    return _waiting_clone(starter)


def _run(starter: Starter, *argv: str) -> tuple[int, bytes]:
    read_end, write_end = os.pipe()
    try:
        started = starter.start(Request(list(argv), ENV, "/", None, None, (), False),
                                subprocess.DEVNULL, write_end, write_end)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as output:
        text = output.read()
    return started.wait(10), text


@pytest.fixture
def starter() -> Iterator[Starter]:
    helper = Starter()
    yield helper
    helper.close()


def test_children_are_ours_and_report_their_status(starter: Starter) -> None:
    code, out = _run(starter, "sh", "-c", "echo $PPID; exit 7")
    assert code == 7
    assert int(out) == os.getpid()  # CLONE_PARENT: the child's parent is this process


def test_a_killed_helper_is_replaced(starter: Starter) -> None:
    assert _run(starter, "true") == (0, b"")
    first = starter.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{first}/stat").read_text().split(")")[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert _run(starter, "echo", "again") == (0, b"again\n")
    assert starter.pid not in (None, first)


def test_a_killed_waiting_clone_is_replaced(starter: Starter) -> None:
    starter.warm()
    clone = _wait_for_clone(starter)
    os.kill(clone, signal.SIGKILL)
    assert os.waitpid(clone, 0)[0] == clone  # ours to reap, as the daemon's reaper does
    assert _run(starter, "echo", "ok") == (0, b"ok\n")


def test_close_leaves_nothing_behind() -> None:
    before = _children()
    starter = Starter()
    assert _run(starter, "true")[0] == 0
    helper = starter.pid
    clone = _wait_for_clone(starter)
    starter.close()
    assert _children() - before == set()  # the clone was reaped, the helper waited for
    for pid in (helper, clone):
        assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_failures_come_back_as_exec_errors(starter: Starter, tmp_path: Path) -> None:
    before = _children()
    with pytest.raises(FileNotFoundError):
        starter.start(Request(["no-such-command-xyz"], ENV, "/", None, None, (), False),
                      subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
    with pytest.raises(FileNotFoundError) as info:
        starter.start(Request(["true"], ENV, str(tmp_path / "gone"), None, None, (), False),
                      subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
    assert info.value.filename == str(tmp_path / "gone")
    # the clones that failed were reaped: only the helper and the next clone are left
    assert _children() - before <= {starter.pid, _wait_for_clone(starter)}


def test_a_child_reaped_elsewhere_reads_as_exit_0(starter: Starter) -> None:
    """As with Popen: once someone else has collected the status, poll says 0."""
    started = starter.start(Request(["true"], ENV, "/", None, None, (), False),
                            subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
    assert os.waitpid(started.pid, 0)[0] == started.pid
    assert started.poll() == 0 and started.wait(1) == 0
