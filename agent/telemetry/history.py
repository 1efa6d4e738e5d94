"""The telemetry history on disk: every envelope as one JSON line, in files of at most
`file_bytes` named after their first `seq`, the oldest files deleted beyond `max_bytes`.

Appends are buffered writes on the event loop (a flush at most `FLUSH_S` later, and before
every query); queries read the files in a thread. Paging follows the SDK: `offset` is an
opaque cursor (here: a sequence number bound) returned as `X-Next-Offset`, 0 when there is
no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from agent.telemetry.stream import Record

log = logging.getLogger(__name__)

FLUSH_S = 0.25
_NAME = re.compile(r"^events-(\d{16})\.jsonl$")
SCAN_FACTOR = 50  # a filtered page scans at most limit × this many records (at least 5000)


@dataclass
class _File:
    first_seq: int
    path: str
    size: int
    first_ts: int = 0


@dataclass
class Query:
    order: str = "asc"  # asc | desc
    offset: int | None = None  # cursor from X-Next-Offset
    since_us: int | None = None
    until_us: int | None = None
    types: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    limit: int = 20


@dataclass
class Page:
    items: list[dict[str, Any]] = field(default_factory=list)
    next_offset: int = 0
    has_more: bool = False


class History:
    """Append-only, rotated, size-capped JSON lines. `usable` is False when the directory
    cannot be used (the daemon then serves an empty history, as the SDK expects)."""

    def __init__(self, directory: str, max_bytes: int, file_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.file_bytes = max(4096, min(file_bytes, max_bytes))
        self.usable = False
        self.error: str | None = None
        self.last_seq = 0
        self._files: list[_File] = []
        self._out: IO[str] | None = None
        self._flush: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- lifecycle

    def open(self, create: bool) -> None:
        """Find what earlier runs left; with `create`, make the directory (daemon-only:
        0700) when it does not exist yet."""
        if self.usable:
            return
        if not create and not os.path.isdir(self.directory):
            return
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            os.chmod(self.directory, 0o700)
            names = sorted(n for n in os.listdir(self.directory) if _NAME.match(n))
            for name in names:
                path = os.path.join(self.directory, name)
                match = _NAME.match(name)
                assert match is not None
                self._files.append(_File(int(match.group(1)), path, os.path.getsize(path),
                                         _first_ts(path)))
            if self._files:
                self.last_seq = _repair_tail(self._files[-1])
                if self.last_seq == 0:
                    self.last_seq = self._files[-1].first_seq - 1
        except OSError as exc:
            self._files.clear()
            self.error = f"telemetry history in {self.directory} unusable: {exc}"
            log.warning("%s", self.error)
            return
        self.usable = True

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None

    def snapshot(self) -> dict[str, Any]:
        body: dict[str, Any] = {"directory": self.directory, "usable": self.usable,
                                "files": len(self._files),
                                "bytes": sum(f.size for f in self._files)}
        if self.error:
            body["error"] = self.error
        return body

    # ---------------------------------------------------------------- writing

    def append(self, record: Record) -> None:
        if not self.usable:
            return
        line = record.text + "\n"
        try:
            current = self._files[-1] if self._files else None
            if current is None or self._out is None or current.size >= self.file_bytes:
                current = self._rotate(record)
            assert self._out is not None
            self._out.write(line)
        except OSError as exc:
            self._fail(exc)
            return
        current.size += len(line.encode()) if not line.isascii() else len(line)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def _rotate(self, record: Record) -> _File:
        if self._out is not None:
            self._out.close()
            self._out = None
        current = self._files[-1] if self._files else None
        if current is None or current.size >= self.file_bytes:
            path = os.path.join(self.directory, f"events-{record.seq:016d}.jsonl")
            current = _File(record.seq, path, 0, record.ts)
            self._files.append(current)
        fd = os.open(current.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._out = os.fdopen(fd, "a", encoding="utf-8", buffering=256 * 1024)
        while sum(f.size for f in self._files) + self.file_bytes > self.max_bytes \
                and len(self._files) > 1:
            oldest = self._files.pop(0)
            with contextlib.suppress(FileNotFoundError):
                os.remove(oldest.path)
        return current

    def flush(self) -> None:
        self._flush = None
        if self._out is not None:
            try:
                self._out.flush()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = f"writing the telemetry history failed: {exc}"
        log.warning("%s; history disabled", self.error)
        self.close()
        self.usable = False

    # ---------------------------------------------------------------- reading

    async def query(self, query: Query) -> Page:
        if not self.usable:
            return Page()
        self.flush()
        files = [(f.first_seq, f.path, f.size, f.first_ts) for f in self._files]
        return await asyncio.to_thread(_run_query, files, query)


def _first_ts(path: str) -> int:
    with open(path, encoding="utf-8", errors="replace") as handle:
        line = handle.readline()
    try:
        return int(json.loads(line)["event"]["ts"])
    except (ValueError, KeyError, TypeError):
        return 0


def _repair_tail(newest: _File) -> int:
    """Cut a half-written last line (a crash mid-write); the last complete line's seq."""
    with open(newest.path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        pos = size
        tail = b""
        while pos > 0 and b"\n" not in tail[:-1]:
            step = min(pos, 1 << 16)
            pos -= step
            handle.seek(pos)
            tail = handle.read(step) + tail
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n") + 1
            handle.truncate(pos + cut)
            tail = tail[:cut]
            newest.size = pos + cut
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    try:
        return int(json.loads(lines[-1])["seq"]) if lines[-1] else 0
    except (ValueError, KeyError, TypeError):
        return 0


def _records(files: list[tuple[int, str, int, int]], start_seq: int, reverse: bool
             ) -> Iterator[dict[str, Any]]:
    """Envelopes from the files, ascending from `start_seq`, or descending from below it."""
    if reverse:
        for first_seq, path, size, _ in reversed(files):
            if first_seq >= start_seq:
                continue
            lines = _read_lines(path, size)
            for line in reversed(lines):
                envelope = _parse(line)
                if envelope is not None and envelope["seq"] < start_seq:
                    yield envelope
        return
    index = 0
    for i, (first_seq, *_rest) in enumerate(files):
        if first_seq <= start_seq:
            index = i
    for _first, path, size, _ in files[index:]:
        for line in _read_lines(path, size):
            envelope = _parse(line)
            if envelope is not None and envelope["seq"] >= start_seq:
                yield envelope


def _read_lines(path: str, size: int) -> list[bytes]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(size)
    except FileNotFoundError:
        return []  # rotated away meanwhile
    return data.split(b"\n")[:-1]  # a partial last line (being written) is left out


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        envelope = json.loads(line)
    except ValueError:
        return None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("seq"), int):
        return None
    return envelope


