"""POST /process/spawn and what follows: streamed output (many readers, Last-Event-ID,
gaps beyond the cap), stdin and EOF, signals, status, timeouts, retention."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from common import READ, MakeClient
from helpers import async_wait_until
from process_helpers import (
    b64,
    open_stream,
    pid_alive,
    read_all,
    spawn,
    status,
    wait_exited,
    write_stdin,
)


async def test_stream_output_and_exit(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/process/spawn", json={
        "command": "sh", "args": ["-c", "echo one; echo two >&2; echo three; exit 4"]})
    body = await resp.json()
    assert resp.status == 200
    assert set(body) == {"process_id", "pid", "started_at"}
    uuid.UUID(body["process_id"])
    assert body["pid"] > 1 and body["started_at"].endswith("Z")

    sse = await read_all(client, body["process_id"], headers=READ)
    assert sse.output("stdout") == b"one\nthree\n"
    assert sse.output("stderr") == b"two\n"
    assert sse.exit_code() == 4
    assert sse.events[-1].data == {"event": "exit", "exit_code": 4}
    ids = [e.id for e in sse.events if e.id is not None]
    assert len(ids) == len(sse.events)
    assert ids == sorted(set(ids))
    assert sse.resp.headers["X-SSE-Content-Type"] == "application/json"

    state = await status(client, body["process_id"])
    assert state == {"state": "exited", "exit_code": 4, "cpu_pct": 0.0, "mem_bytes": 0}


async def test_several_readers_each_get_everything(make_client: MakeClient) -> None:
    client = await make_client()
    script = "for i in $(seq 1 3000); do echo line $i; done; sleep 0.2; echo late"
    process_id = await spawn(client, command="sh", args=["-c", script])
    expected = "".join(f"line {i}\n" for i in range(1, 3001)).encode() + b"late\n"
    readers = [await open_stream(client, process_id) for _ in range(4)]
    await asyncio.gather(*(r.rest() for r in readers))
    late = await read_all(client, process_id)  # after the exit: replay from the buffer
    for reader in [*readers, late]:
        assert reader.output() == expected
        assert reader.exit_code() == 0


async def test_last_event_id_resumes_without_gaps(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="sh", args=[
        "-c", "for i in $(seq 1 50); do echo chunk $i; sleep 0.01; done"])
    first = await open_stream(client, process_id)
    for _ in range(5):
        assert await first.next() is not None
    first.close()
    last_id = first.events[-1].id
    assert last_id is not None

    rest = await read_all(client, process_id, headers={"Last-Event-ID": str(last_id)})
    assert rest.events[0].id == last_id + 1
    assert first.output() + rest.output() == b"".join(
        f"chunk {i}\n".encode() for i in range(1, 51))
    assert rest.exit_code() == 0

    by_query = await read_all(client, process_id, query=f"?last_event_id={last_id}")
    assert by_query.output() == rest.output()

    for bad in ("abc", "-1", "999999"):
        resp = await client.get(f"/process/{process_id}/stdout/stream",
                                headers={"Last-Event-ID": bad})
        assert resp.status == 400, bad
        assert (await resp.json())["code"] == "bad_request"


def du(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


async def test_no_reader_never_blocks_and_a_late_reader_gets_every_byte(
        make_client: MakeClient, tmp_path: Path) -> None:
    """100 MB with nobody reading: the process finishes, the daemon's memory stays bounded
    (the output is in the spool on disk), and a late reader gets all of it."""
    client = await make_client(process_spool_dir=str(tmp_path))
    me = psutil.Process()
    rss_before = me.memory_info().rss
    total = 100 * 1000 * 1000
    process_id = await spawn(client, command="sh",
                             args=["-c", f"head -c {total} /dev/zero | tr '\\0' x; echo -n END"])
    state = await wait_exited(client, process_id, timeout=60)
    assert state["exit_code"] == 0
    assert me.memory_info().rss - rss_before < 60 * 1000 * 1000
    assert await asyncio.to_thread(du, tmp_path) >= total

    sse = await open_stream(client, process_id)
    size = 0
    tail = b""
    last: dict[str, object] = {}
    while (event := await sse.next()) is not None:
        assert event.data.get("event") != "gap"
        last = event.data
        data = event.bytes
        assert data.strip(b"x") in (b"", b"END"), "only x's, then END"
        size += len(data)
        tail = (tail + data)[-3:]
        sse.events.clear()  # keep the test's own memory small
    assert size == total + 3 and tail == b"END"
    assert last == {"event": "exit", "exit_code": 0}


async def test_output_beyond_the_cap_is_an_explicit_gap(make_client: MakeClient) -> None:
    client = await make_client(process_output_bytes=1 << 20)
    total = 20 * 1000 * 1000
    process_id = await spawn(client, command="sh",
                             args=["-c", f"head -c {total} /dev/zero; echo -n END"])
    assert (await wait_exited(client, process_id, timeout=60))["exit_code"] == 0
    sse = await read_all(client, process_id)
    gaps = [e for e in sse.events if e.data.get("event") == "gap"]
    assert len(gaps) == 1 and sse.events[0] is gaps[0]
    assert gaps[0].id is None and gaps[0].data["missed_events"] > 0
    received = sse.output()
    assert received.endswith(b"END")
    assert gaps[0].data["missed_bytes"] + len(received) == total + 3
    assert len(received) <= 1 << 20
    assert sse.exit_code() == 0


async def test_the_process_never_waits_for_a_slow_reader(make_client: MakeClient) -> None:
    """A reader far slower than the process still gets every byte, and the process runs at
    its own pace: it exits while the reader is still near the start."""
    client = await make_client(process_output_bytes=1 << 30)
    expected = (await asyncio.to_thread(subprocess.run, ["seq", "1", "1500000"],
                                        capture_output=True, check=True)).stdout
    process_id = await spawn(client, command="sh", args=["-c", "read go; exec seq 1 1500000"])
    sse = await open_stream(client, process_id)
    await write_stdin(client, process_id, "go\n")
    digest = hashlib.sha256()
    size = 0
    exited_at: int | None = None
    while (event := await sse.next()) is not None:
        assert event.data.get("event") != "gap"
        digest.update(event.bytes)
        size += len(event.bytes)
        sse.events.clear()
        if exited_at is None and (await status(client, process_id))["state"] == "exited":
            exited_at = size
    assert size == len(expected)
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    # Each event is read with a status request in between: the process cannot be held to
    # that pace, so it has exited long before the reader got to the end.
    assert exited_at is not None and exited_at < len(expected)


async def test_life_does_not_depend_on_the_connection(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="sh", args=["-c", "cat; echo bye"])
    sse = await open_stream(client, process_id)
    await write_stdin(client, process_id, "first\n")
    await sse.until("first\n")
    sse.close()
    await write_stdin(client, process_id, "second\n", eof=True)
    assert (await wait_exited(client, process_id))["exit_code"] == 0
    again = await read_all(client, process_id)
    assert again.output() == b"first\nsecond\nbye\n"


async def test_stdin_and_eof(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="cat")
    sse = await open_stream(client, process_id)
    assert await write_stdin(client, process_id, "hello\n") == 6
    await sse.until("hello\n")
    assert await write_stdin(client, process_id, b"\x00\xffbin") == 5
    await sse.until(b"\x00\xffbin")
    assert await write_stdin(client, process_id, "", eof=True) == 0
    await sse.rest()
    assert sse.exit_code() == 0  # cat saw EOF and ended by itself

    resp = await client.post(f"/process/{process_id}/stdin", json={"data_b64": b64("x")})
    assert resp.status == 409
    assert (await resp.json())["code"] in ("process_exited", "stdin_closed")


async def test_stdin_closed_but_running(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="sh", args=["-c", "cat; sleep 300"])
    await write_stdin(client, process_id, "x", eof=True)
    resp = await client.post(f"/process/{process_id}/stdin", json={"data_b64": b64("y")})
    body = await resp.json()
    assert resp.status == 409 and body["code"] == "stdin_closed"
    await client.post(f"/process/{process_id}/kill", json={"signal": "KILL"})


async def test_stdin_bad_input(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="cat")
    for body in ({"data_b64": "!!!"}, {"data_b64": 5}, {}, {"data_b64": "", "eof": "yes"},
                 {"data_b64": "", "x": 1}):
        resp = await client.post(f"/process/{process_id}/stdin", json=body)
        assert resp.status == 400, body
    resp = await client.post(f"/process/{process_id}/stdin", json={"data_b64": ""},
                             headers=READ)
    assert resp.status == 403
    await write_stdin(client, process_id, "", eof=True)


async def test_every_signal(make_client: MakeClient) -> None:
    client = await make_client()
    numbers = {"TERM": 15, "KILL": 9, "INT": 2, "HUP": 1}
    for name, number in numbers.items():
        process_id = await spawn(client, command="sleep", args=["300"])
        assert (await status(client, process_id))["state"] == "running"
        resp = await client.post(f"/process/{process_id}/kill", json={"signal": name})
        assert resp.status == 200 and await resp.json() == {"ok": True}
        state = await wait_exited(client, process_id)
        assert state["exit_code"] == 128 + number, name
        resp = await client.post(f"/process/{process_id}/kill", json={"signal": name})
        assert resp.status == 409
        assert (await resp.json())["code"] == "process_exited"

    process_id = await spawn(client, command="sleep", args=["300"])
    for body in ({"signal": "STOP"}, {"signal": 9}, {}):
        resp = await client.post(f"/process/{process_id}/kill", json=body)
        assert resp.status == 400, body
    await client.post(f"/process/{process_id}/kill", json={"signal": "KILL"})


@pytest.fixture
def started_ignoring_int_and_quit() -> Iterator[None]:
    """This process as a background job of a script starts: SIGINT and SIGQUIT ignored."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGQUIT)}
    for signum in before:
        signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


