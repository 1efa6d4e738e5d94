"""Processes on a real PTY: tty, size, resize with SIGWINCH, job control in an
interactive shell driven through stdin, EOF, users, and the WebSocket attach."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import aiohttp
import psutil
import pytest
from common import ADMIN, READ, READ_TOKEN, MakeClient
from helpers import async_wait_until
from process_helpers import (
    SSE,
    TEST_USER,
    ensure_user,
    open_stream,
    read_all,
    spawn,
    status,
    wait_exited,
    write_stdin,
)

SHELL = {"command": "bash", "args": ["--norc", "--noprofile", "-i"], "allocate_tty": True,
         "env": {"PS1": "$ "}}


async def test_real_terminal(make_client: MakeClient) -> None:
    client = await make_client()
    script = ("tty; stty size; echo TERM=$TERM; "
              "python3 -c 'import sys; print(sys.stdin.isatty(), sys.stdout.isatty(), "
              "sys.stderr.isatty())'; echo to-stderr >&2")
    process_id = await spawn(client, command="sh", args=["-c", script], allocate_tty=True,
                             rows=33, cols=101)
    sse = await read_all(client, process_id)
    text = sse.output().decode()
    assert re.search(r"^/dev/pts/\d+\r$", text, re.M), text
    assert "33 101\r\n" in text
    assert "TERM=xterm-256color\r\n" in text
    assert "True True True\r\n" in text
    assert "to-stderr\r\n" in text  # a terminal has one output: it streams as stdout
    assert sse.output("stderr") == b""
    assert sse.exit_code() == 0


async def test_default_size(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="stty", args=["size"], allocate_tty=True)
    assert (await read_all(client, process_id)).output() == b"24 80\r\n"


async def test_resize_sends_sigwinch(make_client: MakeClient) -> None:
    client = await make_client()
    script = ("import os, signal\n"
              "def winch(*_):\n"
              "    size = os.get_terminal_size(0)\n"
              "    os.write(1, f'winch {size.lines} {size.columns}\\n'.encode())\n"
              "signal.signal(signal.SIGWINCH, winch)\n"
              "os.write(1, b'ready\\n')\n"
              "while True: signal.pause()\n")
    process_id = await spawn(client, command="python3", args=["-c", script],
                             allocate_tty=True, rows=20, cols=60)
    sse = await open_stream(client, process_id)
    await sse.until("ready")
    resp = await client.post(f"/process/{process_id}/resize", json={"rows": 50, "cols": 132})
    assert resp.status == 200 and await resp.json() == {"ok": True}
    await sse.until("winch 50 132")
    await client.post(f"/process/{process_id}/kill", json={"signal": "KILL"})
    await sse.rest()
    resp = await client.post(f"/process/{process_id}/resize", json={"rows": 5, "cols": 5})
    assert resp.status == 409 and (await resp.json())["code"] == "process_exited"


def _child_named(pid: int, name: str) -> psutil.Process | None:
    """A live child of `pid` running `name`."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if child.name() == name and child.status() != psutil.STATUS_ZOMBIE:
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _shell(client: Any) -> tuple[str, int, SSE]:
    """An interactive shell on a terminal, at its first prompt: (id, pid, its output)."""
    resp = await client.post("/process/spawn", json=SHELL)
    body = await resp.json()
    sse = await open_stream(client, body["process_id"])
    await sse.until("$ ")
    return body["process_id"], body["pid"], sse


async def test_interactive_shell_with_job_control(make_client: MakeClient) -> None:
    client = await make_client()
    process_id, shell_pid, sse = await _shell(client)

    await write_stdin(client, process_id, "echo $((6 * 7))-answer\n")
    await sse.until("42-answer")

    # ^Z stops the foreground job: only possible with a controlling terminal.
    await write_stdin(client, process_id, "sleep 300\n")
    sleeper = await async_wait_until(lambda: _child_named(shell_pid, "sleep"),
                                     what="sleep to run in the foreground")
    await write_stdin(client, process_id, "\x1a")
    await sse.until("Stopped")
    assert sleeper.status() == psutil.STATUS_STOPPED
    await write_stdin(client, process_id, "jobs; echo listed-$((1 + 1))\n")
    text = (await sse.until("listed-2\r\n")).decode()
    listing = text[text.rindex("jobs; echo listed-"):]
    assert re.search(r"\[1\]\+\s+Stopped\s+sleep 300", listing), listing
    await write_stdin(client, process_id, "kill -9 %1; echo killed-$((2 + 1))\n")
    await sse.until("killed-3\r\n")
    await async_wait_until(lambda: not _alive(sleeper), what="the stopped job to be killed")

    # ^C interrupts the foreground job, and the shell lives on.
    await write_stdin(client, process_id, "sleep 301\n")
    await async_wait_until(lambda: _child_named(shell_pid, "sleep"),
                           what="the second sleep to run")
    await write_stdin(client, process_id, "\x03")
    await async_wait_until(lambda: _child_named(shell_pid, "sleep") is None,
                           what="^C to end the sleep")
    await write_stdin(client, process_id, "echo alive-$((3 + 1))\n")
    await sse.until("alive-4")
    assert (await status(client, process_id))["state"] == "running"

    await write_stdin(client, process_id, "exit 3\n")
    await sse.rest()
    assert sse.exit_code() == 3


