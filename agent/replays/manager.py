"""Every recording this daemon knows: the running ones and those on disk (from earlier runs
too), their limits, and their lifecycle across restarts.

Limits: `replays_max_active` recordings at once (409 beyond it); `replay_max_bytes` per
recording and `replays_max_total_bytes` for all (a recording that reaches either stops by
itself and keeps what it has; to stay under the total, the oldest finished recordings are
deleted first); `replay_max_duration_s` bounds `max_duration_in_seconds` (and is its
default).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import json
import logging
import os
import pwd
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.aio import run_to_end
from agent.config import Settings
from agent.errors import BadRequest, Conflict, NotFound, ShuttingDown, Unavailable
from agent.replays.recorder import (
    DONE,
    FAILED,
    FINALISING,
    Recording,
    ReplayFailed,
    ReplayFiles,
    ReplayInfo,
    finalise,
    save_meta,
)

log = logging.getLogger(__name__)

DEFAULT_FRAMERATE = 10


def default_dir(euid: int | None = None) -> Path:
    """/var/lib/browser-agent/replays as root, else under the user's state directory."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return Path("/var/lib/browser-agent/replays")
    home = Path(pwd.getpwuid(euid).pw_dir)
    return home / ".local" / "state" / "browser-agent" / "replays"


@dataclass(frozen=True)
class Ready:
    """A finished video to send."""

    path: Path
    size: int
    etag: str
    mtime: float


@dataclass(frozen=True)
class Pending:
    """Still being written or finalised: ask again in `retry_after` seconds."""

    state: str
    retry_after: int = 1


