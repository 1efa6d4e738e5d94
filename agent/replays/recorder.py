"""One screen recording: ffmpeg grabs the X display (x11grab) and encodes H.264 into a
fragmented MP4 on its stdout; the daemon writes those bytes into its own directory, so a
recording cut short (ffmpeg killed, the daemon killed) is still playable up to its last
fragment, and the byte limits are enforced where the bytes arrive.

A recording finishes exactly once, whatever asks first: a stop request (or two at once),
its maximum duration, a byte limit, ffmpeg exiting by itself, the daemon shutting down.
Every one of them awaits the same task, which stops ffmpeg, reads the pipe to its end and
remuxes the file once (`-c copy -movflags +faststart`, so players know the duration). The
finished file is renamed into place only when complete; until then a download is told to
come back later.

ffmpeg runs as the daemon's own user: it is the daemon's recorder, not something acting for
the browser's user, its only input from the browser's side is pixels (the X server is the
stack's, not the browser user's), and its output lands in a directory that user cannot write.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import struct
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

from agent.errors import AgentError, DisplayUnavailable, Unavailable
from agent.processes.child import Child

log = logging.getLogger(__name__)

# Encoder settings, measured with bench/replays.py (CPU time per 1920x1080 frame of an
# animated page): ultrafast needs about half a core at 30 fps with the grab; superfast makes
# files about 45% smaller for 1.5x the CPU, veryfast 1.8x, libx264's default (medium) 4x.
# The recorder shares the machine with the Chromium it records, so CPU wins. zerolatency
# drops the lookahead and B-frames (a little less CPU, and fragments that leave ffmpeg as
# soon as they are complete); the CRF changes size, not CPU: 28 keeps text readable.
# Keyframes are what a 1080p recording of a mostly still screen spends its bytes on: one
# every 4 s (a fragment still ends every second, so a crash loses about a second).
PRESET = "ultrafast"
TUNE = "zerolatency"
CRF = "28"
GOP_S = 4  # seconds between keyframes
# A fragment every second, whether or not a keyframe starts it: what a crash can lose.
FRAGMENT_ARGS = ("-movflags", "empty_moov+default_base_moof", "-frag_duration", "1000000")

START_TIMEOUT_S = 15.0  # the first frame must be encoded by then
STOP_GRACE_S = 5.0  # between SIGINT (ffmpeg writes its last fragment) and SIGKILL
REMUX_TIMEOUT_S = 120.0
CHUNK = 1 << 20
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

RECORDING, FINALISING, DONE, FAILED = "recording", "finalising", "done", "failed"


class ReplayFailed(AgentError):
    """The recording ended without any video (ffmpeg failed before its first fragment)."""

    status = 500
    code = "replay_failed"


@dataclass
class ReplayInfo:
    """What is kept about a recording, in `<id>.json` beside its video."""

    replay_id: str
    started_at: float  # Unix time
    framerate: int
    max_duration_s: int
    state: str = RECORDING
    finished_at: float | None = None
    size: int = 0
    error: str | None = None
    stop_reason: str | None = None

    @classmethod
    def new(cls, framerate: int, max_duration_s: int) -> ReplayInfo:
        return cls(str(uuid.uuid4()), time.time(), framerate, max_duration_s)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplayInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED)


@dataclass(frozen=True)
class ReplayFiles:
    """A recording's files: `<id>.json` (metadata), `<id>.part.mp4` (fragmented, while it
    is written) and `<id>.mp4` (the finished video)."""

    directory: Path
    replay_id: str

    @property
    def meta(self) -> Path:
        return self.directory / f"{self.replay_id}.json"

    @property
    def part(self) -> Path:
        return self.directory / f"{self.replay_id}.part.mp4"

    @property
    def video(self) -> Path:
        return self.directory / f"{self.replay_id}.mp4"

    @property
    def remux_tmp(self) -> Path:
        return self.directory / f"{self.replay_id}.remux.tmp"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_meta(files: ReplayFiles, info: ReplayInfo) -> None:
    """Replace the metadata atomically (a crash leaves the old or the new, never half)."""
    tmp = files.meta.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(asdict(info), out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, files.meta)
    _fsync_dir(files.directory)


# ---------------------------------------------------------------- the MP4 boxes


def playable_end(path: Path) -> tuple[int, bool]:
    """How much of a fragmented MP4 is whole: the offset after the last complete top-level
    box (a `moof` counts only with its `mdat`), and whether any media (`mdat`) is in it.
    A file cut mid-fragment (ffmpeg or the daemon killed) is playable up to there."""
    good = 0
    media = False
    with open(path, "rb") as mp4:
        size = os.fstat(mp4.fileno()).st_size
        offset = 0
        while offset + 8 <= size:
            mp4.seek(offset)
            head = mp4.read(16)
            length, kind = struct.unpack(">I4s", head[:8])
            if length == 1:
                if len(head) < 16:
                    break
                length = struct.unpack(">Q", head[8:16])[0]
            elif length == 0:
                length = size - offset  # "to the end of the file"
            if length < 8 or offset + length > size:
                break
            offset += length
            if kind != b"moof":
                good = offset
            if kind == b"mdat":
                media = True
    return good, media


# ---------------------------------------------------------------- ffmpeg


def record_argv(ffmpeg: str, display: str, framerate: int) -> list[str]:
    return [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
        "-f", "x11grab", "-draw_mouse", "1", "-framerate", str(framerate), "-i", display,
        # H.264 in 4:2:0 needs even dimensions: pad an odd screen by one pixel.
        "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        "-c:v", "libx264", "-preset", PRESET, "-tune", TUNE, "-crf", CRF,
        "-pix_fmt", "yuv420p", "-g", str(framerate * GOP_S), "-r", str(framerate),
        *FRAGMENT_ARGS, "-flush_packets", "1", "-f", "mp4", "pipe:1",
    ]


def remux_argv(ffmpeg: str, dest: Path) -> list[str]:
    """The fragmented MP4 arrives on stdin; the regular one goes to `dest`."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "mp4", "-i", "pipe:0", "-c", "copy", "-movflags", "+faststart",
            "-f", "mp4", str(dest)]