async def test_kill_int_reaches_the_foreground_job(make_client: MakeClient) -> None:
    client = await make_client()
    process_id, shell_pid, _ = await _shell(client)
    await write_stdin(client, process_id, "sleep 302\n")
    await async_wait_until(lambda: _child_named(shell_pid, "sleep"), what="sleep to start")
    resp = await client.post(f"/process/{process_id}/kill", json={"signal": "INT"})
    assert resp.status == 200
    await async_wait_until(lambda: _child_named(shell_pid, "sleep") is None,
                           what="INT to end the foreground sleep")
    assert (await status(client, process_id))["state"] == "running"
    resp = await client.post(f"/process/{process_id}/kill", json={"signal": "HUP"})
    assert resp.status == 200
    state = await wait_exited(client, process_id)
    assert state["exit_code"] == 128 + 1


async def test_eof_on_a_terminal(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="cat", allocate_tty=True)
    sse = await open_stream(client, process_id)
    await write_stdin(client, process_id, "abc\n")
    await sse.until("abc\r\nabc\r\n")  # the echo, then cat's copy
    await write_stdin(client, process_id, "", eof=True)
    await sse.rest()
    assert sse.exit_code() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_terminal_belongs_to_the_user(make_client: MakeClient) -> None:
    ensure_user()
    client = await make_client()
    process_id = await spawn(client, command="sh", args=["-c", "id -un; stat -c %U $(tty)"],
                             allocate_tty=True, as_user=TEST_USER)
    sse = await read_all(client, process_id)
    assert sse.output() == f"{TEST_USER}\r\n{TEST_USER}\r\n".encode()


# --- WebSocket attach -----------------------------------------------------------------


async def _receive_until(ws: Any, wanted: bytes, seen: bytearray,
                         controls: list[dict[str, Any]]) -> None:
    while wanted not in seen:
        try:
            msg = await ws.receive(timeout=5)
        except TimeoutError:
            raise AssertionError(f"{wanted!r} never came; got {bytes(seen)!r}") from None
        if msg.type == aiohttp.WSMsgType.BINARY:
            seen += msg.data
        elif msg.type == aiohttp.WSMsgType.TEXT:
            controls.append(json.loads(msg.data))
        else:
            raise AssertionError(f"{wanted!r} never came; got {bytes(seen)!r}, {msg}")


async def test_websocket_attach(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, **SHELL)
    seen = bytearray()
    controls: list[dict[str, Any]] = []
    async with client.ws_connect(f"/process/{process_id}/attach", headers=ADMIN) as ws:
        await _receive_until(ws, b"$ ", seen, controls)
        await ws.send_bytes(b"echo ws-$((20 + 22))\n")
        await _receive_until(ws, b"ws-42", seen, controls)

        await ws.send_str(json.dumps({"type": "resize", "rows": 40, "cols": 120}))
        await ws.send_bytes(b"stty size\n")
        await _receive_until(ws, b"40 120", seen, controls)

        await ws.send_str(json.dumps({"type": "nonsense"}))
        await ws.send_str("not json")
        await ws.send_str(json.dumps({"type": "resize", "rows": 0, "cols": 5}))
        await ws.send_bytes(b"echo after-errors\n")
        await _receive_until(ws, b"after-errors", seen, controls)
        errors = [c for c in controls if c["type"] == "error"]
        assert len(errors) == 3 and all(e["code"] == "bad_request" for e in errors)

        await ws.send_bytes(b"exit 5\n")
        messages = []
        async for msg in ws:
            messages.append(msg)
        texts = [json.loads(m.data) for m in messages if m.type == aiohttp.WSMsgType.TEXT]
        assert texts[-1] == {"type": "exit", "exit_code": 5}
        assert ws.close_code == 1000
    assert (await status(client, process_id))["exit_code"] == 5


