"""Zip archives: safe extraction of uploads, and directory zips streamed while built.

Extraction checks the whole archive before writing anything: entries that would land
outside the destination (`..`, absolute names, symlinks pointing out, paths through
symlinks) reject the archive with a 400, and caps on the entry count and the total
uncompressed size stop zip bombs with a 413. Files are then extracted into a staging
directory inside the destination and only renamed into place once every entry has been
read and its CRC checked, so a corrupt archive leaves nothing behind either.

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
import shutil
import stat
import struct
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from agent.errors import AgentError, BadRequest, PayloadTooLarge
from agent.files.ops import Owner, make_dirs, mapped, shown
from agent.identity import FsUser, open_path

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20
PIPE_CHUNK = 1 << 20  # bytes per chunk handed from the zip thread to the HTTP handler
PIPE_DEPTH = 4  # chunks in flight: bounds the memory of a download
MAX_LINK_TARGET = 4096
SAMPLE = 256 * 1024  # bytes of a file tried with deflate to decide whether to compress it
# Known compressed formats are stored without trying; other files are deflated (fast
# level) when a sample of their start compresses.
STORED_SUFFIXES = frozenset((
    ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".jar", ".apk", ".crx",
    ".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".heic",
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mp3", ".m4a", ".ogg", ".opus",
    ".flac", ".woff", ".woff2", ".pdf", ".docx", ".xlsx", ".pptx", ".odt",
))


# ---------------------------------------------------------------- extraction


@dataclass
class _Plan:
    dirs: dict[str, int] = field(default_factory=dict)  # relative path → mode
    files: dict[str, tuple[zipfile.ZipInfo, int]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # relative path → target


def _entry_mode(info: zipfile.ZipInfo) -> int:
    return (info.external_attr >> 16) & 0xFFFF


def _relative_name(name: str) -> str | None:
    """The entry's path relative to the destination; None for the destination itself.
    Raises 400 for names that would leave it."""
    if "\x00" in name:
        raise BadRequest(f"zip entry name contains a NUL byte: {name!r}")
    if name.startswith("/"):
        raise BadRequest(f"zip entry has an absolute name: {name!r}")
    normal = os.path.normpath(name)
    if normal == ".":
        return None
    if normal == ".." or normal.startswith("../"):
        raise BadRequest(f"zip entry escapes the destination: {name!r}")
    return normal


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def declared_entries(path: str) -> int | None:
    """The entry count from the end-of-central-directory record, read before `zipfile`
    builds an object per entry (a bomb of a million empty entries is a small file)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail_len = min(size, 22 + 65535 + 20)
        handle.seek(size - tail_len)
        tail = handle.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        count = int(struct.unpack_from("<H", tail, at + 10)[0])
        if count != 0xFFFF or at < 20 or tail[at - 20:at - 16] != b"PK\x06\x07":
            return count
        (offset,) = struct.unpack_from("<Q", tail, at - 20 + 8)
        if offset + 56 > size:
            return None
        handle.seek(offset)
        record = handle.read(56)
        if record[:4] != b"PK\x06\x06":
            return None
        return int(struct.unpack_from("<Q", record, 32)[0])


def _plan(archive: zipfile.ZipFile, dest: str, max_entries: int, max_bytes: int) -> _Plan:
    infos = archive.infolist()
    if len(infos) > max_entries:
        raise PayloadTooLarge(f"zip has {len(infos)} entries; at most {max_entries} allowed")
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise PayloadTooLarge(
            f"zip expands to {total} bytes; at most {max_bytes} allowed")
    plan = _Plan()
    for info in infos:
        rel = _relative_name(info.filename)
        if rel is None:
            continue
        if info.flag_bits & 0x1:
            raise BadRequest(f"zip entry is encrypted: {info.filename!r}")
        mode = _entry_mode(info)
        if info.is_dir():
            plan.dirs[rel] = stat.S_IMODE(mode) & 0o777 or 0o755
        elif stat.S_ISLNK(mode):
            if info.file_size > MAX_LINK_TARGET:
                raise BadRequest(f"zip symlink target too long: {info.filename!r}")
            target = archive.read(info).decode("utf-8", "surrogateescape")
            plan.links[rel] = target
        else:
            plan.files[rel] = (info, stat.S_IMODE(mode) & 0o777 or 0o644)
    _check_plan(plan, dest)
    return plan


