"""The tailing core on real files: line splitting, where `tail` starts, rotation and
truncation seen from the tailer itself, and supervisord being absent."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import async_wait_until

from agent.errors import BadRequest, NotFound, Unavailable
from agent.logs.manager import DEFAULT_TAIL, parse_tail
from agent.logs.tail import MAX_LINE_BYTES, FileTailer, LineSplitter, tail_offset
from agent.supervisor import SupervisorClient

# --------------------------------------------------------------------- LineSplitter


def test_splitter_holds_back_partial_lines() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"first\nsec") == ["first"]
    assert splitter.pending == 3
    assert splitter.feed(b"ond") == []
    assert splitter.feed(b"\nthird\r\n\n") == ["second", "third", ""]
    assert splitter.pending == 0
    assert splitter.flush() == []


def test_splitter_flush_gives_the_partial_line() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"a\nno newline\r") == ["a"]
    assert splitter.flush() == ["no newline"]
    assert splitter.pending == 0


def test_splitter_replaces_invalid_utf8() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"ok \xff\xfe bad \xc3\n") == ["ok \ufffd\ufffd bad \ufffd"]


def test_splitter_cuts_long_lines_at_character_boundaries() -> None:
    splitter = LineSplitter(max_line=10)
    # 'é' is two bytes: a cut at byte 10 would fall inside the sixth one.
    text = "abc" + "é" * 10
    pieces = splitter.feed(text.encode() + b"\n")
    assert "".join(pieces) == text
    assert all(len(p.encode()) <= 10 for p in pieces)
    assert "\ufffd" not in "".join(pieces)
    assert len(pieces) == 3


def test_splitter_cuts_a_line_without_newline_once_it_is_too_long() -> None:
    splitter = LineSplitter(max_line=8)
    assert splitter.feed(b"0123456") == []
    assert splitter.feed(b"789abcdefgh") == ["01234567", "89abcdef"]
    assert splitter.pending == 2
    assert splitter.feed(b"\n") == ["gh"]


def test_splitter_line_of_exactly_the_limit_is_one_line() -> None:
    splitter = LineSplitter(max_line=8)
    assert splitter.feed(b"01234567\n89\n") == ["01234567", "89"]


# --------------------------------------------------------------------- tail_offset


def _offset(path: Path, content: bytes, lines: int | None, max_line: int = MAX_LINE_BYTES
            ) -> bytes:
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        return content[tail_offset(fd, len(content), lines, max_line):]
    finally:
        os.close(fd)


def test_tail_offset_counts_like_tail_n(tmp_path: Path) -> None:
    f = tmp_path / "log"
    assert _offset(f, b"a\nb\nc\n", 2) == b"b\nc\n"
    assert _offset(f, b"a\nb\nc", 2) == b"b\nc"  # the unterminated last line counts
    assert _offset(f, b"a\nb\nc\n", 3) == b"a\nb\nc\n"
    assert _offset(f, b"a\nb\nc\n", 50) == b"a\nb\nc\n"
    assert _offset(f, b"a\nb\nc\n", 0) == b""
    assert _offset(f, b"a\nb\nc\n", None) == b"a\nb\nc\n"
    assert _offset(f, b"", 10) == b""
    assert _offset(f, b"\n\n\n", 2) == b"\n\n"


def test_tail_offset_across_scan_blocks(tmp_path: Path) -> None:
    lines = [f"line {i:06d} ".encode() * 20 + b"\n" for i in range(3000)]  # ~450 KiB
    content = b"".join(lines)
    assert _offset(tmp_path / "log", content, 1000) == b"".join(lines[-1000:])


def test_tail_offset_scans_no_further_than_the_longest_line(tmp_path: Path) -> None:
    content = b"x" * 1000 + b"\n" + b"y" * 1000 + b"\n"
    # With 100-byte lines at most, the last 2 "lines" lie within the last 200 bytes.
    assert _offset(tmp_path / "log", content, 2, max_line=100) == content[-200:]


def test_parse_tail() -> None:
    assert parse_tail(None) == DEFAULT_TAIL
    assert parse_tail("all") is None
    assert parse_tail("ALL") is None
    assert parse_tail("0") == 0
    assert parse_tail("25") == 25
    with pytest.raises(BadRequest) as err:
        parse_tail("lots")
    assert err.value.details and err.value.details[0]["field"] == "tail"
    with pytest.raises(BadRequest):
        parse_tail(-1)


# --------------------------------------------------------------------- FileTailer


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


class Collector:
    """Runs a tailer's batches() in a task and keeps every line it gives."""

    def __init__(self, tailer: FileTailer) -> None:
        self.tailer = tailer
        self.lines: list[str] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self.tailer.batches():
            self.lines.extend(batch)

    async def wait_for(self, count: int, what: str = "lines") -> list[str]:
        await async_wait_until(lambda: len(self.lines) >= count, timeout=10,
                               what=f"{count} {what}")
        return self.lines

    async def stop(self) -> None:
        self.tailer.close()
        await asyncio.wait_for(self.task, 10)


