"""Directory zips streamed while built (uploads are unpacked by `agent.archives`).

A directory zip is written by `zipfile` in a worker thread into a pipe of bounded size;
the HTTP handler sends the chunks as they come. The archive is never held in memory or
on disk: `zipfile` writes data descriptors after each entry because the pipe cannot seek.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import re
import stat
import threading
import time
import zipfile
import zlib
from collections.abc import AsyncIterator

from agent.errors import AgentError, BadRequest
from agent.identity import FsUser, open_path
from agent.osutil import mapped, shown

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20
PIPE_CHUNK = 1 << 20  # bytes per chunk handed from the zip thread to the HTTP handler
PIPE_DEPTH = 4  # chunks in flight: bounds the memory of a download
SAMPLE = 256 * 1024  # bytes of a file tried with deflate to decide whether to compress it
# Known compressed formats are stored without trying; other files are deflated (fast
# level) when a sample of their start compresses.
STORED_SUFFIXES = frozenset((
    ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".jar", ".apk", ".crx",
    ".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".heic",
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mp3", ".m4a", ".ogg", ".opus",
    ".flac", ".woff", ".woff2", ".pdf", ".docx", ".xlsx", ".pptx", ".odt",
))


# ---------------------------------------------------------------- streaming a directory


class _Stopped(Exception):
    """The reader went away; the zip thread stops."""


class _Pipe:
    """The non-seekable file `zipfile` writes into: batches bytes into chunks and hands
    them to the event loop through a bounded queue (blocking the thread when full)."""

    def __init__(self, chunks: queue.Queue[bytes | BaseException | None],
                 stop: threading.Event) -> None:
        self._chunks = chunks
        self._stop = stop
        self._buffer = bytearray()
        self.written = 0

    def write(self, data: bytes, /) -> int:
        self._buffer += data
        self.written += len(data)
        if len(self._buffer) >= PIPE_CHUNK:
            self.send()
        return len(data)

    def flush(self) -> None:
        """zipfile flushes after every entry header; batching continues regardless."""

    def close(self) -> None:
        """The pipe outlives the ZipFile; `send` delivers the tail."""

    def send(self) -> None:
        if self._buffer:
            self.put(bytes(self._buffer))
            self._buffer.clear()

    def put(self, item: bytes | BaseException | None) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped()
            try:
                self._chunks.put(item, timeout=0.25)
                return
            except queue.Full:
                continue


def _zip_entry(arcname: str, st: os.stat_result) -> zipfile.ZipInfo:
    """An entry described from lstat (symlinks are stored as links, never followed)."""
    year, month, day, hour, minute, second = time.localtime(st.st_mtime)[:6]
    if year < 1980:
        year, month, day, hour, minute, second = 1980, 1, 1, 0, 0, 0
    elif year > 2107:
        year, month, day, hour, minute, second = 2107, 12, 31, 23, 59, 58
    info = zipfile.ZipInfo(arcname, (year, month, day, hour, minute, second))
    info.external_attr = (st.st_mode & 0xFFFF) << 16
    if stat.S_ISDIR(st.st_mode):
        info.external_attr |= 0x10  # MS-DOS directory flag
        info.CRC = info.compress_size = info.file_size = 0
    elif stat.S_ISREG(st.st_mode):
        info.file_size = st.st_size
    return info


# Kernel and virtual file systems: endless or blocking "files", never archived.
PSEUDO_FS = frozenset((
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
    "securityfs", "configfs", "bpf", "pstore", "fusectl", "mqueue", "binfmt_misc",
    "efivarfs", "hugetlbfs", "autofs", "rpc_pipefs", "nsfs",
))


def mounts() -> dict[str, str]:
    """Mount point → file system type (from /proc/self/mountinfo)."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", "rb") as handle:
        for line in handle:
            fields = line.split()
            try:
                sep = fields.index(b"-")
            except ValueError:
                continue
            # Blanks and backslashes in paths are written as octal escapes (\040).
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
            found[os.fsdecode(point)] = fields[sep + 1].decode(errors="replace")
    return found


def pseudo_mounts() -> set[str]:
    """Mount points of kernel and virtual file systems."""
    return {point for point, kind in mounts().items() if kind in PSEUDO_FS}


def filesystem_type(path: str) -> str:
    """The type of the file system `path` (resolved) is on: its longest mount point."""
    real = os.path.realpath(path)
    best, kind = "", ""
    for point, point_kind in mounts().items():
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, point_kind
    return kind


