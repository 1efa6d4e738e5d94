"""One Node worker process (runtime/worker.mjs): started as the browser's user with a
small clean environment in a session of its own, spoken to over a socketpair (newline-
delimited JSON on an inherited descriptor, never its stdout), and killed with its whole
session when a call overruns, so nothing of the user's code runs on afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from agent.errors import AgentError, BrowserUnavailable, Unavailable
from agent.processes.child import Child
from agent.processes.launch import DEFAULT_PATH, Identity, acting_as

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
# A line from the worker holds at most the result (capped, as JSON, in the worker) or one
# piece of output (capped in the worker, up to 6x longer once escaped as JSON).
RESULT_CAP = 8 << 20


@dataclass(frozen=True)
class Runtime:
    """Where the worker comes from and whom it runs as."""

    node: str
    directory: Path
    cdp_address: str
    identity: Identity
    output_cap: int

    @property
    def script(self) -> Path:
        return self.directory / "worker.mjs"

    def environment(self) -> dict[str, str]:
        """What the worker (and so the user's code, as `process.env`) sees: nothing of
        the daemon's environment, which may hold API tokens."""
        ident = self.identity
        return {"PATH": DEFAULT_PATH, "HOME": ident.home, "USER": ident.name,
                "LOGNAME": ident.name, "LANG": "C.UTF-8", "NODE_ENV": "production"}


@dataclass
class CallResult:
    success: bool
    result: Any = None
    has_result: bool = False
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    tab: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"success": self.success}
        if self.has_result:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        body["stdout"] = self.stdout
        body["stderr"] = self.stderr
        if self.stdout_truncated:
            body["stdout_truncated"] = True
        if self.stderr_truncated:
            body["stderr_truncated"] = True
        if self.tab is not None:
            body["tab"] = self.tab
        return body


@dataclass
class _Call:
    id: int
    output_cap: int
    done: asyncio.Future[dict[str, Any]]
    out: dict[str, list[str]] = field(default_factory=lambda: {"stdout": [], "stderr": []})
    sizes: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    cut: dict[str, bool] = field(default_factory=lambda: {"stdout": False, "stderr": False})
    tab: dict[str, Any] | None = None  # the tab `page` was bound to, once it is

    def add(self, stream: str, data: str) -> None:
        if stream not in self.out:
            return
        room = self.output_cap - self.sizes[stream]
        encoded = data.encode()
        if len(encoded) > room:
            self.cut[stream] = True
            data = encoded[:max(room, 0)].decode(errors="ignore")
            encoded = data.encode()
        if data:
            self.out[stream].append(data)
            self.sizes[stream] += len(encoded)

    def result(self, **fields: Any) -> CallResult:
        fields.setdefault("tab", self.tab)
        return CallResult(stdout="".join(self.out["stdout"]), stderr="".join(self.out["stderr"]),
                          stdout_truncated=self.cut["stdout"], stderr_truncated=self.cut["stderr"],
                          **fields)


def _spawn(runtime: Runtime, executor: str, fd: int) -> subprocess.Popen[bytes]:
    ident = runtime.identity
    argv = [runtime.node, str(runtime.script), "--fd", str(fd), "--cdp", runtime.cdp_address,
            "--executor", executor, "--output-cap", str(runtime.output_cap),
            "--result-cap", str(RESULT_CAP)]
    cwd = ident.home if os.path.isdir(ident.home) else "/"
    try:
        with acting_as(ident) as switch:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                cwd=cwd, env=runtime.environment(), start_new_session=True, pass_fds=(fd,),
                **switch)
    except OSError as exc:
        raise Unavailable(f"cannot start the Playwright worker ({runtime.node}): "
                          f"{exc.strerror or exc}", code="playwright_unavailable") from None


