"""Starting a child as another user without forking the daemon.

`subprocess` starts a child with vfork, whose cost does not grow with the daemon, only when
nothing has to run between fork and exec. Asked to switch user (`user=`, `group=`,
`extra_groups=`), it forks instead: the daemon's page tables are copied, tens of
milliseconds once it holds hundreds of MB.

Linux keeps credentials per thread; it is the C library that makes `setuid` apply to a
whole process (by signalling every thread). The raw system calls change only the thread
that makes them. So `as_user` gives the calling thread the user's real and effective ids
and groups for as long as its block runs, and a child vforked inside the block starts
with them: its `chdir` and its exec are checked as that user, and exec (which copies the
effective ids to the saved ones, and clears the capabilities of a process that is not
root) leaves it with the user's ids and nothing of root's. The other threads of the daemon
keep root throughout.

The thread's saved ids stay root's, which is how it comes back. That also protects the
vforked child, which shares the daemon's memory until its exec: its saved uid is 0 and
the kernel marks the daemon non-dumpable when an effective id changes, so no process of
the user's can trace it or read its memory. The dumpable flag is put back as it was once
the block ends. A thread that cannot come back (it cannot happen while the saved ids are
root's) ends the daemon rather than go on as the user.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from agent.osutil import libc

log = logging.getLogger(__name__)

# The per-thread system calls, by machine: (setgroups, setresuid, setresgid).
SYSCALLS = {"x86_64": (116, 117, 119), "aarch64": (159, 147, 149)}
NUMBERS = SYSCALLS.get(os.uname().machine)
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4

SUPPORTED = NUMBERS is not None
"""False on a machine whose system call numbers are not known here: then a child that
switches user is started by `subprocess`'s own switch (a fork)."""


def _call(number: int, *args: object) -> None:
    result = libc().syscall(number, *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _set_groups(groups: Sequence[int]) -> None:
    assert NUMBERS is not None
    array = (ctypes.c_uint * len(groups))(*groups)
    _call(NUMBERS[0], ctypes.c_size_t(len(groups)), array)


def _set_ids(number: int, real: int, effective: int, saved: int) -> None:
    _call(number, ctypes.c_uint(real), ctypes.c_uint(effective), ctypes.c_uint(saved))


KEEP = 0xFFFFFFFF  # (uid_t) -1: leave that id as it is
# One switch at a time: the dumpable flag read as a block begins is then the daemon's own,
# not one a switch on another thread has just cleared.
_LOCK = threading.Lock()


@contextmanager
def as_user(uid: int, gid: int, groups: Sequence[int]) -> Iterator[None]:
    """Run the block with this thread's real and effective ids, and its groups, the
    user's (a root daemon only). Raises OSError, with nothing changed, when the groups
    cannot be set (not root)."""
    assert NUMBERS is not None, "as_user on a machine whose system calls are not known"
    _, setresuid, setresgid = NUMBERS
    with _LOCK, ExitStack() as back:  # each change's undo, run in the reverse order
        back.callback(_keep_dumpable, libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
        own_groups = os.getgroups()
        _set_groups(groups)
        back.callback(_come_back, _set_groups, own_groups)
        own_gids = os.getresgid()
        _set_ids(setresgid, gid, gid, KEEP)
        back.callback(_come_back, _set_ids, setresgid, *own_gids)
        own_uids = os.getresuid()
        _set_ids(setresuid, uid, uid, KEEP)
        back.callback(_come_back, _set_ids, setresuid, *own_uids)
        yield


def _keep_dumpable(dumpable: int) -> None:
    """Put back the flag the kernel cleared as the effective ids changed."""
    if dumpable > 0 and libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != dumpable:
        libc().prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0)


def _come_back(restore: Callable[..., None], *args: Any) -> None:
    try:
        restore(*args)
    except OSError as exc:  # the thread would go on as the user: stop here
        log.critical("cannot take back the daemon's own identity: %s", exc)
        os.abort()
