"""The process table: exec (run to completion, capped output), spawn (with pipes or a PTY,
output spooled to disk; each a `process.ManagedProcess`), lookup, retention of exited
processes, a cap on live ones, and an orderly stop of every child when the daemon stops.

A process's life never depends on an HTTP connection: the table owns it, its output pump
and its reaping, and readers come and go.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import Settings
from agent.errors import (
    BadRequest,
    NotFound,
    ShuttingDown,
    TooManyRequests,
    Unavailable,
)
from agent.processes import pty
from agent.processes.child import Child, ExitStatus, live_sessions, terminate_all
from agent.processes.launch import (
    Command,
    Launch,
    resolve,
    start,
    stop_ignoring_for_children,
)
from agent.processes.orphans import OrphanReaper
from agent.processes.output import CappedBuffer, OutputPump
from agent.processes.process import ManagedProcess, TtySize, close_quietly
from agent.processes.spool import Spool, SpoolDirectory, record_owner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecResult:
    status: ExitStatus
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    timed_out: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "exit_code": self.status.exit_code,
            "stdout_b64": base64.b64encode(self.stdout).decode(),
            "stderr_b64": base64.b64encode(self.stderr).decode(),
            "duration_ms": self.duration_ms,
            "timed_out": self.timed_out,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
        }


class ProcessManager:
    def __init__(
        self,
        settings: Settings,
        *,
        linger_s: float = 0.5,
        stdin_timeout_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._linger_s = linger_s
        self._stdin_timeout_s = stdin_timeout_s
        self._procs: dict[str, ManagedProcess] = {}
        self._execs: set[Child] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # Exited processes in the order they exited; beyond as many as may run at once the
        # oldest are forgotten early, so output kept on disk is bounded by
        # 2 × max_processes × process_output_bytes however many processes come and go.
        self._retained: dict[str, None] = {}
        self._retained_limit = max(settings.max_processes, 1)
        self._closing = False
        self._stopping: asyncio.Task[None] | None = None
        self._orphans = OrphanReaper() if settings.adopt_orphans else None
        self._spools: SpoolDirectory | None = None

    def start(self) -> None:
        """With `adopt_orphans`, descendants that leave their session are adopted, reaped
        when they exit, and stopped at shutdown too (see `orphans`)."""
        if self._orphans is not None:
            self._orphans.start()
        swapped = stop_ignoring_for_children()
        if swapped:
            log.info("the daemon was started with %s ignored; processes it starts get "
                     "their default action", ", ".join(swapped))
        try:  # now: it also stops what a daemon that died before this one left running
            self._spools = SpoolDirectory(self._settings.process_spool_dir)
        except OSError as exc:
            log.warning("cannot create the process output spool directory: %s", exc)

    # --- table ----------------------------------------------------------------------

    def live_count(self) -> int:
        return sum(not p.exited for p in self._procs.values()) + len(self._execs)

    def _admit(self) -> None:
        if self._closing:
            raise ShuttingDown("the daemon is shutting down")
        limit = self._settings.max_processes
        if self.live_count() >= limit:
            raise TooManyRequests(
                f"{limit} processes are already running (the configured maximum); wait for "
                "one to exit or kill one", code="too_many_processes",
                headers={"Retry-After": "1"},
            )

    def get(self, process_id: str) -> ManagedProcess:
        try:
            key = str(uuid.UUID(process_id))
        except ValueError:
            raise BadRequest.for_field(
                "process_id", "must be a UUID",
                f"process_id must be a UUID, got {process_id!r}") from None
        proc = self._procs.get(key)
        if proc is None:
            raise NotFound(f"no such process: {key} (never spawned, or forgotten after exit)")
        return proc

    def _track(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _retire(self, proc: ManagedProcess) -> None:
        timer = self._timers.pop(proc.id, None)
        if timer is not None:
            timer.cancel()
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        self._timers[proc.id] = loop.call_later(
            self._settings.process_retention_s, self._forget, proc.id)
        self._retained[proc.id] = None
        while len(self._retained) > self._retained_limit:
            self._forget(next(iter(self._retained)))

    def _forget(self, process_id: str) -> None:
        timer = self._timers.pop(process_id, None)
        if timer is not None:
            timer.cancel()
        self._retained.pop(process_id, None)
        proc = self._procs.pop(process_id, None)
        if proc is not None:
            proc.close()

    # --- exec -----------------------------------------------------------------------

    async def exec(self, cmd: Command) -> ExecResult:
        self._admit()
        settings = self._settings
        launch = resolve(cmd, display=settings.display, default_user=settings.default_user,
                         tty=False)
        began = time.monotonic()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            popen = start(launch, subprocess.DEVNULL, out_w, err_w)
        except BaseException:
            close_quietly(out_r, err_r)
            raise
        finally:
            close_quietly(out_w, err_w)
        child = Child(popen)
        self._execs.add(child)
        stdout = CappedBuffer(settings.exec_output_cap)
        stderr = CappedBuffer(settings.exec_output_cap)
        sinks: dict[str, Callable[[bytes], None]] = {"stdout": stdout.add, "stderr": stderr.add}
        pump = OutputPump({"stdout": out_r, "stderr": err_r}, lambda s, d: sinks[s](d))
        timed_out = False
        try:
            try:
                await asyncio.wait_for(self._run_exec(child, pump), cmd.timeout_s)
            except TimeoutError:
                timed_out = True
                await terminate_all([child], settings.kill_grace_s)
                await pump.drained(child.exit_future, self._linger_s)
        except BaseException:  # cancelled: nobody waits for the answer any more
            child.signal_session(signal.SIGKILL)
            raise
        finally:
            pump.close()
            self._execs.discard(child)
        return ExecResult(
            status=child.status or ExitStatus(128 + signal.SIGKILL, "KILL"),
            stdout=stdout.value(),
            stderr=stderr.value(),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            duration_ms=round((time.monotonic() - began) * 1000),
            timed_out=timed_out,
        )

    async def _run_exec(self, child: Child, pump: OutputPump) -> None:
        await child.wait()
        await pump.drained(child.exit_future, self._linger_s)

    # --- spawn ----------------------------------------------------------------------

    def spawn(self, cmd: Command, tty: TtySize | None = None) -> ManagedProcess:
        self._admit()
        settings = self._settings
        launch = resolve(cmd, display=settings.display, default_user=settings.default_user,
                         tty=tty is not None)
        process_id = str(uuid.uuid4())
        spool = self._spool(process_id)
        try:
            return self._start_spawned(process_id, launch, spool, cmd, tty)
        except BaseException:
            spool.close()
            raise

    def _spool(self, process_id: str) -> Spool:
        try:
            if self._spools is None:
                self._spools = SpoolDirectory(self._settings.process_spool_dir)
            return Spool(self._spools.path_for(process_id),
                         self._settings.process_output_bytes)
        except OSError as exc:
            raise Unavailable(f"cannot create the output spool: {exc.strerror}") from None

    def _start_spawned(self, process_id: str, launch: Launch, spool: Spool, cmd: Command,
                       tty: TtySize | None) -> ManagedProcess:
        master_fd: int | None = None
        if tty is not None:
            owner = launch.identity.uid if launch.identity.switch else None
            master, slave = pty.open_pty(tty.rows, tty.cols, owner)
            try:
                popen = start(launch, slave, slave, slave, tty=True)
                reader = os.dup(master)
            except BaseException:
                close_quietly(master)
                raise
            finally:
                close_quietly(slave)
            out_fds = {"stdout": reader}
            stdin_fd = master_fd = master
        else:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            try:
                popen = start(launch, in_r, out_w, err_w)
            except BaseException:
                close_quietly(in_w, out_r, err_r)
                raise
            finally:
                close_quietly(in_r, out_w, err_w)
            out_fds = {"stdout": out_r, "stderr": err_r}
            stdin_fd = in_w
        os.set_blocking(stdin_fd, False)
        try:
            record_owner(spool.directory, popen.pid)
        except OSError as exc:
            log.warning("process %s: cannot record its pid in the spool: %s", process_id, exc)
        proc = ManagedProcess(process_id, Child(popen), out_fds, stdin_fd, master_fd, spool,
                              self._stdin_timeout_s)
        self._procs[proc.id] = proc
        self._track(self._supervise(proc))
        if cmd.timeout_s is not None:
            loop = asyncio.get_running_loop()
            self._timers[proc.id] = loop.call_later(cmd.timeout_s, self._time_out, proc)
        log.info("spawned %s pid %d: %s", proc.id, proc.pid, launch.argv[0])
        return proc

    async def _supervise(self, proc: ManagedProcess) -> None:
        try:
            await proc.run(self._linger_s)
        finally:
            self._retire(proc)

    def _time_out(self, proc: ManagedProcess) -> None:
        self._timers.pop(proc.id, None)
        if not proc.exited:
            log.info("process %s timed out; stopping it", proc.id)
            self._track(terminate_all([proc.child], self._settings.kill_grace_s))

    # --- shutdown -------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Refuse new processes and start stopping every child (TERM, then KILL)."""
        self._closing = True
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop_all())

    async def _stop_all(self) -> None:
        children = [p.child for p in self._procs.values()] + list(self._execs)
        alive = live_sessions({c.pid for c in children})
        doomed = [c for c in children if c.status is None or c.pid in alive]
        if doomed:
            log.info("stopping %d processes", len(doomed))
        await terminate_all(doomed, self._settings.kill_grace_s)
        if self._orphans is not None:
            await self._orphans.stop_all(self._settings.kill_grace_s)

    async def close(self) -> None:
        self.begin_shutdown()
        assert self._stopping is not None
        await self._stopping
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._linger_s + 1)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for proc in self._procs.values():
            proc.close()
            proc.child.abandon()
        for child in self._execs:
            child.abandon()
        self._procs.clear()
        if self._spools is not None:
            self._spools.remove()
