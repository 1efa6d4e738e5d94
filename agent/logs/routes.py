"""HTTP routes of the logs slice: `GET /logs/stream` (SSE of LogEvents)."""

from __future__ import annotations

from contextlib import aclosing
from datetime import UTC, datetime

from aiohttp import web

from agent.appkeys import FS_USER, SETTINGS
from agent.logs.manager import LogManager
from agent.slices import Lifecycle
from agent.spec import request_query
from agent.sse import open_sse

LOGS = web.AppKey("logs", LogManager)

routes = web.RouteTableDef()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@routes.get("/logs/stream")
async def logs_stream(request: web.Request) -> web.StreamResponse:
    query = request_query(request)
    manager = request.app[LOGS]
    tailer = await manager.open(
        source=query["source"], path=query.get("path"),
        program=query.get("supervisor_process"), tail=query.get("tail"),
        follow=query.get("follow", True),
    )
    try:
        async with open_sse(request) as sse:
            seq = 0
            async with aclosing(tailer.batches()) as batches:
                async for lines in batches:
                    stamp = _now()
                    for line in lines:
                        seq += 1
                        await sse.send({"event": "log", "timestamp": stamp,
                                        "message": line}, id=seq)
        return sse.response
    finally:
        manager.release(tailer)


def setup(app: web.Application) -> Lifecycle:
    manager = LogManager(app[SETTINGS].supervisor_socket, app[FS_USER])
    app[LOGS] = manager
    app.router.add_routes(routes)
    return Lifecycle("logs", begin_shutdown=manager.stop, close=manager.close)
