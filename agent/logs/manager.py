"""The logs slice's long-lived state: the thread pool that does all file and supervisord
I/O, and the streams open right now (so that shutdown ends them promptly and releases
their files)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from agent.errors import BadRequest, Forbidden, NotFound, ShuttingDown
from agent.identity import FsUser
from agent.logs.tail import FileTailer
from agent.streams import StreamEvent
from agent.supervisor import SupervisorClient

log = logging.getLogger(__name__)

IO_THREADS = 4
DEFAULT_TAIL = 100


def parse_tail(value: str | int | None) -> int | None:
    """`tail` as a line count; None means the whole file (`all`)."""
    if value is None:
        return DEFAULT_TAIL
    if isinstance(value, int):
        lines = value
    elif value.strip().lower() == "all":
        return None
    else:
        try:
            lines = int(value)
        except ValueError:
            raise BadRequest.for_field("tail", "must be a number of lines or 'all'") from None
    if lines < 0:
        raise BadRequest.for_field("tail", "must not be negative")
    return lines


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def log_events(batches: AsyncGenerator[list[str], None],
                     ) -> AsyncGenerator[StreamEvent, None]:
    """A tailer's lines as the events of `/logs/stream`, numbered from 1, each batch
    stamped with the time it was read."""
    seq = 0
    async with contextlib.aclosing(batches):
        async for lines in batches:
            stamp = _now()
            for line in lines:
                seq += 1
                yield StreamEvent({"event": "log", "timestamp": stamp, "message": line}, seq)


class LogManager:
    def __init__(self, supervisor_socket: str, fs: FsUser | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=IO_THREADS,
                                            thread_name_prefix="agent-logs")
        # A log file a client names is opened as the browser user; supervisord's own
        # program logs (which the daemon locates through its root-only socket) as root.
        self._user_executor = fs.executor if fs is not None else self._executor
        self._stop = asyncio.Event()
        self._supervisor = SupervisorClient(supervisor_socket)
        self.streams: set[FileTailer] = set()

    async def open(self, *, source: str, path: str | None, program: str | None,
                   tail: str | int | None, follow: bool) -> FileTailer:
        """The stream a `GET /logs/stream` asks for, checked and opened."""
        lines = parse_tail(tail)
        if source == "path":
            if program is not None:
                raise BadRequest.for_field(
                    "supervisor_process", "is only used with source=supervisor")
            if path is None:
                raise BadRequest.for_field(
                    "path", "is required when source is path", detail_code="missing_field")
            return await self.open_path(path, tail=lines, follow=follow, as_user=True)
        if source == "supervisor":
            if path is not None:
                raise BadRequest.for_field("path", "is only used with source=path")
            if not program:
                raise BadRequest.for_field(
                    "supervisor_process", "is required when source is supervisor",
                    detail_code="missing_field")
            return await self.open_supervisor(program, tail=lines, follow=follow)
        raise BadRequest.for_field(
            "source", "must be path or supervisor", f"unknown log source {source!r}")

    async def open_path(self, path: str, *, tail: int | None, follow: bool,
                        as_user: bool = False) -> FileTailer:
        """A tailer on `path`, opened (404 missing, 400 directory or relative path)."""
        if self._stop.is_set():
            raise ShuttingDown("the daemon is shutting down")
        executor = self._user_executor if as_user else self._executor
        tailer = FileTailer(path, tail=tail, follow=follow, executor=executor,
                            stop=self._stop)
        try:
            await tailer.open()
        except BaseException:
            tailer.close()
            raise
        self.streams.add(tailer)
        return tailer

    async def open_supervisor(self, program: str, *, tail: int | None,
                              follow: bool) -> FileTailer:
        """A tailer on a supervisord program's stdout log, located by asking supervisord."""
        loop = asyncio.get_running_loop()
        path = await loop.run_in_executor(self._executor, self._supervisor.stdout_logfile,
                                          program)
        try:
            return await self.open_path(path, tail=tail, follow=follow)
        except NotFound:
            raise NotFound(f"the log of supervisord program {program!r} ({path}) does not "
                           "exist yet") from None
        except Forbidden:
            raise Forbidden(f"permission denied reading the log of supervisord program "
                            f"{program!r} ({path})") from None
        except BadRequest as exc:
            raise NotFound(f"the log of supervisord program {program!r} cannot be "
                           f"followed: {exc.message}") from None

    def release(self, tailer: FileTailer) -> None:
        tailer.close()
        self.streams.discard(tailer)

    async def stop(self) -> None:
        """End every open stream (on shutdown, before the server waits for handlers)."""
        self._stop.set()

    async def close(self) -> None:
        await self.stop()
        for tailer in list(self.streams):
            self.release(tailer)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
