"""A process's output: pumped from its pipes (or PTY) on the event loop into a bounded
replay buffer that any number of readers follow.

Pacing: a process nobody reads never blocks, the buffer just keeps the newest bytes. While
readers follow, the pump stops reading the pipe when the slowest of them falls behind by
more than 3/4 of the buffer, and resumes below 1/2, so readers that keep up, however slowly,
get every byte instead of a gap. A reader that makes no progress for `stall_s` stops pacing
the process (it will then see an explicit gap marker if it falls out of the buffer).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import BadRequest
from agent.processes.child import ExitStatus
from agent.streams import EventLog, Gap

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20
# Bookkeeping per entry counted against the buffer's byte budget, so that a chatty process
# writing one byte at a time is bounded as well as one writing megabytes.
ENTRY_OVERHEAD = 128


@dataclass(frozen=True, slots=True)
class Chunk:
    stream: str  # "stdout" | "stderr"
    data: bytes
    offset: int  # output bytes (both streams) before this chunk

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True, slots=True)
class Exited:
    status: ExitStatus
    offset: int  # all output bytes

    @property
    def end(self) -> int:
        return self.offset


@dataclass(frozen=True, slots=True)
class Missed:
    """Entries evicted before this reader saw them; bytes when the reader's position is known
    (always, unless it resumed from a Last-Event-ID that is gone)."""

    events: int
    bytes: int | None


Item = Chunk | Exited


def event_json(item: Chunk | Exited | Missed) -> dict[str, Any]:
    """The ProcessStreamEvent of an item."""
    if isinstance(item, Chunk):
        return {"stream": item.stream, "data_b64": base64.b64encode(item.data).decode()}
    if isinstance(item, Exited):
        return {"event": "exit", "exit_code": item.status.exit_code}
    body: dict[str, Any] = {"event": "gap", "missed_events": item.events}
    if item.bytes is not None:
        body["missed_bytes"] = item.bytes
    return body


def _cost(item: Item) -> int:
    return (len(item.data) if isinstance(item, Chunk) else 0) + ENTRY_OVERHEAD


class _Cursor:
    __slots__ = ("offset", "paces", "progressed", "seq")

    def __init__(self) -> None:
        self.seq: int | None = None  # last entry consumed; None before the first
        self.offset = 0
        self.paces = True
        self.progressed = time.monotonic()


class OutputBuffer:
    def __init__(self, max_bytes: int) -> None:
        self._max = max(max_bytes, 4 * ENTRY_OVERHEAD)
        self._log: EventLog[Item] = EventLog(self._max // ENTRY_OVERHEAD + 1, self._max, _cost)
        self._cursors: set[_Cursor] = set()
        self.total = 0
        self.on_progress: Callable[[], None] | None = None

    @property
    def last_seq(self) -> int:
        return self._log.last_seq

    @property
    def first_seq(self) -> int:
        return self._log.first_seq

    def append(self, stream: str, data: bytes) -> None:
        self._log.append(Chunk(stream, data, self.total))
        self.total += len(data)

    def finish(self, status: ExitStatus) -> None:
        if not self._log.closed:
            self._log.append(Exited(status, self.total))
            self._log.close()

    def _lag(self, cursor: _Cursor) -> int:
        if cursor.seq is None:
            return 0
        return self.total - cursor.offset + ENTRY_OVERHEAD * (self._log.last_seq - cursor.seq)

    def must_pause(self) -> bool:
        limit = self._max * 3 // 4
        return any(c.paces and self._lag(c) > limit for c in self._cursors)

    def may_resume(self) -> bool:
        limit = self._max // 2
        return all(not c.paces or self._lag(c) <= limit for c in self._cursors)

    def release_stalled(self, stall_s: float) -> int:
        """Readers without progress for `stall_s` stop pacing; how many were released."""
        now = time.monotonic()
        released = 0
        for cursor in self._cursors:
            if cursor.paces and now - cursor.progressed >= stall_s and self._lag(cursor):
                cursor.paces = False
                released += 1
        return released

    def check_resume_point(self, after: int) -> None:
        if after > self._log.last_seq:
            raise BadRequest(f"Last-Event-ID {after} is beyond the newest event "
                             f"{self._log.last_seq} of this process")

    async def read(self, after: int = 0) -> AsyncGenerator[tuple[int | None, Item | Missed]]:
        """(sequence, item) from after `after` to the exit; a `Missed` (sequence None) stands
        for entries evicted before this reader got them."""
        cursor = _Cursor()
        self._cursors.add(cursor)
        known: int | None = 0 if after == 0 else None
        pending: Gap | None = None
        try:
            async for entry in self._log.follow(after):
                if isinstance(entry, Gap):
                    pending = entry
                    continue
                item = entry.item
                if pending is not None:
                    missed = None if known is None else item.offset - known
                    yield None, Missed(pending.missed, missed)
                    pending = None
                if cursor.seq is None:
                    cursor.seq, cursor.offset = entry.seq - 1, item.offset
                yield entry.seq, item
                cursor.seq, cursor.offset = entry.seq, item.end
                cursor.progressed = time.monotonic()
                known = item.end
                if self.on_progress is not None:
                    self.on_progress()
        finally:
            self._cursors.discard(cursor)
            if self.on_progress is not None:
                self.on_progress()


class OutputPump:
    """Reads non-blocking fds from the event loop and hands each chunk to `sink`; owns and
    closes the fds. A PTY master reports the end of output as EIO, taken as EOF."""

    def __init__(self, streams: Mapping[str, int], sink: Callable[[str, bytes], None],
                 read_size: int = READ_SIZE) -> None:
        self._loop = asyncio.get_running_loop()
        self._fds = dict(streams)
        self._sink = sink
        self._read_size = read_size
        self._paused = False
        self._changed = asyncio.Event()
        self.last_data = time.monotonic()
        for name, fd in self._fds.items():
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._readable, name)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def open(self) -> bool:
        return bool(self._fds)

    def _readable(self, name: str) -> None:
        fd = self._fds.get(name)
        if fd is None:
            return
        try:
            data = os.read(fd, self._read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: a PTY whose every slave is closed
            if exc.errno != errno.EIO:
                log.warning("reading %s failed: %s", name, exc)
            data = b""
        if not data:
            self._close(name)
            return
        self.last_data = time.monotonic()
        self._sink(name, data)

    def _close(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is None:
            return
        if not self._paused:
            self._loop.remove_reader(fd)
        os.close(fd)
        self._changed.set()

    def pause(self) -> None:
        if not self._paused:
            self._paused = True
            for fd in self._fds.values():
                self._loop.remove_reader(fd)

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            for name, fd in self._fds.items():
                self._loop.add_reader(fd, self._readable, name)
            self._changed.set()

    async def drained(self, exited: asyncio.Future[Any], linger_s: float) -> None:
        """After the process exited: until every stream hit EOF, or nothing came for
        `linger_s` while not paused (a background grandchild still holds the pipe)."""
        await asyncio.shield(exited)
        while self._fds:
            self._changed.clear()
            if self._paused:
                await self._changed.wait()
                continue
            remaining = linger_s - (time.monotonic() - self.last_data)
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def close(self) -> None:
        for name in list(self._fds):
            self._close(name)


class CappedBuffer:
    """Keeps the first `cap` bytes, counts (and drops) the rest: memory stays bounded while
    the pipe keeps draining."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._data = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self._cap - len(self._data)
        if room > 0:
            self._data += data[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self._data)

    def value(self) -> bytes:
        return bytes(self._data)
