"""Following a log file the way `tail -F` does, without blocking the event loop.

A `FileTailer` starts from the last `tail` lines of a file and, when following, hands
out every new line as it is written. It polls (every `POLL_INTERVAL_S`): each poll is one
short job on a thread pool (`pread` of at most `READ_CHUNK` bytes, or an `fstat`/`stat`
pair at end of file), so a slow disk never stalls the loop and a slow reader never makes
the tailer read ahead — the file itself is the buffer.

It survives both ways logs are rotated:
- rename and a new file (logrotate's default, supervisord's own rotation): the path
  names another inode, so the old file is read to its end and then the new one from its
  start;
- copytruncate: the file shrinks below the position read so far, so reading restarts at
  offset 0.

Lines are split on `\\n` (a trailing `\\r` is dropped). A partial line is held back until
its newline arrives (or, with `follow=false`, until the end of the stream) — across a
rotation or truncation too, since a writer cut off mid-line (supervisord rotates at a byte
count) finishes that line in the new file. A line longer than `MAX_LINE_BYTES` is cut
into pieces at UTF-8 character boundaries; invalid UTF-8 is replaced by U+FFFD.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from agent.errors import AgentError, BadRequest
from agent.identity import open_path
from agent.osutil import check_path, os_error

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
READ_CHUNK = 256 * 1024
POLL_INTERVAL_S = 0.05
_SCAN_BLOCK = 64 * 1024

T = TypeVar("T")


def _utf8_cut(data: bytes | bytearray, start: int, limit: int) -> int:
    """The largest cut ≤ `start + limit` that does not split a UTF-8 character (when the
    bytes there are UTF-8 at all)."""
    cut = start + limit
    # Step back over at most three continuation bytes (10xxxxxx).
    while cut > start + limit - 3 and cut > start + 1 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut


def decode(line: bytes | bytearray) -> str:
    return bytes(line).decode("utf-8", errors="replace")


class LineSplitter:
    """Bytes in, complete lines out; holds back a partial line, cuts absurdly long ones."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max = max_line
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of a partial line held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[str]:
        buf = self._buf
        buf += data
        lines: list[str] = []
        start = 0
        while True:
            newline = buf.find(b"\n", start, start + self._max + 1)
            if newline != -1:
                end = newline
                if end > start and buf[end - 1] == 0x0D:
                    end -= 1
                lines.append(decode(buf[start:end]))
                start = newline + 1
            elif len(buf) - start > self._max:
                cut = _utf8_cut(buf, start, self._max)
                lines.append(decode(buf[start:cut]))
                start = cut
            else:
                break
        del buf[:start]
        return lines

    def flush(self) -> list[str]:
        """The held-back partial line as a line of its own (at the end of a stream)."""
        if not self._buf:
            return []
        end = len(self._buf)
        if self._buf[end - 1] == 0x0D:
            end -= 1
        line = decode(self._buf[:end])
        self._buf.clear()
        return [line]


def tail_offset(fd: int, size: int, lines: int | None,
                max_line: int = MAX_LINE_BYTES) -> int:
    """Where the last `lines` lines of the file begin (None: the whole file).

    Counts like `tail -n`: a final line without its newline is a line. The backwards scan
    looks at most `lines × max_line` bytes, since no line is sent longer than that; in a
    file of longer lines the stream starts inside one.
    """
    if lines is None or size == 0:
        return 0
    if lines <= 0:
        return size
    floor = max(0, size - lines * max_line)
    end = size
    if os.pread(fd, 1, size - 1) == b"\n":
        end = size - 1  # the final newline ends the last line; it separates nothing
    found = 0
    while end > floor:
        begin = max(floor, end - _SCAN_BLOCK)
        block = os.pread(fd, end - begin, begin)
        if len(block) != end - begin:  # truncated under us: start where we can
            return min(begin + len(block), size)
        index = len(block)
        while True:
            index = block.rfind(b"\n", 0, index)
            if index == -1:
                break
            found += 1
            if found == lines:
                return begin + index + 1
        end = begin
    return floor


