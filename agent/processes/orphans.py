"""Descendants that leave their session (`setsid`, a daemonizing double fork) escape the
session-wide stop of `child.terminate_all` and would outlive the daemon as orphans of init.
So the daemon makes itself a child subreaper: such orphans are reparented to it instead. It
reaps them while it runs (nobody else will wait for them) and stops them with everything
else when it stops.

Only for a process whose children all come from the process manager (the daemon itself):
every child of it that no `Child` watches is taken for an adopted orphan. A process that
forks children of its own beside the manager (a test runner) must leave this off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time

from agent.osutil import libc, proc_stat
from agent.processes.child import watched_pids

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
# A zombie is reaped only once it stayed unreaped this long: any other waiter (a Child's
# pidfd, an asyncio child watcher) has that long to collect the status of its own child.
REAP_DELAY_S = 1.0


def become_subreaper() -> None:
    if libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as children_file:
                found.extend(int(child) for child in children_file.read().split())
        except OSError:
            continue
    return found


def _zombie(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] == b"Z"


def descendants() -> list[int]:
    """Every descendant of this process, parents before their children."""
    found: list[int] = []
    queue = _children(os.getpid())
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(_children(pid))
    return found


def _live_descendants() -> list[int]:
    return [pid for pid in descendants() if not _zombie(pid)]


def _reap(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # someone else reaped it
    return done == pid


def _signal_all(pids: list[int], *sigs: int) -> None:
    for pid in pids:
        for sig in sigs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


class OrphanReaper:
    """Adopts the orphans of the daemon's process trees, reaps them, and stops them."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pass: asyncio.TimerHandle | None = None
        self._seen: set[int] = set()

    def start(self) -> None:
        try:
            become_subreaper()
        except OSError as exc:
            log.warning("orphans of spawned processes will not be adopted: %s", exc)
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGCHLD, self._schedule)
        self._schedule()

    def _schedule(self) -> None:
        if self._pass is None and self._loop is not None:
            self._pass = self._loop.call_later(REAP_DELAY_S, self._reap_pass)

    def _orphan_zombies(self) -> set[int]:
        watched = watched_pids()
        return {pid for pid in _children(os.getpid()) if pid not in watched and _zombie(pid)}

    def _reap_pass(self) -> None:
        self._pass = None
        zombies = self._orphan_zombies()
        for pid in zombies & self._seen:
            if _reap(pid):
                zombies.discard(pid)
        self._seen = zombies
        if zombies:
            self._schedule()

    async def stop_all(self, grace_s: float) -> None:
        """TERM every remaining descendant, KILL what is left after `grace_s`, reap them."""
        if self._loop is None:
            return
        self._loop.remove_signal_handler(signal.SIGCHLD)
        if self._pass is not None:
            self._pass.cancel()
            self._pass = None
        left = _live_descendants()
        if left:
            log.info("stopping %d processes that left their session", len(left))
            _signal_all(left, signal.SIGTERM, signal.SIGCONT)
        kill_at = time.monotonic() + max(grace_s, 0.0)
        while True:
            left = _live_descendants()
            watched = watched_pids()
            orphans = [pid for pid in _children(os.getpid())
                       if pid not in watched and not (_zombie(pid) and _reap(pid))]
            if not left and not orphans:
                return
            now = time.monotonic()
            if now >= kill_at:
                _signal_all(left, signal.SIGKILL)
            if now > kill_at + 5.0:  # e.g. stuck in uninterruptible sleep
                log.warning("%d processes did not die after SIGKILL", len(left))
                return
            await asyncio.sleep(0.01)