def _spawn(argv: list[str], stdin: int, stdout: int) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                env=CHILD_ENV, close_fds=True, start_new_session=True)
    except OSError as exc:
        raise Unavailable(f"cannot run {argv[0]!r} to record the screen: "
                          f"{exc.strerror or exc}") from None


async def _lines(stream: IO[bytes], keep: collections.deque[str]) -> None:
    """ffmpeg's stderr (errors only, by -loglevel), the last lines kept for messages."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                               stream)
    try:
        while line := await reader.readline():
            keep.append(line.decode("utf-8", "replace").rstrip())
    finally:
        transport.close()


class Remuxer:
    """An ffmpeg that copies a fragmented MP4 from its stdin into a regular MP4 with its
    index up front. Started when the recording starts, so at the stop it is loaded and
    waiting: finishing costs the copy (tens of milliseconds), not ffmpeg's start-up."""

    def __init__(self, ffmpeg: str, dest: Path) -> None:
        self._popen = _spawn(remux_argv(ffmpeg, dest), subprocess.PIPE, subprocess.DEVNULL)
        self._child = Child(self._popen)
        self._errors: collections.deque[str] = collections.deque(maxlen=10)
        assert self._popen.stderr is not None
        self._reading = asyncio.ensure_future(_lines(self._popen.stderr, self._errors))

    async def run(self, source: Path, length: int) -> str | None:
        """Feed the first `length` bytes of `source`; None when the remux worked, else
        what went wrong."""
        stdin = self._popen.stdin
        assert stdin is not None
        try:
            await asyncio.to_thread(_send, source, length, stdin)
        except OSError as exc:
            problem: str | None = f"feeding the remux failed: {exc.strerror or exc}"
        else:
            problem = None
        finally:
            stdin.close()
        try:
            status = await asyncio.wait_for(self._child.wait(), REMUX_TIMEOUT_S)
        except TimeoutError:
            await self._child.terminate(1.0)
            return f"the remux took longer than {REMUX_TIMEOUT_S:.0f} s"
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reading, 5)
        if status.exit_code != 0:
            return "; ".join(self._errors) or problem or f"ffmpeg exited with {status.exit_code}"
        return problem

    async def cancel(self) -> None:
        if self._popen.stdin is not None:
            self._popen.stdin.close()
        await self._child.terminate(1.0)
        await asyncio.gather(self._reading, return_exceptions=True)


