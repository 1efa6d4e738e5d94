"""Who a process runs as, its environment, pre-fork checks, and launch failures as 400s."""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent.errors import BadRequest, Forbidden, Unavailable
from agent.processes import credentials
from agent.processes.launch import (
    DEFAULT_PATH,
    Command,
    Launch,
    build_env,
    resolve,
    resolve_identity,
    start,
)

ROOT = pwd.getpwuid(0)


def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def test_root_daemon_identities() -> None:
    assert resolve_identity(None, False, None, euid=0).switch is False
    assert resolve_identity(None, True, None, euid=0).uid == 0
    ident = resolve_identity("nobody", False, None, euid=0)
    assert (ident.name, ident.uid, ident.switch) == ("nobody", nobody().pw_uid, True)
    assert nobody().pw_gid in ident.groups
    # The default user applies when nothing is asked; as_root and as_user override it.
    assert resolve_identity(None, False, "nobody", euid=0).uid == nobody().pw_uid
    assert resolve_identity(None, True, "nobody", euid=0).uid == 0
    assert resolve_identity("root", False, "nobody", euid=0).uid == 0


def test_identity_errors() -> None:
    with pytest.raises(BadRequest) as info:
        resolve_identity("no-such-user-xyz", False, None, euid=0)
    assert info.value.details and info.value.details[0]["field"] == "as_user"
    with pytest.raises(BadRequest):
        resolve_identity("nobody", True, None, euid=0)
    with pytest.raises(BadRequest):
        resolve_identity("", False, None, euid=0)
    with pytest.raises(Unavailable):
        resolve_identity(None, False, "no-such-user-xyz", euid=0)


def test_unprivileged_daemon_runs_only_as_itself() -> None:
    me = nobody()
    own = resolve_identity(None, False, "root", euid=me.pw_uid)  # default user ignored
    assert (own.uid, own.switch) == (me.pw_uid, False)
    assert resolve_identity("nobody", False, None, euid=me.pw_uid).switch is False
    with pytest.raises(Forbidden):
        resolve_identity(None, True, None, euid=me.pw_uid)
    with pytest.raises(Forbidden):
        resolve_identity("root", False, None, euid=me.pw_uid)
    with pytest.raises(BadRequest):  # unknown is a 400 before the 403
        resolve_identity("no-such-user-xyz", False, None, euid=me.pw_uid)


def test_environment() -> None:
    ident = resolve_identity(None, False, None, euid=0)
    env = build_env(ident, ":7", {"EXTRA": "1", "HOME": "/elsewhere"}, tty=False)
    assert env["PATH"] == DEFAULT_PATH and env["DISPLAY"] == ":7"
    assert env["USER"] == env["LOGNAME"] == ident.name
    assert env["HOME"] == "/elsewhere" and env["EXTRA"] == "1"
    assert "TERM" not in env
    assert build_env(ident, ":7", {}, tty=True)["TERM"] == "xterm-256color"
    assert set(env) == {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "DISPLAY", "EXTRA"}
    for bad in ({"A=B": "x"}, {"": "x"}, {"A": "x\0y"}):
        with pytest.raises(BadRequest):
            build_env(ident, ":7", bad, tty=False)


def test_resolve_checks_before_fork(tmp_path: Path) -> None:
    def run(**fields: object) -> None:
        resolve(Command(**fields), display=":0", default_user=None, tty=False)  # type: ignore[arg-type]

    for fields, field in (
        ({"command": ""}, "command"),
        ({"command": "a\0b"}, "command"),
        ({"command": "echo", "args": ["ok", "b\0"]}, "args.1"),
        ({"command": "true", "cwd": str(tmp_path / "nope")}, "cwd"),
        ({"command": "true", "cwd": "rel"}, "cwd"),
        ({"command": "true", "timeout_s": 0}, "timeout_sec"),
    ):
        with pytest.raises(BadRequest) as info:
            run(**fields)
        assert info.value.details and info.value.details[0]["field"] == field
    launch = resolve(Command("ls", ["-l"], cwd=str(tmp_path)), display=":0",
                     default_user=None, tty=False)
    assert launch.argv == ["ls", "-l"] and launch.cwd == str(tmp_path)


def _launch(command: str, cwd: str = "/") -> Launch:
    return resolve(Command(command, cwd=cwd), display=":0", default_user=None, tty=False)


@pytest.mark.parametrize("tty", [False, True])  # a terminal's child: setsid --ctty
def test_start_failures_name_the_field(tmp_path: Path, tty: bool) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    cases = (
        ("no-such-command-xyz", "command_not_found"),
        (str(tmp_path / "missing"), "command_not_found"),
        (str(script), "bad_request"),
        (str(tmp_path), "bad_request"),
    )
    for command, code in cases:
        launch = _launch(command)
        with pytest.raises(BadRequest) as info:
            start(launch, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL, tty=tty)
        assert info.value.code == code, command
        assert info.value.details and info.value.details[0]["field"] == "command"


