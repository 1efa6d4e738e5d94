"""A spawned process's output, spooled to disk: every chunk the pump reads is appended to
the process's spool (segment files in a daemon-owned directory), and any number of readers
follow it from any event, at their own pace, with nothing held in memory but an index.

The process never waits for a reader: the pump writes to the spool as fast as the process
writes to its pipe, a reader that falls behind reads from the file (the page cache keeps
recent output), and a reader that connects late gets every byte from the start.

Each record is a header (sequence number, output offset, stream, length) and the chunk.
Sequence numbers are the SSE event ids; the exit event takes the number after the last
chunk. A spool is capped: beyond `max_bytes` the oldest segment file is deleted, and a
reader that asks for events that went with it gets one explicit `Missed` first (so does a
reader of a chunk that could not be written, e.g. on a full disk). An index entry every
`INDEX_EVERY` bytes lets a Last-Event-ID resume anywhere without reading from the start.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import shutil
import signal
import struct
import tempfile
from array import array
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import ClassVar

from agent.errors import BadRequest
from agent.osutil import proc_stat
from agent.processes.child import ExitStatus, session_members
from agent.processes.output import Chunk, Exited, Item, Missed
from agent.streams import Wakeup

log = logging.getLogger(__name__)

HEADER = struct.Struct("<QQBI")  # seq, output offset, stream, length
STREAMS = ("stdout", "stderr")
STREAM_CODES = {name: code for code, name in enumerate(STREAMS)}
INDEX_EVERY = 256 * 1024
READ_BLOCK = 1 << 20
MIN_SEGMENT = 64 * 1024


@dataclass
class _Segment:
    number: int
    path: str
    fd: int
    first_seq: int
    first_offset: int
    size: int = 0
    # (seq, file position) of a record every INDEX_EVERY bytes; the first at 0.
    index_seqs: array[int] | None = None
    index_pos: array[int] | None = None
    indexed_to: int = 0

    def __post_init__(self) -> None:
        self.index_seqs = array("q", [self.first_seq])
        self.index_pos = array("q", [0])

    def position_of(self, seq: int) -> int:
        """A record boundary at or before the record `seq`."""
        assert self.index_seqs is not None and self.index_pos is not None
        at = bisect.bisect_right(self.index_seqs, seq) - 1
        return self.index_pos[max(at, 0)]


class Spool:
    """The output of one process in `directory` (created here, removed by `close`)."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self._dir = directory
        self._max = max(max_bytes, 2 * MIN_SEGMENT)
        self._segment_bytes = max(self._max // 8, MIN_SEGMENT)
        os.mkdir(directory, 0o700)
        self._segments: list[_Segment] = []
        self._next_number = 0
        self._next_seq = 1
        self.total = 0  # output bytes of both streams, written or not
        self.lost = 0  # bytes that could not be written (disk full, I/O error)
        self._exited: Exited | None = None
        self._wakeup = Wakeup()
        self._closed = False
        self._new_segment()

    @property
    def directory(self) -> str:
        return self._dir

    # --- writing ------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The newest event's number (0 before the first)."""
        return self._next_seq - 1

    @property
    def first_seq(self) -> int:
        return self._segments[0].first_seq if self._segments else self._next_seq

    @property
    def disk_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    def _new_segment(self) -> None:
        path = os.path.join(self._dir, f"{self._next_number:06d}.out")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._segments.append(_Segment(self._next_number, path, fd, self._next_seq, self.total))
        self._next_number += 1

    def _drop_oldest(self) -> None:
        segment = self._segments.pop(0)
        if segment.fd >= 0:
            os.close(segment.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path)

    def append(self, stream: str, data: bytes) -> None:
        if self._exited is not None or self._closed:
            raise RuntimeError("append to a finished spool")
        seq = self._next_seq
        self._next_seq += 1
        offset = self.total
        self.total += len(data)
        segment = self._segments[-1]
        if segment.size >= self._segment_bytes:
            try:
                self._new_segment()
            except OSError as exc:
                log.warning("spool %s: cannot start a segment: %s", self._dir, exc)
            segment = self._segments[-1]
        record = HEADER.pack(seq, offset, STREAM_CODES[stream], len(data)) + data
        try:
            written = 0
            while written < len(record):
                written += os.pwrite(segment.fd, record[written:], segment.size + written)
        except OSError as exc:
            # A full disk or an I/O error: this chunk is lost, never half-kept; readers
            # see the jump in sequence numbers as an explicit gap.
            with contextlib.suppress(OSError):
                os.ftruncate(segment.fd, segment.size)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("spool %s: write failed: %s", self._dir, exc)
            self.lost += len(data)
        else:
            if segment.size - segment.indexed_to >= INDEX_EVERY:
                assert segment.index_seqs is not None and segment.index_pos is not None
                segment.index_seqs.append(seq)
                segment.index_pos.append(segment.size)
                segment.indexed_to = segment.size
            segment.size += len(record)
            while len(self._segments) > 1 and self.disk_bytes > self._max:
                self._drop_oldest()
        self._wakeup.wake()

    def finish(self, status: ExitStatus) -> None:
        """The process exited and its output is all in: the exit event follows the last
        chunk. The spool's files stay (for readers) but hold no fd of the writer's."""
        if self._exited is None:
            self._exited = Exited(status, self.total)
            self._next_seq += 1
            self._close_fds()
            self._wakeup.wake()

    def _close_fds(self) -> None:
        for segment in self._segments:
            if segment.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
                segment.fd = -1

    def close(self) -> None:
        """Delete the spool (the process is forgotten, or the daemon stops)."""
        if self._closed:
            return
        self._closed = True
        self._close_fds()
        self._segments.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._wakeup.wake()

    # --- reading ------------------------------------------------------------------

    def check_resume_point(self, after: int) -> None:
        if after > self.last_seq:
            raise BadRequest(f"Last-Event-ID {after} is beyond the newest event "
                             f"{self.last_seq} of this process")

    def _segment_after(self, seq: int) -> _Segment | None:
        """The oldest segment that may hold records after `seq`."""
        chosen = None
        for segment in self._segments:
            if segment.first_seq > seq + 1 and chosen is not None:
                break
            chosen = segment
        return chosen

    async def read(self, after: int = 0) -> AsyncGenerator[tuple[int | None, Item | Missed]]:
        """(sequence, item) of every event after `after`, waiting for more until the exit;
        a `Missed` (sequence None) stands for events that are gone (dropped for the cap, or
        never written)."""
        next_seq = max(after, 0) + 1
        known: int | None = 0 if after == 0 else None  # output offset the reader has
        number = -1
        pos = 0
        fd = -1
        try:
            while not self._closed:
                segment = next((s for s in self._segments if s.number == number), None)
                if segment is None:
                    # Start, or the current segment was dropped: find where to go on.
                    found = self._segment_after(next_seq - 1)
                    if found is None or found.number <= number:
                        found = next((s for s in self._segments if s.number > number), None)
                    if found is None:
                        break
                    segment, number = found, found.number
                    pos = segment.position_of(next_seq) if segment.first_seq < next_seq else 0
                    if fd >= 0:
                        os.close(fd)
                    fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
                if pos < segment.size:
                    block = os.pread(fd, READ_BLOCK, pos)
                    view = memoryview(block)
                    used = 0
                    while len(view) - used >= HEADER.size:
                        seq, offset, code, length = HEADER.unpack_from(view, used)
                        end = used + HEADER.size + length
                        if end > len(view):
                            if used == 0:  # one record larger than a block
                                view = memoryview(os.pread(fd, end, pos))
                                continue
                            break
                        if seq >= next_seq:
                            if seq > next_seq:
                                missed = None if known is None else offset - known
                                yield None, Missed(seq - next_seq, missed)
                            data = bytes(view[used + HEADER.size:end])
                            yield seq, Chunk(STREAMS[code], data, offset)
                            next_seq = seq + 1
                            known = offset + length
                        used = end
                    pos += used
                    continue
                later = next((s for s in self._segments if s.number > number), None)
                if later is not None:
                    number, pos = later.number, 0
                    os.close(fd)
                    fd = os.open(later.path, os.O_RDONLY | os.O_CLOEXEC)
                    continue
                if self._exited is not None:
                    exit_seq = self._next_seq - 1
                    if exit_seq > next_seq:  # chunks at the end that were never written
                        missed = None if known is None else self._exited.offset - known
                        yield None, Missed(exit_seq - next_seq, missed)
                    yield exit_seq, self._exited
                    return
                await self._wakeup.wait()
        finally:
            if fd >= 0:
                os.close(fd)


class SpoolDirectory:
    """The daemon's own directory of spools: `browser-agent-spool-<pid>-<random>` (mode
    0700, so the browser's user can neither read nor plant output) inside `parent` (the
    system's temporary directory when empty).

    A daemon that dies without cleaning up (SIGKILL) leaves its directory, and its spawned
    processes running with nobody to read or stop them. Each spool names its process (pid
    and start time, in `owner`), so the next daemon to create its directory stops those
    processes' sessions (KILL) and removes the directory."""

    PREFIX = "browser-agent-spool-"
    # Directories of this process, which may host several apps (as tests do).
    _in_use: ClassVar[set[str]] = set()

    def __init__(self, parent: str) -> None:
        parent = os.path.abspath(parent or tempfile.gettempdir())
        os.makedirs(parent, 0o755, exist_ok=True)
        self._remove_stale(parent)
        self.path = tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=parent)
        self._in_use.add(self.path)

    def _remove_stale(self, parent: str) -> None:
        for name in os.listdir(parent):
            if not name.startswith(self.PREFIX):
                continue
            pid = name[len(self.PREFIX):].split("-", 1)[0]
            mine = pid.isdigit() and int(pid) == os.getpid()
            if os.path.join(parent, name) in self._in_use:
                continue
            if pid.isdigit() and (mine or not _alive(int(pid))):
                log.info("removing the spool directory of a daemon that is gone: %s", name)
                stale = os.path.join(parent, name)
                for entry in os.listdir(stale):
                    stop_orphaned(os.path.join(stale, entry, OWNER))
                shutil.rmtree(stale, ignore_errors=True)

    def path_for(self, process_id: str) -> str:
        return os.path.join(self.path, process_id)

    def remove(self) -> None:
        self._in_use.discard(self.path)
        shutil.rmtree(self.path, ignore_errors=True)


OWNER = "owner"


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), which tells it from a later
    process that reuses its pid."""
    fields = proc_stat(pid)
    return None if fields is None else int(fields[19])


def record_owner(spool_dir: str, pid: int) -> None:
    """Name the process whose output this spool holds (see `SpoolDirectory`)."""
    with open(os.path.join(spool_dir, OWNER), "w") as owner:
        owner.write(f"{pid} {start_time(pid)}\n")


def stop_orphaned(owner_file: str) -> int:
    """KILL the session of the process an `owner` file names, if it is still that process;
    how many processes were signalled."""
    try:
        with open(owner_file) as owner:
            pid_text, started = owner.read().split()
    except (OSError, ValueError):
        return 0
    pid = int(pid_text)
    if str(start_time(pid)) != started:
        return 0
    members = session_members(pid)
    for member in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)
    if members:
        log.warning("stopped %d processes left by a daemon that died: session %d",
                    len(members), pid)
    return len(members)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