def _check_plan(plan: _Plan, dest: str) -> None:
    """Every entry lands inside `dest`, through no symlink, and no two entries clash."""
    leaves = {**{p: "file" for p in plan.files}, **{p: "link" for p in plan.links}}
    for rel in plan.dirs:
        if rel in leaves:
            raise BadRequest(f"zip has both a directory and a file named {rel!r}")
    real_dest = os.path.realpath(dest)
    for rel in [*plan.dirs, *plan.files, *plan.links]:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in leaves:
                raise BadRequest(f"zip entry {rel!r} is inside {prefix!r}, which is not a "
                                 "directory")
        # Existing symlinks in the destination must not lead the entry out of it, and
        # existing files cannot become directories.
        parent = os.path.join(dest, os.path.dirname(rel))
        real_parent = os.path.realpath(parent)
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise BadRequest(f"zip entry {rel!r} needs a directory where {shown(parent)} is "
                             "a file")
        if not _inside(real_dest, real_parent):
            raise BadRequest(f"zip entry {rel!r} would be written outside the destination "
                             "through an existing symbolic link")
        existing = os.path.join(dest, rel)
        if rel in plan.dirs:
            if os.path.lexists(existing) and not os.path.isdir(existing):
                raise BadRequest(f"zip directory {rel!r} clashes with an existing file")
            if not _inside(real_dest, os.path.realpath(existing)):
                raise BadRequest(f"zip directory {rel!r} is an existing symbolic link "
                                 "leading outside the destination")
        elif os.path.isdir(existing) and not os.path.islink(existing):
            raise BadRequest(f"zip entry {rel!r} would replace an existing directory")
    for rel, target in plan.links.items():
        if target.startswith("/") or "\x00" in target or not target:
            raise BadRequest(f"zip symlink {rel!r} points outside the destination: "
                             f"{shown(target)!r}")
        raw = [p for p in os.path.join(os.path.dirname(rel), target).split("/")
               if p not in ("", ".")]
        resolved: list[str] = []
        for index, part in enumerate(raw):
            if part == "..":
                if not resolved:
                    raise BadRequest(f"zip symlink {rel!r} points outside the destination: "
                                     f"{shown(target)!r}")
                resolved.pop()
                continue
            resolved.append(part)
            # Through another link of the archive, `..` could leave (`a -> .`, `b -> a/..`).
            if index < len(raw) - 1 and "/".join(resolved) in plan.links:
                raise BadRequest(f"zip symlink {rel!r} points through another symlink")
        real_target = os.path.realpath(os.path.join(dest, *resolved))
        if not _inside(real_dest, real_target):
            raise BadRequest(f"zip symlink {rel!r} points outside the destination")


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str,
                    budget: list[int]) -> None:
    with archive.open(info) as source, open(path, "wb") as sink:
        while True:
            chunk = source.read(COPY_CHUNK)
            if not chunk:
                break
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise PayloadTooLarge("zip expands beyond the allowed total size")
            sink.write(chunk)


def extract_zip(archive_path: str, dest: str, owner: Owner | None, max_entries: int,
                max_bytes: int) -> int:
    """Extract a zip into `dest` (created if missing); returns the number of entries
    placed. All or nothing: any failure leaves `dest` as it was."""
    try:
        entries = declared_entries(archive_path)
        if entries is not None and entries > max_entries:
            raise PayloadTooLarge(f"zip has {entries} entries; at most {max_entries} allowed")
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise BadRequest(f"not a valid zip archive: {exc}") from None
    with archive, mapped(dest, "extract into"):
        try:
            st: os.stat_result | None = os.stat(dest)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise BadRequest(f"dest_path is not a directory: {shown(dest)}")
        try:
            plan = _plan(archive, dest, max_entries, max_bytes)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError,
                EOFError, zlib.error) as exc:
            raise BadRequest(f"cannot read the zip archive: {exc}") from None
        created = make_dirs(dest, 0o755, owner) if st is None else []
        try:
            _extract_planned(archive, plan, dest, owner, max_bytes)
        except BaseException:
            if created:
                shutil.rmtree(created[0], ignore_errors=True)
            raise
    return len(plan.dirs) + len(plan.files) + len(plan.links)


def _extract_planned(archive: zipfile.ZipFile, plan: _Plan, dest: str,
                     owner: Owner | None, max_bytes: int) -> None:
    staging = tempfile.mkdtemp(prefix=".agent-unzip-", dir=dest)
    try:
        staged: dict[str, str] = {}
        budget = [max_bytes]
        for index, (rel, (info, _mode)) in enumerate(plan.files.items()):
            path = os.path.join(staging, str(index))
            try:
                _extract_member(archive, info, path, budget)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError,
                    EOFError, zlib.error) as exc:
                raise BadRequest(f"cannot extract zip entry {rel!r}: {exc}") from None
            staged[rel] = path
        # Everything is read and checked: place it.
        for rel in sorted(plan.dirs):
            make_dirs(os.path.join(dest, rel), plan.dirs[rel], owner)
        for rel, path in staged.items():
            target = os.path.join(dest, rel)
            make_dirs(os.path.dirname(target), 0o755, owner)
            if owner is not None:
                os.chown(path, owner.uid, owner.gid)
            os.chmod(path, plan.files[rel][1])
            os.replace(path, target)
        for rel, link_target in plan.links.items():
            target = os.path.join(dest, rel)
            make_dirs(os.path.dirname(target), 0o755, owner)
            if os.path.lexists(target):
                os.unlink(target)
            os.symlink(link_target, target)
            if owner is not None:
                os.chown(target, owner.uid, owner.gid, follow_symlinks=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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