def _cursor(info: ReplayInfo) -> str:
    raw = json.dumps([info.started_at, info.replay_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started, replay_id = json.loads(raw)
        return float(started), str(replay_id)
    except (ValueError, TypeError, binascii.Error):
        raise BadRequest.for_field(
            "cursor", "is not a valid cursor",
            "cursor: not a cursor this endpoint returned") from None


class ReplayManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        directory = Path(settings.replays_dir) if settings.replays_dir else default_dir()
        self.directory = directory.resolve()  # used by path from here on: no symlink in it
        self._infos: dict[str, ReplayInfo] = {}
        self._running: dict[str, Recording] = {}
        self._recovering: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self.dir_error: str | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load what earlier runs left; a recording that was running when the daemon died
        is finalised with what it has. (The directory is made by the first recording.)"""
        if not await asyncio.to_thread(self.directory.exists):
            return
        try:
            await asyncio.to_thread(self._prepare_dir)
            infos = await asyncio.to_thread(self._load_all)
        except OSError as exc:
            self.dir_error = f"{self.directory}: {exc.strerror or exc}"
            log.error("replays are unavailable: %s", self.dir_error)
            return
        for info in infos:
            self._infos[info.replay_id] = info
            if not info.finished:
                self._recovering[info.replay_id] = asyncio.ensure_future(self._recover(info))

    def _prepare_dir(self) -> None:
        """The directory, owned by the daemon's user and writable by nobody else (not the
        browser's user: recordings are the daemon's record of what happened), below
        directories that nobody else can change either: otherwise the browser's user could
        swap it for a link, and the daemon would write where that user chose."""
        for parent in self.directory.parents:
            try:
                pst = parent.lstat()
            except FileNotFoundError:
                continue  # made below, by the daemon
            if pst.st_uid not in (0, os.geteuid()):
                raise PermissionError(errno.EPERM, f"{parent} belongs to another user")
            if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
                raise PermissionError(errno.EPERM, f"{parent} is writable by other users")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = self.directory.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, "not a directory owned by the daemon's user")
        if st.st_mode & 0o077:
            os.chmod(self.directory, stat.S_IMODE(st.st_mode) & ~0o077)

    def _load_all(self) -> list[ReplayInfo]:
        infos: list[ReplayInfo] = []
        for path in self.directory.iterdir():
            if path.name.endswith((".tmp", ".remux.tmp")):
                path.unlink(missing_ok=True)  # a rename that never happened
                continue
            if path.suffix != ".json":
                continue
            try:
                info = ReplayInfo.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("skipping unreadable replay metadata %s: %s", path, exc)
                continue
            if info.replay_id != path.stem:
                log.warning("skipping replay metadata %s: it names %s", path, info.replay_id)
                continue
            infos.append(info)
        return infos

    async def _recover(self, info: ReplayInfo) -> None:
        files = ReplayFiles(self.directory, info.replay_id)
        try:
            if files.part.exists():
                if info.finished_at is None:
                    info.finished_at = files.part.stat().st_mtime
                info.stop_reason = info.stop_reason or "the daemon stopped while recording"
                info.state = FINALISING
                await finalise(files, info, self.settings.ffmpeg)
            elif files.video.exists():  # renamed into place, metadata not yet updated
                info.state, info.size = DONE, files.video.stat().st_size
                await asyncio.to_thread(save_meta, files, info)
            else:
                info.state, info.error = FAILED, "the recording's file is missing"
                await asyncio.to_thread(save_meta, files, info)
            log.info("replay %s recovered: %s", info.replay_id, info.state)
        except Exception:
            log.exception("recovering replay %s failed", info.replay_id)
            info.state, info.error = FAILED, "recovery after a restart failed"
        finally:
            self._recovering.pop(info.replay_id, None)

    async def close(self) -> None:
        """Stop and finalise every running recording (shutdown)."""
        self._closed = True
        running = [rec for rec in self._running.values() if rec.started]  # (the others
        # stop themselves when their start ends)
        await asyncio.gather(*(rec.stop("the daemon shut down") for rec in running),
                             return_exceptions=True)
        await asyncio.gather(*self._recovering.values(), return_exceptions=True)

    def resize_refusal(self) -> str | None:
        """Why the screen may not change size now: ffmpeg grabs a fixed size."""
        if self._running:
            ids = ", ".join(sorted(self._running))
            return f"a replay is recording ({ids}); stop it before changing the display size"
        return None

    # ------------------------------------------------------------ recording

    async def start_recording(self, framerate: int | None, max_duration_s: int | None,
                              record_audio: bool = False) -> ReplayInfo:
        if self._closed:
            raise ShuttingDown("the daemon is shutting down")
        if record_audio:
            raise BadRequest.for_field(
                "record_audio", "must be false: no audio source",
                "record_audio: this display has no audio to record", detail_code="unsupported")
        limit = self.settings.replay_max_duration_s
        if max_duration_s is None:
            max_duration_s = limit
        elif max_duration_s > limit:
            raise BadRequest.for_field(
                "max_duration_in_seconds", f"must be at most {limit}",
                f"max_duration_in_seconds: at most {limit} on this daemon")
        if len(self._running) >= self.settings.replays_max_active:
            raise Conflict(f"{self.settings.replays_max_active} recordings are already "
                           "running; stop one first",
                           code="too_many_recordings")
        info = ReplayInfo.new(framerate or DEFAULT_FRAMERATE, max_duration_s)
        files = ReplayFiles(self.directory, info.replay_id)
        recording = Recording(info, files, ffmpeg=self.settings.ffmpeg,
                              display=self.settings.display,
                              max_bytes=self.settings.replay_max_bytes, room=self._room,
                              on_finished=self._finished)
        # Counted from here on (before any await), so concurrent starts respect the limit;
        # listed once it has started.
        self._running[info.replay_id] = recording
        try:
            # Not cancelled half-way when the client goes away: no stray ffmpeg.
            await run_to_end(self._start(recording))
        except BaseException:
            self._running.pop(info.replay_id, None)
            raise
        log.info("replay %s started: %d fps, at most %d s", info.replay_id, info.framerate,
                 info.max_duration_s)
        if self._closed:  # shut down while it started: stop it like the others
            await recording.stop("the daemon shut down")
        return info

    async def _start(self, recording: Recording) -> None:
        info, files = recording.info, recording.files
        try:
            await asyncio.to_thread(self._prepare_dir)
        except OSError as exc:
            self.dir_error = f"{self.directory}: {exc.strerror or exc}"
            raise Unavailable(f"replays are unavailable: {self.dir_error}") from None
        self.dir_error = None
        await asyncio.to_thread(save_meta, files, info)
        try:
            await recording.start()
        except BaseException:
            await asyncio.to_thread(_remove, files.meta)
            raise
        self._infos[info.replay_id] = info

    def _finished(self, recording: Recording) -> None:
        self._running.pop(recording.info.replay_id, None)

    def _room(self, recording: Recording, more: int) -> bool:
        """Whether `more` bytes fit the disk budget, deleting the oldest finished recordings
        to make room."""
        cap = self.settings.replays_max_total_bytes
        if self._total() + more <= cap:
            return True
        for info in sorted(self._infos.values(), key=lambda i: (i.started_at, i.replay_id)):
            if info.state != DONE:
                continue
            log.info("deleting replay %s (%d bytes): the disk budget of %d bytes is reached",
                     info.replay_id, info.size, cap)
            self._delete_files(info)
            if self._total() + more <= cap:
                return True
        return False

    def _total(self) -> int:
        return sum(info.size for info in self._infos.values())

    async def stop(self, replay_id: str) -> ReplayInfo:
        """Stop and finalise (idempotent: a finished recording stays as it is)."""
        info = self.info(replay_id)
        recording = self._running.get(replay_id)
        if recording is not None:
            await recording.stop()
        elif replay_id in self._recovering:
            await asyncio.shield(self._recovering[replay_id])
        return info

    # ------------------------------------------------------------ reading

    def info(self, replay_id: str) -> ReplayInfo:
        info = self._infos.get(replay_id)
        if info is None:
            raise NotFound(f"no such replay: {replay_id}")
        return info

    def list(self, limit: int | None = None, cursor: str | None = None
             ) -> tuple[list[ReplayInfo], str | None]:
        """Newest first (by start, then id); with `limit`, a page and the next cursor."""
        ordered = sorted(self._infos.values(), key=lambda i: (i.started_at, i.replay_id),
                         reverse=True)
        if cursor is not None:
            after = _after_cursor(cursor)
            ordered = [i for i in ordered if (i.started_at, i.replay_id) < after]
        if limit is None or len(ordered) <= limit:
            return ordered, None
        page = ordered[:limit]
        return page, _cursor(page[-1])

    def download(self, replay_id: str) -> Ready | Pending:
        info = self.info(replay_id)
        if info.state == FAILED:
            raise ReplayFailed(f"replay {replay_id} has no video: {info.error}")
        if info.state != DONE:
            return Pending(info.state)
        path = ReplayFiles(self.directory, replay_id).video
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(f"replay {replay_id} was deleted") from None
        return Ready(path, st.st_size, f'"{replay_id}-{st.st_size}"', st.st_mtime)

    def delete(self, replay_id: str) -> None:
        info = self.info(replay_id)
        if not info.finished:
            raise Conflict(f"replay {replay_id} is still {info.state}; stop it first",
                           code="replay_running")
        self._delete_files(info)

    def _delete_files(self, info: ReplayInfo) -> None:
        files = ReplayFiles(self.directory, info.replay_id)
        _remove(files.meta, files.video, files.part, files.remux_tmp)
        self._infos.pop(info.replay_id, None)

    def running_count(self) -> int:
        return len(self._running)

    def running(self) -> Iterable[Recording]:
        return list(self._running.values())

    async def health(self) -> dict[str, Any]:
        found = shutil.which(self.settings.ffmpeg)
        body: dict[str, Any] = {"ok": found is not None and self.dir_error is None,
                                "recording": len(self._running)}
        if found is None:
            body["error"] = f"{self.settings.ffmpeg} not found: recording is unavailable"
        elif self.dir_error is not None:
            body["error"] = self.dir_error
        return body


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
