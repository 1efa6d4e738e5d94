"""Directory watches: inotify events as `FileSystemEvent`s in a replayable `EventLog`.

inotify is used directly (through libc) rather than through watchfiles because watchfiles
hands over de-duplicated, unordered *sets* of (change, path) after a debounce: it loses
the order of events, merges a create and a write of one file, and reports a rename as an
unrelated delete and add. inotify gives ordered events with rename cookies (so a RENAME
carries both paths), tells whether the kernel's queue overflowed (so an overflow is
reported, never silent), and costs no thread: the descriptor sits in the event loop, so an
event reaches the log in the same loop iteration it is read, with no debounce.

One inotify descriptor serves every watch of the manager (inotify instances are limited
to 128 per user by default, directory watches to hundreds of thousands). A watch keeps
its events in a bounded `EventLog`: events that happen before the first reader are kept,
every reader gets every event, a reconnect resumes from `Last-Event-ID`, and a reader
that fell behind the buffer gets an explicit OVERFLOW marker. WRITE events of one path
are limited to one per `WRITE_INTERVAL_S` with a trailing event, so a large upload does
not flood the buffer yet the last write is always reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import stat
import struct
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.errors import BadRequest, NotFound, ShuttingDown, TooManyRequests, Unavailable
from agent.identity import FsUser, run_as
from agent.osutil import libc, mapped, shown
from agent.streams import EventLog, Gap, StreamEvent

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCH_MASK = (IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
              | IN_DELETE_SELF | IN_MOVE_SELF | IN_EXCL_UNLINK | IN_ONLYDIR)
EVENT_HEADER = struct.Struct("iIII")
READ_SIZE = 64 * 1024
READS_PER_WAKEUP = 32  # then yield to the loop; the descriptor stays readable
WRITE_INTERVAL_S = 0.1
UNPAIRED_MOVE_S = 0.02  # a MOVED_FROM with no MOVED_TO after this is a move out: DELETE

Event = dict[str, Any]


class _Inotify:
    """The three inotify system calls, through libc."""

    def __init__(self) -> None:
        c = libc()
        self._add = c.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = c.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = c.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd: int = fd

    def add(self, path: str, mask: int) -> int:
        wd = int(self._add(self.fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return wd

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # EINVAL when the kernel already dropped it: fine

    def read(self) -> list[tuple[int, int, int, str]] | None:
        """Pending events as (wd, mask, cookie, name); None when none are queued."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None
        events = []
        offset = 0
        while offset + EVENT_HEADER.size <= len(data):
            wd, mask, cookie, length = EVENT_HEADER.unpack_from(data, offset)
            offset += EVENT_HEADER.size
            raw = data[offset:offset + length].rstrip(b"\0")
            offset += length
            events.append((wd, mask, cookie, os.fsdecode(raw)))
        return events

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class _Writes:
    last: float
    timer: asyncio.TimerHandle | None = None


@dataclass
class _PendingMove:
    cookie: int
    path: str
    is_dir: bool
    timer: asyncio.TimerHandle


