"""One spawned process as the table holds it: its child, output spool and pump, stdin (a
pipe or a terminal), signals, resize and resource usage."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psutil

from agent.errors import Conflict
from agent.processes import pty
from agent.processes.child import SIGNALS, Child, live_sessions
from agent.processes.output import OutputPump
from agent.processes.spool import Spool


@dataclass(frozen=True)
class TtySize:
    rows: int = pty.DEFAULT_ROWS
    cols: int = pty.DEFAULT_COLS


def close_quietly(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def write_all(fd: int, data: bytes, timeout_s: float) -> int:
    """Write to a non-blocking fd, waiting for room up to `timeout_s`; bytes written."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    written = 0
    deadline = time.monotonic() + timeout_s
    while written < len(view):
        try:
            written += os.write(fd, view[written:])
            continue
        except (BlockingIOError, InterruptedError):
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        room: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _set_done, room)
        try:
            await asyncio.wait_for(room, remaining)
        except TimeoutError:
            break
        finally:
            loop.remove_writer(fd)
    return written


def tree_usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds (reaped descendants included) and resident bytes of the process, its
    descendants and the rest of its session; None once it is gone."""
    try:
        leader = psutil.Process(pid)
        procs = {leader.pid: leader}
        for child in leader.children(recursive=True):
            procs[child.pid] = child
    except psutil.Error:
        return None
    for member in live_sessions((pid,)).get(pid, []):
        if member not in procs:
            with contextlib.suppress(psutil.Error):
                procs[member] = psutil.Process(member)
    cpu = 0.0
    mem = 0
    for proc in procs.values():
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                rss = proc.memory_info().rss
        except psutil.Error:
            continue
        cpu += times.user + times.system + times.children_user + times.children_system
        mem += rss
    return cpu, mem


class ManagedProcess:
    """A spawned process: its child, output spool and pump, stdin, and terminal."""

    def __init__(
        self,
        process_id: str,
        child: Child,
        out_fds: dict[str, int],
        stdin_fd: int,
        master_fd: int | None,
        spool: Spool,
        stdin_timeout_s: float,
    ) -> None:
        self.id = process_id
        self.child = child
        self.started_at = datetime.now(UTC)
        self.output = spool
        self._stdin_fd: int | None = stdin_fd  # a pipe's write end, or the PTY master
        self._master_fd = master_fd
        self.tty = master_fd is not None
        self._stdin_lock = asyncio.Lock()
        self._stdin_timeout_s = stdin_timeout_s
        self._cpu_mark = (child.started, 0.0)
        self._pump = OutputPump(out_fds, spool.append)

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def exited(self) -> bool:
        return self.child.status is not None

    # --- life -----------------------------------------------------------------------

    async def run(self, linger_s: float) -> None:
        """Wait for the exit, drain the output, then close the stream with the exit event."""
        status = await self.child.wait()
        try:
            await self._pump.drained(self.child.exit_future, linger_s)
        finally:
            self._pump.close()
            self.output.finish(status)
            async with self._stdin_lock:
                self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin_fd is not None:
            close_quietly(self._stdin_fd)
        self._stdin_fd = None
        self._master_fd = None

    def close(self) -> None:
        """Release the fds and delete the spool (forgotten, or daemon shutdown after the
        process was stopped)."""
        self._pump.close()
        self._close_stdin()
        self.output.close()

    def _exited_conflict(self) -> Conflict:
        status = self.child.status
        code = status.exit_code if status is not None else None
        return Conflict(f"process {self.id} has exited (exit code {code})",
                        code="process_exited")

    # --- operations -----------------------------------------------------------------

    async def write_stdin(self, data: bytes, eof: bool = False) -> int:
        """Write `data`; with `eof`, then close a pipe or send the terminal's EOF character.
        Waits for room up to the stdin timeout; fewer bytes written means it ran out."""
        async with self._stdin_lock:
            if self.exited:
                raise self._exited_conflict()
            fd = self._stdin_fd
            if fd is None:
                raise Conflict(f"stdin of process {self.id} is closed", code="stdin_closed")
            try:
                written = await write_all(fd, data, self._stdin_timeout_s)
                if eof and written == len(data):
                    if self._master_fd is not None:
                        await write_all(fd, pty.eof_byte(fd), self._stdin_timeout_s)
                    else:
                        self._close_stdin()
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EIO):
                    raise Conflict(f"process {self.id} no longer reads its stdin",
                                   code="stdin_closed") from None
                raise
            return written

    def send_signal(self, name: str) -> None:
        """Signal the process group; on a terminal also its foreground job, as ^C would."""
        if self.exited:
            raise self._exited_conflict()
        sig = SIGNALS[name]
        # Ask the terminal first: once the leader is gone it has no foreground group, and
        # tcgetpgrp answers 0, which killpg would take as the daemon's own group.
        group = pty.foreground_group(self._master_fd) if self._master_fd is not None else None
        self.child.signal_group(sig)
        if group is not None and group > 1 and group not in (self.child.pid, os.getpgrp()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)

    def resize(self, rows: int, cols: int) -> None:
        if not self.tty:
            raise Conflict(f"process {self.id} has no terminal to resize (spawn it with "
                           "allocate_tty)", code="not_a_terminal")
        if self.exited or self._master_fd is None:
            raise self._exited_conflict()
        pty.set_size(self._master_fd, rows, cols)

    async def usage(self) -> tuple[float, int]:
        """(cpu_pct, mem_bytes) of the process and its descendants: CPU over the time since
        the previous sample (at least a second, else since the one before)."""
        if self.exited:
            return 0.0, 0
        sample = await asyncio.to_thread(tree_usage, self.child.pid)
        now = time.monotonic()
        if sample is None:
            return 0.0, 0
        cpu, mem = sample
        then, cpu_then = self._cpu_mark
        pct = max(0.0, (cpu - cpu_then) / max(now - then, 1e-3) * 100.0)
        if now - then >= 1.0:
            self._cpu_mark = (now, cpu)
        return round(pct, 1), mem

    def status_json(self, cpu_pct: float, mem_bytes: int) -> dict[str, Any]:
        status = self.child.status
        return {
            "state": "running" if status is None else "exited",
            "exit_code": None if status is None else status.exit_code,
            "cpu_pct": cpu_pct,
            "mem_bytes": mem_bytes,
        }
