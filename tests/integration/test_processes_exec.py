"""POST /process/exec with real processes: exit codes, streams, cwd/env, timeouts that
kill whole trees, the output cap, users and scopes, and bad input."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from typing import Any

import pytest
from common import READ, WRITE, MakeClient
from helpers import async_wait_until
from process_helpers import TEST_USER, ensure_user, exec_ok, pid_alive, spawn

from agent.config import ConfigError


def out(result: dict[str, Any], stream: str = "stdout") -> bytes:
    return base64.b64decode(result[f"{stream}_b64"])


async def test_exit_code_and_separate_streams(make_client: MakeClient) -> None:
    client = await make_client()
    result = await exec_ok(client, command="sh",
                           args=["-c", "echo to-out; echo to-err >&2; exit 7"])
    assert result["exit_code"] == 7
    assert out(result) == b"to-out\n"
    assert out(result, "stderr") == b"to-err\n"
    assert result["timed_out"] is False
    assert result["stdout_truncated"] is False and result["stderr_truncated"] is False
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0

    assert (await exec_ok(client, command="true"))["exit_code"] == 0
    assert (await exec_ok(client, command="false"))["exit_code"] == 1


async def test_args_are_not_shell_words(make_client: MakeClient) -> None:
    client = await make_client()
    result = await exec_ok(client, command="printf", args=["%s|", "a b", "$HOME", "*"])
    assert out(result) == b"a b|$HOME|*|"

    resp = await client.post("/process/exec", json={"command": "echo hi"})
    body = await resp.json()
    assert resp.status == 400
    assert body["code"] == "command_not_found"
    assert body["details"][0]["field"] == "command"
    assert "without a shell" in body["message"]


async def test_cwd_and_env(make_client: MakeClient, tmp_path: Any,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SECRET_PROBE", "must-not-leak")
    client = await make_client(display=":42")
    result = await exec_ok(client, command="sh", args=["-c", "pwd; env"], cwd=str(tmp_path),
                           env={"GREETING": "hello world", "PATH": "/usr/bin:/bin"})
    lines = out(result).decode().splitlines()
    assert lines[0] == str(tmp_path)
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert env["GREETING"] == "hello world"
    assert env["PATH"] == "/usr/bin:/bin"  # the request's env wins over the default
    assert env["DISPLAY"] == ":42"
    assert env["HOME"] and env["USER"] and env["LANG"] == "C.UTF-8"
    assert "AGENT_SECRET_PROBE" not in env  # never the daemon's own environment
    assert "TERM" not in env  # no terminal, no TERM


async def test_default_cwd_is_home(make_client: MakeClient) -> None:
    client = await make_client()
    result = await exec_ok(client, command="sh", args=["-c", 'pwd; echo "$HOME"'])
    cwd, home = out(result).decode().split()
    home_exists = await asyncio.to_thread(os.path.isdir, home)
    assert cwd == (home if home_exists else "/")


async def test_bad_cwd_is_400(make_client: MakeClient, tmp_path: Any) -> None:
    client = await make_client()
    for cwd in (str(tmp_path / "missing"), "relative/dir"):
        resp = await client.post("/process/exec", json={"command": "true", "cwd": cwd})
        body = await resp.json()
        assert resp.status == 400, body
        assert body["details"][0]["field"] == "cwd"


async def test_timeout_kills_grandchildren(make_client: MakeClient, tmp_path: Any) -> None:
    client = await make_client(kill_grace_s=1.0)
    pidfile = tmp_path / "grandchild"
    started = time.monotonic()
    result = await exec_ok(client, command="sh", timeout_sec=1, args=[
        "-c", f"sleep 300 & echo $! > {pidfile}; echo started; echo oops >&2; sleep 300",
    ])
    elapsed = time.monotonic() - started
    assert result["timed_out"] is True
    assert result["exit_code"] == 128 + 15  # TERM
    assert out(result) == b"started\n"
    assert out(result, "stderr") == b"oops\n"
    assert 0.9 <= elapsed < 5
    grandchild = int(pidfile.read_text())
    await async_wait_until(lambda: not pid_alive(grandchild), timeout=5,
                           what="the grandchild to be gone")


async def test_timeout_escalates_to_kill(make_client: MakeClient, tmp_path: Any) -> None:
    """A tree that ignores TERM gets KILL after the grace period."""
    client = await make_client(kill_grace_s=0.5)
    pidfile = tmp_path / "stubborn"
    result = await exec_ok(client, command="sh", timeout_sec=1, args=[
        "-c", f"trap '' TERM; sleep 300 & echo $! > {pidfile}; sleep 300",
    ])
    assert result["timed_out"] is True
    assert result["exit_code"] == 128 + 9  # KILL
    grandchild = int(pidfile.read_text())
    await async_wait_until(lambda: not pid_alive(grandchild), timeout=5,
                           what="the TERM-ignoring grandchild to be killed")


async def test_output_cap(make_client: MakeClient) -> None:
    client = await make_client(exec_output_cap=1000)
    result = await exec_ok(client, command="sh",
                           args=["-c", "head -c 50000000 /dev/zero; echo small >&2"])
    assert result["exit_code"] == 0
    assert out(result) == b"\0" * 1000
    assert result["stdout_truncated"] is True
    assert out(result, "stderr") == b"small\n"
    assert result["stderr_truncated"] is False


async def test_background_child_holding_the_pipe(make_client: MakeClient,
                                                 tmp_path: Any) -> None:
    """A leader that exits while a background child keeps stdout open still answers."""
    client = await make_client()
    pidfile = tmp_path / "bg"
    started = time.monotonic()
    result = await exec_ok(client, command="sh",
                           args=["-c", f"sleep 30 & echo $! > {pidfile}; echo done"])
    assert time.monotonic() - started < 10
    assert result["exit_code"] == 0
    assert out(result) == b"done\n"
    os.kill(int(pidfile.read_text()), 9)


async def test_scopes(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/process/exec", json={"command": "true"}, headers=READ)
    assert resp.status == 403
    resp = await client.post("/process/exec", json={"command": "true"}, headers=WRITE)
    assert resp.status == 200
    for extra in ({"as_root": True}, {"as_user": "root"}):
        resp = await client.post("/process/exec", json={"command": "true", **extra},
                                 headers=WRITE)
        body = await resp.json()
        assert resp.status == 403, body
        assert "admin" in body["message"]
    # as_root false and as_user null ask for nothing special
    resp = await client.post("/process/exec", json={"command": "true", "as_root": False,
                                                    "as_user": None}, headers=WRITE)
    assert resp.status == 200


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_as_user_and_as_root(make_client: MakeClient) -> None:
    user = ensure_user()
    client = await make_client()
    result = await exec_ok(client, command="sh", as_user=TEST_USER,
                           args=["-c", 'id -un; id -u; echo "$HOME"; echo "$USER"; pwd'])
    name, uid, home, env_user, cwd = out(result).decode().split()
    assert (name, int(uid), home, env_user) == (TEST_USER, user.pw_uid, user.pw_dir, TEST_USER)
    assert cwd == user.pw_dir
    result = await exec_ok(client, command="id", args=["-u"], as_root=True)
    assert out(result) == b"0\n"

    # The user really lacks root's rights.
    result = await exec_ok(client, command="cat", args=["/etc/shadow"], as_user=TEST_USER)
    assert result["exit_code"] != 0
    assert b"Permission denied" in out(result, "stderr")

    resp = await client.post("/process/exec", json={"command": "true",
                                                    "as_user": "no-such-user-xyz"})
    body = await resp.json()
    assert resp.status == 400
    assert body["details"][0]["field"] == "as_user"

    resp = await client.post("/process/exec", json={"command": "true", "as_user": TEST_USER,
                                                    "as_root": True})
    assert resp.status == 400


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_default_user(make_client: MakeClient) -> None:
    ensure_user()
    client = await make_client(default_user=TEST_USER)
    assert out(await exec_ok(client, command="id", args=["-un"])) == f"{TEST_USER}\n".encode()
    assert out(await exec_ok(client, command="id", args=["-u"], as_root=True)) == b"0\n"
    # A missing configured user is refused when the daemon starts (as root).
    if os.geteuid() == 0:
        with pytest.raises(ConfigError, match="no such user"):
            await make_client(default_user="no-such-user-xyz")


async def test_garbage_is_json_400(make_client: MakeClient) -> None:
    client = await make_client()
    bad_bodies: list[Any] = [
        {}, {"command": 5}, {"command": "true", "args": "x"}, {"command": "true", "args": [1]},
        {"command": "true", "env": {"A": 1}}, {"command": "true", "bogus": 1},
        {"command": "true", "timeout_sec": "soon"}, {"command": "true", "timeout_sec": 0},
        {"command": ""}, {"command": "tr\0ue"}, {"command": "echo", "args": ["a\0b"]},
        {"command": "true", "env": {"A=B": "x"}}, {"command": "true", "env": {"": "x"}},
        {"command": "true", "as_root": "yes"}, [], "true", None,
    ]
    for body in bad_bodies:
        resp = await client.post("/process/exec", json=body)
        payload = await resp.json()
        assert resp.status == 400, (body, payload)
        assert payload["code"] and payload["message"]
    for raw in (b"{", b"", b"\xff\xfe"):
        resp = await client.post("/process/exec", data=raw,
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert (await resp.json())["code"]
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        resp = await client.post("/process/exec", data=b'{"command": "true"}',
                                 headers={"Content-Type": content_type})
        assert resp.status == 415
        assert (await resp.json())["code"] == "unsupported_media_type"
    resp = await client.post("/process/exec", json={"command": "/etc/passwd"})
    body = await resp.json()
    assert resp.status == 400 and body["details"][0]["field"] == "command"


async def test_live_process_cap(make_client: MakeClient) -> None:
    client = await make_client(max_processes=2)
    first = await spawn(client, command="sleep", args=["300"])
    await spawn(client, command="sleep", args=["300"])
    for path, body in (("/process/spawn", {"command": "true"}),
                       ("/process/exec", {"command": "true"})):
        resp = await client.post(path, json=body)
        payload = await resp.json()
        assert resp.status == 429, payload
        assert payload["code"] == "too_many_processes"
        assert resp.headers["Retry-After"] == "1"
    resp = await client.post(f"/process/{first}/kill", json={"signal": "KILL"})
    assert resp.status == 200

    async def admitted() -> bool:
        resp = await client.post("/process/exec", json={"command": "true"})
        return resp.status == 200

    await async_wait_until(admitted, timeout=10, what="a slot after the kill")


async def test_unknown_process_ids(make_client: MakeClient) -> None:
    client = await make_client()
    unknown = str(uuid.uuid4())
    calls = [
        ("GET", f"/process/{unknown}/status", None),
        ("GET", f"/process/{unknown}/stdout/stream", None),
        ("GET", f"/process/{unknown}/attach", None),
        ("POST", f"/process/{unknown}/stdin", {"data_b64": ""}),
        ("POST", f"/process/{unknown}/kill", {"signal": "TERM"}),
        ("POST", f"/process/{unknown}/resize", {"rows": 10, "cols": 10}),
    ]
    for method, path, body in calls:
        resp = await client.request(method, path, json=body)
        assert resp.status == 404, (path, await resp.text())
        assert (await resp.json())["code"] == "not_found"
        bad = path.replace(unknown, "not-a-uuid")
        resp = await client.request(method, bad, json=body)
        assert resp.status == 400, (bad, await resp.text())
        alias = f"/browsers/anything{path}"
        resp = await client.request(method, alias, json=body)
        assert resp.status == 404, alias
