"""EventLog: replay from any point, fan-out, bounded buffers with explicit gaps."""

from __future__ import annotations

import asyncio

from agent.streams import Entry, EventLog, Gap


async def collect(log: EventLog[str], after: int = 0) -> list[object]:
    return [item async for item in log.follow(after)]


async def test_every_reader_gets_everything_from_the_start() -> None:
    log: EventLog[str] = EventLog(max_items=10)
    log.append("a")
    readers = [asyncio.create_task(collect(log)) for _ in range(3)]
    await asyncio.sleep(0)
    log.append("b")
    log.close()
    results = await asyncio.gather(*readers)
    for result in results:
        assert result == [Entry(1, "a"), Entry(2, "b")]


async def test_resume_after_a_sequence_number() -> None:
    log: EventLog[str] = EventLog(max_items=10)
    for item in "abcd":
        log.append(item)
    log.close()
    assert await collect(log, after=2) == [Entry(3, "c"), Entry(4, "d")]


async def test_overflow_is_reported_as_a_gap_never_silently() -> None:
    log: EventLog[str] = EventLog(max_items=3)
    for item in "abcdef":
        log.append(item)
    log.close()
    assert await collect(log) == [Gap(1, 3), Entry(4, "d"), Entry(5, "e"), Entry(6, "f")]
    assert Gap(1, 3).missed == 3


async def test_byte_bound_keeps_the_newest_entry() -> None:
    log: EventLog[bytes] = EventLog(max_items=100, max_bytes=10, size=len)
    log.append(b"12345")
    log.append(b"67890")
    log.append(b"x" * 20)
    log.close()
    assert await collect(log) == [Gap(1, 2), Entry(3, b"x" * 20)]


async def test_reader_waits_for_new_entries_and_ends_on_close() -> None:
    log: EventLog[int] = EventLog(max_items=5)
    seen: list[object] = []

    async def read() -> None:
        async for item in log.follow():
            seen.append(item)

    task = asyncio.create_task(read())
    await asyncio.sleep(0)
    assert not task.done()
    log.append(1)
    log.close()
    await asyncio.wait_for(task, 1)
    assert seen == [Entry(1, 1)]