def open_log_file(path: str) -> tuple[int, os.stat_result]:
    """Open a regular file for tailing (blocking; run it off the loop)."""
    try:
        fd = open_path(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise os_error(exc, path, "open") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise BadRequest.for_field(
                "path", "is a directory", f"{path} is a directory, not a log file")
        if not stat.S_ISREG(st.st_mode):
            raise BadRequest.for_field(
                "path", "is not a regular file", f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class FileTailer:
    """One stream over one log file. `await open()`, iterate `batches()`, `close()`."""

    def __init__(
        self,
        path: str,
        *,
        tail: int | None,
        follow: bool,
        executor: Executor,
        stop: asyncio.Event,
        poll_interval: float = POLL_INTERVAL_S,
    ) -> None:
        self.path = path
        self._tail = tail
        self._follow = follow
        self._executor = executor
        self._stop = stop
        self._poll_interval = poll_interval
        self._fd = -1
        self._ino: tuple[int, int] = (0, 0)
        self._pos = 0
        self._limit: int | None = None  # follow=false: the size when the stream began
        self._splitter = LineSplitter()
        self._inflight: Future[Any] | None = None
        self._closed = False
        self.rotations = 0
        self.truncations = 0

    @property
    def offset(self) -> int:
        """Bytes of the current file read so far."""
        return self._pos

    @property
    def pending(self) -> int:
        """Bytes of a partial line held back."""
        return self._splitter.pending

    async def _run(self, fn: Callable[[], T]) -> T:
        future = self._executor.submit(fn)
        self._inflight = future  # kept after a cancel: close() must wait for the thread
        return await asyncio.wrap_future(future)

    async def open(self) -> None:
        """Open the file and find where the stream starts; raises NotFound/BadRequest/..."""
        check_path(self.path)
        await self._run(self._open)

    def _open(self) -> None:
        fd, st = open_log_file(self.path)
        try:
            self._pos = tail_offset(fd, st.st_size, self._tail)
        except OSError as exc:
            os.close(fd)
            raise os_error(exc, self.path, "open") from None
        self._fd = fd
        self._ino = (st.st_dev, st.st_ino)
        if not self._follow:
            self._limit = st.st_size

    def _step(self) -> tuple[bytes, bool, bool]:
        """One poll: (bytes read, the file was rotated or truncated, the stream is done)."""
        if self._closed:
            return b"", False, True
        fd = self._fd
        if self._limit is not None:
            want = min(READ_CHUNK, self._limit - self._pos)
            data = os.pread(fd, want, self._pos) if want > 0 else b""
            self._pos += len(data)
            return data, False, not data
        data = os.pread(fd, READ_CHUNK, self._pos)
        if data:
            self._pos += len(data)
            return data, False, False
        if os.fstat(fd).st_size < self._pos:
            log.info("%s was truncated; reading it again from the start", self.path)
            self._pos = 0
            self.truncations += 1
            return b"", True, False
        try:
            current = os.stat(self.path)
        except OSError:
            return b"", False, False  # rotated away, new file not there yet: keep the old
        if (current.st_dev, current.st_ino) == self._ino:
            return b"", False, False
        # Rotated. Anything written to the old file since the read above comes first.
        data = os.pread(fd, READ_CHUNK, self._pos)
        if data:
            self._pos += len(data)
            return data, False, False
        try:
            new_fd, st = open_log_file(self.path)
        except AgentError as exc:
            log.debug("cannot open the rotated %s yet: %s", self.path, exc.message)
            return b"", False, False
        os.close(fd)
        self._fd = new_fd
        self._ino = (st.st_dev, st.st_ino)
        self._pos = 0
        self.rotations += 1
        log.info("%s was rotated; following the new file", self.path)
        return b"", True, False

    async def batches(self) -> AsyncGenerator[list[str], None]:
        """Lists of lines, as they become available; ends with the stream."""
        splitter = self._splitter
        while not self._closed:
            try:
                data, reset, done = await self._run(self._step)
            except OSError as exc:  # e.g. EIO: end the stream cleanly, say why in the log
                log.warning("reading %s failed, ending its stream: %s", self.path, exc)
                data, reset, done = b"", False, True
            # A rotation or truncation keeps a held-back partial line: writers that
            # stream (supervisord cuts its logs at a byte count) continue it in the new
            # file.
            lines = splitter.feed(data) if data else []
            if done:
                lines += splitter.flush()
            if lines:
                yield lines
            if done:
                return
            if not data and not reset:
                if self._stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await self._stop.wait()

    def close(self) -> None:
        """Release the file, now or as soon as a read in flight on the pool finishes."""
        self._closed = True
        future = self._inflight
        if future is not None and not future.done():
            future.add_done_callback(lambda _f: self._close_fd())
        else:
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