async def test_websocket_attach_takes_the_token_in_the_query(make_client: MakeClient) -> None:
    """Browsers cannot set headers on a WebSocket: `?token=` stands in, there only."""
    client = await make_client()
    process_id = await spawn(client, command="sh", args=["-c", "echo hi-from-query"])
    no_auth = {"Authorization": ""}
    async with client.ws_connect(f"/process/{process_id}/attach?token=test-write-token-0123456789",
                                 headers=no_auth) as ws:
        seen = bytearray()
        await _receive_until(ws, b"hi-from-query", seen, [])
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/process/{process_id}/attach?token=wrong", headers=no_auth)
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as read_only:
        await client.ws_connect(f"/process/{process_id}/attach?token=test-read-token-0123456789",
                                headers=no_auth)
    assert read_only.value.status == 403
    # a plain request does not take the token from the query
    resp = await client.get(f"/process/{process_id}/status?token={READ_TOKEN}",
                            headers=no_auth)
    assert resp.status == 401


async def test_websocket_attach_late_gets_history_and_exit(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="sh", args=["-c", "echo history; exit 2"])
    await wait_exited(client, process_id)
    async with client.ws_connect(f"/process/{process_id}/attach", headers=ADMIN) as ws:
        messages = [msg async for msg in ws]
    assert b"".join(m.data for m in messages if m.type == aiohttp.WSMsgType.BINARY) == \
        b"history\n"
    assert json.loads(messages[-1].data) == {"type": "exit", "exit_code": 2}


async def test_websocket_eof_and_signal_messages(make_client: MakeClient) -> None:
    client = await make_client()
    cat = await spawn(client, command="cat")
    async with client.ws_connect(f"/process/{cat}/attach", headers=ADMIN) as ws:
        await ws.send_bytes(b"piped\n")
        seen = bytearray()
        await _receive_until(ws, b"piped\n", seen, [])
        await ws.send_str(json.dumps({"type": "eof"}))
        texts = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
    assert texts == [{"type": "exit", "exit_code": 0}]

    sleeper = await spawn(client, command="sleep", args=["300"])
    async with client.ws_connect(f"/process/{sleeper}/attach", headers=ADMIN) as ws:
        await ws.send_str(json.dumps({"type": "signal", "signal": "INT"}))
        texts = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
    assert texts == [{"type": "exit", "exit_code": 130}]


async def test_attach_needs_upgrade_and_write_scope(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="sleep", args=["300"])
    resp = await client.get(f"/process/{process_id}/attach")
    body = await resp.json()
    assert resp.status == 400 and body["code"] == "websocket_required"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"/process/{process_id}/attach", headers=READ)
    assert info.value.status == 403
    await client.post(f"/process/{process_id}/kill", json={"signal": "KILL"})


async def test_integral_floats_are_integers(make_client: MakeClient) -> None:
    """JSON Schema counts 30.0 as an integer; the daemon must too (not fail on it)."""
    client = await make_client()
    process_id = await spawn(client, command="sh", args=["-c", "read x; stty size"],
                             allocate_tty=True, rows=30.0, cols=90.0)
    resp = await client.post(f"/process/{process_id}/resize", json={"rows": 31.0, "cols": 91.0})
    assert resp.status == 200
    await write_stdin(client, process_id, "\n")
    assert (await read_all(client, process_id)).output().endswith(b"31 91\r\n")


async def test_websocket_attach_reports_dropped_output_as_a_gap(
        make_client: MakeClient) -> None:
    """Output beyond the spool's cap is gone before the attach: the first message says how
    much was missed, then the output still held follows, then the exit."""
    client = await make_client(process_output_bytes=1 << 20)
    total = 8 * 1000 * 1000
    process_id = await spawn(client, command="sh",
                             args=["-c", f"head -c {total} /dev/zero; printf END"])
    assert (await wait_exited(client, process_id, timeout=30))["exit_code"] == 0
    received = bytearray()
    texts: list[dict[str, Any]] = []
    async with client.ws_connect(f"/process/{process_id}/attach", headers=ADMIN) as ws:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                received += msg.data
            elif msg.type == aiohttp.WSMsgType.TEXT:
                texts.append(json.loads(msg.data))
                if not received:
                    assert texts[0]["type"] == "gap", "the gap comes before any output"
    assert [t["type"] for t in texts] == ["gap", "exit"]
    gap = texts[0]
    assert gap["missed_events"] > 0
    assert gap["missed_bytes"] + len(received) == total + 3
    assert received.endswith(b"END") and len(received) <= 1 << 20
