"""A bounded, replayable event log with fan-out to any number of readers.

Producers (a process's output pump, a directory watch) `append` without ever blocking;
each reader iterates from a sequence number of its choice (0 = from the start, or a
Last-Event-ID) and waits for more. The log keeps at most `max_items` entries and
`max_bytes` of payload; a reader that asks for entries already evicted gets one explicit
`Gap` first, so nothing is ever dropped silently.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Wakeup:
    """Wakes every coroutine waiting at the moment of `wake()`; one that starts waiting
    afterwards waits for the next. Producers call `wake` without ever blocking."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None

    async def wait(self, timeout: float | None = None) -> bool:
        """Until the next `wake` (True) or `timeout` seconds (False)."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._future)
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a stream, as a domain hands it to the SSE edge (`sse.stream`): `data`
    is its JSON (a value, or bytes already serialized on one line), `id` its sequence
    number for Last-Event-ID (None: not a point a reader can resume from). A domain says
    what a reader missed as an event of its own, never by leaving it out."""

    data: Any
    id: int | None = None


@dataclass(frozen=True)
class Gap:
    """Entries `first`..`last` (inclusive) were evicted before this reader saw them."""

    first: int
    last: int

    @property
    def missed(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Entry(Generic[T]):
    seq: int
    item: T


class EventLog(Generic[T]):
    def __init__(
        self,
        max_items: int,
        max_bytes: int | None = None,
        size: Callable[[T], int] | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._size = size or (lambda _item: 0)
        self._entries: deque[tuple[int, T, int]] = deque()
        self._bytes = 0
        self._next_seq = 1
        self._closed = False
        self._wakeup = Wakeup()

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest entry (0 before the first)."""
        return self._next_seq - 1

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest entry still held."""
        return self._entries[0][0] if self._entries else self._next_seq

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, item: T) -> int:
        if self._closed:
            raise RuntimeError("append to a closed EventLog")
        seq = self._next_seq
        self._next_seq += 1
        nbytes = self._size(item)
        self._entries.append((seq, item, nbytes))
        self._bytes += nbytes
        # Keep the newest entry even when it alone exceeds max_bytes.
        while len(self._entries) > self._max_items or (
            self._max_bytes is not None
            and self._bytes > self._max_bytes
            and len(self._entries) > 1
        ):
            _, _, dropped = self._entries.popleft()
            self._bytes -= dropped
        self._wakeup.wake()
        return seq

    def close(self) -> None:
        """No more entries: readers end after draining what is held."""
        self._closed = True
        self._wakeup.wake()

    async def follow(self, after: int = 0) -> AsyncIterator[Entry[T] | Gap]:
        """Yield every entry with seq > `after`, then wait for more until closed."""
        next_seq = max(after, 0) + 1
        while True:
            first = self.first_seq
            if next_seq < first:
                yield Gap(next_seq, first - 1)
                next_seq = first
            if next_seq < self._next_seq:
                index = next_seq - first
                seq, item, _ = self._entries[index]
                next_seq = seq + 1
                yield Entry(seq, item)
                continue
            if self._closed:
                return
            await self._wakeup.wait()
