"""Filesystem operations behind /fs/*: checked paths, OS errors mapped to the daemon's
error model, `FileInfo` records, and atomic writes.

Every write lands in a temporary file first and is renamed into place, so a reader never
sees half a file, an aborted upload leaves the old file untouched, and two concurrent
writers of one path never interleave (the last rename wins whole).

The routes run these functions in the threads of `agent.identity.FsUser`, which act as
the browser user: what is created belongs to that user (so Chromium can use uploads), and
whatever that user may not touch, the kernel refuses (a 403 naming the path). `Owner`
(files created as root handed to a user) serves callers acting as root.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import AsyncIterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from agent.errors import (
    BadRequest,
    Conflict,
    Forbidden,
)
from agent.identity import RESOLVE_NO_SYMLINKS, FsUser, acting_as_root, open_path, run_as
from agent.osutil import (
    Owner,
    chown,
    existing_ancestor,
    libc,
    make_dirs,
    mapped,
    os_error,
    shown,
)
from agent.paging import Page, paginate

log = logging.getLogger(__name__)

T = TypeVar("T")

WRITE_BATCH = 1 << 20  # bytes gathered before one writev() in a worker thread
IOV_MAX = 1024
STAGING_PREFIX = ".agent-upload-"
STAGING_SUFFIX = ".part"
SETID_BITS = 0o6000


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


# ---------------------------------------------------------------- describing files


def _mod_time(st: os.stat_result) -> str:
    stamp = datetime.fromtimestamp(st.st_mtime, UTC)
    return stamp.isoformat().replace("+00:00", "Z")


def describe(path: str, st: os.stat_result, name: str | None = None) -> dict[str, Any]:
    """A `FileInfo`; symlinks are described as links (with their target), not followed."""
    is_dir = stat.S_ISDIR(st.st_mode)
    info: dict[str, Any] = {
        "name": shown(name if name is not None else os.path.basename(path.rstrip("/")) or "/"),
        "path": shown(path),
        "size_bytes": 0 if is_dir else st.st_size,
        "is_dir": is_dir,
        "mod_time": _mod_time(st),
        "mode": stat.filemode(st.st_mode),
    }
    if stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(OSError):
            info["link_target"] = shown(os.readlink(path))
    return info


def refuse_own_proc(path: str) -> None:
    """The daemon's own /proc entries are not served: its threads may list the file
    descriptors of their own process whoever they act as (the kernel allows a process
    its own), which would name the files other requests have open."""
    own = f"/proc/{os.getpid()}"
    for real in (os.path.realpath(path), os.path.realpath(os.path.dirname(path) or "/")):
        if real == own or real.startswith(own + "/"):
            raise Forbidden(f"permission denied: {shown(path)} is the daemon's own process")


def file_info(path: str) -> dict[str, Any]:
    with mapped(path, "stat"):
        refuse_own_proc(path)
        return describe(path, os.lstat(path))


def list_files(path: str) -> list[dict[str, Any]]:
    return list_page(path, None, None).items


def list_page(path: str, limit: int | None, cursor: str | None) -> Page[dict[str, Any]]:
    """Entries in name order, `limit` of them after `cursor` (all when None). Only the
    names are read for the whole directory; only the page's entries are stat'ed."""
    with mapped(path, "list"):
        refuse_own_proc(path)
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise BadRequest(f"not a directory: {shown(path)} (use file_info for files)")
        names = sorted(os.listdir(path))
        page = paginate(names, key=str, limit=limit, cursor=cursor)
        entries: list[dict[str, Any]] = []
        for name in page.items:
            full = os.path.join(path, name)
            try:
                entry_st = os.lstat(full)
            except FileNotFoundError:
                continue  # removed while listing
            entries.append(describe(full, entry_st, name))
    return Page(entries, page.next_cursor)


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


# ---------------------------------------------------------------- atomic writes


def staging_dir(dest: str) -> str:
    """Where to stage a file bound for `dest`: beside it, or in its nearest existing
    ancestor (missing parents are created only when the file is placed), so the final
    rename stays on one file system."""
    current, st, _ = existing_ancestor(os.path.dirname(dest.rstrip("/")) or "/")
    if not stat.S_ISDIR(st.st_mode):
        raise BadRequest(f"{shown(current)} is not a directory")
    return current


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """writev the received chunks as they are (no joining copy); finish a short write."""
    total = sum(len(chunk) for chunk in chunks)
    written = os.writev(fd, chunks) if chunks else 0
    if written < total:
        view = memoryview(b"".join(chunks))[written:]
        while view:
            view = view[os.write(fd, view):]


def _discard(fd: int, path: str) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)


async def stage(chunks: AsyncIterable[bytes], directory: str,
                fs: FsUser | None = None, dest: str | None = None) -> tuple[str, int]:
    """Stream `chunks` into a new temporary file in `directory`; returns (path, size).

    Disk writes run in worker threads, overlapping with receiving the next batch. On any
    failure (including the client going away) the temporary file is removed."""
    with mapped(dest, "write") if dest is not None else mapped(directory, "write to"):
        fd, path = await run_as(
            fs, tempfile.mkstemp, STAGING_SUFFIX, STAGING_PREFIX, directory)
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    batched = size = 0
    try:
        async for chunk in chunks:
            batch.append(chunk)
            batched += len(chunk)
            if batched >= WRITE_BATCH or len(batch) >= IOV_MAX:
                if pending is not None:
                    await asyncio.shield(pending)
                pending = loop.run_in_executor(None, _write_all, fd, batch)
                size += batched
                batch, batched = [], 0
        if pending is not None:
            await asyncio.shield(pending)
        pending = loop.run_in_executor(None, _write_all, fd, batch)
        size += batched
        await asyncio.shield(pending)
        os.close(fd)
    except BaseException as exc:
        if pending is not None and not pending.done():
            # The worker still holds the descriptor: let it finish first.
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
        if pending is not None and not pending.done():  # cancelled while waiting
            pending.add_done_callback(lambda _f: _discard(fd, path))
        else:
            _discard(fd, path)
        if isinstance(exc, OSError):
            raise os_error(exc, path, "write") from None
        raise
    return path, size


def discard_staged(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_target(dest: str) -> str:
    """Writing to a symlink replaces the file it points to (as `>` in a shell would)."""
    try:
        if os.path.islink(dest):
            return os.path.realpath(dest)
    except OSError:
        pass
    return dest


def check_placeable(dest: str) -> None:
    """Fail early (before anything is placed) if `dest` can never receive a file."""
    target = write_target(dest)
    with mapped(target, "write"):
        try:
            st = os.stat(target)
        except FileNotFoundError:
            staging_dir(target)  # every existing ancestor must be a directory
            return
        if stat.S_ISDIR(st.st_mode):
            raise BadRequest(f"is a directory: {shown(dest)}")


def place(staged: str, dest: str, mode: int | None, owner: Owner | None) -> None:
    """Rename a staged file into place. Missing parents are created (mode 755, owned by
    `owner`). Replacing a file keeps its mode (less setuid/setgid) unless `mode` is given,
    and, acting as root, its owner; a new file gets `mode` or 644 and belongs to `owner`
    (or to the user acting)."""
    target = write_target(dest)
    with mapped(target, "write"):
        try:
            make_dirs(os.path.dirname(target) or "/", 0o755, owner)
            try:
                existing: os.stat_result | None = os.stat(target)
            except FileNotFoundError:
                existing = None
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise BadRequest(f"is a directory: {shown(dest)}")
            # A replaced file keeps its permissions but never setuid/setgid (as the
            # kernel clears them when someone writes to a file): only an explicit
            # `mode`, which needs the admin scope, sets those.
            final_mode = mode if mode is not None else (
                stat.S_IMODE(existing.st_mode) & ~SETID_BITS if existing is not None
                else 0o644)
            if existing is not None and acting_as_root():
                os.chown(staged, existing.st_uid, existing.st_gid)
            else:
                chown(staged, owner)
            os.chmod(staged, final_mode)
            try:
                os.replace(staged, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _place_across(staged, target)
        except BaseException:
            discard_staged(staged)
            raise


def _place_across(staged: str, target: str) -> None:
    fd, copy = tempfile.mkstemp(prefix=STAGING_PREFIX, suffix=STAGING_SUFFIX,
                                dir=os.path.dirname(target) or "/")
    os.close(fd)
    try:
        shutil.copy2(staged, copy)
        st = os.stat(staged)
        if acting_as_root():
            os.chown(copy, st.st_uid, st.st_gid)
        os.chmod(copy, stat.S_IMODE(st.st_mode))
        os.replace(copy, target)
    except BaseException:
        discard_staged(copy)
        raise
    os.unlink(staged)


async def write_file(path: str, chunks: AsyncIterable[bytes], mode: int | None,
                     owner: Owner | None, fs: FsUser | None = None) -> int:
    """Stream a request body into `path` atomically; returns the bytes written."""
    await run_as(fs, check_placeable, path)
    with mapped(path, "write"):
        directory = await run_as(fs, _staging_dir_of, path)
    staged, size = await stage(chunks, directory, fs, path)
    await run_as(fs, place, staged, path, mode, owner)
    return size


def _staging_dir_of(path: str) -> str:
    return staging_dir(write_target(path))
