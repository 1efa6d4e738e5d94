"""HTTP routes of the logs slice: `GET /logs/stream` (SSE of LogEvents)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime

from aiohttp import web

from agent.appkeys import FS_USER, SETTINGS
from agent.logs.manager import LogManager
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


async def _logs_ctx(app: web.Application) -> AsyncIterator[None]:
    manager = LogManager(app[SETTINGS].supervisor_socket, app[FS_USER])
    app[LOGS] = manager
    yield
    await manager.close()


async def _end_streams(app: web.Application) -> None:
    await app[LOGS].stop()


def setup(app: web.Application) -> None:
    app.router.add_routes(routes)
    app.cleanup_ctx.append(_logs_ctx)
    app.on_shutdown.append(_end_streams)
