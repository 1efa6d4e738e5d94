"""Acting as the browser user on the filesystem.

Every file operation a client asks for runs with the identity of the browser user
(AGENT_DEFAULT_USER): it can touch exactly what that user can, and the kernel refuses the
rest. The daemon stays root (it starts processes as other users, talks to supervisord),
so the switch is per thread: Linux keeps credentials per thread, and `setfsuid`,
`setfsgid` and `setgroups` called as raw system calls (glibc's wrappers of the latter
change every thread) change only the calling thread's file-system identity. Changing the
fsuid away from 0 also drops the file capabilities (CAP_DAC_OVERRIDE, CAP_CHOWN,
CAP_FOWNER, ...) of that thread, so permission checks are the user's own.

`FsUser` owns a pool of threads that take the identity once, when they start, and keep it
for their whole life: an operation costs nothing more than a hand-off to a thread, as
`asyncio.to_thread` did. `acting()` switches the calling thread for a short synchronous
section (and back), for the few calls made on the event loop (inotify watches).

Opens of paths a client names go through `open_path`, which refuses the /proc "magic
links" (`/proc/<pid>/fd/N`): through them the daemon's own threads could reach files the
daemon holds open, whoever's they are.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import encodings
import errno
import functools
import importlib
import logging
import os
import pkgutil
import platform
import pwd
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.osutil import libc

log = logging.getLogger(__name__)

T = TypeVar("T")

# System call numbers (the raw calls, not glibc's process-wide setgroups).
_SYSCALLS = {
    "x86_64": {"setgroups": 116, "setfsuid": 122, "setfsgid": 123, "openat2": 437},
    "aarch64": {"setgroups": 159, "setfsuid": 151, "setfsgid": 152, "openat2": 437},
}
_NR = _SYSCALLS.get(platform.machine(), {})
_syscall = libc().syscall
_syscall.restype = ctypes.c_long

RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_NO_MAGICLINKS = 0x02
_AT_FDCWD = -100
_INVALID_ID = 0xFFFFFFFF  # (uid_t)-1: setfsuid/setfsgid only report the current id


@dataclass(frozen=True)
class FsIdentity:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def lookup(user: str) -> FsIdentity:
    entry = pwd.getpwnam(user)
    groups = tuple(os.getgrouplist(user, entry.pw_gid))
    return FsIdentity(user, entry.pw_uid, entry.pw_gid, groups)


_state = threading.local()


def acting_as_root() -> bool:
    """Whether the calling thread's file operations run as root."""
    return os.geteuid() == 0 and getattr(_state, "identity", None) is None


def _call(name: str, *args: Any) -> int:
    number = _NR.get(name)
    if number is None:
        raise OSError(errno.ENOSYS, f"{name}: unsupported architecture {platform.machine()}")
    result = int(_syscall(ctypes.c_long(number), *args))
    if result < 0 and name == "setgroups":
        err = ctypes.get_errno()
        raise OSError(err, f"setgroups: {os.strerror(err)}")
    return result


def _set_groups(groups: tuple[int, ...]) -> None:
    array = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    _call("setgroups", ctypes.c_long(len(groups)), array)


def _set_fs_ids(uid: int, gid: int) -> None:
    _call("setfsgid", ctypes.c_long(gid))
    _call("setfsuid", ctypes.c_long(uid))
    # Both calls answer the previous id whatever happens: ask again to be sure.
    now_uid = _call("setfsuid", ctypes.c_long(_INVALID_ID))
    now_gid = _call("setfsgid", ctypes.c_long(_INVALID_ID))
    if (now_uid, now_gid) != (uid, gid):
        raise PermissionError(errno.EPERM,
                              f"could not take the file-system identity {uid}:{gid} "
                              f"(still {now_uid}:{now_gid})")


def become(identity: FsIdentity) -> None:
    """The calling thread's file operations run as `identity` from now on."""
    _set_groups(identity.groups)
    _set_fs_ids(identity.uid, identity.gid)
    _state.identity = identity


def become_root(groups: tuple[int, ...]) -> None:
    _set_fs_ids(0, 0)
    _set_groups(groups)
    _state.identity = None


@functools.cache
def _preload() -> None:
    """Import every codec now, as the daemon: a codec is imported on first use, and the
    threads acting as the browser user need not be able to read the daemon's own
    installation (zip names are cp437, manifests utf-8-sig, ...)."""
    for module in pkgutil.iter_modules(encodings.__path__):
        with contextlib.suppress(Exception):
            importlib.import_module(f"encodings.{module.name}")
    codecs.lookup("utf-8")


class FsUser:
    """The browser user's file-system identity, and the threads that act as that user.

    Without a user, or when the daemon is not root, the threads act as the daemon's own
    user (there is nobody else it could be)."""

    def __init__(self, user: str | None, threads: int = 16) -> None:
        self.identity = lookup(user) if user and os.geteuid() == 0 else None
        _preload()
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="agent-fs",
                                           initializer=self.enter_thread)

    @property
    def uid(self) -> int:
        return self.identity.uid if self.identity is not None else os.geteuid()

    def enter_thread(self) -> None:
        """Make the calling thread (one of ours, or a dedicated one) act as the user for
        the rest of its life. A failure leaves the thread unusable, never root."""
        if self.identity is not None:
            become(self.identity)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a thread acting as the user."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    @contextlib.contextmanager
    def acting(self) -> Iterator[None]:
        """A short synchronous section of the calling thread as the user, then back."""
        if self.identity is None or not acting_as_root():
            yield
            return
        saved = tuple(os.getgroups())
        try:
            become(self.identity)
            yield
        finally:
            become_root(saved)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


async def run_as(fs: FsUser | None, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a thread acting as `fs`'s user (as the daemon itself without one)."""
    if fs is None:
        return await asyncio.to_thread(fn, *args)
    return await fs.run(fn, *args)


# ---------------------------------------------------------------- opening paths


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_openat2_missing = "openat2" not in _NR


def open_path(path: str, flags: int, mode: int = 0o666, *,
              resolve: int = RESOLVE_NO_MAGICLINKS) -> int:
    """os.open that refuses /proc magic links anywhere in the path (ELOOP); with
    `resolve=RESOLVE_NO_SYMLINKS`, any symbolic link (for root acting on a path others
    may change: nothing can divert it)."""
    global _openat2_missing
    if resolve & RESOLVE_NO_SYMLINKS and _openat2_missing:
        raise OSError(errno.ENOSYS, "this kernel cannot open a path without following "
                      "symbolic links (openat2)", path)
    if not _openat2_missing:
        how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
        fd = int(_syscall(ctypes.c_long(_NR["openat2"]), ctypes.c_int(_AT_FDCWD),
                          ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                          ctypes.c_size_t(ctypes.sizeof(how))))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM):
            raise OSError(err, os.strerror(err), path)
        # An old kernel, or a seccomp filter refusing the call (EPERM, as some container
        # runtimes do; a real EPERM comes again from os.open): the best it can do.
        if err == errno.ENOSYS:
            _openat2_missing = True
    return os.open(path, flags | os.O_CLOEXEC, mode)
