"""POST /extensions: unpacked extensions from zips, then Chromium restarted with them.

Everything is checked before anything changes: every part is received into a staging
directory inside the extensions directory and unpacked there by the daemon's one safe
extractor (`agent.archives`: the whole zip checked first, caps on entries and size); each
must hold a `manifest.json` (at its root, or inside its single top-level folder) with a
JSON object, and supervisord must be able to restart Chromium. Only then are the
extensions swapped into `<extensions_dir>/<name>` by renames, and Chromium is restarted.
Chromium's launch command loads every folder of the extensions directory
(`--load-extension`), so an installed extension also survives later restarts.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.archives import extract_zip
from agent.browser import chromium
from agent.browser.cdp import CdpManager
from agent.config import Settings
from agent.errors import BadRequest, PayloadTooLarge, field_error
from agent.identity import FsUser, run_as
from agent.multipart import IndexedFields
from agent.osutil import Owner, default_owner

NAME = re.compile(r"^[a-zA-Z0-9._-]{1,255}$")
MAX_EXTENSIONS = 64
MAX_NAME_PART_BYTES = 1024


def extensions_root(settings: Settings) -> Path:
    """--extensions-dir, else ~<browser user>/extensions (the daemon user's home without one)."""
    if settings.extensions_dir:
        return Path(settings.extensions_dir)
    if settings.default_user:
        with contextlib.suppress(KeyError):
            return Path(pwd.getpwnam(settings.default_user).pw_dir) / "extensions"
    return Path.home() / "extensions"


@dataclass
class _Pending:
    name: str | None = None
    zip_path: Path | None = None


@dataclass
class _Unpacked:
    index: int
    name: str
    folder: Path  # in staging: the folder that holds manifest.json


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
        self.fields = IndexedFields("extensions", ("zip_file", "name"), MAX_EXTENSIONS)

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
        return self.fields.parse(name)

    async def add_zip(self, index: int, chunks: AsyncIterator[bytes]) -> None:
        entry = self.pending.setdefault(index, _Pending())
        if entry.zip_path is not None:
            raise BadRequest.for_field(
                f"extensions[{index}].zip_file", "is given twice",
                f"extensions[{index}].zip_file given twice")
        path = self.staging_dir() / f"upload-{index}.zip"
        limit = self.settings.zip_max_bytes
        written = 0
        out = await run_as(self.fs, open, path, "wb")
        try:
            async for chunk in chunks:
                written += len(chunk)
                if written > limit:
                    raise PayloadTooLarge.for_field(
                        f"extensions[{index}].zip_file", "is too large",
                        f"extensions[{index}].zip_file is larger than {limit} bytes")
                await run_as(self.fs, out.write, chunk)
        finally:
            await run_as(self.fs, out.close)
        entry.zip_path = path

    def set_name(self, index: int, raw: bytes) -> None:
        entry = self.pending.setdefault(index, _Pending())
        where = f"extensions[{index}].name"
        if entry.name is not None:
            raise BadRequest.for_field(where, "is given twice", f"{where} given twice")
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            name = ""
        if not NAME.match(name) or name.startswith("."):
            raise BadRequest.for_field(
                where, "must match ^[a-zA-Z0-9._-]{1,255}$ and not start with '.'",
                f"{where} must be 1-255 characters of letters, digits, '.', '_' or '-', "
                "not starting with '.'")
        entry.name = name

    # ------------------------------------------------------------------ install

    def _complete(self) -> list[tuple[int, str, Path]]:
        if not self.pending:
            raise BadRequest.for_field(
                "extensions", "is required", "no extensions given", detail_code="missing_field")
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
        """Unpack and check all, swap them in, restart Chromium; the installed folders."""
        unpacked = await self.prepare()
        await chromium.check_restartable(self.settings.supervisor_socket,
                                         self.settings.chromium_program)
        installed = await run_as(self.fs, self._swap, unpacked)
        await chromium.restart(cdp, self.settings.supervisor_socket,
                               self.settings.chromium_program)
        return installed

    async def prepare(self) -> list[_Unpacked]:
        """Every extension unpacked in staging (the zips checked whole by
        `agent.archives` first) and its manifest read: nothing installed is touched yet."""
        return [await run_as(self.fs, self._unpack, *part) for part in self._complete()]

    def _unpack(self, index: int, name: str, path: Path) -> _Unpacked:
        where = f"extensions[{index}].zip_file"
        target = self.staging_dir() / f"unpacked-{index}"
        try:
            extract_zip(str(path), str(target), self._owner(), self.settings.zip_max_entries,
                        self.settings.zip_max_bytes)
        except (BadRequest, PayloadTooLarge) as exc:
            raise type(exc).for_field(where, exc.message, f"{where}: {exc.message}") from None
        folder = target
        if not (target / "manifest.json").is_file():
            inside = list(target.iterdir())
            if len(inside) == 1 and (inside[0] / "manifest.json").is_file():
                folder = inside[0]  # the zip of a folder
            else:
                raise BadRequest.for_field(where, "must contain manifest.json")
        try:
            manifest = json.loads((folder / "manifest.json").read_bytes().decode("utf-8-sig"))
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise BadRequest.for_field(
                where, f"has an unreadable manifest.json: {exc}") from None
        if not isinstance(manifest, dict):
            raise BadRequest.for_field(where, "has a manifest.json that is not a JSON object")
        return _Unpacked(index, name, folder)

    def staging_dir(self) -> Path:
        assert self.staging is not None, "used outside `async with`"
        return self.staging

    def _swap(self, unpacked: list[_Unpacked]) -> list[Path]:
        installed: list[Path] = []
        for item in unpacked:
            dest = self.root / item.name
            if dest.exists() or dest.is_symlink():
                os.rename(dest, self.staging_dir() / f"replaced-{item.index}")
            os.rename(item.folder, dest)
            installed.append(dest)
        return installed

    def _owner(self) -> Owner | None:
        """Files go to the browser user when the daemon runs as root (and does not act as
        that user already)."""
        if self.fs is not None and self.fs.identity is not None:
            return None
        return default_owner(self.settings.default_user)
