"""From a request to a started process: which user it runs as, its environment and working
directory, and the one place OS launch failures become client errors.

Children never inherit the daemon's environment (it may hold API tokens): they get a small
sane default (PATH, HOME, USER, LOGNAME, SHELL, LANG, DISPLAY, TERM on a terminal) with the
request's `env` on top.

Starting a child never forks the daemon (a fork copies its page tables, tens of
milliseconds once it holds hundreds of MB): `subprocess` starts every child with vfork, a
child of another user from a thread that takes that user's identity for the call (see
`credentials`), and a child on a terminal through util-linux's `setsid --ctty`, which
makes the terminal its session's controlling one before exec'ing the command.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pwd
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError, BadRequest, Forbidden, Unavailable
from agent.processes import credentials

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TERM = "xterm-256color"


@dataclass(frozen=True)
class Command:
    """What a client asked to run (the fields of ProcessExecRequest)."""

    command: str
    args: list[str] = field(default_factory=list)
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    as_user: str | None = None
    as_root: bool = False
    timeout_s: float | None = None


@dataclass(frozen=True)
class Identity:
    """The account a process runs as; `switch` is False when that is the daemon's own."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str
    switch: bool


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    identity: Identity


def _bad(field_name: str, message: str, code: str | None = None) -> BadRequest:
    """This slice's messages read "<field>: <problem>" (problems name what was given)."""
    return BadRequest.for_field(field_name, message, f"{field_name}: {message}", code=code)


def identity_of(entry: pwd.struct_passwd, euid: int) -> Identity:
    switch = entry.pw_uid != euid
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)) if switch else ()
    return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir,
                    entry.pw_shell or "/bin/sh", switch)


def resolve_identity(as_user: str | None, as_root: bool, default_user: str | None,
                     euid: int | None = None) -> Identity:
    """Who runs the process. As root: `as_root`, else `as_user`, else the configured default
    user, else root. Not as root: only the daemon's own user (anything else is a 403).
    The admin scope for `as_user`/`as_root` is checked at the edge, before this."""
    euid = os.geteuid() if euid is None else euid
    if as_root and as_user is not None and as_user != "root":
        raise _bad("as_user", "cannot be combined with as_root")
    if as_root:
        wanted: str | None = "root"
    elif as_user is not None:
        if not as_user or "\0" in as_user:
            raise _bad("as_user", "is not a user name")
        wanted = as_user
    else:
        wanted = default_user if euid == 0 else None
    if wanted is None:
        return identity_of(pwd.getpwuid(euid), euid)
    try:
        entry = pwd.getpwnam(wanted)
    except KeyError:
        if wanted == default_user and as_user is None and not as_root:
            raise Unavailable(f"the configured default user {wanted!r} does not exist") from None
        raise _bad("as_user", f"no such user: {wanted!r}") from None
    if entry.pw_uid != euid and euid != 0:
        raise Forbidden(f"the daemon does not run as root, so it cannot run processes as "
                        f"{entry.pw_name!r}")
    return identity_of(entry, euid)


def build_env(identity: Identity, display: str, extra: Mapping[str, str],
              tty: bool) -> dict[str, str]:
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": identity.home,
        "USER": identity.name,
        "LOGNAME": identity.name,
        "SHELL": identity.shell,
        "LANG": "C.UTF-8",
        "DISPLAY": display,
    }
    if tty:
        env["TERM"] = TERM
    for key, value in extra.items():
        if not key or "=" in key or "\0" in key:
            raise _bad(f"env.{key}", "is not a valid variable name")
        if "\0" in value:
            raise _bad(f"env.{key}", "must not contain NUL characters")
        env[key] = value
    return env


def resolve(cmd: Command, *, display: str, default_user: str | None, tty: bool) -> Launch:
    """Check everything that can be checked before fork, so failures are clear 400s."""
    if not cmd.command:
        raise _bad("command", "must not be empty")
    if "\0" in cmd.command:
        raise _bad("command", "must not contain NUL characters")
    for index, arg in enumerate(cmd.args):
        if "\0" in arg:
            raise _bad(f"args.{index}", "must not contain NUL characters")
    if cmd.timeout_s is not None and cmd.timeout_s <= 0:
        raise _bad("timeout_sec", "must be at least 1")
    identity = resolve_identity(cmd.as_user, cmd.as_root, default_user)
    env = build_env(identity, display, cmd.env, tty)
    if cmd.cwd is not None:
        if "\0" in cmd.cwd or not cmd.cwd.startswith("/"):
            raise _bad("cwd", "must be an absolute path")
        if not os.path.isdir(cmd.cwd):
            raise _bad("cwd", f"no such directory: {cmd.cwd}")
        cwd = cmd.cwd
    else:
        cwd = identity.home if os.path.isdir(identity.home) else "/"
    return Launch([cmd.command, *cmd.args], cwd, env, identity)


