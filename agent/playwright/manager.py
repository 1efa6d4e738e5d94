"""Executors: the default one (bound to the tab in front) and named ones (each with its own
tab), each with its own warm Node worker. Calls on one executor run one at a time in
arrival order; calls on different executors run concurrently. A worker that overran a
call, crashed or was deleted is replaced, warm, before the next call needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.aio import run_to_end
from agent.browser.cdp import CdpManager
from agent.config import Settings
from agent.errors import (
    AgentError,
    BadRequest,
    Conflict,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from agent.playwright.worker import CallResult, Runtime, Worker, identity_for, readable_by

log = logging.getLogger(__name__)

DEFAULT = "default"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Calls waiting for a busy executor, beyond the one running.
MAX_QUEUED = 16
RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Executor:
    """A name, a worker (started on demand, replaced when it dies) and a FIFO lock."""

    def __init__(self, name: str, seq: int, start: Callable[[str], Worker]) -> None:
        self.name = name
        self.seq = seq  # creation order: the list's order and its cursor
        self.created_at = datetime.now(UTC)
        self.last_used_at = self.created_at
        self.target_id: str | None = None
        self.worker: Worker | None = None
        self.deleted = False
        self.queued = 0
        self._lock = asyncio.Lock()  # asyncio's lock wakes its waiters in FIFO order
        self._new_worker = start
        self._warming: asyncio.Task[Worker] | None = None

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def worker_ready(self) -> Worker:
        worker = self.worker
        if worker is not None and worker.state == "ready":
            return worker
        if self._warming is None or self._warming.done():
            self._warming = asyncio.create_task(self._start_worker(), name="playwright-start")
        return await asyncio.shield(self._warming)

    def warm(self) -> None:
        """Start a replacement worker now, so the next call finds it ready."""
        if self.deleted or (self._warming is not None and not self._warming.done()):
            return
        if self.worker is not None and self.worker.state != "dead":
            return
        self._warming = asyncio.create_task(self._start_worker(), name="playwright-start")
        self._warming.add_done_callback(_ignore_failure)

    async def _start_worker(self) -> Worker:
        worker = self._new_worker(self.name)
        self.worker = worker
        await worker.start()
        if self.deleted:
            await worker.close(1.0)
            raise NotFound(f"executor {self.name!r} was deleted")
        return worker

    async def run(self, code: str, timeout_s: float, exclude: list[str]) -> CallResult:
        if self.queued >= MAX_QUEUED:
            raise TooManyRequests(
                f"executor {self.name!r} already has {MAX_QUEUED} calls waiting",
                code="executor_busy", headers={"Retry-After": "1"})
        self.queued += 1
        try:
            await self._lock.acquire()
        finally:
            self.queued -= 1
        try:
            if self.deleted:  # while this call waited its turn
                return CallResult(success=False, error=f"the executor {self.name!r} was deleted")
            self.last_used_at = datetime.now(UTC)
            worker = await self.worker_ready()
            result = await worker.run(code, timeout_s, exclude, self.target_id)
            if worker.state == "dead":
                if self.deleted:
                    result.error = f"the executor {self.name!r} was deleted"
                elif worker.stop_reason == RESTARTED:
                    result.error = f"the executor {self.name!r} was restarted"
                self.warm()
            if result.tab is not None and self.name != DEFAULT:
                self.target_id = str(result.tab.get("target_id") or "") or None
            return result
        finally:
            self._lock.release()

    async def stop(self, reason: str) -> None:
        """Kill the worker now, started or starting (a call running on it fails with
        `reason`)."""
        if self.worker is not None:
            await self.worker.kill(reason)

    async def close(self, grace_s: float) -> None:
        self.deleted = True
        warming = self._warming
        if warming is not None and not warming.done():
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError, AgentError):
                await warming
        if self.worker is not None:
            await self.worker.close(grace_s)

    def to_json(self, urls: dict[str, str]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "busy": self.busy,
            "queued": self.queued,
            "created_at": _iso(self.created_at),
            "last_used_at": _iso(self.last_used_at),
        }
        if self.target_id is not None:
            body["target_id"] = self.target_id
            if self.target_id in urls:
                body["url"] = urls[self.target_id]
        return body


RESTARTED = "the executor was restarted"


def _ignore_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("playwright worker did not start: %s", task.exception())


@dataclass(frozen=True)
class Page:
    """A slice of the executor list."""

    items: list[dict[str, Any]]
    next_cursor: int | None


class PlaywrightManager:
    def __init__(self, settings: Settings, cdp: CdpManager) -> None:
        self._settings = settings
        self._cdp = cdp
        self._dir = Path(settings.playwright_dir) if settings.playwright_dir else RUNTIME_DIR
        self._seq = 0
        self._executors: dict[str, Executor] = {DEFAULT: Executor(DEFAULT, 0, self._worker)}
        self._closed = False

    # --- the runtime --------------------------------------------------------------------

    def installed(self) -> str | None:
        """None when the worker can run; else what is missing."""
        if shutil.which(self._settings.node_program) is None:
            return f"node ({self._settings.node_program}) is not installed"
        if not (self._dir / "worker.mjs").is_file():
            return f"{self._dir / 'worker.mjs'} is missing"
        if not (self._dir / "node_modules" / "playwright-core").is_dir():
            return f"playwright-core is not installed in {self._dir} (make playwright-deps)"
        return None

    def _worker(self, name: str) -> Worker:
        if self._closed:
            raise Unavailable("the daemon is stopping")
        missing = self.installed()
        if missing is not None:
            raise Unavailable(f"Playwright is not available: {missing}",
                              code="playwright_unavailable")
        node = shutil.which(self._settings.node_program) or self._settings.node_program
        identity = identity_for(self._settings.default_user)
        script = self._dir / "worker.mjs"
        if identity.switch and not readable_by(script, identity):
            raise Unavailable(f"{identity.name} (the browser's user, whom Playwright code runs "
                              f"as) cannot read {script}: set AGENT_PLAYWRIGHT_DIR to a copy "
                              "of that directory it can read", code="playwright_unavailable")
        runtime = Runtime(node, self._dir, self._settings.cdp_address, identity,
                          self._settings.playwright_output_cap)
        return Worker(runtime, name)

    def start(self) -> None:
        if self._settings.playwright_prewarm:
            self._executors[DEFAULT].warm()

    async def begin_shutdown(self) -> None:
        """Before the daemon waits for open requests: running calls end now (their
        workers are stopped) instead of running on to their timeouts."""
        self._closed = True
        await asyncio.gather(*(ex.stop("the daemon is stopping")
                               for ex in self._executors.values()))

    async def close(self) -> None:
        self._closed = True
        executors = list(self._executors.values())
        await asyncio.gather(*(ex.close(self._settings.kill_grace_s) for ex in executors))

    # --- calls --------------------------------------------------------------------------

    def _executor_for_call(self, name: str) -> Executor:
        executor = self._executors.get(name)
        if executor is not None:
            return executor
        if not NAME_RE.match(name):
            message = ("is 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                       "digit")
            raise BadRequest.for_field("executor", message, f"executor {message}")
        named = len(self._executors) - 1
        if named >= self._settings.playwright_max_executors:
            raise Conflict(
                f"this browser already has {named} named executors (the most it may have); "
                "delete one with DELETE /playwright/executors/{name}",
                code="too_many_executors",
                headers={"X-Should-Retry": "false"},
                extra={"executors": [ex.to_json({}) for ex in self._executors.values()]},
            )
        self._seq += 1
        executor = Executor(name, self._seq, self._worker)
        self._executors[name] = executor
        return executor

    async def execute(self, code: str, timeout_s: float, name: str | None) -> CallResult:
        if self._closed:
            raise Unavailable("the daemon is stopping")
        name = name or DEFAULT
        new = name not in self._executors
        executor = self._executor_for_call(name)
        exclude = [ex.target_id for ex in self._executors.values()
                   if ex.name != DEFAULT and ex.target_id is not None]
        try:
            # The call's life is the executor's, not the connection's: a client that goes
            # away does not leave the next call to meet code still running.
            return await run_to_end(executor.run(code, timeout_s, exclude))
        except AgentError:
            # An executor whose first call could not even start takes no place in the cap.
            if new and executor.target_id is None and self._executors.get(name) is executor:
                del self._executors[name]
                await executor.close(self._settings.kill_grace_s)
            raise

    # --- listing and deleting -----------------------------------------------------------

    async def _urls(self) -> dict[str, str]:
        try:
            targets = await self._cdp.send("Target.getTargets", timeout=2.0)
        except AgentError:
            return {}
        return {str(t.get("targetId")): str(t.get("url", ""))
                for t in targets.get("targetInfos", []) if t.get("type") == "page"}

    async def list(self, limit: int | None, cursor: int | None) -> Page:
        executors = [ex for ex in self._executors.values()
                     if cursor is None or ex.seq > cursor]
        more = limit is not None and len(executors) > limit
        if limit is not None:
            executors = executors[:limit]
        urls = await self._urls() if any(ex.target_id for ex in executors) else {}
        items = [ex.to_json(urls) for ex in executors]
        return Page(items, executors[-1].seq if more and executors else None)

    async def delete(self, name: str, close_tab: bool) -> None:
        executor = self._executors.get(name)
        if executor is None:
            raise NotFound(f"no such executor: {name!r}")
        if name == DEFAULT:
            await executor.stop(RESTARTED)
            executor.warm()
            return
        del self._executors[name]
        executor.deleted = True
        await executor.stop(f"the executor {name!r} was deleted")
        await executor.close(self._settings.kill_grace_s)
        if close_tab and executor.target_id is not None:
            with contextlib.suppress(AgentError):
                await self._cdp.send("Target.closeTarget", {"targetId": executor.target_id},
                                     timeout=5.0)

    # --- health -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        missing = self.installed()
        default = self._executors[DEFAULT].worker
        body: dict[str, Any] = {
            "ok": missing is None,
            "executors": len(self._executors) - 1,
            "workers": sum(1 for ex in self._executors.values()
                           if ex.worker is not None and ex.worker.state == "ready"),
            "default": "idle" if default is None else default.state,
        }
        if missing is not None:
            body["error"] = missing
        return body