TailOf = Callable[..., Awaitable[Collector]]


@pytest.fixture
async def tail_of(executor: ThreadPoolExecutor) -> AsyncIterator[TailOf]:
    collectors: list[Collector] = []
    stop = asyncio.Event()

    async def make(path: Path, tail: int | None = 10, follow: bool = True) -> Collector:
        tailer = FileTailer(str(path), tail=tail, follow=follow, executor=executor, stop=stop)
        await tailer.open()
        collector = Collector(tailer)
        collectors.append(collector)
        return collector

    yield make
    stop.set()
    for collector in collectors:
        await collector.stop()


async def test_tailer_holds_a_partial_line_until_its_newline(tmp_path: Path,
                                                            tail_of: TailOf) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    c = await tail_of(log)
    with log.open("ab", buffering=0) as out:
        out.write(b"hel")
        await async_wait_until(lambda: c.tailer.offset == 3, what="the tailer to read 'hel'")
        assert c.tailer.pending == 3
        assert c.lines == []
        out.write(b"lo\n")
        assert await c.wait_for(1) == ["hello"]


async def test_tailer_keeps_the_old_file_until_a_new_one_appears(tmp_path: Path,
                                                                 tail_of: TailOf) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"before\n")
    c = await tail_of(log)
    assert await c.wait_for(1) == ["before"]
    with log.open("ab", buffering=0) as out:
        os.rename(log, tmp_path / "app.log.1")
        out.write(b"written after the rename\n")  # the writer still holds the old file
        await c.wait_for(2)
        assert c.tailer.rotations == 0
        out.write(b"a line cut by the rota")
    log.write_bytes(b"tion\nnew file\n")
    lines = await c.wait_for(4)
    assert lines == ["before", "written after the rename", "a line cut by the rotation",
                     "new file"]
    assert c.tailer.rotations == 1


async def test_tailer_restarts_after_truncation(tmp_path: Path, tail_of: TailOf) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a long line before the truncation\n")
    c = await tail_of(log)
    await c.wait_for(1)
    with log.open("r+b") as out:
        out.truncate(0)
    await async_wait_until(lambda: c.tailer.truncations == 1, what="the truncation")
    with log.open("ab") as out:
        out.write(b"after\n")
    assert await c.wait_for(2) == ["a long line before the truncation", "after"]


async def test_tailer_without_follow_ends(tmp_path: Path, tail_of: TailOf) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"1\n2\n3")
    c = await tail_of(log, tail=None, follow=False)
    await asyncio.wait_for(c.task, 10)
    assert c.lines == ["1", "2", "3"]


async def test_open_errors(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    stop = asyncio.Event()

    def tailer(path: str) -> FileTailer:
        return FileTailer(path, tail=1, follow=True, executor=executor, stop=stop)

    with pytest.raises(NotFound):
        await tailer(str(tmp_path / "missing.log")).open()
    with pytest.raises(NotFound):
        await tailer(str(tmp_path / "missing" / "deeper.log")).open()
    with pytest.raises(BadRequest, match="directory"):
        await tailer(str(tmp_path)).open()
    with pytest.raises(BadRequest, match="absolute"):
        await tailer("relative.log").open()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(BadRequest, match="regular file"):
        await tailer(str(tmp_path / "fifo")).open()


# --------------------------------------------------------------------- supervisord absent


def test_supervisor_socket_missing_is_unavailable(tmp_path: Path) -> None:
    client = SupervisorClient(str(tmp_path / "no.sock"))
    with pytest.raises(Unavailable, match="not running"):
        client.stdout_logfile("chromium")


def test_supervisor_stale_socket_is_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()  # the file stays, nobody listens: what a crashed supervisord leaves
    client = SupervisorClient(path)
    with pytest.raises(Unavailable) as err:
        client.stdout_logfile("chromium")
    assert err.value.code == "supervisor_unavailable"
