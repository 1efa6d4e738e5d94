"""Safe extraction of zip archives, for every slice that unpacks one (file uploads,
browser extensions).

The whole archive is checked before anything is written: entries that would land outside
the destination (`..`, absolute names, symlinks pointing out, paths through symlinks)
reject the archive with a 400, and caps on the entry count and the total uncompressed size
stop zip bombs with a 413 (the sizes a zip declares are checked, and so are the bytes it
really inflates to). Files are extracted into a staging directory inside the destination
and only renamed into place once every entry has been read and its CRC checked, so a
corrupt archive leaves nothing behind either.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field

from agent.errors import BadRequest, PayloadTooLarge
from agent.osutil import Owner, make_dirs, mapped, shown

COPY_CHUNK = 1 << 20
MAX_LINK_TARGET = 4096


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