def _send(source: Path, length: int, pipe: IO[bytes]) -> None:
    with open(source, "rb") as data:
        offset = 0
        while offset < length:
            sent = os.sendfile(pipe.fileno(), data.fileno(), offset, length - offset)
            if sent == 0:
                break
            offset += sent


async def finalise(files: ReplayFiles, info: ReplayInfo, ffmpeg: str,
                   remuxer: Remuxer | None = None) -> None:
    """From `<id>.part.mp4` to `<id>.mp4`, once: cut a torn last fragment, remux, rename.
    Also what a restart runs for a recording the daemon was killed during."""
    end, media = await asyncio.to_thread(playable_end, files.part)
    if not media:
        if remuxer is not None:
            await remuxer.cancel()
        info.state, info.error = FAILED, info.error or "no video was recorded"
        await asyncio.to_thread(_discard, files.part, files.remux_tmp)
        await asyncio.to_thread(save_meta, files, info)
        return
    await asyncio.to_thread(os.truncate, files.part, end)
    try:
        remuxer = remuxer or Remuxer(ffmpeg, files.remux_tmp)
    except AgentError as exc:
        problem: str | None = exc.message
    else:
        problem = await remuxer.run(files.part, end)
    if problem is None:
        source = files.remux_tmp
    else:
        # The fragmented file is whole fragments and plays as it is; only the duration
        # in its header is missing.
        log.warning("replay %s: remux failed (%s); keeping the fragmented file",
                    info.replay_id, problem)
        source = files.part
    await asyncio.to_thread(_place, source, files.video)
    info.size = (await asyncio.to_thread(os.stat, files.video)).st_size
    info.state = DONE
    await asyncio.to_thread(save_meta, files, info)
    await asyncio.to_thread(_discard, files.part, files.remux_tmp)


def _place(source: Path, dest: Path) -> None:
    """Durable content under the final name (the directory is synced with the metadata)."""
    with open(source, "rb+") as done:
        os.fsync(done.fileno())
    os.replace(source, dest)


