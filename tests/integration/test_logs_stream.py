"""GET /logs/stream end to end: the real app over HTTP, real files written beside it, and
a real supervisord started here whose program's log is streamed by name."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from common import READ, MakeClient
from helpers import (
    SSEReader,
    Supervisord,
    async_wait_until,
    running_supervisord,
    wait_until,
)

from agent.logs.routes import LOGS
from agent.supervisor import SupervisorClient


class SSE:
    """A log stream: `await sse.next()` is one LogEvent (its id under `_id`), or None at
    the end."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp
        self.reader = SSEReader(resp)

    async def next(self, timeout: float = 10.0) -> dict[str, Any] | None:
        frame = await self.reader.event(timeout)
        if frame is None:
            return None
        return {**frame.data, "_id": None if frame.id is None else str(frame.id)}

    async def messages(self, count: int, timeout: float = 10.0) -> list[str]:
        return [frame.data["message"] for frame in await self.reader.events(count, timeout)]

    async def until_end(self, timeout: float = 10.0) -> list[str]:
        return [frame.data["message"] for frame in await self.reader.rest(timeout)]


async def open_stream(client: Any, **params: Any) -> SSE:
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
    resp = await client.get("/logs/stream", params=params)
    assert resp.status == 200, await resp.text()
    return SSE(resp)


async def error_of(client: Any, status: int, **params: Any) -> dict[str, Any]:
    resp = await client.get("/logs/stream", params=params)
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) >= {"code", "message"}
    return dict(body)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as out:
        out.write(data)


# --------------------------------------------------------------------- files