# Signals a child should meet with their default action. A disposition of "ignore" is
# kept across exec, so a daemon started where these are ignored (a background job of a
# non-interactive shell ignores SIGINT and SIGQUIT, nohup SIGHUP) would hand that on to
# every process it starts: ^C in a terminal and `kill INT` would do nothing. A handler,
# unlike "ignore", is reset to the default at exec. (SIGPIPE and SIGXFSZ are reset by
# `subprocess` itself; SIGTTIN and SIGTTOU stay: a handler would turn a background
# daemon's terminal writes into endless retries.)
INHERITABLE_IGNORES = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
                       signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGTSTP)


def _still_ignored(signum: int, frame: object) -> None:
    """Does what "ignore" did for the daemon, but children start with the default."""


def stop_ignoring_for_children() -> list[str]:
    """Swap an inherited "ignore" of `INHERITABLE_IGNORES` for a handler that does nothing
    (main thread only); the names of the signals swapped."""
    swapped = []
    for signum in INHERITABLE_IGNORES:
        if signal.getsignal(signum) is signal.SIG_IGN:
            try:
                signal.signal(signum, _still_ignored)
            except ValueError:  # not the main thread: nothing can be changed here
                break
            swapped.append(signal.Signals(signum).name)
    return swapped


@contextlib.contextmanager
def acting_as(ident: Identity) -> Iterator[dict[str, Any]]:
    """For the `subprocess.Popen` in the block: the calling thread as `ident`'s user, so
    the child is vforked as that user (see `credentials`); or, where that is not
    available, the arguments for `subprocess`'s own switch (a fork of the daemon)."""
    if not ident.switch:
        yield {}
    elif not credentials.SUPPORTED:
        yield {"user": ident.uid, "group": ident.gid, "extra_groups": list(ident.groups)}
    else:
        with credentials.as_user(ident.uid, ident.gid, ident.groups):
            yield {}


@functools.cache
def _setsid() -> str | None:
    return shutil.which("setsid", path=DEFAULT_PATH)


def start(
    launch: Launch,
    stdin: int,
    stdout: int,
    stderr: int,
    tty: bool = False,
) -> subprocess.Popen[bytes]:
    """Start the command in a new session (with `tty`, stdin, a PTY slave, becomes its
    controlling terminal) as the launch's user; launch failures become 400s naming the
    field."""
    argv = launch.argv
    if tty:
        setsid = _setsid()
        if setsid is None:
            raise Unavailable("a terminal needs util-linux's setsid, not found")
        argv = [setsid, "--ctty", *argv]
    try:
        with acting_as(launch.identity) as switch:
            if tty:
                _check_command(launch)  # as the user; setsid would only exit 127: say it now
            return subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                cwd=launch.cwd,
                env=launch.env,
                start_new_session=not tty,  # setsid must not lead a group, or it forks
                close_fds=True,
                **switch,
            )
    except AgentError:
        raise
    except OSError as exc:
        raise launch_error(launch, exc) from None
    except (ValueError, subprocess.SubprocessError) as exc:
        raise _bad("command", f"cannot be started: {exc}") from None


def _check_command(launch: Launch) -> None:
    """What exec would say of the command, as the calling thread's user: OSError naming
    the command when no PATH entry (or the path itself) is an executable file. (Not
    `shutil.which`: it cannot tell a missing command from one that is not executable, and
    it reads a relative path from the daemon's directory, not the child's.)"""
    command = launch.argv[0]
    if "/" in command:
        candidates = [os.path.join(launch.cwd, command)]
    else:
        path = launch.env.get("PATH", os.defpath)
        candidates = [os.path.join(entry or launch.cwd, command) for entry in path.split(":")]
    found = errno.ENOENT
    for candidate in candidates:
        try:
            mode = os.stat(candidate).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and os.access(candidate, os.X_OK):
            return
        found = errno.EACCES
    raise OSError(found, os.strerror(found), command)


def launch_error(launch: Launch, exc: OSError) -> AgentError:
    command = launch.argv[0]
    if exc.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE):
        return Unavailable(f"cannot start {command!r} now: {exc.strerror}")
    if exc.filename is not None and os.fsdecode(exc.filename) == launch.cwd:
        return _bad("cwd", f"cannot enter {launch.cwd}: {exc.strerror}")
    if isinstance(exc, FileNotFoundError):
        hint = ""
        if " " in command:
            hint = " (commands run without a shell: use command 'sh' with args ['-c', ...])"
        return _bad("command", f"no such command: {command!r}{hint}", "command_not_found")
    if isinstance(exc, PermissionError):
        return _bad("command", f"not executable by {launch.identity.name}: {command!r}")
    return _bad("command", f"cannot run {command!r}: {exc.strerror or exc}")
