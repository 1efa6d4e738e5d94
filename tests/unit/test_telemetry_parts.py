"""The telemetry's pure parts: the hub's numbering, bounds and gaps with a reader that
stops reading; the history's rotation, size cap, paging and repair after a crash; the
mapping of CDP values and of the injected script's reports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.streams import Gap
from agent.telemetry import mapping
from agent.telemetry.history import History, Query
from agent.telemetry.mapping import Context
from agent.telemetry.stream import MAX_ENVELOPE_BYTES, Record, TelemetryHub


def log(text: str, ts: int = 0) -> dict[str, Any]:
    event = mapping.event("console_log", "Runtime.consoleAPICalled", {"text": text})
    if ts:
        event["ts"] = ts
    return event


async def test_a_reader_that_stops_reading_gets_a_gap_and_never_blocks_the_writer() -> None:
    hub = TelemetryHub(max_items=10, max_bytes=1 << 20)
    reader = hub.follow(0, idle_s=5)
    for i in range(3):
        hub.publish(log(f"a{i}"))
    first = await anext(reader)
    assert isinstance(first, list) and [r.seq for r in first] == [1, 2, 3]
    for i in range(100):  # the reader is paused: publishing goes on regardless
        hub.publish(log(f"b{i}"))
    gap = await anext(reader)
    assert gap == Gap(4, 93)
    rest = await anext(reader)
    assert isinstance(rest, list) and [r.seq for r in rest] == list(range(94, 104))
    assert json.loads(rest[-1].text)["event"]["data"]["text"] == "b99"
    hub.close()
    assert await anext(reader, None) is None


async def test_the_byte_bound_and_idle_batches() -> None:
    hub = TelemetryHub(max_items=1000, max_bytes=2000)
    for i in range(50):
        hub.publish(log(f"{i:03}" + "x" * 100))
    kept = hub.read(hub.first_seq - 1)
    assert isinstance(kept, list) and sum(len(r.text) for r in kept) <= 2000
    assert kept[-1].seq == 50 and len(kept) < 50
    reader = hub.follow(hub.last_seq, idle_s=0.05)
    assert await asyncio.wait_for(anext(reader), 5) == []  # time for a keepalive


def test_numbering_continues_and_big_envelopes_lose_their_data() -> None:
    hub = TelemetryHub(max_items=10, max_bytes=1 << 30, first_seq=500)
    record = hub.publish(log("x" * (MAX_ENVELOPE_BYTES + 10)))
    assert record is not None and record.seq == 500
    envelope = json.loads(record.text)
    assert envelope["event"]["truncated"] is True and "data" not in envelope["event"]
    assert len(record.text) < 1000
    small = hub.publish(log("é" * 10))
    assert small is not None and json.loads(small.text)["event"]["data"]["text"] == "é" * 10


def records(start: int, count: int, size: int = 200, ts0: int = 1_000_000) -> list[Record]:
    hub = TelemetryHub(max_items=count + 1, max_bytes=1 << 30, first_seq=start)
    out = []
    for i in range(count):
        kind = "console_error" if i % 10 == 9 else "console_log"
        event = mapping.event(kind, None, {"text": f"{start + i}:" + "y" * size})
        event["ts"] = ts0 + i
        record = hub.publish(event)
        assert record is not None
        out.append(record)
    return out


async def test_history_rotates_caps_and_pages(tmp_path: Path) -> None:
    history = History(str(tmp_path / "h"), max_bytes=64 * 1024, file_bytes=8 * 1024)
    history.open(create=True)
    for record in records(1, 1000):
        history.append(record)
    history.flush()
    files = sorted((tmp_path / "h").iterdir())
    assert len(files) > 2
    assert sum(f.stat().st_size for f in files) <= 64 * 1024
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    first_kept = int(files[0].name[len("events-"):-len(".jsonl")])
    assert first_kept > 1  # the oldest went first

    seen: list[int] = []
    offset: int | None = 0
    while True:
        page = await history.query(Query(offset=offset, limit=37))
        seen.extend(e["seq"] for e in page.items)
        if not page.has_more:
            assert page.next_offset == 0
            break
        offset = page.next_offset
    assert seen == list(range(first_kept, 1001))

    newest = await history.query(Query(order="desc", limit=5))
    assert [e["seq"] for e in newest.items] == [1000, 999, 998, 997, 996]
    older = await history.query(Query(order="desc", limit=5, offset=newest.next_offset))
    assert [e["seq"] for e in older.items] == [995, 994, 993, 992, 991]
    errors = await history.query(Query(offset=0, limit=3, types=frozenset({"console_error"})))
    assert [e["seq"] for e in errors.items][:3] == [s for s in seen if s % 10 == 0][:3]
    window = await history.query(Query(since_us=1_000_000 + 949, until_us=1_000_000 + 952,
                                       limit=100))
    assert [e["seq"] for e in window.items] == [950, 951, 952]
    history.close()


async def test_history_after_a_crash_mid_line(tmp_path: Path) -> None:
    directory = tmp_path / "h"
    history = History(str(directory), max_bytes=1 << 20, file_bytes=1 << 20)
    history.open(create=True)
    for record in records(1, 20):
        history.append(record)
    history.close()
    newest = sorted(directory.iterdir())[-1]
    with newest.open("a") as handle:
        handle.write('{"seq": 21, "event": {"ts"')  # the daemon died here
    again = History(str(directory), max_bytes=1 << 20, file_bytes=1 << 20)
    again.open(create=False)
    assert again.usable and again.last_seq == 20
    assert newest.read_text().endswith("\n")
    for record in records(21, 5):
        again.append(record)
    page = await again.query(Query(offset=0, limit=100))
    assert [e["seq"] for e in page.items] == list(range(1, 26))
    again.close()


def test_an_unusable_directory_means_an_empty_history(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    history = History(str(blocker / "h"), max_bytes=1 << 20, file_bytes=1 << 20)
    history.open(create=True)
    assert not history.usable and history.error
    history.append(records(1, 1)[0])  # ignored, no exception


@pytest.mark.parametrize(("obj", "text"), [
    ({"type": "string", "value": "plain"}, "plain"),
    ({"type": "number", "value": 42}, "42"),
    ({"type": "number", "unserializableValue": "NaN"}, "NaN"),
    ({"type": "undefined"}, "undefined"),
    ({"type": "object", "subtype": "null", "value": None}, "null"),
    ({"type": "object", "className": "Object", "description": "Object"}, "Object"),
    ({"type": "boolean", "value": True}, "true"),
])
def test_console_arguments_as_text(obj: dict[str, Any], text: str) -> None:
    assert mapping.remote_object_text(obj) == text


def test_script_reports_are_checked_and_capped() -> None:
    ctx = Context("s", "t", "page", frame_id="f", loader_id="l", url="u", nav_seq=2)
    click = mapping.interaction(json.dumps({"kind": "click", "x": 1.6, "y": "evil",
                                            "tag": "button", "text": "t" * 1000,
                                            "selector": "#b"}), ctx, "child")
    assert click is not None and click["type"] == "interaction_click"
    assert click["data"]["x"] == 1 and click["data"]["y"] == 0
    assert click["data"]["tag"] == "BUTTON" and len(click["data"]["text"]) == 200
    assert click["data"]["frame_id"] == "child" and click["data"]["nav_seq"] == 2
    assert mapping.interaction("not json", ctx, "") is None
    assert mapping.interaction(json.dumps({"kind": "password"}), ctx, "") is None
    assert mapping.interaction(json.dumps(["click"]), ctx, "") is None
    assert mapping.interaction("{" + " " * 5000 + "}", ctx, "") is None


@pytest.mark.parametrize(("mime", "limit"), [
    ("application/json", 8192), ("application/ld+json", 8192), ("text/xml", 8192),
    ("application/x-www-form-urlencoded", 8192), ("text/html", 4096), ("text/css", 4096),
    ("application/javascript", 4096), ("image/png", None), ("font/woff2", None),
    ("application/octet-stream", None),
])
def test_body_limits_by_type(mime: str, limit: int | None) -> None:
    assert mapping.body_limit(mime) == limit


def test_bodies_are_cut_on_character_boundaries() -> None:
    assert mapping.cut_body("ab", 10) == ("ab", False)
    text, cut = mapping.cut_body("é" * 10, 5)
    assert (text, cut) == ("éé", True)
