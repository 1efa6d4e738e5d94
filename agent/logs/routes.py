"""HTTP routes of the logs slice: `GET /logs/stream` (SSE of LogEvents)."""

from __future__ import annotations

from aiohttp import web

from agent import sse
from agent.appkeys import FS_USER, SETTINGS
from agent.logs.manager import LogManager, log_events
from agent.slices import Lifecycle
from agent.spec import request_query

LOGS = web.AppKey("logs", LogManager)

routes = web.RouteTableDef()


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
        return await sse.stream(request, log_events(tailer.batches()))
    finally:
        manager.release(tailer)


def setup(app: web.Application) -> Lifecycle:
    manager = LogManager(app[SETTINGS].supervisor_socket, app[FS_USER])
    app[LOGS] = manager
    app.router.add_routes(routes)
    return Lifecycle("logs", begin_shutdown=manager.stop, close=manager.close)
