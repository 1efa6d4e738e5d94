"""The telemetry hub: numbers events (`seq`, strictly increasing for the daemon's life),
wraps them in envelopes, keeps the newest in a bounded buffer for live readers and
`Last-Event-ID` resume, and hands each envelope to the on-disk history.

Publishing never waits: each envelope is serialized once, appended to a deque that
evicts the oldest entries beyond `max_items` / `max_bytes`, and readers are woken. A
reader that asks for evicted entries gets a `Gap` first; nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from agent.streams import Gap, Wakeup

MAX_ENVELOPE_BYTES = 1 << 20
BATCH = 512  # entries handed to a reader at once
COALESCE_S = 0.005  # under a flood, a reader takes what came in this long at once


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    ts: int
    type: str
    category: str
    text: str  # the envelope as JSON


def _encode(value: Any) -> str:
    return orjson.dumps(value).decode()


def encode(seq: int, event: dict[str, Any]) -> str:
    """The envelope `{seq, event}` as compact JSON; one over 1 MB loses its `data` and says
    so with `truncated: true`."""
    text = f'{{"seq":{seq},"event":{_encode(event)}}}'
    if len(text) > MAX_ENVELOPE_BYTES // 4 and len(text.encode()) > MAX_ENVELOPE_BYTES:
        slim = {key: value for key, value in event.items() if key != "data"}
        slim["truncated"] = True
        text = f'{{"seq":{seq},"event":{_encode(slim)}}}'
    return text


class TelemetryHub:
    def __init__(self, max_items: int, max_bytes: int, first_seq: int = 1) -> None:
        self._max_items = max(1, max_items)
        self._max_bytes = max_bytes
        self._records: deque[Record] = deque()
        self._bytes = 0
        self._next_seq = max(1, first_seq)
        self._closed = False
        self._wakeup = Wakeup()
        self.sinks: list[Callable[[Record], None]] = []

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def first_seq(self) -> int:
        return self._records[0].seq if self._records else self._next_seq

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, event: dict[str, Any]) -> Record | None:
        if self._closed:
            return None
        seq = self._next_seq
        self._next_seq += 1
        record = Record(seq, int(event["ts"]), str(event["type"]), str(event["category"]),
                        encode(seq, event))
        self._records.append(record)
        self._bytes += len(record.text)
        while len(self._records) > self._max_items or (
                self._bytes > self._max_bytes and len(self._records) > 1):
            self._bytes -= len(self._records.popleft().text)
        for sink in self.sinks:
            sink(record)
        self._wakeup.wake()
        return record

    def close(self) -> None:
        self._closed = True
        self._wakeup.wake()

    async def wait_newer(self, seq: int, timeout: float | None) -> bool:
        """Until an entry after `seq` exists (True), the hub closes or `timeout` passes."""
        if self.last_seq > seq or self._closed:
            return True
        return await self._wakeup.wait(timeout)

    def read(self, after: int) -> Gap | list[Record]:
        """What a reader that has everything up to `after` gets next: a Gap if entries
        after it were evicted, else up to BATCH entries (maybe none)."""
        first = self.first_seq
        if after + 1 < first:
            return Gap(after + 1, first - 1)
        start = after + 1 - first
        if start >= len(self._records):
            return []
        return list(itertools.islice(self._records, start, start + BATCH))

    async def follow(self, after: int, idle_s: float, stop_when_idle: bool = False
                     ) -> AsyncIterator[Gap | list[Record]]:
        """Batches of entries after `after` (and Gaps) as they come; an empty batch after
        `idle_s` without any (time for a keepalive); ends when the hub closes, or (with
        `stop_when_idle`) once everything held has been handed out. Under a flood, batches
        are at least COALESCE_S apart: one write for many events instead of one each."""
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            pause = last + COALESCE_S - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            item = self.read(after)
            if isinstance(item, Gap):
                after = item.last
                yield item
                continue
            if item:
                after = item[-1].seq
                last = loop.time()
                yield item
                continue
            if self._closed or stop_when_idle:
                return
            if not await self.wait_newer(after, idle_s):
                yield []
