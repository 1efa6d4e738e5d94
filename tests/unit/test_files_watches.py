"""Directory watches on real inotify with real file changes: event order and kinds,
rename pairing, recursion into new directories, write coalescing, the end of a watch."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.errors import BadRequest, NotFound
from agent.files import watches as watches_module
from agent.files.watches import Watch, WatchManager
from agent.streams import Entry, Gap


@pytest.fixture
async def manager() -> AsyncIterator[WatchManager]:
    watches = WatchManager(buffer=1000, idle_s=60)
    yield watches
    await watches.close()


async def events_until(watch: Watch, done: Callable[[list[dict[str, Any]]], bool],
                       timeout: float = 5.0, after: int = 0) -> list[dict[str, Any]]:
    """Every event from `after` on, until `done(events)` holds (or fail at `timeout`)."""
    found: list[dict[str, Any]] = []

    async def read() -> None:
        async for item in watch.log.follow(after):
            assert isinstance(item, Entry), item
            found.append(item.item)
            if done(found):
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out; events so far: {found}") from None
    return found


def kinds(events: list[dict[str, Any]], root: Path) -> list[tuple[str, str]]:
    return [(e["type"], os.path.relpath(e["path"], root)) for e in events]


async def test_create_write_rename_delete_in_order(manager: WatchManager, tmp_path: Path) -> None:
    watch = await manager.start(str(tmp_path), recursive=False)
    (tmp_path / "a.txt").write_text("hello")
    os.rename(tmp_path / "a.txt", tmp_path / "b.txt")
    (tmp_path / "b.txt").unlink()
    (tmp_path / "dir").mkdir()
    events = await events_until(watch, lambda ev: len(ev) >= 5)
    assert kinds(events, tmp_path) == [("CREATE", "a.txt"), ("WRITE", "a.txt"),
                                       ("RENAME", "b.txt"), ("DELETE", "b.txt"),
                                       ("CREATE", "dir")]
    rename = events[2]
    assert rename["old_path"] == str(tmp_path / "a.txt") and rename["name"] == "b.txt"
    assert [e["is_dir"] for e in events] == [False, False, False, False, True]


async def test_moves_across_the_boundary(manager: WatchManager, tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (outside / "arrives").write_text("x")
    (inside / "leaves").write_text("x")
    watch = await manager.start(str(inside), recursive=False)
    os.rename(outside / "arrives", inside / "arrives")
    os.rename(inside / "leaves", outside / "leaves")
    (inside / "marker").mkdir()
    events = await events_until(watch, lambda ev: any(e["name"] == "marker" for e in ev))
    assert kinds(events, inside) == [("CREATE", "arrives"), ("DELETE", "leaves"),
                                     ("CREATE", "marker")]


async def test_recursive_watch_follows_new_directories(manager: WatchManager,
                                                       tmp_path: Path) -> None:
    (tmp_path / "old" / "deeper").mkdir(parents=True)
    watch = await manager.start(str(tmp_path), recursive=True)
    (tmp_path / "old" / "deeper" / "f1").write_text("1")
    # A tree made at once: its directories are watched as they are seen, and what was
    # created before that is reported by scanning them.
    (tmp_path / "new" / "x" / "y").mkdir(parents=True)
    (tmp_path / "new" / "x" / "y" / "f2").write_text("2")
    events = await events_until(
        watch, lambda ev: ("CREATE", "new/x/y/f2") in kinds(ev, tmp_path))
    creates = [k for k in kinds(events, tmp_path) if k[0] == "CREATE"]
    assert creates == [("CREATE", "old/deeper/f1"), ("CREATE", "new"), ("CREATE", "new/x"),
                       ("CREATE", "new/x/y"), ("CREATE", "new/x/y/f2")]
    # Directories renamed inside the tree keep being watched under their new name.
    os.rename(tmp_path / "new", tmp_path / "renamed")
    (tmp_path / "renamed" / "x" / "f3").write_text("3")
    more = await events_until(watch, lambda ev: ("CREATE", "renamed/x/f3") in kinds(ev, tmp_path),
                              after=watch.log.last_seq)
    assert ("RENAME", "renamed") in kinds(more, tmp_path)


async def test_non_recursive_watch_ignores_subdirectories(manager: WatchManager,
                                                          tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    watch = await manager.start(str(tmp_path), recursive=False)
    (tmp_path / "sub" / "hidden").write_text("x")
    (tmp_path / "seen").write_text("x")
    events = await events_until(watch, lambda ev: any(e["name"] == "seen" for e in ev))
    assert all("hidden" not in e["path"] for e in events)


async def test_writes_are_coalesced_but_the_last_is_reported(
        manager: WatchManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A long interval, so that the burst below fits in it however busy the machine is.
    interval = 1.0
    monkeypatch.setattr(watches_module, "WRITE_INTERVAL_S", interval)
    target = tmp_path / "log.txt"
    target.write_text("")
    watch = await manager.start(str(tmp_path), recursive=False)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"first\n")
        await events_until(watch, lambda ev: len(ev) >= 1)  # the leading WRITE, at once
        started = time.monotonic()
        for i in range(50):  # each write is read by the loop before the next one
            os.write(fd, f"line {i}\n".encode())
            await asyncio.sleep(0)
        assert time.monotonic() - started < interval / 2, "burst too slow for the test"
    finally:
        os.close(fd)
    events = await events_until(watch, lambda ev: len(ev) >= 2)
    assert [e["type"] for e in events] == ["WRITE", "WRITE"]  # leading + one trailing
    await asyncio.sleep(2 * interval)  # measuring: nothing more comes of that burst
    assert watch.log.last_seq == 2


async def test_watch_ends_with_a_delete_when_its_directory_goes(manager: WatchManager,
                                                                tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_text("x")
    watch = await manager.start(str(root), recursive=True)
    shutil.rmtree(root)
    events = await events_until(watch, lambda ev: False if not watch.log.closed else len(ev) >= 2)
    assert events[-1] == {"type": "DELETE", "name": "root", "path": str(root), "is_dir": True}
    assert ("DELETE", "f") in kinds(events, root)
    assert watch.log.closed and watch.ended


async def test_bounded_buffer_gives_an_explicit_gap(tmp_path: Path) -> None:
    manager = WatchManager(buffer=5, idle_s=60)
    try:
        watch = await manager.start(str(tmp_path), recursive=False)
        for i in range(12):
            (tmp_path / f"f{i:02}").mkdir()
        deadline = time.monotonic() + 5
        while watch.log.last_seq < 12:
            assert time.monotonic() < deadline, "the 12 CREATE events did not arrive"
            await asyncio.sleep(0.01)
        items = []
        async for item in watch.log.follow(0):
            items.append(item)
            if isinstance(item, Entry) and item.seq == 12:
                break
        assert items[0] == Gap(1, 7)
        assert [i.item["name"] for i in items[1:] if isinstance(i, Entry)] == [
            f"f{i:02}" for i in range(7, 12)]
    finally:
        await manager.close()


async def test_start_errors_and_stop(manager: WatchManager, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadRequest):
        await manager.start(str(tmp_path / "file"), recursive=False)
    with pytest.raises(NotFound):
        await manager.start(str(tmp_path / "missing"), recursive=False)
    watch = await manager.start(str(tmp_path), recursive=False)
    assert manager.get(watch.id) is watch
    manager.stop(watch.id)
    assert watch.log.closed
    with pytest.raises(NotFound):
        manager.get(watch.id)
    with pytest.raises(NotFound):
        manager.stop(watch.id)


async def test_two_watches_on_one_directory_and_idle_expiry(tmp_path: Path) -> None:
    manager = WatchManager(buffer=100, idle_s=0.2)
    try:
        first = await manager.start(str(tmp_path), recursive=False)
        second = await manager.start(str(tmp_path), recursive=True)
        with first.reading():
            (tmp_path / "both").write_text("")
            for watch in (first, second):
                events = await events_until(watch, lambda ev: len(ev) >= 1)
                assert events[0]["name"] == "both"
            deadline = time.monotonic() + 5
            while second.id in manager:
                assert time.monotonic() < deadline, "the unread watch did not expire"
                await asyncio.sleep(0.02)
            assert manager.get(first.id) is first  # it has a reader
            manager.stop(first.id)  # and the other's inotify watch is still released
            (tmp_path / "after").write_text("")
    finally:
        await manager.close()
