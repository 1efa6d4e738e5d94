"""The starter: a small helper process that starts children as other users, or on a
terminal, without the daemon ever forking.

`subprocess` starts a child with vfork, which costs the same however big the daemon is,
but only when the child needs no Python code between fork and exec: switching user, or
making a terminal the controlling one, makes it fork the whole daemon (its page tables:
tens of milliseconds at hundreds of MB). An exec'd helper (`setpriv`) avoids that at the
price of a second exec on every start. The starter is a third way: a fresh Python of a
few MB, started once, that receives a request (argv, environment, directory, user, the
child's stdin/stdout/stderr as fds) over a socket pair only the daemon holds, clones
itself with CLONE_PARENT, and in the clone sets up the session, terminal and user before
exec'ing the command (the clone is made ahead of the request, so that a request waits
only for the setup). CLONE_PARENT makes the child the daemon's own child, not the
helper's: the daemon reaps it and watches it through a pidfd like any other.

The pid, and a failure between clone and exec (errno and stage), come back through a
pipe that exec closes, as `subprocess` reports failures; the daemon reaps a child that
failed.

The helper's program is `startd`.
"""

from __future__ import annotations

import contextlib
import errno
import marshal
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.processes import startd
from agent.processes.startd import SIZE, STATUS, recv_exact

REPLY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Request:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    uid: int | None  # None: stay the helper's user
    gid: int | None
    groups: Sequence[int]
    tty: bool  # stdin is a terminal: make it the new session's controlling terminal

    def encode(self) -> bytes:
        """Raises UnicodeEncodeError for text the OS cannot take (as subprocess would).
        The PATH search is done here, so the clone has as little to do as possible."""
        argv = [os.fsencode(arg) for arg in self.argv]
        env = {os.fsencode(key): os.fsencode(value) for key, value in self.env.items()}
        command = argv[0]
        if b"/" in command:
            candidates = [command]
        else:
            path = env.get(b"PATH", os.fsencode(os.defpath))
            candidates = [os.path.join(entry or b".", command) for entry in path.split(b":")]
        return marshal.dumps((
            argv, candidates, env, os.fsencode(self.cwd),
            -1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid,
            list(self.groups), self.tty))


class Started:
    """A child the starter started: the daemon's own child, reaped like a Popen's."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: the status is lost (as Popen)
                self.returncode = 0
                return 0
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until it exits (tests and failure paths; the daemon uses a pidfd)."""
        if self.returncode is None:
            pidfd = os.pidfd_open(self.pid)
            try:
                if not select.select([pidfd], [], [], timeout)[0]:
                    raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            finally:
                os.close(pidfd)
        code = self.poll()
        assert code is not None
        return code

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


class Starter:
    """The daemon's side: starts the helper on first use (again if it died), one request
    at a time (a lock: requests come from the event loop, `close` from a worker thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._helper: subprocess.Popen[bytes] | None = None
        self._helper_fd = -1  # the helper's pidfd: readable once it died
        self._sock: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        return self._helper.pid if self._helper is not None else None

    def _ensure(self) -> socket.socket:
        if self._sock is not None and self._helper is not None and \
                self._helper.poll() is None:
            return self._sock
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._helper = subprocess.Popen(
                [sys.executable, "-I", "-S", startd.__file__, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                start_new_session=True, close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(REPLY_TIMEOUT_S)
        self._sock = ours
        self._helper_fd = os.pidfd_open(self._helper.pid)
        return ours

    def warm(self) -> None:
        """Start the helper now, so the first request does not wait for it."""
        with self._lock:
            self._ensure()

    def start(self, request: Request, stdin: int, stdout: int, stderr: int) -> Started:
        """Start the command (an fd may be `subprocess.DEVNULL`). Raises OSError as exec
        would (or chdir: then `filename` is the directory), with the child reaped."""
        payload = request.encode()
        null = -1
        if subprocess.DEVNULL in (stdin, stdout, stderr):
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        fds = [null if fd == subprocess.DEVNULL else fd for fd in (stdin, stdout, stderr)]
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            with self._lock:
                self._send(payload, [*fds, status_w])
                os.close(status_w)
                status_w = -1
                status = self._read_status(status_r)
        finally:
            for fd in (status_r, status_w, null):
                if fd >= 0:
                    os.close(fd)
        if len(status) < STATUS.size:
            raise OSError(errno.EAGAIN, "the process starter did not answer")
        pid, code = STATUS.unpack_from(status)
        rest = status[STATUS.size:]
        if pid < 0:
            raise OSError(code, os.strerror(code))
        started = Started(pid)
        if not code and len(rest) >= STATUS.size:  # exec itself failed
            _, code = STATUS.unpack_from(rest)
            rest = rest[STATUS.size:]
        if code:
            started.wait()
            filename = request.cwd if rest == b"cwd" else request.argv[0]
            raise OSError(code, os.strerror(code), filename)
        return started

    def _send(self, payload: bytes, fds: list[int]) -> None:
        sock = self._ensure()
        try:
            ancillary = (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))
            sock.sendmsg([SIZE.pack(len(payload))], [ancillary])
            sock.sendall(payload)
        except OSError as exc:
            self._stop()
            raise OSError(errno.EAGAIN, f"the process starter failed: {exc}") from None

    def _read_status(self, fd: int) -> bytes:
        """What the clone said, up to the pipe's close: its exec or exit, or, once the
        helper died and its socket closed, the request's end (nobody took it)."""
        watch = [fd, self._helper_fd]
        data = b""
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            ready = select.select(watch, [], [], max(remaining, 0))[0]
            if fd in ready:
                chunk = os.read(fd, 256)
                if not chunk:
                    return data
                data += chunk
            elif ready:  # the helper died
                self._stop(ask=False)  # a clone that took the request still answers
                watch = [fd]
            else:
                self._stop(ask=False)  # stuck: start afresh next time
                raise OSError(errno.EAGAIN, "the process starter did not answer in time")

    def _stop(self, ask: bool = True) -> None:
        sock, self._sock = self._sock, None
        helper, self._helper = self._helper, None
        if self._helper_fd >= 0:
            os.close(self._helper_fd)
            self._helper_fd = -1
        if helper is not None and not ask:
            helper.kill()
        if sock is not None and ask and helper is not None and helper.poll() is None:
            # The waiting clone is the daemon's child: have it exit, and reap it. (One
            # that gave up on a dead helper is left to the daemon's orphan reaper.)
            with contextlib.suppress(OSError, EOFError):
                sock.sendmsg([SIZE.pack(0)])
                pid, _ = STATUS.unpack(recv_exact(sock, STATUS.size))
                if pid > 0:
                    _reap(pid)
        if sock is not None:
            sock.close()
        if helper is not None:
            try:
                helper.wait(2)  # it exits once its clone said stop, or its socket closed
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()

    def close(self) -> None:
        with self._lock:
            self._stop()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
