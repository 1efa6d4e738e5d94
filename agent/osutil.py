"""The OS, for every slice: the C library, `/proc/<pid>/stat`, path rules, OS errors mapped
to the daemon's error model (one message per condition), owners, and `mkdir -p` that hands
what it creates to an owner. Nothing here knows HTTP."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from typing import Any

from agent.errors import (
    AgentError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
)

log = logging.getLogger(__name__)


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, loaded once, with errno kept for `ctypes.get_errno()`."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


M_ARENA_MAX = -8  # glibc's mallopt() parameter


def single_malloc_arena() -> bool:
    """Have every thread allocate from glibc's main arena (`mallopt(M_ARENA_MAX, 1)`);
    False where the C library has no `mallopt` (not glibc). Called once at start, before
    any thread.

    Why: a thread's own arena hands its free top back to the system only inside `free()`,
    once it is larger than a threshold glibc raises to twice the largest block freed (16 MB
    after one 1920x1080 frame), and `malloc_trim` leaves those tops alone; it does return
    the main arena's top and every free page inside any arena. With one arena, the trim
    the daemon runs once screenshots go quiet gives back what the encoder threads used.
    The price is one lock around allocations above Python's small-object allocator
    (512 bytes) made by several threads at once."""
    try:
        mallopt = libc().mallopt
    except AttributeError:
        return False
    return bool(mallopt(M_ARENA_MAX, 1))


def proc_stat(pid: int | str) -> list[bytes] | None:
    """The fields of `/proc/<pid>/stat` after the command name, from the state on (so
    `[0]` is the state, `[1]` the parent, `[3]` the session, `[19]` the start time); None
    when the process is gone. The name may hold spaces and parentheses: it is skipped up to
    the last `)`."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            raw = stat_file.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()


class InsufficientStorage(AgentError):
    status = 507
    code = "insufficient_storage"


class FilesystemError(AgentError):
    """An OS failure that is neither the caller's fault nor a bug (e.g. EIO)."""

    status = 500
    code = "filesystem_error"


# ---------------------------------------------------------------- paths and errors


def check_path(value: Any, field: str = "path") -> str:
    """An absolute path the OS can take; a 400 naming `field` otherwise.

    The path is passed to the OS as given (no lexical `..` folding, which would disagree
    with the kernel's resolution through symlinks)."""
    if not isinstance(value, str) or value == "":
        raise BadRequest.for_field(field, "must not be empty")
    if "\x00" in value:
        raise BadRequest.for_field(field, "must not contain a NUL byte")
    if not value.startswith("/"):
        raise BadRequest.for_field(
            field, "must be an absolute path", f"{field} must be an absolute path, got {value!r}")
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise BadRequest.for_field(
            field, "is not valid UTF-8", f"{field} is not a valid file name encoding") from None
    return value


def shown(path: str) -> str:
    """A path as text for JSON: bytes that are not UTF-8 become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# errno → the error a client sees: its class and message ({where}: the path, {action}:
# what was being done, {reason}: the OS's words). Anything else is a FilesystemError.
_OS_ERRORS: tuple[tuple[tuple[int, ...], type[AgentError], str], ...] = (
    ((errno.ENOENT,), NotFound, "no such file or directory: {where}"),
    ((errno.EACCES, errno.EPERM), Forbidden, "permission denied: cannot {action} {where}"),
    ((errno.EROFS,), Forbidden, "read-only file system: cannot {action} {where}"),
    ((errno.EEXIST,), Conflict, "already exists: {where}"),
    ((errno.ENOTEMPTY, errno.EBUSY, errno.ETXTBSY), Conflict, "cannot {action} {where}: {reason}"),
    ((errno.EISDIR,), BadRequest, "is a directory: {where}"),
    ((errno.ENOTDIR,), BadRequest,
     "not a directory: a component of {where} is not a directory"),
    ((errno.ENOSPC, errno.EDQUOT), InsufficientStorage, "no space left to {action} {where}"),
    ((errno.EFBIG,), PayloadTooLarge, "file too large: {where}"),
    ((errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL, errno.EXDEV, errno.EMLINK, errno.ENXIO,
      errno.ENODEV, errno.EOVERFLOW), BadRequest, "cannot {action} {where}: {reason}"),
)


def os_error(exc: OSError, path: str, action: str) -> AgentError:
    """The client-facing error for an OS failure of `action` on `path`."""
    where = shown(path)
    reason = exc.strerror or str(exc)
    for codes, kind, message in _OS_ERRORS:
        if exc.errno in codes:
            return kind(message.format(where=where, action=action, reason=reason))
    log.warning("%s %s failed: %s", action, where, exc)
    return FilesystemError(f"cannot {action} {where}: {reason}")


@contextlib.contextmanager
def mapped(path: str, action: str) -> Any:
    """Turn OSErrors raised inside the block into the daemon's errors."""
    try:
        yield
    except AgentError:
        raise
    except OSError as exc:
        raise os_error(exc, path, action) from None
    except (ValueError, OverflowError) as exc:
        raise BadRequest(f"cannot {action} {shown(path)}: {exc}") from None


# ---------------------------------------------------------------- ownership


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def default_owner(user: str | None) -> Owner | None:
    """Who should own what the daemon creates: the default user when running as root."""
    if not user or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        log.warning("default user %r does not exist; created files stay root's", user)
        return None
    return Owner(entry.pw_uid, entry.pw_gid)


def chown(path: str, owner: Owner | None, *, follow: bool = True) -> None:
    if owner is not None:
        os.chown(path, owner.uid, owner.gid, follow_symlinks=follow)


def existing_ancestor(path: str) -> tuple[str, os.stat_result, list[str]]:
    """The nearest existing ancestor of `path` (itself included), its stat, and the
    missing paths below it, deepest first."""
    missing: list[str] = []
    current = path.rstrip("/") or "/"
    while True:
        try:
            return current, os.stat(current), missing
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(current)
            if parent == current:
                raise
            missing.append(current)
            current = parent


def make_dirs(path: str, mode: int, owner: Owner | None) -> list[str]:
    """mkdir -p; every directory created gets `mode` and `owner`. Returns those created."""
    current, st, missing = existing_ancestor(path)
    if not stat.S_ISDIR(st.st_mode):
        raise Conflict(f"{shown(current)} exists and is not a directory")
    created: list[str] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise Conflict(f"{shown(directory)} exists and is not a directory") from None
            continue
        chown(directory, owner)
        os.chmod(directory, mode)
        created.append(directory)
    return created