async def test_a_daemon_started_ignoring_signals_does_not_pass_that_on(
        started_ignoring_int_and_quit: None, make_client: MakeClient) -> None:
    """"Ignore" survives exec; the daemon swaps it for a handler that does nothing, so its
    children meet INT and QUIT with their default action (^C in a terminal, `kill INT`)."""
    client = await make_client()
    resp = await client.post("/process/spawn", json={"command": "sleep", "args": ["300"]})
    body = await resp.json()
    status_text = await asyncio.to_thread(Path(f"/proc/{body['pid']}/status").read_text)
    found = re.search(r"^SigIgn:\s*([0-9a-f]+)$", status_text, re.M)
    assert found is not None, status_text
    ignored = int(found[1], 16)
    for signum in (signal.SIGINT, signal.SIGQUIT):
        assert not ignored & (1 << (signum - 1)), signal.Signals(signum).name
    resp = await client.post(f"/process/{body['process_id']}/kill", json={"signal": "INT"})
    assert resp.status == 200
    assert (await wait_exited(client, body["process_id"]))["exit_code"] == 128 + 2
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # a handler that ignores


async def test_kill_reaches_the_process_group(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/process/spawn", json={
        "command": "sh", "args": ["-c", "sleep 300 & echo $!; wait"]})
    process_id = (await resp.json())["process_id"]
    sse = await open_stream(client, process_id)
    grandchild = int((await sse.until("\n")).decode())
    assert pid_alive(grandchild)
    await client.post(f"/process/{process_id}/kill", json={"signal": "TERM"})
    await sse.rest()
    await async_wait_until(lambda: not pid_alive(grandchild), timeout=5,
                           what="the background child to get TERM too")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, as psutil reads them."""
    total = 0.0
    leader = psutil.Process(pid)
    for proc in [leader, *leader.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


async def test_status_reports_cpu_and_memory_with_children(make_client: MakeClient) -> None:
    client = await make_client()
    script = ("import time\n"
              "block = bytearray(80 * 1024 * 1024)\n"
              "block[::4096] = b'x' * len(block[::4096])\n"
              "while True: pass\n")
    # The busy, memory-hungry process is a child of the spawned shell.
    resp = await client.post("/process/spawn", json={
        "command": "sh", "args": ["-c", f"python3 -c \"{script}\""]})
    spawned = await resp.json()
    process_id, pid = spawned["process_id"], spawned["pid"]

    async def busy_and_big() -> bool:
        state = await status(client, process_id)
        assert state["state"] == "running" and state["exit_code"] is None
        return bool(state["cpu_pct"] > 0 and state["mem_bytes"] > 80 * 1024 * 1024)

    await async_wait_until(busy_and_big, timeout=20, interval=0.3,
                           what="cpu_pct and mem_bytes to show the busy child")

    # cpu_pct is the tree's CPU time over the time since the previous sample: compare it
    # with the same measured here over (nearly) the same window, whatever share of the
    # CPU a busy machine leaves the child.
    await asyncio.sleep(1.1)  # a window of at least a second (the daemon's too)
    await status(client, process_id)  # the daemon's window starts here
    cpu_then, then = tree_cpu(pid), time.monotonic()
    await asyncio.sleep(1.1)
    cpu_now, now = tree_cpu(pid), time.monotonic()
    reported = (await status(client, process_id))["cpu_pct"]
    measured = (cpu_now - cpu_then) / (now - then) * 100
    assert measured > 1, measured  # the child did run
    assert abs(reported - measured) <= 0.25 * measured + 5, (reported, measured)
    await client.post(f"/process/{process_id}/kill", json={"signal": "KILL"})
    await wait_exited(client, process_id)


async def test_spawn_timeout(make_client: MakeClient) -> None:
    client = await make_client(kill_grace_s=0.5)
    process_id = await spawn(client, command="sleep", args=["300"], timeout_sec=1)
    state = await wait_exited(client, process_id, timeout=10)
    assert state["exit_code"] == 128 + 15


async def test_resize_needs_a_terminal(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="sleep", args=["300"])
    resp = await client.post(f"/process/{process_id}/resize", json={"rows": 10, "cols": 10})
    body = await resp.json()
    assert resp.status == 409 and body["code"] == "not_a_terminal"
    for bad in ({"rows": 0, "cols": 10}, {"rows": 10}, {"rows": 70000, "cols": 1}):
        resp = await client.post(f"/process/{process_id}/resize", json=bad)
        assert resp.status == 400
    await client.post(f"/process/{process_id}/kill", json={"signal": "KILL"})


async def test_retention_then_forgotten(make_client: MakeClient) -> None:
    client = await make_client(process_retention_s=0.5)
    process_id = await spawn(client, command="echo", args=["kept"])
    await wait_exited(client, process_id)
    assert (await read_all(client, process_id)).output() == b"kept\n"

    async def forgotten() -> bool:
        resp = await client.get(f"/process/{process_id}/status")
        assert resp.status in (200, 404)
        return resp.status == 404

    await async_wait_until(forgotten, timeout=10, what="the exited process to expire")
    resp = await client.get(f"/process/{process_id}/stdout/stream")
    assert resp.status == 404


async def test_spawn_errors(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/process/spawn", json={"command": "no-such-command-xyz"})
    body = await resp.json()
    assert resp.status == 400 and body["code"] == "command_not_found"
    for bad in ({"command": "sh", "allocate_tty": True, "rows": 0},
                {"command": "sh", "cols": "wide"}, {"command": "sh", "allocate_tty": 1}):
        resp = await client.post("/process/spawn", json=bad)
        assert resp.status == 400, bad


async def test_exited_processes_kept_are_bounded(make_client: MakeClient) -> None:
    """However many processes come and go, at most max_processes exited ones are kept."""
    client = await make_client(max_processes=2, process_retention_s=600)
    ids = []
    for _ in range(3):
        ids.append(await spawn(client, command="true"))
        await wait_exited(client, ids[-1])

    async def oldest_forgotten() -> bool:
        resp = await client.get(f"/process/{ids[0]}/status")
        return resp.status == 404

    await async_wait_until(oldest_forgotten, timeout=10, what="the oldest to be forgotten")
    for process_id in ids[1:]:
        assert (await status(client, process_id))["state"] == "exited"


async def test_head_of_a_running_stream_answers_at_once(make_client: MakeClient) -> None:
    client = await make_client()
    process_id = await spawn(client, command="sleep", args=["300"])
    resp = await client.head(f"/process/{process_id}/stdout/stream")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    await client.post(f"/process/{process_id}/kill", json={"signal": "KILL"})


async def test_an_idle_stream_gets_keepalive_comments(make_client: MakeClient) -> None:
    """A process that writes nothing: its stream carries `: keepalive` comments every
    `sse_keepalive_s`, and no events."""
    client = await make_client(sse_keepalive_s=0.2)
    process_id = await spawn(client, command="sleep", args=["30"])
    resp = await client.get(f"/process/{process_id}/stdout/stream")
    assert resp.status == 200
    raw = b""
    while raw.count(b": keepalive\n\n") < 3:
        raw += await asyncio.wait_for(resp.content.readany(), 10)
    assert raw == b": keepalive\n\n" * raw.count(b": keepalive\n\n")
    resp.close()
    await client.post(f"/process/{process_id}/kill", json={"signal": "KILL"})