class _Budget:
    """The uncompressed bytes a directory zip may still take (its size cap)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.left = limit if limit is not None else -1

    def take(self, size: int) -> bool:
        if self.limit is None:
            return True
        if size > self.left:
            self.left = 0
            return False
        self.left -= size
        return True


def _write_tree(root: str, pipe: _Pipe, max_bytes: int | None = None) -> None:
    skipped: list[str] = []
    mounts = pseudo_mounts()
    budget = _Budget(max_bytes)
    root = os.path.realpath(root)
    capped = 0
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                         strict_timestamps=False) as archive:
        for directory, dirnames, filenames in os.walk(
            root, onerror=lambda exc: skipped.append(f"{exc.filename}: {exc.strerror}")
        ):
            rel_dir = os.path.relpath(directory, root)
            for name in list(dirnames):
                if os.path.join(directory, name) in mounts:
                    dirnames.remove(name)  # listed as an empty directory, not entered
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(directory, name)
                arcname = name if rel_dir == "." else f"{rel_dir}/{name}"
                try:
                    if not _add_entry(archive, path, arcname, budget):
                        capped += 1
                except _Stopped:
                    raise
                except OSError as exc:
                    skipped.append(f"{arcname}: {exc.strerror or exc}")
        notes = []
        if capped:
            notes.append(f"incomplete: {capped} files left out, the archive reached its "
                         f"size cap of {max_bytes} bytes (AGENT_ZIP_DOWNLOAD_MAX_BYTES)")
        if skipped:
            notes.append("skipped: " + "; ".join(skipped))
        if notes:
            archive.comment = " | ".join(notes).encode("utf-8", "replace")[:65535]
    pipe.send()


def _compressible(name: str, head: bytes) -> bool:
    """Deflate only what shrinks: already-compressed data is stored, at disk speed
    instead of deflate's ~35 MB/s on incompressible input."""
    if os.path.splitext(name)[1].lower() in STORED_SUFFIXES:
        return False
    if len(head) < 4096:
        return True
    return len(zlib.compress(head, 1)) < 0.9 * len(head)


def _add_entry(archive: zipfile.ZipFile, path: str, arcname: str,
               budget: _Budget | None = None) -> bool:
    """Add one entry; False when a file was left out for the size cap."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        archive.mkdir(_zip_entry(arcname + "/", st))
    elif stat.S_ISLNK(st.st_mode):
        info = _zip_entry(arcname, st)
        archive.writestr(info, os.fsencode(os.readlink(path)),
                         compress_type=zipfile.ZIP_STORED)
    elif stat.S_ISREG(st.st_mode):
        # Not following a link, not blocking on a FIFO swapped in since the lstat.
        fd = open_path(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        source = os.fdopen(fd, "rb")
        with source:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(0, "changed while being archived")
            if budget is not None and not budget.take(st.st_size):
                return False
            info = _zip_entry(arcname, st)
            head = source.read(min(SAMPLE, st.st_size))
            info.compress_type = (zipfile.ZIP_DEFLATED if _compressible(arcname, head)
                                  else zipfile.ZIP_STORED)
            with archive.open(info, "w", force_zip64=st.st_size > (1 << 30)) as sink:
                sink.write(head)
                # The size it had when it was opened: a file that keeps growing (or a
                # file system that makes it up) cannot make the archive endless.
                left = st.st_size - len(head)
                while left > 0:
                    chunk = source.read(min(COPY_CHUNK, left))
                    if not chunk:
                        break
                    sink.write(chunk)
                    left -= len(chunk)
    else:
        raise OSError(0, f"not a regular file, directory or link ({stat.filemode(st.st_mode)})")
    return True


class DirZip:
    """`async for chunk in DirZip(path)`: a zip of the directory, built as it is read."""

    def __init__(self, root: str, fs: FsUser | None = None,
                 max_bytes: int | None = None) -> None:
        self.root = root
        self.fs = fs
        self.max_bytes = max_bytes
        self._chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(PIPE_DEPTH)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def check(root: str) -> None:
        """Errors a client should get as JSON, before the response starts."""
        with mapped(root, "zip"):
            st = os.stat(root)
            if not stat.S_ISDIR(st.st_mode):
                raise BadRequest(f"not a directory: {shown(root)}")
            if filesystem_type(root) in PSEUDO_FS:
                raise BadRequest(f"{shown(root)} is a kernel file system (proc, sysfs, "
                                 "devtmpfs, ...), which cannot be archived")
            os.scandir(root).close()

    def _run(self) -> None:
        pipe = _Pipe(self._chunks, self._stop)
        try:
            if self.fs is not None:
                self.fs.enter_thread()  # this thread reads as the browser user
            _write_tree(self.root, pipe, self.max_bytes)
            pipe.put(None)
        except _Stopped:
            return
        except BaseException as exc:  # reported to the reader, which aborts the response
            log.warning("zip of %s failed: %s", shown(self.root), exc)
            with contextlib.suppress(_Stopped):
                pipe.put(exc)

    def _take(self) -> bytes | BaseException | None:
        while True:
            try:
                return self._chunks.get(timeout=0.25)
            except queue.Empty:
                if self._stop.is_set():
                    return None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._thread = threading.Thread(target=self._run, name="dir-zip", daemon=True)
        self._thread.start()
        try:
            while True:
                try:
                    item = self._chunks.get_nowait()
                except queue.Empty:
                    item = await asyncio.to_thread(self._take)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise ZipStreamError(f"zip of {shown(self.root)} failed: {item}")
                yield item
        finally:
            self._stop.set()

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)


class ZipStreamError(AgentError):
    status = 500
    code = "zip_failed"

