"""`FileInfo` records: one file's, a directory's entries, and their pages."""

from __future__ import annotations

import contextlib
import os
import stat
from datetime import UTC, datetime
from typing import Any

from agent.errors import (
    BadRequest,
    Forbidden,
)
from agent.osutil import (
    mapped,
    shown,
)
from agent.paging import Page, paginate

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