async def test_follow_streams_existing_then_new_lines(make_client: MakeClient,
                                                      tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    log.write_bytes(b"one\ntwo\n")
    sse = await open_stream(client, source="path", path=log)
    first = await sse.next()
    assert first is not None
    assert first["event"] == "log" and first["message"] == "one" and first["_id"] == "1"
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.tzinfo is not None and first["timestamp"].endswith("Z")
    assert await sse.messages(1) == ["two"]
    append(log, b"three\nfour\n")
    event = await sse.next()
    assert event is not None and event["message"] == "three" and event["_id"] == "3"
    assert await sse.messages(1) == ["four"]
    sse.resp.close()


async def test_follow_false_ends_after_existing_content(make_client: MakeClient,
                                                        tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    log.write_bytes(b"a\nb\nc\nunterminated")
    sse = await open_stream(client, source="path", path=log, follow=False)
    assert await sse.until_end() == ["a", "b", "c", "unterminated"]


async def test_tail_parameter(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    lines = [f"line {i}" for i in range(1, 501)]
    log.write_text("\n".join(lines) + "\n")
    default = await (await open_stream(client, source="path", path=log, follow=False)).until_end()
    assert default == lines[-100:]
    five = await (await open_stream(client, source="path", path=log, follow=False,
                                    tail=5)).until_end()
    assert five == lines[-5:]
    everything = await (await open_stream(client, source="path", path=log, follow=False,
                                          tail="all")).until_end()
    assert everything == lines
    none = await (await open_stream(client, source="path", path=log, follow=False,
                                    tail=0)).until_end()
    assert none == []
    for bad in ("-1", "lots", "1.5"):
        body = await error_of(client, 400, source="path", path=str(log), tail=bad)
        assert body["details"][0]["field"] == "tail"


async def test_tail_zero_follows_only_new_lines(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    log.write_bytes(b"old\n")
    sse = await open_stream(client, source="path", path=log, tail=0)
    manager = client.app[LOGS]
    await async_wait_until(lambda: any(t.offset == 4 for t in manager.streams),
                           what="the stream to start at the end")
    append(log, b"new\n")
    assert await sse.messages(1) == ["new"]
    sse.resp.close()


async def test_rotation_by_rename_and_new_file(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    log.write_bytes(b"first\n")
    sse = await open_stream(client, source="path", path=log)
    assert await sse.messages(1) == ["first"]
    with log.open("ab", buffering=0) as writer:  # a writer holding the file open
        os.rename(log, tmp_path / "app.log.1")
        writer.write(b"late line in the rotated file\n")
        log.write_bytes(b"new file line 1\n")
        assert await sse.messages(2) == ["late line in the rotated file", "new file line 1"]
    append(log, b"new file line 2\n")
    assert await sse.messages(1) == ["new file line 2"]
    # A second rotation, logrotate style (the new file created empty, then written).
    os.rename(log, tmp_path / "app.log.2")
    log.write_bytes(b"")
    append(log, b"third file\n")
    assert await sse.messages(1) == ["third file"]
    sse.resp.close()


async def test_truncation_copytruncate(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    log.write_bytes(b"a rather long line written before the copy\n" * 3)
    sse = await open_stream(client, source="path", path=log)
    assert len(await sse.messages(3)) == 3
    shutil.copyfile(log, tmp_path / "app.log.1")
    with log.open("r+b") as out:
        out.truncate(0)
    append(log, b"after truncate\n")  # shorter than what was read: a restart at 0
    assert await sse.messages(1) == ["after truncate"]
    append(log, b"and more\n")
    assert await sse.messages(1) == ["and more"]
    sse.resp.close()


async def test_partial_lines_are_held_back(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    sse = await open_stream(client, source="path", path=log)
    manager = client.app[LOGS]
    with log.open("ab", buffering=0) as out:
        out.write(b"par")
        await async_wait_until(lambda: any(t.offset == 3 and t.pending == 3
                                           for t in manager.streams),
                               what="the daemon to read the partial line")
        out.write(b"tial\r\n")
        event = await sse.next()
        assert event is not None and event["message"] == "partial" and event["_id"] == "1"
    sse.resp.close()


async def test_long_lines_are_split(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    # 'é' (2 bytes) after an odd prefix puts the 64 KiB boundaries inside characters.
    text = "x" + "é" * 100_000
    log.write_bytes(text.encode() + b"\nshort\n")
    sse = await open_stream(client, source="path", path=log, follow=False)
    messages = await sse.until_end()
    assert messages[-1] == "short"
    pieces = messages[:-1]
    assert len(pieces) == 4
    assert all(len(p.encode()) <= 64 * 1024 for p in pieces)
    assert "".join(pieces) == text


async def test_invalid_utf8_is_replaced(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    log.write_bytes(b"valid \xe2\x9c\x93\nbroken \xff\xfe end\ncut \xe2\x9c\n")
    sse = await open_stream(client, source="path", path=log, follow=False)
    assert await sse.until_end() == ["valid ✓", "broken \ufffd\ufffd end", "cut \ufffd"]


async def test_bad_paths(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    missing = await error_of(client, 404, source="path", path=str(tmp_path / "nope.log"))
    assert missing["code"] == "not_found" and "nope.log" in missing["message"]
    directory = await error_of(client, 400, source="path", path=str(tmp_path))
    assert "directory" in directory["message"]
    relative = await error_of(client, 400, source="path", path="app.log")
    assert relative["details"][0]["field"] == "path"
    absent = await error_of(client, 400, source="path")
    assert absent["details"][0]["field"] == "path"
    no_source = await error_of(client, 400, path=str(tmp_path))
    assert no_source["details"][0]["field"] == "source"
    bad_source = await error_of(client, 400, source="journal", path=str(tmp_path))
    assert bad_source["details"][0]["field"] == "source"
    mixed = await error_of(client, 400, source="path", path=str(tmp_path / "x"),
                           supervisor_process="chromium")
    assert mixed["details"][0]["field"] == "supervisor_process"
    no_program = await error_of(client, 400, source="supervisor")
    assert no_program["details"][0]["field"] == "supervisor_process"


async def test_read_scope_and_browser_alias(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    log.write_bytes(b"hello\n")
    resp = await client.get("/browsers/abc/logs/stream", headers=READ,
                            params={"source": "path", "path": str(log), "follow": "false"})
    assert resp.status == 200
    assert await SSE(resp).until_end() == ["hello"]
    resp = await client.get("/logs/stream", headers={"Authorization": "Bearer wrong"},
                            params={"source": "path", "path": str(log)})
    assert resp.status == 401


async def test_disconnect_releases_the_file(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    log.write_bytes(b"x\n")
    sse = await open_stream(client, source="path", path=log)
    assert await sse.messages(1) == ["x"]
    manager = client.app[LOGS]
    assert len(manager.streams) == 1
    sse.resp.close()
    await async_wait_until(lambda: not manager.streams, what="the stream to be released")


async def test_shutdown_ends_open_streams(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    log = tmp_path / "app.log"
    log.write_bytes(b"x\n")
    sse = await open_stream(client, source="path", path=log)
    assert await sse.messages(1) == ["x"]
    await client.app[LOGS].stop()
    assert await sse.until_end() == []
    await async_wait_until(lambda: not client.app[LOGS].streams, what="the release")


# --------------------------------------------------------------------- supervisord

TALKER = """\
import itertools, sys, time
print("talker started", flush=True)
print("talker stderr line", file=sys.stderr, flush=True)
for n in itertools.count(1):
    print(f"tick {n}", flush=True)
    time.sleep(0.05)
"""

CHATTY = """\
import itertools, time
for n in itertools.count(1):
    print(f"chatty {n:05d} " + "x" * 36, flush=True)
    time.sleep(0.02)
"""


PROGRAMS = f"""\
[program:talker]
command={sys.executable} -u {{root}}/talker.py
redirect_stderr=true
startsecs=0
autorestart=false
stopasgroup=true
killasgroup=true

[program:silent]
command=/bin/sleep 3600
stdout_logfile=NONE
startsecs=0
stopasgroup=true
killasgroup=true

[program:chatty]
command={sys.executable} -u {{root}}/chatty.py
stdout_logfile={{root}}/chatty.log
stdout_logfile_maxbytes=2KB
stdout_logfile_backups=3
startsecs=0
stopasgroup=true
killasgroup=true

[program:console]
command=/bin/sleep 3600
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
startsecs=0
stopasgroup=true
killasgroup=true
"""


@pytest.fixture(scope="module")
def supervisord() -> Iterator[Supervisord]:
    files = {"talker.py": TALKER, "chatty.py": CHATTY}
    with running_supervisord(PROGRAMS, files) as supervisor:
        client = SupervisorClient(supervisor.socket)

        def running() -> bool:
            return all(client.process_info(name)["statename"] == "RUNNING"
                       for name in ("talker", "silent", "chatty", "console"))

        wait_until(running, timeout=20, what="supervisord's programs to run")
        yield supervisor


async def test_supervisor_program_log_streams_by_name(make_client: MakeClient,
                                                      supervisord: Supervisord) -> None:
    client = await make_client(supervisor_socket=supervisord.socket)
    sse = await open_stream(client, source="supervisor", supervisor_process="talker",
                            tail="all")
    first = await sse.messages(3)
    assert first[:2] == ["talker started", "talker stderr line"]
    assert first[2] == "tick 1"
    # Follows: ticks keep arriving, in order, each one once.
    more = await sse.messages(5)
    assert more == [f"tick {n}" for n in range(2, 7)]
    sse.resp.close()
    # The lines came from the log supervisord itself names (an AUTO log in childlogdir).
    path = SupervisorClient(supervisord.socket).stdout_logfile("talker")
    assert Path(path).parent == supervisord.root
    content = (await asyncio.to_thread(Path(path).read_text)).splitlines()
    assert content[:8] == first + more


async def test_supervisor_rotation_loses_and_repeats_nothing(make_client: MakeClient,
                                                             supervisord: Supervisord) -> None:
    """supervisord rotates chatty.log every ~40 lines (rename to .1, new file)."""
    client = await make_client(supervisor_socket=supervisord.socket)
    sse = await open_stream(client, source="supervisor", supervisor_process="chatty", tail=1)
    manager = client.app[LOGS]
    numbers: list[int] = []
    deadline = time.monotonic() + 20
    while not any(t.rotations >= 2 for t in manager.streams):
        assert time.monotonic() < deadline, "supervisord did not rotate the log twice"
        (message,) = await sse.messages(1)
        numbers.append(int(message.split()[1]))
    numbers += [int(m.split()[1]) for m in await sse.messages(5)]
    sse.resp.close()
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert (supervisord.root / "chatty.log.1").exists()


async def test_supervisor_program_tail_without_follow(make_client: MakeClient,
                                                      supervisord: Supervisord) -> None:
    client = await make_client(supervisor_socket=supervisord.socket)
    sse = await open_stream(client, source="supervisor", supervisor_process="talker",
                            tail=2, follow=False)
    messages = await sse.until_end()
    assert len(messages) == 2
    assert all(m.startswith("tick ") for m in messages)
    a, b = (int(m.split()[1]) for m in messages)
    assert b == a + 1


async def test_supervisor_unknown_program_is_404(make_client: MakeClient,
                                                 supervisord: Supervisord) -> None:
    client = await make_client(supervisor_socket=supervisord.socket)
    body = await error_of(client, 404, source="supervisor", supervisor_process="nosuch")
    assert body["code"] == "not_found" and "nosuch" in body["message"]
    silent = await error_of(client, 404, source="supervisor", supervisor_process="silent")
    assert "no stdout log" in silent["message"]
    console = await error_of(client, 404, source="supervisor", supervisor_process="console")
    assert "/dev/stdout" in console["message"]
    control = await error_of(client, 400, source="supervisor", supervisor_process="a\x19b")
    assert control["details"][0]["field"] == "supervisor_process"


async def test_supervisor_not_running_is_503(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client(supervisor_socket=str(tmp_path / "missing.sock"))
    body = await error_of(client, 503, source="supervisor", supervisor_process="chromium")
    assert body["code"] == "supervisor_unavailable"
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(stale)
    client = await make_client(supervisor_socket=stale)
    body = await error_of(client, 503, source="supervisor", supervisor_process="chromium")
    assert body["code"] == "supervisor_unavailable"
