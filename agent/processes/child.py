"""One started OS process: it leads its own session and process group, is reaped as soon as
it exits (through a pidfd watched by the event loop, no thread per child), and is stopped
with TERM, then KILL after a grace period, across its whole session."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from agent.osutil import proc_stat

log = logging.getLogger(__name__)

SIGNALS: dict[str, signal.Signals] = {
    "TERM": signal.SIGTERM,
    "KILL": signal.SIGKILL,
    "INT": signal.SIGINT,
    "HUP": signal.SIGHUP,
}


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended. A death by signal N reads as exit code 128 + N, as shells say."""

    exit_code: int
    signal: str | None = None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        if returncode >= 0:
            return cls(returncode)
        signum = -returncode
        try:
            name = signal.Signals(signum).name.removeprefix("SIG")
        except ValueError:
            name = str(signum)
        return cls(128 + signum, name)


def live_sessions(sids: Collection[int]) -> dict[int, list[int]]:
    """Live (not zombie) processes of the sessions `sids`, by session, in one pass over
    /proc: a leader's whole tree, including jobs a shell moved to groups of their own and
    orphans reparented away from it."""
    found: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = proc_stat(name)
        if fields is not None and len(fields) > 3 and fields[0] != b"Z":
            sid = int(fields[3])
            if sid in sids:
                found.setdefault(sid, []).append(int(name))
    return found


def session_members(sid: int) -> list[int]:
    return live_sessions((sid,)).get(sid, [])


# Pids of the started processes not reaped yet: their exit statuses are theirs to collect.
_watched: set[int] = set()


def watched_pids() -> frozenset[int]:
    return frozenset(_watched)


def _kill(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class Child:
    """A child started in a session of its own (`launch.start`), watched on the loop."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._pidfd = os.pidfd_open(self.pid)
        _watched.add(self.pid)
        self._loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        returncode = self.popen.poll()
        if returncode is None:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        _watched.discard(self.pid)
        if not self._exit.done():
            self._exit.set_result(ExitStatus.from_returncode(returncode))

    @property
    def status(self) -> ExitStatus | None:
        return self._exit.result() if self._exit.done() else None

    @property
    def exit_future(self) -> asyncio.Future[ExitStatus]:
        return self._exit

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    def signal_group(self, sig: int) -> bool:
        """Signal the process group the child leads (its descendants unless they moved)."""
        if self.pid <= 1:
            return False
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            # A terminal's child is not a group leader until its `setsid` helper ran: then
            # it alone (not reaped yet, so the pid is still this child's).
            return self.status is None and _kill(self.pid, sig)
        except PermissionError:
            return False
        return True

    def signal_session(self, sig: int) -> int:
        """Signal every live process of the child's session; how many were signalled."""
        self.signal_group(sig)
        return sum(_kill(pid, sig) for pid in session_members(self.pid))

    async def terminate(self, grace_s: float) -> ExitStatus | None:
        """TERM the whole session, KILL what is left after `grace_s`; the exit status."""
        await terminate_all([self], grace_s)
        return self.status

    def abandon(self) -> None:
        """Stop watching (daemon shutdown after the kill): close the pidfd."""
        _watched.discard(self.pid)
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


async def terminate_all(children: Sequence[Child], grace_s: float) -> None:
    """TERM every child's session (and CONT, so stopped jobs see it), wait up to `grace_s`
    for them to empty, then KILL whatever is left. One /proc pass per round for all."""
    if not children:
        return
    deadline = time.monotonic() + max(grace_s, 0.0)
    sids = {child.pid for child in children}
    for child in children:
        child.signal_group(signal.SIGTERM)
        child.signal_group(signal.SIGCONT)
    for pids in live_sessions(sids).values():
        for pid in pids:
            _kill(pid, signal.SIGTERM)
            _kill(pid, signal.SIGCONT)
    interval = 0.005
    while live_sessions(sids) and time.monotonic() < deadline:
        await asyncio.sleep(min(interval, max(deadline - time.monotonic(), 0)))
        interval = min(interval * 2, 0.05)
    for _ in range(10):  # a tree still forking needs more than one round
        for child in children:
            child.signal_group(signal.SIGKILL)
        left = live_sessions(sids)
        if not left:
            break
        for pids in left.values():
            for pid in pids:
                _kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.01)
    pending = [child.exit_future for child in children if not child.exit_future.done()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=10)
        if still:  # e.g. stuck in uninterruptible sleep; the pidfd keeps watching it
            log.warning("%d processes did not die after SIGKILL", len(still))