class Worker:
    """A started worker; `start()` it, `run()` calls one at a time, `kill()` it."""

    def __init__(self, runtime: Runtime, executor: str) -> None:
        self.runtime = runtime
        self.executor = executor
        self.state = "starting"  # starting | ready | dead
        self.stop_reason: str | None = None
        self.child: Child | None = None
        self.started_at = time.monotonic()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._call: _Call | None = None
        self._next_id = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    async def start(self, timeout: float = START_TIMEOUT_S) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            popen = _spawn(self.runtime, self.executor, theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.child = Child(popen)
        line_limit = max(RESULT_CAP, 6 * self.runtime.output_cap) + (1 << 20)
        self._reader, self._writer = await asyncio.open_unix_connection(
            sock=ours, limit=line_limit)
        assert popen.stdout is not None
        self._tasks = [
            asyncio.create_task(self._read_channel(self._reader), name="playwright-channel"),
            asyncio.create_task(self._log_output(popen.stdout), name="playwright-log"),
            asyncio.create_task(self._watch_exit(), name="playwright-exit"),
        ]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._ready)
        except TimeoutError:
            await self.kill("the worker did not start in time")
            raise Unavailable(f"the Playwright worker did not start within {timeout:g}s",
                              code="playwright_unavailable") from None
        except AgentError:
            await self.kill(self.stop_reason or "the worker exited")
            raise
        self.state = "ready"

    async def _read_channel(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("playwright worker %s sent a line that is not JSON", self.executor)
                    continue
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "ready":
            if not self._ready.done():
                self._ready.set_result(None)
            return
        call = self._call
        if call is None or message.get("id") != call.id:
            return
        if op == "out":
            call.add(str(message.get("stream")), str(message.get("data", "")))
        elif op == "tab" and isinstance(message.get("tab"), dict):
            call.tab = message["tab"]
        elif op == "done" and not call.done.done():
            call.done.set_result(message)

    async def _log_output(self, pipe: IO[bytes]) -> None:
        """The worker's own stdout and stderr (Node's warnings, a crash) go to the log."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 16)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line longer than the limit
                    await reader.read(1 << 16)
                    continue
                if not line:
                    break
                log.info("playwright worker %s: %s", self.executor,
                         line[:4096].decode(errors="replace").rstrip())
        finally:
            transport.close()

    async def _watch_exit(self) -> None:
        assert self.child is not None
        status = await self.child.wait()
        self.state = "dead"
        reason = self.stop_reason or f"the worker exited (exit code {status.exit_code})"
        self.stop_reason = reason
        if not self._ready.done():
            self._ready.set_exception(Unavailable(
                f"the Playwright worker exited while starting (exit code {status.exit_code}); "
                "see the daemon's log", code="playwright_unavailable"))
        call = self._call
        if call is not None and not call.done.done():
            call.done.set_exception(_WorkerGone(reason))
        if self._writer is not None:
            self._writer.close()

    async def run(self, code: str, timeout_s: float, exclude: list[str],
                  target_id: str | None = None) -> CallResult:
        """Run the user's code; on overrun kill the worker (its session) and say so."""
        if self.state != "ready" or self._writer is None:
            raise Unavailable(f"the Playwright worker stopped before the call could start "
                              f"({self.stop_reason or 'not running'})",
                              code="playwright_unavailable")
        self._next_id += 1
        loop = asyncio.get_running_loop()
        call = _Call(self._next_id, self.runtime.output_cap, loop.create_future())
        call.done.add_done_callback(_retrieve)
        self._call = call
        # The worker gives up waiting for Chromium a little before the daemon's deadline.
        deadline_ms = int((time.time() + max(timeout_s - 0.25, 0.1)) * 1000)
        message = {"id": call.id, "op": "run", "code": code, "deadline_ms": deadline_ms,
                   "exclude": exclude, "target_id": target_id}
        try:
            self._writer.write(json.dumps(message).encode() + b"\n")
            try:
                async with asyncio.timeout(timeout_s):
                    await self._writer.drain()
                    reply = await asyncio.shield(call.done)
            except TimeoutError:
                await self.kill("timed out")
                return call.result(
                    success=False,
                    error=f"execution timed out after {timeout_s:g}s; the code was stopped",
                )
            except (ConnectionError, _WorkerGone) as exc:
                await self.kill(str(exc) or "the worker exited")
                return call.result(success=False, error=f"the code did not finish: "
                                   f"{self.stop_reason}")
        finally:
            self._call = None
        if "unavailable" in reply:
            raise BrowserUnavailable(str(reply["unavailable"]))
        truncated = reply.get("truncated") or {}
        for stream in ("stdout", "stderr"):
            if truncated.get(stream):
                call.cut[stream] = True
        return call.result(
            success=bool(reply.get("success")),
            result=reply.get("result"),
            has_result="result" in reply,
            error=reply.get("error"),
            tab=reply.get("tab") or call.tab,
        )

    async def kill(self, reason: str) -> None:
        """SIGKILL the worker's whole session and wait for it; `reason` is what a call
        running on it is told."""
        if self.stop_reason is None:
            self.stop_reason = reason
        child = self.child
        if child is not None and child.status is None:
            child.signal_session(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await child.wait()
        self.state = "dead"

    async def close(self, grace_s: float) -> None:
        """Orderly stop: close the channel (the worker exits by itself), TERM, then KILL."""
        if self.stop_reason is None:
            self.stop_reason = "the daemon is stopping"
        if self._writer is not None:
            self._writer.close()
        child = self.child
        if child is not None and child.status is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(grace_s, 1.0)):
                    await child.wait()
            if child.status is None:
                await child.terminate(grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.state = "dead"


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A call abandoned at its timeout may still fail later: that is no news."""
    if not future.cancelled():
        future.exception()


class _WorkerGone(Exception):
    """The worker died or was stopped while a call ran on it."""


def identity_for(default_user: str | None) -> Identity:
    """The browser's user when the daemon runs as root; else the daemon's own user."""
    euid = os.geteuid()
    if euid == 0:
        if not default_user:
            raise Unavailable("Playwright code runs as the browser's user, never as root: set "
                              "AGENT_DEFAULT_USER", code="playwright_unavailable")
        try:
            entry = pwd.getpwnam(default_user)
        except KeyError:
            raise Unavailable(f"the configured default user {default_user!r} does not exist",
                              code="playwright_unavailable") from None
        if entry.pw_uid == 0:
            raise Unavailable("Playwright code never runs as root: AGENT_DEFAULT_USER names "
                              "root", code="playwright_unavailable")
    else:
        entry = pwd.getpwuid(euid)
    switch = entry.pw_uid != euid
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)) if switch else ()
    return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir,
                    entry.pw_shell or "/bin/sh", switch)


def readable_by(path: Path, ident: Identity) -> bool:
    """Whether `ident` may read `path` (every directory above it searchable, the file
    readable), from the permission bits: the daemon may be root, so os.access says little."""
    if ident.uid == 0:
        return True
    groups = {ident.gid, *ident.groups}

    def allows(target: Path, bit: int) -> bool:
        try:
            st = target.stat()
        except OSError:
            return False
        if st.st_uid == ident.uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid in groups:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)

    return all(allows(parent, 1) for parent in path.parents) and allows(path, 4)