def _matches(envelope: dict[str, Any], query: Query) -> bool:
    event = envelope.get("event") or {}
    if query.types and event.get("type") not in query.types:
        return False
    return not (query.categories and event.get("category") not in query.categories)


def _run_query(files: list[tuple[int, str, int, int]], query: Query) -> Page:
    page = Page()
    budget = max(5000, query.limit * SCAN_FACTOR)
    if query.order == "desc":
        start = query.offset if query.offset else 1 << 62
        last_seen = 0
        for envelope in _records(files, start, reverse=True):
            ts = int(envelope["event"].get("ts", 0))
            if query.until_us is not None and ts >= query.until_us:
                continue
            if len(page.items) >= query.limit or budget == 0:
                page.has_more, page.next_offset = True, last_seen
                return page
            budget -= 1
            last_seen = envelope["seq"]
            if _matches(envelope, query):
                page.items.append(envelope)
        return page
    start = query.offset or 0
    if query.offset is None and query.since_us is not None:
        # the newest file that starts at or before `since` (files are in time order)
        for first_seq, _path, _size, first_ts in files:
            if first_ts and first_ts <= query.since_us:
                start = first_seq
    for envelope in _records(files, start, reverse=False):
        ts = int(envelope["event"].get("ts", 0))
        if query.offset is None and query.since_us is not None and ts < query.since_us:
            continue
        if query.until_us is not None and ts >= query.until_us:
            return page
        if len(page.items) >= query.limit or budget == 0:
            page.has_more, page.next_offset = True, envelope["seq"]
            return page
        budget -= 1
        if _matches(envelope, query):
            page.items.append(envelope)
    return page