@dataclass(eq=False)
class Watch:
    """One directory watch: its inotify directories and its event log."""

    id: str
    root: str
    recursive: bool
    log: EventLog[Event]
    manager: WatchManager
    dirs: dict[int, str] = field(default_factory=dict)  # wd → directory path
    root_wd: int = -1
    readers: int = 0
    ended: bool = False
    _writes: dict[str, _Writes] = field(default_factory=dict)
    _move: _PendingMove | None = None
    _scanned: set[str] = field(default_factory=set)
    _idle: asyncio.TimerHandle | None = None

    # -------------------------------------------------------------- emitting

    def _emit(self, kind: str, path: str, is_dir: bool, **extra: Any) -> None:
        if self.ended:
            return
        event: Event = {"type": kind, "name": shown(os.path.basename(path)),
                        "path": shown(path), "is_dir": is_dir}
        event.update(extra)
        self.log.append(event)

    def overflow(self, message: str, **extra: Any) -> Event:
        return {"type": "OVERFLOW", "name": shown(os.path.basename(self.root) or "/"),
                "path": shown(self.root), "is_dir": True, "message": message, **extra}

    def _write(self, path: str) -> None:
        now = time.monotonic()
        state = self._writes.get(path)
        if state is None or now - state.last >= WRITE_INTERVAL_S:
            if state is not None and state.timer is not None:
                state.timer.cancel()
            self._writes[path] = _Writes(now)
            self._emit("WRITE", path, False)
            if len(self._writes) > 1024:
                self._prune_writes(now)
        elif state.timer is None:
            loop = asyncio.get_running_loop()
            state.timer = loop.call_at(loop.time() + WRITE_INTERVAL_S - (now - state.last),
                                       self._trailing_write, path)

    def _trailing_write(self, path: str) -> None:
        state = self._writes.get(path)
        if state is not None:
            state.timer = None
            state.last = time.monotonic()
            self._emit("WRITE", path, False)

    def _settle(self, path: str) -> None:
        """A pending trailing WRITE of `path` goes out before any other event about it."""
        state = self._writes.pop(path, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()
            self._emit("WRITE", path, False)

    def _prune_writes(self, now: float) -> None:
        for path in [p for p, s in self._writes.items()
                     if s.timer is None and now - s.last >= WRITE_INTERVAL_S]:
            del self._writes[path]

    # -------------------------------------------------------------- inotify events

    def handle(self, wd: int, mask: int, cookie: int, name: str) -> None:
        base = self.dirs.get(wd)
        if base is None or self.ended:
            return
        if mask & IN_IGNORED:
            self.dirs.pop(wd, None)
            if wd == self.root_wd:
                self.end(gone=True)
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
            if wd == self.root_wd:
                self.end(gone=True)
            return
        path = os.path.join(base, name) if name else base
        is_dir = bool(mask & IN_ISDIR)
        move = self._move
        if move is not None and not (mask & IN_MOVED_TO and cookie == move.cookie):
            self._move_out()
        if mask & IN_CREATE:
            if path in self._scanned:
                self._scanned.discard(path)  # already reported by the scan of a new dir
                return
            self._emit("CREATE", path, is_dir)
            if is_dir and self.recursive:
                self.add_tree(path, report=True)
        elif mask & IN_MODIFY:
            self._write(path)
        elif mask & IN_DELETE:
            self._settle(path)
            self._scanned.discard(path)
            self._emit("DELETE", path, is_dir)
        elif mask & IN_MOVED_FROM:
            self._settle(path)
            loop = asyncio.get_running_loop()
            self._move = _PendingMove(cookie, path, is_dir,
                                      loop.call_later(UNPAIRED_MOVE_S, self._move_out))
        elif mask & IN_MOVED_TO:
            if move is not None and cookie == move.cookie:
                move.timer.cancel()
                self._move = None
                self._emit("RENAME", path, is_dir, old_path=shown(move.path))
                if is_dir and self.recursive:
                    self._rebase(move.path, path)
            elif path in self._scanned:
                self._scanned.discard(path)
            else:
                self._emit("CREATE", path, is_dir)
                if is_dir and self.recursive:
                    self.add_tree(path, report=True)

    def _move_out(self) -> None:
        """The pending MOVED_FROM had no MOVED_TO here: it left the watched tree."""
        move, self._move = self._move, None
        if move is None:
            return
        move.timer.cancel()
        self._emit("DELETE", move.path, move.is_dir)
        if move.is_dir:
            for wd in [wd for wd, p in self.dirs.items() if _within(p, move.path)]:
                self.manager.detach(self, wd)

    def _rebase(self, old: str, new: str) -> None:
        for wd, path in list(self.dirs.items()):
            if _within(path, old):
                self.dirs[wd] = new + path[len(old):]

    def drained(self) -> None:
        """Every event queued before now has been handled: scans cannot repeat any more."""
        self._scanned.clear()

    # -------------------------------------------------------------- directories

    def add_tree(self, top: str, report: bool) -> None:
        """Watch `top` and every directory below it. With `report`, entries found there
        are reported as CREATEs (they appeared before their directory was watched); a
        watch is added before its directory is listed, so nothing falls in between."""
        with self.manager.acting():  # watch and list only what the browser user may
            self._add_tree(top, report)

    def _add_tree(self, top: str, report: bool) -> None:
        stack = [top]
        while stack:
            directory = stack.pop()
            try:
                wd = self.manager.attach(self, directory, follow=False)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    self.log.append(self.overflow(
                        f"the inotify watch limit is reached ({exc.strerror}): changes "
                        f"under {shown(directory)} are not observed"))
                continue  # otherwise gone already, or not readable
            self.dirs[wd] = directory
            try:
                with os.scandir(directory) as entries:
                    found = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
            except OSError:
                continue
            for name, is_dir in found:
                path = os.path.join(directory, name)
                if report:
                    self._scanned.add(path)
                    self._emit("CREATE", path, is_dir)
                if is_dir:
                    stack.append(path)

    def rescan(self) -> None:
        """After a kernel overflow: watch directories that appeared unseen."""
        if self.recursive and not self.ended:
            self.add_tree(self.root, report=False)

    # -------------------------------------------------------------- lifetime

    def end(self, gone: bool = False) -> None:
        """The watch stops. When its directory is `gone` (deleted, moved away, unmounted)
        a final DELETE of the root is its last event; readers then drain the log and
        their streams end."""
        if self.ended:
            return
        self._move_out()
        if gone:
            self._emit("DELETE", self.root, True)
        self.ended = True
        self.log.close()
        for state in self._writes.values():
            if state.timer is not None:
                state.timer.cancel()
        self._writes.clear()
        for wd in list(self.dirs):
            self.manager.detach(self, wd)

    async def events(self, after: int) -> AsyncGenerator[StreamEvent, None]:
        """The events after `after` for one reader, as they come (the watch does not
        expire meanwhile); a reader that fell behind the buffer gets an OVERFLOW event
        where the events it missed were."""
        with self.reading():
            async for item in self.log.follow(after):
                if isinstance(item, Gap):
                    yield StreamEvent(self.overflow(
                        f"this reader fell behind the watch's buffer: {item.missed} events "
                        "were dropped", missed=item.missed, first_missed_id=item.first,
                        last_missed_id=item.last), item.last)
                else:
                    yield StreamEvent(item.item, item.seq)

    @contextlib.contextmanager
    def reading(self) -> Iterator[EventLog[Event]]:
        """A reader is connected: the watch does not expire meanwhile."""
        self.readers += 1
        self.cancel_idle()
        try:
            yield self.log
        finally:
            self.readers -= 1
            if self.readers == 0:
                self.arm_idle()

    def arm_idle(self) -> None:
        self.cancel_idle()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.manager.idle_s, self.manager.expire, self.id)

    def cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None


