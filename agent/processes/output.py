"""A process's output: the events a reader gets (chunks, the exit, gaps), the pump that
reads a process's pipes (or PTY) on the event loop, and exec's capped buffer. Spawned
processes keep their output in a spool on disk (`spool`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.processes.child import ExitStatus
from agent.streams import StreamEvent

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20


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
    """Events gone before this reader got them (dropped for the spool's cap, or never
    written); bytes when the reader's position is known (always, unless it resumed from a
    Last-Event-ID that is gone)."""

    events: int
    bytes: int | None


Item = Chunk | Exited


async def stream_events(
    items: AsyncGenerator[tuple[int | None, Chunk | Exited | Missed], None],
) -> AsyncGenerator[StreamEvent, None]:
    """A spool's items (`Spool.read`) as the events of `/process/{id}/stdout/stream`."""
    async with contextlib.aclosing(items):
        async for seq, item in items:
            yield StreamEvent(event_bytes(item), seq)


def event_bytes(item: Chunk | Exited | Missed) -> bytes:
    """`event_json` serialized. A chunk's is built as bytes directly (base64 needs no JSON
    escaping): output streams are mostly chunks, and this spares each one a round trip
    through str and the JSON encoder."""
    if isinstance(item, Chunk):
        return b'{"stream":"%s","data_b64":"%s"}' % (item.stream.encode(),
                                                    base64.b64encode(item.data))
    return json.dumps(event_json(item), separators=(",", ":")).encode()


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


class OutputPump:
    """Reads non-blocking fds from the event loop and hands each chunk to `sink`; owns and
    closes the fds. A PTY master reports the end of output as EIO, taken as EOF. The sink
    never blocks (a spool on disk, or exec's capped buffer), so the pump never pauses: a
    process is never held back by its readers."""

    def __init__(self, streams: Mapping[str, int], sink: Callable[[str, bytes], None],
                 read_size: int = READ_SIZE) -> None:
        self._loop = asyncio.get_running_loop()
        self._fds = dict(streams)
        self._sink = sink
        self._read_size = read_size
        self._changed = asyncio.Event()
        self.last_data = time.monotonic()
        for name, fd in self._fds.items():
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._readable, name)

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
        self._loop.remove_reader(fd)
        os.close(fd)
        self._changed.set()

    async def drained(self, exited: asyncio.Future[Any], linger_s: float) -> None:
        """After the process exited: until every stream hit EOF, or nothing came for
        `linger_s` (a background grandchild still holds the pipe)."""
        await asyncio.shield(exited)
        while self._fds:
            self._changed.clear()
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
