"""A thread that takes a user's identity for a block: its children are that user's whole
(ids, groups, no capabilities, an environment the loader leaves alone), the other threads
keep root's meanwhile, and everything is back after the block, however it ends."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from agent.osutil import libc
from agent.processes import credentials

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root"),
    pytest.mark.skipif(not credentials.SUPPORTED, reason="system calls not known here"),
]

NOBODY = 65534


def _status(path: str) -> dict[str, str]:
    with open(path) as status:
        return dict(line.split(":", 1) for line in status.read().splitlines() if ":" in line)


def _identity() -> tuple[object, ...]:
    return (os.getresuid(), os.getresgid(), sorted(os.getgroups()),
            libc().prctl(credentials.PR_GET_DUMPABLE, 0, 0, 0, 0))


def test_a_child_started_in_the_block_is_the_users_whole() -> None:
    script = ("grep -E '^(Uid|Gid|Groups|CapPrm|CapEff):' /proc/self/status; "
              'echo "lib=$LD_LIBRARY_PATH"')
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/kept"}
    with credentials.as_user(NOBODY, NOBODY, [NOBODY]):
        child = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, env=env)
    output, _ = child.communicate(timeout=10)
    lines = dict(line.split(":", 1) for line in output.decode().splitlines() if ":" in line)
    assert lines["Uid"].split() == [str(NOBODY)] * 4  # real, effective, saved, filesystem
    assert lines["Gid"].split() == [str(NOBODY)] * 4
    assert lines["Groups"].split() == [str(NOBODY)]
    assert int(lines["CapPrm"], 16) == 0 and int(lines["CapEff"], 16) == 0
    # Not a "secure" exec: the loader kept the variables it drops for setuid programs.
    assert "lib=/opt/kept" in output.decode()


def test_only_the_calling_thread_changes() -> None:
    seen: dict[str, str] = {}
    asked, answered = threading.Event(), threading.Event()

    def other() -> None:
        asked.wait(10)
        seen.update(_status("/proc/thread-self/status"))
        answered.set()

    thread = threading.Thread(target=other)
    thread.start()
    with credentials.as_user(NOBODY, NOBODY, [NOBODY]):
        mine = _status("/proc/thread-self/status")
        asked.set()
        assert answered.wait(10)
    thread.join()
    assert mine["Uid"].split()[:2] == [str(NOBODY)] * 2
    assert mine["Uid"].split()[2] == "0"  # the saved id: the way back
    assert seen["Uid"].split() == ["0"] * 4
    assert seen["Groups"].split() != [str(NOBODY)]


def test_everything_is_back_after_the_block_however_it_ends() -> None:
    libc().prctl(credentials.PR_SET_DUMPABLE, 1, 0, 0, 0)  # as a process starts
    before = _identity()
    with credentials.as_user(NOBODY, NOBODY, [NOBODY]):
        assert os.geteuid() == NOBODY
        assert libc().prctl(credentials.PR_GET_DUMPABLE, 0, 0, 0, 0) == 0  # the kernel's
    assert _identity() == before
    with pytest.raises(FileNotFoundError):
        with credentials.as_user(NOBODY, NOBODY, [NOBODY]):
            subprocess.Popen(["/no-such-dir/no-such-command"])
    assert _identity() == before


def test_in_the_block_the_thread_can_do_only_what_the_user_can() -> None:
    with credentials.as_user(NOBODY, NOBODY, [NOBODY]):
        with pytest.raises(PermissionError):
            open("/etc/shadow", "rb")
    with open("/etc/shadow", "rb") as shadow:
        assert shadow.read(1)
