"""The output events' JSON, the pump that reads pipes, and the capped exec buffer (the spool
that spawned processes write to: test_processes_spool)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

from agent.processes.child import ExitStatus
from agent.processes.output import (
    CappedBuffer,
    Chunk,
    Exited,
    Missed,
    OutputPump,
    event_bytes,
    event_json,
)


def test_event_json_shapes() -> None:
    assert event_json(Chunk("stderr", b"\x00\xff", 0)) == {"stream": "stderr",
                                                            "data_b64": "AP8="}
    assert event_json(Exited(ExitStatus(137, "KILL"), 5)) == {"event": "exit",
                                                               "exit_code": 137}
    assert event_json(Missed(3, 10)) == {"event": "gap", "missed_events": 3,
                                         "missed_bytes": 10}
    assert event_json(Missed(3, None)) == {"event": "gap", "missed_events": 3}


def test_event_bytes_is_event_json_serialized() -> None:
    items = (Chunk("stdout", bytes(range(256)) * 300, 7), Chunk("stderr", b"", 0),
             Exited(ExitStatus(0), 9), Missed(2, None), Missed(1, 4))
    for item in items:
        frame = event_bytes(item)
        assert b"\n" not in frame  # one SSE data line
        assert json.loads(frame) == event_json(item)


def test_capped_buffer_keeps_the_head_and_counts_the_rest() -> None:
    capped = CappedBuffer(10)
    for _ in range(1000):
        capped.add(b"0123456789abcdef")
    assert capped.value() == b"0123456789"
    assert capped.total == 16000 and capped.truncated
    small = CappedBuffer(10)
    small.add(b"abc")
    assert small.value() == b"abc" and not small.truncated


async def test_pump_reads_until_eof() -> None:
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
    os.write(write_end, b"-more")
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
