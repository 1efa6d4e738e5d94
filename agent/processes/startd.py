"""The starter's helper program (`python -I -S startd.py FD`, see `starter`): stdlib only
and as few imports as it can, since every page it holds is one a clone copies.

It keeps one clone of itself ready, made with CLONE_PARENT so that it is the daemon's own
child: that clone waits on the daemon's socket, takes the next request, sets up its
session, terminal and user, and execs the command. The helper makes the next clone only
once that one has exec'd (or exited), so the two never compete for a CPU. A waiting clone
gives up when the helper dies: a request nobody takes then fails (the daemon sees the
helper die, closes its end, and the request's status pipe closes with nothing in it).

The protocol, over a stream socket pair: the daemon sends a 4-byte size with the fds
(stdin, stdout, stderr, a status pipe) attached, then a marshal'd request of that size.
Everything about the request comes back through the status pipe, which exec closes:
(pid, 0) just before exec, then, if exec (or an earlier step) failed, (pid, errno) and the
stage; or (-1, errno) when there is no process at all. Size 0 with no fds asks the waiting
clone to answer (its pid, ESHUTDOWN) on the socket and exit, and the helper to stop.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import marshal
import os
import select
import signal
import socket
import struct
import sys
import termios

CLONE_PARENT = 0x00008000
SYS_CLONE = {"x86_64": 56, "aarch64": 220}
SIZE = struct.Struct("!I")
STATUS = struct.Struct("!ii")  # (pid, errno)
FDS = 4  # stdin, stdout, stderr, the failure pipe
# Signals Python sets up (it ignores PIPE and XFSZ; an ignore survives exec): the helper,
# and so every clone, puts them back to their default action.
DEFAULTS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT)
STOP = b"q"  # clone → helper: the daemon asked to stop

Decoded = tuple[list[bytes], list[bytes], dict[bytes, bytes], bytes, int, int, list[int], bool]


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the socket closed")
        data += chunk
    return data


def _receive(sock: socket.socket) -> tuple[int, list[int]] | None:
    """A request's size and fds (close-on-exec); None at EOF (the daemon is gone)."""
    fds: list[int] = []
    size_bytes, ancdata, _, _ = sock.recvmsg(
        SIZE.size, socket.CMSG_SPACE(FDS * 4), socket.MSG_CMSG_CLOEXEC | socket.MSG_WAITALL)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[:len(data) - len(data) % 4]))
    if len(size_bytes) < SIZE.size:
        for fd in fds:
            os.close(fd)
        return None
    return SIZE.unpack(size_bytes)[0], fds


def _become(request: Decoded, fds: list[int]) -> None:
    """Set up and exec, or report why not. Never returns."""
    argv, candidates, env, cwd, uid, gid, groups, tty = request
    pid = os.getpid()
    stage = b"exec"
    code = errno.EINVAL
    try:
        os.dup2(fds[0], 0)
        os.dup2(fds[1], 1)
        os.dup2(fds[2], 2)
        os.setsid()
        if tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if uid >= 0:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        stage = b"cwd"
        os.chdir(cwd)
        stage = b"exec"
        os.write(fds[3], STATUS.pack(pid, 0))
        first = 0  # as execvp: the first error that is not "not there", else the last
        for candidate in candidates:
            try:
                os.execve(candidate, argv, env)
            except OSError as exc:
                code = exc.errno or errno.EINVAL
                if not first and code not in (errno.ENOENT, errno.ENOTDIR):
                    first = code
        code = first or code
    except OSError as exc:
        code = exc.errno or errno.EINVAL
    finally:
        os.write(fds[3], STATUS.pack(pid, code) + stage)
        os._exit(127)


def _serve_one(sock: socket.socket, told: int, helper: int) -> None:
    """In a clone: wait for one request and carry it out; give up if the helper dies
    first (`helper`: its pidfd). Never returns."""
    try:
        if sock.fileno() not in select.select([sock.fileno(), helper], [], [])[0]:
            os._exit(0)
        received = _receive(sock)
        if received is None:
            os.write(told, STOP)
            os._exit(0)
        size, fds = received
        if not size:  # answer first: with the helper gone, the write to it is a SIGPIPE
            sock.sendall(STATUS.pack(os.getpid(), errno.ESHUTDOWN))
            os.write(told, STOP)
            os._exit(0)
        payload = recv_exact(sock, size)
        if len(fds) == FDS:
            _become(marshal.loads(payload), fds)
    finally:
        os._exit(0)


def _refuse(sock: socket.socket, code: int) -> bool:
    """No clone could be made: answer the next request with why; False to stop."""
    received = _receive(sock)
    if received is None:
        return False
    size, fds = received
    if size:
        recv_exact(sock, size)
    if len(fds) == FDS:
        os.write(fds[3], STATUS.pack(-1, code))
    for fd in fds:
        os.close(fd)
    if not size:
        sock.sendall(STATUS.pack(-1, errno.ESHUTDOWN))
    return bool(size)


def serve(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long] * 6
    number = SYS_CLONE[os.uname().machine]
    me = os.pidfd_open(os.getpid())
    while True:
        # The clone holds the only write end, closed by its exec or exit: EOF is the sign
        # to make the next one.
        told_r, told_w = os.pipe2(os.O_CLOEXEC)
        pid = syscall(number, CLONE_PARENT | signal.SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            os.close(told_r)
            _serve_one(sock, told_w, me)
        code = ctypes.get_errno()
        os.close(told_w)
        try:
            if pid < 0:
                if not _refuse(sock, code):
                    return
            elif os.read(told_r, 1) == STOP:
                return
        finally:
            os.close(told_r)


if __name__ == "__main__":
    for signum in DEFAULTS:
        signal.signal(signum, signal.SIG_DFL)
    gc.disable()  # nothing here makes cycles; a collection would only dirty shared pages
    serve(int(sys.argv[1]))