def _discard(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ---------------------------------------------------------------- a running recording


class Recording:
    """A recording being written. `room(n)` (from the manager) says whether `n` more bytes
    fit the disk budget; the per-recording limit is checked here."""

    def __init__(self, info: ReplayInfo, files: ReplayFiles, *, ffmpeg: str, display: str,
                 max_bytes: int, room: Callable[[Recording, int], bool],
                 on_finished: Callable[[Recording], None]) -> None:
        self.info = info
        self.files = files
        self._ffmpeg = ffmpeg
        self._display = display
        self._max_bytes = max_bytes
        self._room = room
        self._on_finished = on_finished
        self._errors: collections.deque[str] = collections.deque(maxlen=10)
        self._child: Child | None = None
        self._fd = -1
        self._first = asyncio.Event()  # set when the first bytes are written...
        self._settled = asyncio.Event()  # ...or when the start failed before that
        self._start_problem: str | None = None
        self._full = False
        self._pump: asyncio.Task[None] | None = None
        self._stderr: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._finish: asyncio.Task[None] | None = None
        self._remuxer: Remuxer | None = None
        self.started = False  # start() succeeded: finishing applies

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        """Start ffmpeg and return once its first frame is encoded (so a display that
        cannot be grabbed is an error here, not an empty video later)."""
        self._fd = os.open(self.files.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                           | os.O_CLOEXEC, 0o640)
        try:
            popen = _spawn(record_argv(self._ffmpeg, self._display, self.info.framerate),
                           subprocess.DEVNULL, subprocess.PIPE)
        except AgentError:
            os.close(self._fd)
            await asyncio.to_thread(_discard, self.files.part)
            raise
        self._child = child = Child(popen)
        assert popen.stdout is not None and popen.stderr is not None
        self._stderr = asyncio.ensure_future(_lines(popen.stderr, self._errors))
        self._pump = asyncio.ensure_future(self._copy(popen.stdout))
        first: asyncio.Future[Any] = asyncio.ensure_future(self._settled.wait())
        exited: asyncio.Future[Any] = child.exit_future
        try:
            await asyncio.wait([first, exited], timeout=START_TIMEOUT_S,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()
        if not self._first.is_set():
            await child.terminate(1.0)
            await asyncio.gather(self._pump, self._stderr, return_exceptions=True)
            os.close(self._fd)
            await asyncio.to_thread(_discard, self.files.part)
            if self._start_problem is not None:
                raise Unavailable(f"cannot record: {self._start_problem}")
            why = "; ".join(self._errors) or "ffmpeg produced no video in time"
            if "display" in why.lower() or "x11grab" in why.lower():
                raise DisplayUnavailable(f"cannot record display {self._display}: {why}")
            raise Unavailable(f"cannot record the screen: {why}")
        self.started = True
        if self._finish is not None:
            return  # ffmpeg ended already (its finish started a remux of its own)
        try:
            self._remuxer = Remuxer(self._ffmpeg, self.files.remux_tmp)
        except AgentError as exc:  # finalise starts one later, or keeps the fragments
            log.warning("replay %s: %s", self.info.replay_id, exc.message)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.info.max_duration_s, self.finish,
                                      "max_duration_in_seconds reached")

    async def _copy(self, stdout: IO[bytes]) -> None:
        """ffmpeg's output into the file, as it comes; at a limit, the recording stops and
        nothing more is written (the finaliser cuts a torn last fragment)."""
        reader = asyncio.StreamReader(limit=CHUNK)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), stdout)
        try:
            while chunk := await reader.read(CHUNK):
                if self._full:
                    continue  # drain, so ffmpeg is never stuck on a full pipe
                if self.info.size + len(chunk) > self._max_bytes:
                    self._limit("the recording reached its size limit")
                    continue
                if not self._room(self, len(chunk)):
                    self._limit("recordings reached their disk budget")
                    continue
                try:
                    await asyncio.to_thread(_write_all, self._fd, chunk)
                except OSError as exc:
                    self._limit(f"writing the recording failed: {exc.strerror or exc}")
                    continue
                self.info.size += len(chunk)
                self._first.set()
                self._settled.set()
        finally:
            transport.close()
        if self._first.is_set():
            self.finish("ffmpeg exited")

    def _limit(self, why: str) -> None:
        self._full = True
        if not self._first.is_set():  # not even started: start() reports it
            self._start_problem = why
            self._settled.set()
            return
        log.info("replay %s: %s; stopping it", self.info.replay_id, why)
        self.finish(why)

    def finish(self, reason: str) -> asyncio.Task[None]:
        """The one finishing task: made by the first caller, awaited by every one."""
        if self._finish is None:
            self.info.stop_reason = reason
            self.info.finished_at = time.time()
            self._finish = asyncio.ensure_future(self._finalise())
        return self._finish

    async def stop(self, reason: str = "stopped") -> None:
        await asyncio.shield(self.finish(reason))

    async def _finalise(self) -> None:
        try:
            await self._finalise_once()
        except Exception:
            log.exception("replay %s: finishing failed", self.info.replay_id)
            self.info.state = FAILED
            self.info.error = self.info.error or "finishing the recording failed"
            with contextlib.suppress(OSError):
                await asyncio.to_thread(save_meta, self.files, self.info)
        finally:
            if self._remuxer is not None:
                await self._remuxer.cancel()  # (already ended when it was used)
            self._on_finished(self)

    async def _finalise_once(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # (On disk the state stays "recording" until done: a restart finalises either alike.)
        self.info.state = FINALISING
        began = time.monotonic()
        child = self._child
        assert child is not None and self._pump is not None and self._stderr is not None
        if child.status is None:
            child.signal_group(signal.SIGINT)  # ffmpeg ends its last fragment and exits
            try:
                await asyncio.wait_for(child.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("replay %s: ffmpeg ignored SIGINT; killing it", self.info.replay_id)
                await child.terminate(1.0)
        await asyncio.gather(self._pump, self._stderr, return_exceptions=True)
        status = child.status
        if status is not None and status.exit_code not in (0, 255) and self._errors:
            self.info.error = "; ".join(self._errors)
        os.close(self._fd)  # the remux reads it from the page cache; no fsync needed
        self._fd = -1
        ended = time.monotonic()
        await finalise(self.files, self.info, self._ffmpeg, self._remuxer)
        done = time.monotonic()
        log.info("replay %s finished (%s): %s, %d bytes; ffmpeg ended in %.3f s, the file "
                 "was ready %.3f s later", self.info.replay_id, self.info.stop_reason,
                 self.info.state, self.info.size, ended - began, done - ended)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


