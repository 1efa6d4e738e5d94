"""HTTP routes of the telemetry slice: the live stream (GET /telemetry and
/telemetry/stream), the history (GET /telemetry/events) and the category configuration
(GET/PUT /telemetry/config)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from agent.appkeys import SETTINGS
from agent.errors import BadRequest
from agent.slices import Lifecycle
from agent.spec import request_json, request_query
from agent.sse import SSEWriter, last_event_id
from agent.streams import Gap
from agent.telemetry.history import Query
from agent.telemetry.manager import Telemetry

TELEMETRY = web.AppKey("telemetry", Telemetry)

MAX_FILTERS = 10
MAX_NAME = 64
MAX_INSTANT = 64
DEFAULT_SINCE_US = 5 * 60 * 1_000_000
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNITS_US = {"ns": 0.001, "us": 1, "µs": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000,
             "h": 3_600_000_000, "d": 86_400_000_000}

routes = web.RouteTableDef()


def _set(params: dict[str, Any], name: str) -> frozenset[str]:
    """A filter given as repeated parameters and/or comma-separated values (their number
    checked against the spec by request_query)."""
    values = frozenset(str(value).strip() for value in params.get(name, []))
    if len(values) > MAX_FILTERS or any(len(value) > MAX_NAME for value in values):
        raise BadRequest.for_field(
            name, "too many or too long",
            f"{name}: at most {MAX_FILTERS} names of at most {MAX_NAME} characters")
    return values


def _instant(name: str, text: str, now_us: int) -> int:
    """An RFC 3339 timestamp, or a duration like `5m` meaning that long ago (Unix µs)."""
    text = text.strip()
    if len(text) > MAX_INSTANT:
        raise BadRequest.for_field(name, "too long", f"{name} is too long")
    pieces = _DURATION.findall(text)
    if pieces and "".join(n + u for n, u in pieces) == text:
        return now_us - round(sum(float(n) * _UNITS_US[u] for n, u in pieces))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest.for_field(
            name, "not a timestamp or duration",
            f"{name} must be an RFC 3339 timestamp or a duration like 5m") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(when.timestamp() * 1_000_000)


@routes.get("/telemetry")
@routes.get("/telemetry/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    telemetry = request.app[TELEMETRY]
    hub = telemetry.hub
    query = request_query(request)
    types = _set(query, "type")
    keepalive = request.app[SETTINGS].sse_keepalive_s
    resume = ("Last-Event-ID" in request.headers or "last_event_id" in request.query)
    if resume:
        after = last_event_id(request)
    elif query.get("replay") == "all":
        after = hub.first_seq - 1
    else:
        after = hub.last_seq
    sse = SSEWriter(request, 0)  # keepalives (and id-only frames) come from the loop below
    async with sse:
        skipped = 0  # the newest filtered-out seq not yet reported in an id-only frame
        reported = time.monotonic()
        follow = bool(query.get("follow", True))
        async for item in hub.follow(after, keepalive if keepalive > 0 else 3600.0,
                                     stop_when_idle=not follow):
            if isinstance(item, Gap):
                await sse.write_frame(
                    f": gap: events {item.first}..{item.last} ({item.missed}) were dropped "
                    f"because this reader fell behind the buffer\nid: {item.last}\n\n".encode())
                continue
            if not item:
                if skipped:
                    await sse.write_frame(f"id: {skipped}\n\n".encode())
                    skipped, reported = 0, time.monotonic()
                else:
                    await sse.comment()
                continue
            frames = []
            for record in item:
                if types and record.type not in types:
                    skipped = record.seq
                    continue
                frames.append(f"id: {record.seq}\ndata: {record.text}\n\n")
                skipped = 0
            if skipped and time.monotonic() - reported >= keepalive:
                frames.append(f"id: {skipped}\n\n")
                skipped, reported = 0, time.monotonic()
            if frames:
                await sse.write_frame("".join(frames).encode())
        if skipped:
            await sse.write_frame(f"id: {skipped}\n\n".encode())
    return sse.response


@routes.get("/telemetry/events")
async def events(request: web.Request) -> web.Response:
    telemetry = request.app[TELEMETRY]
    params = request_query(request)
    now_us = time.time_ns() // 1000
    order = params.get("order", "asc")
    if order == "desc" and "since" in params:
        raise BadRequest.for_field(
            "since", "not allowed with order=desc", "order=desc cannot be combined with since")
    offset = params.get("offset")
    since = params.get("since")
    until = params.get("until")
    query = Query(order=order, offset=offset,
                  since_us=(_instant("since", since, now_us) if since is not None
                            else now_us - DEFAULT_SINCE_US),
                  until_us=_instant("until", until, now_us) if until is not None else None,
                  types=_set(params, "type"), categories=_set(params, "category"),
                  limit=params.get("limit", 20))
    page = await telemetry.history.query(query)
    return web.json_response(page.items, headers={
        "X-Next-Offset": str(page.next_offset),
        "X-Has-More": "true" if page.has_more else "false"})


@routes.get("/telemetry/config")
async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[TELEMETRY].config())


@routes.put("/telemetry/config")
async def put_config(request: web.Request) -> web.Response:
    body = await request_json(request)
    return web.json_response(await request.app[TELEMETRY].update(body))


def setup(app: web.Application) -> Lifecycle:
    telemetry = Telemetry(app[SETTINGS])
    app[TELEMETRY] = telemetry

    async def probe() -> dict[str, object]:
        return telemetry.snapshot()

    app.router.add_routes(routes)
    # Open streams end as shutdown begins instead of holding it up.
    return Lifecycle("telemetry", start=telemetry.start, begin_shutdown=telemetry.end_streams,
                     close=telemetry.close, probes={"telemetry": probe})