def test_start_runs_in_a_new_session() -> None:
    launch = _launch("sleep")
    launch.argv.append("5")
    popen = start(launch, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
    try:
        assert os.getsid(popen.pid) == popen.pid
        assert os.getpgid(popen.pid) == popen.pid
    finally:
        popen.kill()
        popen.wait()


def _as_nobody(command: str, *args: str, cwd: str = "/") -> Launch:
    return resolve(Command(command, list(args), cwd=cwd, as_user="nobody"), display=":0",
                   default_user=None, tty=False)


def _run(launch: Launch) -> str:
    read_end, write_end = os.pipe()
    try:
        popen = start(launch, subprocess.DEVNULL, write_end, write_end)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as output:
        text = output.read().decode()
    assert popen.wait(10) == 0, text
    return text


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_start_switches_user_groups_and_session() -> None:
    """As root, another user's process gets that user's uid, gid and groups (none beyond
    its own here), leads a new session, and the command keeps its argv."""
    text = _run(_as_nobody("sh", "-c", 'echo $(id -u) $(id -g) "$(id -G)"; '
                                       'ps -o sid=,pgid= -p $$; echo "$0"'))
    ids, session, name = text.splitlines()
    assert ids == "65534 65534 65534"
    sid, pgid = session.split()
    assert sid == pgid  # its own session and group
    assert name == "sh"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_where_the_system_calls_are_unknown_subprocess_switches_user(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback (a fork) gives the same child: the user's ids and groups, no root."""
    monkeypatch.setattr(credentials, "SUPPORTED", False)
    script = "echo $(id -u) $(id -g) \"$(id -G)\"; grep CapPrm /proc/self/status"
    ids, caps = _run(_as_nobody("sh", "-c", script)).splitlines()
    assert ids == "65534 65534 65534"
    assert int(caps.split()[1], 16) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
@pytest.mark.parametrize("tty", [False, True])
def test_launch_failures_as_another_user_name_the_field(tty: bool) -> None:
    with tempfile.TemporaryDirectory() as scratch:  # pytest's own tmp is root-only
        os.chmod(scratch, 0o755)
        check_failures_as_nobody(Path(scratch), tty)


def check_failures_as_nobody(tmp_path: Path, tty: bool) -> None:
    private = tmp_path / "root-only"
    private.write_text("#!/bin/sh\necho hi\n")
    private.chmod(0o700)
    for command, code in (("no-such-command-xyz", "command_not_found"),
                          (str(tmp_path / "missing"), "command_not_found"),
                          (str(private), "bad_request"),
                          (str(tmp_path), "bad_request")):
        with pytest.raises(BadRequest) as info:
            start(_as_nobody(command), subprocess.DEVNULL, subprocess.DEVNULL,
                  subprocess.DEVNULL, tty=tty)
        assert info.value.code == code, command
        assert info.value.details and info.value.details[0]["field"] == "command"
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)  # root's: the user cannot enter it
    with pytest.raises(BadRequest) as info:
        start(_as_nobody("true", cwd=str(closed)), subprocess.DEVNULL, subprocess.DEVNULL,
              subprocess.DEVNULL, tty=tty)
    assert info.value.details and info.value.details[0]["field"] == "cwd"
    private.chmod(0o755)
    for launch in (_as_nobody(str(private)), _as_nobody("./root-only", cwd=str(tmp_path))):
        output = _on_terminal(launch)[0] if tty else _run(launch)
        assert output.strip() == "hi"


def _on_terminal(launch: Launch) -> tuple[str, int]:
    """Run on a new PTY as its controlling terminal: what it wrote there, and its pid."""
    from agent.processes import pty

    master, slave = pty.open_pty(24, 80, launch.identity.uid if launch.identity.switch else None)
    try:
        popen = start(launch, slave, slave, slave, tty=True)
        os.close(slave)
        slave = -1
        output = b""
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every slave end is closed
                break
            if not data:
                break
            output += data
        assert popen.wait(10) == 0, output
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return output.decode(), popen.pid


def test_a_terminal_becomes_the_controlling_terminal() -> None:
    launch = _launch("sh")
    launch.argv.extend(["-c", "tty; ps -o sid=,tty= -p $$; echo $$"])
    output, child = _on_terminal(launch)
    terminal, session, pid = output.split("\r\n")[:3]
    assert terminal.startswith("/dev/pts/")
    sid, tty_name = session.split()
    assert sid == pid == str(child)  # session leader: setsid did not fork
    assert terminal.endswith(tty_name.removeprefix("pts/"))
