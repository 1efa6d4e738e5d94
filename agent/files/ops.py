"""Filesystem operations behind /fs/* other than listing and writing: modes and owners
from requests, directories, moves (no-replace renames, across filesystems too),
permissions, and opening files for reading.

The routes run these functions in the threads of `agent.identity.FsUser`, which act as
the browser user: whatever that user may not touch, the kernel refuses (a 403 naming the
path). `Owner` (files created as root handed to a user) serves callers acting as root.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import logging
import os
import pwd
import shutil
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

from agent.errors import (
    BadRequest,
    Conflict,
)
from agent.identity import RESOLVE_NO_SYMLINKS, open_path
from agent.osutil import (
    Owner,
    libc,
    make_dirs,
    mapped,
    os_error,
    shown,
)

log = logging.getLogger(__name__)

SETID_BITS = 0o6000
# Temporary entries beside a target (uploads, moves across filesystems): never listed.
STAGING_PREFIX = ".agent-upload-"
STAGING_SUFFIX = ".part"


# ---------------------------------------------------------------- paths and errors


def parse_mode(text: str | None, field: str = "mode") -> int | None:
    """An octal mode string (already schema-checked as 3-4 octal digits) as an int."""
    if text is None:
        return None
    try:
        mode = int(text, 8)
    except ValueError:
        raise BadRequest.for_field(
            field, "must be 3 or 4 octal digits",
            f"{field} must be an octal string such as 644") from None
    if not 0 <= mode <= 0o7777:
        raise BadRequest.for_field(
            field, "must be between 000 and 7777", f"{field} out of range: {text}")
    return mode


# ---------------------------------------------------------------- ownership


def resolve_ids(owner: str | None, group: str | None) -> tuple[int, int]:
    """User and group names or numeric ids as (uid, gid); -1 leaves one unchanged."""
    uid = gid = -1
    if owner is not None:
        uid = _resolve_id(owner, "owner", lambda n: pwd.getpwnam(n).pw_uid)
    if group is not None:
        gid = _resolve_id(group, "group", lambda n: grp.getgrnam(n).gr_gid)
    return uid, gid


def _resolve_id(text: str, field: str, lookup: Any) -> int:
    text = text.strip()
    if text.isdigit():
        value = int(text)
        if value >= 0xFFFFFFFF:
            raise BadRequest.for_field(
                field, "id out of range", f"{field} id out of range: {text}")
        return value
    try:
        return int(lookup(text))
    except (KeyError, ValueError, UnicodeEncodeError):
        kind = "user" if field == "owner" else "group"
        raise BadRequest.for_field(field, f"no such {kind}", f"no such {kind}: {text!r}") from None


# ---------------------------------------------------------------- directories


def create_directory(path: str, mode: int, owner: Owner | None) -> None:
    with mapped(path, "create directory"):
        make_dirs(path, mode, owner)


def delete_file(path: str) -> None:
    with mapped(path, "delete"):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            raise BadRequest(f"is a directory: {shown(path)} (use delete_directory)")
        os.unlink(path)


def delete_directory(path: str) -> None:
    with mapped(path, "delete directory"):
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise BadRequest(f"{shown(path)} is {kind} (use delete_file)")
        if os.path.realpath(path) == "/":
            raise BadRequest("refusing to delete the root directory")
        errors: list[OSError] = []

        def collect(_func: Any, _path: str, exc_info: Any) -> None:
            if isinstance(exc_info[1], OSError) and not isinstance(exc_info[1],
                                                                   FileNotFoundError):
                errors.append(exc_info[1])

        shutil.rmtree(path, onerror=collect)
        if errors:
            first = errors[0]
            raise os_error(first, first.filename or path, "delete directory")


# ---------------------------------------------------------------- move


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(src: str, dest: str) -> None:
    """rename(2) that fails with EEXIST instead of replacing an existing destination."""
    renameat2 = getattr(libc(), "renameat2", None)
    if renameat2 is not None:
        result = renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dest),
                           _RENAME_NOREPLACE)
        if result == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS) or not os.path.lexists(src):
            raise OSError(err, os.strerror(err), dest)
    # The file system cannot do it atomically: check, then rename.
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dest)
    os.rename(src, dest)


def move(src: str, dest: str) -> None:
    """Rename `src` to `dest`. An existing destination is never replaced (409): the
    caller deletes it first if that is what they mean. Across file systems the data is
    copied beside the destination and renamed into place, then the source is removed."""
    with mapped(src, "move"):
        os.lstat(src)
    if os.path.lexists(dest):
        raise Conflict(f"destination exists: {shown(dest)} (delete it first to replace it)")
    with mapped(dest, "move to"):
        try:
            _rename_noreplace(src, dest)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        _move_across(src, dest)


def _move_across(src: str, dest: str) -> None:
    parent = os.path.dirname(dest.rstrip("/")) or "/"
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent)
    try:
        copy = os.path.join(staging, "entry")
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, copy, symlinks=True)
        else:
            shutil.copy2(src, copy, follow_symlinks=False)
        with contextlib.suppress(OSError):
            st = os.lstat(src)
            os.chown(copy, st.st_uid, st.st_gid, follow_symlinks=False)
        _rename_noreplace(copy, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if os.path.isdir(src) and not os.path.islink(src):
        shutil.rmtree(src)
    else:
        os.unlink(src)


# ---------------------------------------------------------------- permissions


def set_permissions(path: str, mode: int, uid: int, gid: int) -> None:
    with mapped(path, "change permissions of"):
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid)  # before chmod: chown clears setuid/setgid bits
        os.chmod(path, mode)


def set_owner_as_root(path: str, mode: int, uid: int, gid: int) -> None:
    """Give a file to another owner (root's power): the path is resolved through no
    symbolic link at all, so nobody can divert it to another file while it is changed,
    and the change is made on the inode that resolution found."""
    with mapped(path, "change the owner of"):
        try:
            fd = open_path(path, os.O_PATH | os.O_NOFOLLOW, resolve=RESOLVE_NO_SYMLINKS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BadRequest(f"changing the owner of {shown(path)}: the path goes "
                                 "through a symbolic link; give the real path") from None
            raise
        try:
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                raise BadRequest(f"{shown(path)} is a symbolic link; give the real path")
            pinned = f"/proc/self/fd/{fd}"  # the inode itself, not the path again
            os.chown(pinned, uid, gid)
            os.chmod(pinned, mode)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- reading


@dataclass
class OpenFile:
    """A regular file opened for reading, with what its HTTP headers need."""

    file: Any  # a binary file object
    size: int
    mtime: float
    etag: str

    def close(self) -> None:
        self.file.close()


def open_for_read(path: str) -> OpenFile:
    with mapped(path, "read"):
        # O_NONBLOCK so that a FIFO cannot hang the open; only regular files are served.
        fd = open_path(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise BadRequest(f"is a directory: {shown(path)} (use list_files)")
            if not stat.S_ISREG(st.st_mode):
                raise BadRequest(f"not a regular file: {shown(path)}")
            os.set_blocking(fd, True)
            handle = os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
    etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
    return OpenFile(handle, st.st_size, st.st_mtime, etag)
