"""Watches over SSE with real file changes: event sequences, several readers, Last-Event-ID
resume, the overflow marker, the end of a watch, idle expiry and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from common import ADMIN, MakeClient
from helpers import SSEReader, async_wait_until

from agent.files.routes import WATCHES


class SSE:
    """A watch's event stream: (id, FileSystemEvent) frames."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.reader = SSEReader(response)

    async def frame(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]] | None:
        """The next (id, data); None when the stream ended."""
        frame = await self.reader.event(timeout)
        if frame is None:
            return None
        assert frame.id is not None
        return frame.id, frame.data

    async def frames(self, count: int, timeout: float = 5.0) -> list[tuple[int, dict[str, Any]]]:
        found = []
        for _ in range(count):
            frame = await self.frame(timeout)
            assert frame is not None, f"stream ended after {found}"
            found.append(frame)
        return found

    async def until(self, name: str, timeout: float = 5.0) -> list[tuple[int, dict[str, Any]]]:
        found = []
        while not found or found[-1][1].get("name") != name:
            frame = await self.frame(timeout)
            assert frame is not None, f"stream ended after {found}"
            found.append(frame)
        return found


def inotify_fds() -> int:
    """inotify instances open in this process (the app under test runs in it)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return count


def summary(frames: list[tuple[int, dict[str, Any]]], root: Path) -> list[tuple[str, str]]:
    return [(data["type"], os.path.relpath(data["path"], root)) for _, data in frames]


async def start(client: TestClient[Any, Any], path: Path, recursive: bool = False) -> str:
    resp = await client.post("/fs/watch", json={"path": str(path), "recursive": recursive})
    assert resp.status == 201, await resp.text()
    watch_id = (await resp.json())["watch_id"]
    assert isinstance(watch_id, str) and watch_id
    return watch_id


async def open_stream(client: TestClient[Any, Any], watch_id: str,
                      last_id: int | None = None) -> SSE:
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    return SSE(await client.get(f"/fs/watch/{watch_id}/events", headers=headers))


async def test_event_sequence_of_real_changes(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    watch_id = await start(client, tmp_path)
    # Changes before any reader connects are kept.
    (tmp_path / "a.txt").write_text("one")
    stream = await open_stream(client, watch_id)
    first = await stream.frames(2)
    assert summary(first, tmp_path) == [("CREATE", "a.txt"), ("WRITE", "a.txt")]
    assert [i for i, _ in first] == [1, 2]
    assert first[0][1] == {"type": "CREATE", "name": "a.txt", "path": str(tmp_path / "a.txt"),
                           "is_dir": False}
    os.rename(tmp_path / "a.txt", tmp_path / "b.txt")
    (tmp_path / "d").mkdir()
    (tmp_path / "b.txt").unlink()
    (tmp_path / "d").rmdir()
    rest = await stream.frames(4)
    assert summary(rest, tmp_path) == [("RENAME", "b.txt"), ("CREATE", "d"),
                                       ("DELETE", "b.txt"), ("DELETE", "d")]
    assert rest[0][1]["old_path"] == str(tmp_path / "a.txt")
    assert [data["is_dir"] for _, data in rest] == [False, True, False, True]
    stream.response.close()


async def test_recursive_watch_sees_nested_changes(make_client: MakeClient,
                                                   tmp_path: Path) -> None:
    client = await make_client()
    watch_id = await start(client, tmp_path, recursive=True)
    stream = await open_stream(client, watch_id)
    (tmp_path / "x").mkdir()
    await stream.until("x")  # the new directory is watched from here on
    (tmp_path / "x" / "y").mkdir()
    (tmp_path / "x" / "y" / "deep.txt").write_text("d")
    frames = await stream.until("deep.txt")
    assert summary(frames, tmp_path) == [("CREATE", "x/y"), ("CREATE", "x/y/deep.txt")]
    (tmp_path / "x" / "y" / "deep.txt").write_text("again")
    frames = await stream.frames(1)
    assert summary(frames, tmp_path) == [("WRITE", "x/y/deep.txt")]
    stream.response.close()

    flat = await start(client, tmp_path, recursive=False)
    stream = await open_stream(client, flat)
    (tmp_path / "x" / "y" / "unseen.txt").write_text("u")
    (tmp_path / "seen.txt").write_text("s")
    frames = await stream.until("seen.txt")
    assert summary(frames, tmp_path) == [("CREATE", "seen.txt")]
    stream.response.close()


async def test_every_reader_gets_every_event(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    watch_id = await start(client, tmp_path)
    readers = [await open_stream(client, watch_id) for _ in range(3)]
    for i in range(5):
        (tmp_path / f"f{i}").mkdir()
    results = await asyncio.gather(*(reader.frames(5) for reader in readers))
    expected = [(n, {"type": "CREATE", "name": f"f{n - 1}", "path": str(tmp_path / f"f{n - 1}"),
                     "is_dir": True}) for n in range(1, 6)]
    assert results == [expected] * 3
    for reader in readers:
        reader.response.close()


async def test_last_event_id_resumes_without_gaps(make_client: MakeClient,
                                                  tmp_path: Path) -> None:
    client = await make_client()
    watch_id = await start(client, tmp_path)
    stream = await open_stream(client, watch_id)
    for i in range(3):
        (tmp_path / f"early{i}").mkdir()
    seen = await stream.frames(3)
    stream.response.close()
    for i in range(3):  # while disconnected
        (tmp_path / f"late{i}").mkdir()
    stream = await open_stream(client, watch_id, last_id=seen[-1][0])
    resumed = await stream.frames(3)
    assert [i for i, _ in resumed] == [4, 5, 6]
    assert [d["name"] for _, d in resumed] == ["late0", "late1", "late2"]
    stream.response.close()
    resp = await client.get(f"/fs/watch/{watch_id}/events", headers={"Last-Event-ID": "x"})
    assert resp.status == 400


async def test_overflow_is_explicit(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client(watch_buffer=10)
    watch_id = await start(client, tmp_path)
    for i in range(25):
        (tmp_path / f"n{i:02}").mkdir()
    manager = client.app[WATCHES]
    await async_wait_until(lambda: manager.get(watch_id).log.last_seq == 25,
                           what="all 25 events to be logged")
    stream = await open_stream(client, watch_id)
    marker_id, marker = (await stream.frames(1))[0]
    assert marker["type"] == "OVERFLOW" and marker["missed"] == 15
    assert (marker["first_missed_id"], marker["last_missed_id"]) == (1, 15)
    assert marker_id == 15 and marker["path"] == str(tmp_path) and marker["message"]
    rest = await stream.frames(10)
    assert [i for i, _ in rest] == list(range(16, 26))
    assert [d["name"] for _, d in rest] == [f"n{i:02}" for i in range(15, 25)]
    stream.response.close()


async def test_watch_of_deleted_directory_ends_with_a_final_event(make_client: MakeClient,
                                                                  tmp_path: Path) -> None:
    client = await make_client()
    root = tmp_path / "watched"
    (root / "inner").mkdir(parents=True)
    watch_id = await start(client, root, recursive=True)
    stream = await open_stream(client, watch_id)
    shutil.rmtree(root)
    frames = []
    while (frame := await stream.frame()) is not None:
        frames.append(frame)
    assert frames[-1][1] == {"type": "DELETE", "name": "watched", "path": str(root),
                             "is_dir": True}
    assert ("DELETE", "inner") in summary(frames, root)


async def test_stop_ends_streams_and_forgets_the_watch(make_client: MakeClient,
                                                       tmp_path: Path) -> None:
    client = await make_client()
    watch_id = await start(client, tmp_path)
    stream = await open_stream(client, watch_id)
    (tmp_path / "one").mkdir()
    await stream.frames(1)
    resp = await client.delete(f"/fs/watch/{watch_id}", headers=ADMIN)
    assert resp.status == 204
    assert await stream.frame() is None  # the open stream ends cleanly
    resp = await client.delete(f"/fs/watch/{watch_id}")
    assert resp.status == 404
    resp = await client.get(f"/fs/watch/{watch_id}/events")
    assert resp.status == 404


async def test_unread_watch_expires_but_a_read_one_lives(make_client: MakeClient,
                                                         tmp_path: Path) -> None:
    client = await make_client(watch_idle_s=0.3)
    unread = await start(client, tmp_path)
    read = await start(client, tmp_path)
    stream = await open_stream(client, read)

    manager = client.app[WATCHES]
    await async_wait_until(lambda: unread not in manager, timeout=10,
                           what="the unread watch to expire")
    resp = await client.get(f"/fs/watch/{unread}/events")
    assert resp.status == 404
    await asyncio.sleep(1.0)  # measuring: a watch with a reader outlives the idle time
    (tmp_path / "still-here").mkdir()
    assert (await stream.frames(1))[0][1]["name"] == "still-here"
    stream.response.close()
    # Once its reader is gone (noticed without any event to send), it expires too.
    await async_wait_until(lambda: read not in manager, timeout=10,
                           what="the abandoned watch to expire")


async def test_events_arrive_promptly(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    watch_id = await start(client, tmp_path)
    stream = await open_stream(client, watch_id)
    (tmp_path / "f").write_text("")
    await stream.frames(1)
    delays = []
    for i in range(10):
        started = time.monotonic()
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_APPEND)
        os.write(fd, f"{i}\n".encode())
        os.close(fd)
        await stream.frames(1)
        delays.append(time.monotonic() - started)
        await asyncio.sleep(0.12)  # past the per-path WRITE interval: each write is leading
    delays.sort()
    assert delays[len(delays) // 2] < 0.1, delays
    stream.response.close()


async def test_shutdown_ends_streams_and_closes_watches(make_client: MakeClient,
                                                        tmp_path: Path) -> None:
    before = inotify_fds()
    client = await make_client()
    watch_id = await start(client, tmp_path)
    manager = client.app[WATCHES]
    assert inotify_fds() == before + 1
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        response = await session.get(client.make_url(f"/fs/watch/{watch_id}/events"))
        stream = SSE(response)
        (tmp_path / "e").mkdir()
        await stream.frames(1)
        started = time.monotonic()
        await client.close()
        assert await stream.frame() is None
        assert time.monotonic() - started < 5
    assert watch_id not in manager
    assert inotify_fds() == before  # the inotify instance is closed
