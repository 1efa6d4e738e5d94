"""Pseudo-terminals: a real PTY pair sized rows×cols, owned by the user the process runs as,
and the small ioctls the process table needs (size, EOF character, foreground group)."""

from __future__ import annotations

import fcntl
import os
import struct
import termios

DEFAULT_ROWS = 24
DEFAULT_COLS = 80
IUTF8 = 0o040000  # <asm-generic/termbits.h>; Python's termios does not export it


def set_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ; on a change the kernel sends SIGWINCH to the terminal's foreground group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def open_pty(rows: int, cols: int, owner_uid: int | None = None) -> tuple[int, int]:
    """(master, slave), both close-on-exec. The slave belongs to `owner_uid` so that programs
    which reopen their terminal by name (vim, script, sudo) can do so as that user."""
    master, slave = os.openpty()
    try:
        set_size(master, rows, cols)
        attrs = termios.tcgetattr(slave)
        attrs[0] |= IUTF8  # line editing erases whole UTF-8 characters
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        if owner_uid is not None:
            os.fchown(slave, owner_uid, -1)
            os.fchmod(slave, 0o620)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def eof_byte(fd: int) -> bytes:
    """The terminal's EOF character (VEOF, ^D unless changed with stty)."""
    value = termios.tcgetattr(fd)[6][termios.VEOF]
    return value if isinstance(value, bytes) else bytes([value])


def foreground_group(fd: int) -> int | None:
    """The terminal's foreground process group (a job the shell moved to the foreground)."""
    try:
        group = os.tcgetpgrp(fd)
    except OSError:
        return None
    return group if group > 0 else None  # 0: no session owns the terminal any more
