"""POST /extensions: unpacked extensions from zips, then Chromium restarted with them.

Everything is checked before anything changes: every part is received into a staging
directory beside the extensions directory, every zip must be a readable archive with a
`manifest.json` (at its root, or inside its single top-level folder) holding a JSON
object, and supervisord must be able to restart Chromium. Only then are the extensions
unpacked (in staging), swapped into `<extensions_dir>/<name>` by renames, and Chromium is
restarted. Chromium's launch command loads every folder of the extensions directory
(`--load-extension`), so an installed extension also survives later restarts.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from agent.browser import chromium
from agent.browser.cdp import CdpManager
from agent.config import Settings
from agent.errors import BadRequest, PayloadTooLarge, field_error
from agent.identity import FsUser, run_as

NAME = re.compile(r"^[a-zA-Z0-9._-]{1,255}$")
# extensions[0][zip_file], extensions[0].zip_file, extensions.0.zip_file, and what the
# Kernel SDKs send: extensions[][zip_file] (the n-th such part belongs to extension n).
FIELD = re.compile(r"^extensions(?:\[(\d*)\]|\.(\d+))(?:\[(\w+)\]|\.(\w+))$")
KEYS = ("zip_file", "name")
MAX_EXTENSIONS = 64
MAX_NAME_PART_BYTES = 1024
COPY_CHUNK = 1 << 16


def extensions_root(settings: Settings) -> Path:
    """--extensions-dir, else ~<browser user>/extensions (the daemon user's home without one)."""
    if settings.extensions_dir:
        return Path(settings.extensions_dir)
    if settings.default_user:
        with contextlib.suppress(KeyError):
            return Path(pwd.getpwnam(settings.default_user).pw_dir) / "extensions"
    return Path.home() / "extensions"


def parse_field(name: str, positions: dict[str, int]) -> tuple[int, str]:
    """(extension index, key) of a multipart field name; `positions` counts the
    index-less parts per key."""
    match = FIELD.match(name or "")
    key = (match.group(3) or match.group(4)) if match else None
    if match is None or key not in KEYS:
        raise BadRequest(f"unexpected form field {name!r}; expected extensions[i][zip_file] "
                         "and extensions[i][name]",
                         details=[field_error(name or "form", "is not a known field",
                                              "unknown_field")])
    assert key is not None
    digits = match.group(1) if match.group(1) is not None else match.group(2)
    if digits:
        index = int(digits)
    else:
        index = positions.get(key, 0)
        positions[key] = index + 1
    if index >= MAX_EXTENSIONS:
        raise BadRequest(f"at most {MAX_EXTENSIONS} extensions per upload",
                         details=[field_error(f"extensions[{index}]", "index too large")])
    return index, key


@dataclass
class _Pending:
    name: str | None = None
    zip_path: Path | None = None


@dataclass
class _Checked:
    index: int
    name: str
    zip_path: Path
    prefix: str  # folder inside the zip that holds manifest.json ("" for the root)
    members: list[zipfile.ZipInfo] = field(default_factory=list)


class ExtensionUpload:
    """The parts of one POST /extensions, staged on disk; `async with` removes the staging."""

    def __init__(self, settings: Settings, fs: FsUser | None = None) -> None:
        self.settings = settings
        # Unpacking runs as the browser user, in that user's directory: nothing the user
        # does there (a symlink swapped in) can lead the daemon's writes elsewhere.
        self.fs = fs
        self.root = extensions_root(settings)
        self.staging: Path | None = None
        self.pending: dict[int, _Pending] = {}
        self.positions: dict[str, int] = {}

    async def __aenter__(self) -> ExtensionUpload:
        def make() -> Path:
            self.root.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=".upload-", dir=self.root))

        try:
            self.staging = await run_as(self.fs, make)
        except OSError as exc:
            raise BadRequest(f"cannot use the extensions directory {self.root}: "
                             f"{exc.strerror or exc}") from None
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.staging is not None:
            await run_as(self.fs, shutil.rmtree, self.staging, True)

    def field(self, name: str) -> tuple[int, str]:
        return parse_field(name, self.positions)

    async def add_zip(self, index: int, chunks: AsyncIterator[bytes]) -> None:
        assert self.staging is not None
        entry = self.pending.setdefault(index, _Pending())
        if entry.zip_path is not None:
            raise BadRequest(f"extensions[{index}].zip_file given twice",
                             details=[field_error(f"extensions[{index}].zip_file",
                                                  "is given twice")])
        path = self.staging / f"upload-{index}.zip"
        limit = self.settings.zip_max_bytes
        written = 0
        out = await run_as(self.fs, open, path, "wb")
        try:
            async for chunk in chunks:
                written += len(chunk)
                if written > limit:
                    raise PayloadTooLarge(
                        f"extensions[{index}].zip_file is larger than {limit} bytes",
                        details=[field_error(f"extensions[{index}].zip_file", "is too large")])
                await run_as(self.fs, out.write, chunk)
        finally:
            await run_as(self.fs, out.close)
        entry.zip_path = path

    def set_name(self, index: int, raw: bytes) -> None:
        entry = self.pending.setdefault(index, _Pending())
        where = f"extensions[{index}].name"
        if entry.name is not None:
            raise BadRequest(f"{where} given twice", details=[field_error(where, "is given twice")])
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            name = ""
        if not NAME.match(name) or name.startswith("."):
            raise BadRequest(
                f"{where} must be 1-255 characters of letters, digits, '.', '_' or '-', "
                "not starting with '.'",
                details=[field_error(where, "must match ^[a-zA-Z0-9._-]{1,255}$ and not "
                                     "start with '.'")])
        entry.name = name

    # ------------------------------------------------------------------ install

    def _complete(self) -> list[tuple[int, str, Path]]:
        if not self.pending:
            raise BadRequest("no extensions given",
                             details=[field_error("extensions", "is required", "missing_field")])
        details: list[dict[str, Any]] = []
        done: list[tuple[int, str, Path]] = []
        seen: dict[str, int] = {}
        for index in sorted(self.pending):
            entry = self.pending[index]
            if entry.zip_path is None:
                details.append(field_error(f"extensions[{index}].zip_file", "is required",
                                           "missing_field"))
            if entry.name is None:
                details.append(field_error(f"extensions[{index}].name", "is required",
                                           "missing_field"))
            elif entry.name in seen:
                details.append(field_error(f"extensions[{index}].name",
                                           f"repeats extensions[{seen[entry.name]}].name"))
            else:
                seen[entry.name] = index
            if entry.zip_path is not None and entry.name is not None:
                done.append((index, entry.name, entry.zip_path))
        if details:
            raise BadRequest(details[0]["message"] if len(details) == 1 else
                             f"{len(details)} invalid fields: " +
                             ", ".join(d["field"] for d in details), details=details)
        return done

    async def install(self, cdp: CdpManager) -> list[Path]:
        """Check all, unpack all, swap them in, restart Chromium; the installed folders."""
        parts = self._complete()
        checked = [await run_as(self.fs, self._check_zip, *part) for part in parts]
        await chromium.check_restartable(self.settings.supervisor_socket,
                                         self.settings.chromium_program)
        installed = await run_as(self.fs, self._unpack_and_swap, checked)
        await chromium.restart(cdp, self.settings.supervisor_socket,
                               self.settings.chromium_program)
        return installed

    def _check_zip(self, index: int, name: str, path: Path) -> _Checked:
        where = f"extensions[{index}].zip_file"

        def bad(message: str) -> BadRequest:
            return BadRequest(f"{where} {message}", details=[field_error(where, message)])

        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError):
            raise bad("is not a zip archive") from None
        with archive:
            members = archive.infolist()
            if len(members) > self.settings.zip_max_entries:
                raise bad(f"has more than {self.settings.zip_max_entries} entries")
            if sum(m.file_size for m in members) > self.settings.zip_max_bytes:
                raise PayloadTooLarge(f"{where} unpacks to more than "
                                      f"{self.settings.zip_max_bytes} bytes",
                                      details=[field_error(where, "unpacks too large")])
            names: set[str] = set()
            for member in members:
                parts = PurePosixPath(member.filename.replace("\\", "/")).parts
                if (member.filename.startswith("/") or ".." in parts
                        or stat.S_ISLNK(member.external_attr >> 16)):
                    raise bad(f"holds an unsafe entry: {member.filename!r}")
                names.add(member.filename.rstrip("/"))
            prefix = ""
            if "manifest.json" not in names:
                tops = {PurePosixPath(n).parts[0] for n in names if n}
                if len(tops) == 1 and f"{next(iter(tops))}/manifest.json" in names:
                    prefix = next(iter(tops)) + "/"
                else:
                    raise bad("must contain manifest.json")
            try:
                manifest = json.loads(archive.read(prefix + "manifest.json").decode("utf-8-sig"))
            except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as exc:
                raise bad(f"has an unreadable manifest.json: {exc}") from None
            if not isinstance(manifest, dict):
                raise bad("has a manifest.json that is not a JSON object")
        return _Checked(index, name, path, prefix, members)

    def _unpack_and_swap(self, checked: list[_Checked]) -> list[Path]:
        assert self.staging is not None
        owner = self._owner()
        unpacked: list[tuple[_Checked, Path]] = []
        for item in checked:
            target = self.staging / f"unpacked-{item.index}"
            self._unpack(item, target, owner)
            unpacked.append((item, target))
        installed: list[Path] = []
        for item, source in unpacked:
            dest = self.root / item.name
            if dest.exists() or dest.is_symlink():
                os.rename(dest, self.staging / f"replaced-{item.index}")
            os.rename(source, dest)
            installed.append(dest)
        return installed

    def _owner(self) -> tuple[int, int] | None:
        """Files go to the browser user when the daemon runs as root (and does not act as
        that user already)."""
        if os.geteuid() != 0 or not self.settings.default_user or (
                self.fs is not None and self.fs.identity is not None):
            return None
        try:
            entry = pwd.getpwnam(self.settings.default_user)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid

    def _unpack(self, item: _Checked, target: Path, owner: tuple[int, int] | None) -> None:
        limit = self.settings.zip_max_bytes
        target.mkdir(mode=0o755)
        if owner:
            os.chown(target, *owner)
        try:
            self._extract(item, target, limit)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            where = f"extensions[{item.index}].zip_file"
            raise BadRequest(f"{where} is corrupt: {exc}",
                             details=[field_error(where, "is corrupt")]) from None
        if owner:
            for dirpath, dirnames, filenames in os.walk(target):
                for entry_name in dirnames + filenames:
                    os.chown(os.path.join(dirpath, entry_name), *owner)

    def _extract(self, item: _Checked, target: Path, limit: int) -> None:
        total = 0
        with zipfile.ZipFile(item.zip_path) as archive:
            for member in item.members:
                name = member.filename.replace("\\", "/")
                if not name.startswith(item.prefix):
                    continue
                relative = name[len(item.prefix):].strip("/")
                if not relative:
                    continue
                path = target / relative
                if member.is_dir():
                    path.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                with archive.open(member) as src, open(path, "wb") as out:
                    while chunk := src.read(COPY_CHUNK):
                        total += len(chunk)
                        if total > limit:  # sizes in a zip's directory can lie
                            raise PayloadTooLarge(
                                f"extensions[{item.index}].zip_file unpacks to more than "
                                f"{limit} bytes")
                        out.write(chunk)
                os.chmod(path, 0o644)
