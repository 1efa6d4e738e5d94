"""Atomic writes: every write lands in a temporary file first (in a staging directory
beside its target) and is renamed into place, so a reader never sees half a file, an
aborted upload leaves the old file untouched, and two concurrent writers of one path never
interleave (the last rename wins whole).

Files are created as the acting user (`agent.identity.FsUser`), so what is written belongs
to the browser user and Chromium can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterable
from typing import TypeVar

from agent.errors import (
    BadRequest,
)
from agent.files.ops import SETID_BITS, STAGING_PREFIX, STAGING_SUFFIX
from agent.identity import FsUser, acting_as_root, run_as
from agent.osutil import (
    Owner,
    chown,
    existing_ancestor,
    make_dirs,
    mapped,
    os_error,
    shown,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

WRITE_BATCH = 1 << 20  # bytes gathered before one writev() in a worker thread
IOV_MAX = 1024


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