def _subdirectories(root: str) -> list[str]:
    found: list[str] = []
    for directory, dirnames, _files in os.walk(root):
        found.extend(os.path.join(directory, name) for name in dirnames)
    return found


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


class WatchManager:
    """Every watch of the daemon, on one inotify descriptor read by the event loop."""

    def __init__(self, buffer: int, idle_s: float, fs: FsUser | None = None,
                 max_watches: int = 64, max_dirs: int = 65536) -> None:
        self.buffer = buffer
        self.idle_s = idle_s
        self.fs = fs
        self.max_watches = max_watches  # live watches
        self.max_dirs = max_dirs  # inotify watches (directories) they hold together
        self._watches: dict[str, Watch] = {}
        self._users: dict[int, set[Watch]] = {}  # wd → watches using it
        self._inotify: _Inotify | None = None
        self._closed = False

    def _ensure_inotify(self) -> _Inotify:
        if self._inotify is None:
            try:
                self._inotify = _Inotify()
            except OSError as exc:
                raise Unavailable(f"cannot start watching: {exc.strerror}") from None
            asyncio.get_running_loop().add_reader(self._inotify.fd, self._on_readable)
        return self._inotify

    # -------------------------------------------------------------- API

    def acting(self) -> contextlib.AbstractContextManager[None]:
        """inotify checks the caller's read permission: calls made on the loop act as
        the browser user for their duration."""
        return self.fs.acting() if self.fs is not None else contextlib.nullcontext()

    async def start(self, path: str, recursive: bool) -> Watch:
        if self._closed:
            raise ShuttingDown("the daemon is shutting down")
        if len(self._watches) >= self.max_watches:
            raise TooManyRequests(f"at most {self.max_watches} watches may be live "
                                  "(AGENT_MAX_WATCHES); stop one first",
                                  code="too_many_watches")
        with mapped(path, "watch"):
            st = await run_as(self.fs, os.stat, path)
            if not stat.S_ISDIR(st.st_mode):
                raise BadRequest(f"not a directory: {shown(path)}")
        watch = Watch(id=uuid.uuid4().hex, root=path, recursive=recursive,
                      log=EventLog(max_items=self.buffer), manager=self)
        with mapped(path, "watch"):
            try:
                with self.acting():
                    watch.root_wd = self.attach(watch, path, follow=True)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise Unavailable(f"the inotify watch limit is reached: {exc.strerror}",
                                      code="too_many_watched_directories") from None
                raise
        watch.dirs[watch.root_wd] = path
        if recursive:
            await self._watch_subdirectories(watch)
        self._watches[watch.id] = watch
        watch.arm_idle()
        return watch

    def __contains__(self, watch_id: object) -> bool:
        return watch_id in self._watches

    async def _watch_subdirectories(self, watch: Watch) -> None:
        """The directories below the root, listed in a thread (a big tree takes a while)
        and watched on the loop in batches, without reporting them."""
        subdirs = await run_as(self.fs, _subdirectories, watch.root)
        for index, directory in enumerate(subdirs):
            try:
                with self.acting():
                    wd = self.attach(watch, directory, follow=False)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    watch.end()
                    raise Unavailable(f"the inotify watch limit is reached after {index} "
                                      f"directories below {shown(watch.root)}: "
                                      f"{exc.strerror}",
                                      code="too_many_watched_directories") from None
                continue
            watch.dirs[wd] = directory
            if index % 256 == 255:
                await asyncio.sleep(0)

    def get(self, watch_id: str) -> Watch:
        watch = self._watches.get(watch_id)
        if watch is None:
            raise NotFound(f"no such watch: {watch_id}")
        return watch

    def stop(self, watch_id: str) -> None:
        watch = self._watches.pop(watch_id, None)
        if watch is None:
            raise NotFound(f"no such watch: {watch_id}")
        watch.cancel_idle()
        watch.end()

    def expire(self, watch_id: str) -> None:
        watch = self._watches.get(watch_id)
        if watch is not None and watch.readers == 0:
            log.info("watch %s of %s expired unread", watch_id, shown(watch.root))
            self.stop(watch_id)

    async def close(self) -> None:
        """End every watch (streams finish) and release the inotify descriptor."""
        self._closed = True
        for watch_id in list(self._watches):
            self.stop(watch_id)
        if self._inotify is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
        self._users.clear()

    # -------------------------------------------------------------- inotify plumbing

    def attach(self, watch: Watch, path: str, follow: bool) -> int:
        inotify = self._ensure_inotify()
        if len(self._users) >= self.max_dirs:
            raise OSError(errno.ENOSPC, f"the daemon's watches hold {len(self._users)} "
                          "directories, its limit (AGENT_MAX_WATCH_DIRS)", path)
        mask = WATCH_MASK if follow else WATCH_MASK | IN_DONT_FOLLOW
        wd = inotify.add(path, mask)
        self._users.setdefault(wd, set()).add(watch)
        return wd

    def detach(self, watch: Watch, wd: int) -> None:
        watch.dirs.pop(wd, None)
        users = self._users.get(wd)
        if users is None:
            return
        users.discard(watch)
        if not users:
            del self._users[wd]
            if self._inotify is not None:
                self._inotify.remove(wd)

    def _on_readable(self) -> None:
        inotify = self._inotify
        if inotify is None:
            return
        for _ in range(READS_PER_WAKEUP):
            try:
                events = inotify.read()
            except OSError as exc:
                log.warning("reading inotify events failed: %s", exc)
                return
            if events is None:
                for watch in list(self._watches.values()):
                    watch.drained()
                return
            for wd, mask, cookie, name in events:
                if mask & IN_Q_OVERFLOW:
                    self._kernel_overflow()
                    continue
                for watch in list(self._users.get(wd, ())):
                    watch.handle(wd, mask, cookie, name)
                if mask & IN_IGNORED:
                    self._users.pop(wd, None)

    def _kernel_overflow(self) -> None:
        log.warning("the kernel's inotify queue overflowed; events were lost")
        for watch in list(self._watches.values()):
            if not watch.ended:
                watch.log.append(watch.overflow(
                    "the kernel's event queue overflowed: some changes were not observed"))
                watch.rescan()
