"""The output buffer (replay, fan-out, gaps with byte counts, pacing, stalled readers) and
the capped exec buffer."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
import time

import pytest

from agent.errors import BadRequest
from agent.processes.child import ExitStatus
from agent.processes.output import (
    ENTRY_OVERHEAD,
    CappedBuffer,
    Chunk,
    Exited,
    Missed,
    OutputBuffer,
    OutputPump,
    event_json,
)


async def collect(buffer: OutputBuffer, after: int = 0) -> list[tuple[int | None, object]]:
    return [pair async for pair in buffer.read(after)]


async def test_every_reader_gets_everything_then_exit() -> None:
    buffer = OutputBuffer(1 << 20)
    readers = [asyncio.ensure_future(collect(buffer)) for _ in range(3)]
    await asyncio.sleep(0)
    buffer.append("stdout", b"a")
    buffer.append("stderr", b"bc")
    buffer.finish(ExitStatus(3))
    results = await asyncio.gather(*readers)
    late = await collect(buffer)
    for result in [*results, late]:
        assert result == [
            (1, Chunk("stdout", b"a", 0)),
            (2, Chunk("stderr", b"bc", 1)),
            (3, Exited(ExitStatus(3), 3)),
        ]


async def test_resume_after_an_event() -> None:
    buffer = OutputBuffer(1 << 20)
    for part in (b"one", b"two", b"three"):
        buffer.append("stdout", part)
    buffer.finish(ExitStatus(0))
    assert [seq for seq, _ in await collect(buffer, after=2)] == [3, 4]
    buffer.check_resume_point(4)
    with pytest.raises(BadRequest):
        buffer.check_resume_point(5)


async def test_gap_reports_missed_events_and_bytes() -> None:
    budget = 4 * (100 + ENTRY_OVERHEAD)
    buffer = OutputBuffer(budget)
    for _ in range(10):
        buffer.append("stdout", b"x" * 100)
    buffer.finish(ExitStatus(0))
    items = [item for _, item in await collect(buffer)]
    missed = items[0]
    assert isinstance(missed, Missed)
    chunks = [i for i in items if isinstance(i, Chunk)]
    assert missed.bytes is not None
    assert missed.bytes + sum(len(c.data) for c in chunks) == 1000
    assert missed.events + len(chunks) == 10
    assert event_json(missed) == {"event": "gap", "missed_events": missed.events,
                                  "missed_bytes": missed.bytes}

    # Resuming from an id that is gone: the count of events is known, the bytes are not.
    resumed = [item for _, item in await collect(buffer, after=1)]
    assert isinstance(resumed[0], Missed) and resumed[0].bytes is None
    assert "missed_bytes" not in event_json(resumed[0])


def test_event_json_shapes() -> None:
    assert event_json(Chunk("stderr", b"\x00\xff", 0)) == {"stream": "stderr",
                                                            "data_b64": "AP8="}
    assert event_json(Exited(ExitStatus(137, "KILL"), 5)) == {"event": "exit",
                                                               "exit_code": 137}


def test_entries_are_bounded_by_bytes_with_overhead() -> None:
    """A process writing a byte at a time is bounded too: each entry costs its overhead."""
    buffer = OutputBuffer(64 * 1024)
    for _ in range(100_000):
        buffer.append("stdout", b"x")
    held = buffer.last_seq - buffer.first_seq + 1
    assert held * (1 + ENTRY_OVERHEAD) <= 64 * 1024


async def test_pacing_follows_the_slowest_reader() -> None:
    size = 100 + ENTRY_OVERHEAD
    buffer = OutputBuffer(40 * size)
    progress: list[int] = []
    buffer.on_progress = lambda: progress.append(1)
    assert not buffer.must_pause()  # nobody reads: never pause

    reader = buffer.read()
    buffer.append("stdout", b"x" * 100)
    first = await reader.__anext__()  # the reader holds entry 1, has not consumed it
    assert first[0] == 1
    for _ in range(29):
        buffer.append("stdout", b"x" * 100)
    assert not buffer.must_pause()  # 30 entries behind: under 3/4 of 40
    for _ in range(2):
        buffer.append("stdout", b"x" * 100)
    assert buffer.must_pause()
    assert not buffer.may_resume()
    for _ in range(12):  # consume until under half the buffer behind
        await reader.__anext__()
    assert buffer.may_resume()
    assert progress
    await reader.aclose()  # a reader that leaves stops pacing
    assert not buffer.must_pause()


async def test_a_stalled_reader_is_released() -> None:
    size = 100 + ENTRY_OVERHEAD
    buffer = OutputBuffer(8 * size)
    reader = buffer.read()
    buffer.append("stdout", b"x" * 100)
    await reader.__anext__()
    for _ in range(8):
        buffer.append("stdout", b"x" * 100)
    assert buffer.must_pause()
    assert buffer.release_stalled(stall_s=3600) == 0
    assert buffer.release_stalled(stall_s=0) == 1
    assert not buffer.must_pause() and buffer.may_resume()
    await reader.aclose()


def test_capped_buffer_keeps_the_head_and_counts_the_rest() -> None:
    capped = CappedBuffer(10)
    for _ in range(1000):
        capped.add(b"0123456789abcdef")
    assert capped.value() == b"0123456789"
    assert capped.total == 16000 and capped.truncated
    small = CappedBuffer(10)
    small.add(b"abc")
    assert small.value() == b"abc" and not small.truncated


async def test_pump_reads_until_eof_and_pauses() -> None:
    read_end, write_end = os.pipe()
    got: list[bytes] = []
    pump = OutputPump({"stdout": read_end}, lambda _s, data: got.append(data))
    os.write(write_end, b"hello")

    async def until(predicate: object) -> None:
        deadline = time.monotonic() + 5
        while not predicate():  # type: ignore[operator]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)

    await until(lambda: b"".join(got) == b"hello")
    pump.pause()
    os.write(write_end, b"-more")
    for _ in range(20):  # let the loop run: a paused pump leaves the bytes in the pipe
        await asyncio.sleep(0)
    unread = struct.unpack("i", fcntl.ioctl(read_end, termios.FIONREAD, b"\0" * 4))[0]
    assert unread == 5 and b"".join(got) == b"hello"
    pump.resume()
    await until(lambda: b"".join(got) == b"hello-more")
    os.close(write_end)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    await asyncio.wait_for(pump.drained(done, linger_s=60), 5)  # EOF, not the linger
    assert not pump.open


async def test_pump_lingers_when_a_writer_keeps_the_pipe() -> None:
    read_end, write_end = os.pipe()
    pump = OutputPump({"stdout": read_end}, lambda _s, _d: None)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    started = time.monotonic()
    await asyncio.wait_for(pump.drained(done, linger_s=0.2), 5)
    assert 0.15 <= time.monotonic() - started < 2
    pump.close()
    with contextlib.suppress(OSError):
        os.close(write_end)
