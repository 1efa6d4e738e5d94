"""HTTP routes of the playwright slice: POST /playwright/execute, the executor list and
DELETE of an executor; the executors (and their Node workers) as the slice's manager."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agent.appkeys import SETTINGS
from agent.browser.routes import CDP
from agent.errors import BadRequest
from agent.playwright.manager import PlaywrightManager
from agent.slices import Lifecycle
from agent.spec import request_json, request_query

MANAGER = web.AppKey("playwright_manager", PlaywrightManager)

routes = web.RouteTableDef()


@routes.post("/playwright/execute")
async def execute(request: web.Request) -> web.Response:
    body = await request_json(request)
    result = await request.app[MANAGER].execute(
        body["code"], float(body["timeout_sec"]), body.get("executor"))
    return web.json_response(result.to_json())


@routes.get("/playwright/executors")
async def list_executors(request: web.Request) -> web.Response:
    query = request_query(request)
    cursor = _cursor(query.get("cursor"))
    page = await request.app[MANAGER].list(query.get("limit"), cursor)
    headers = {}
    if page.next_cursor is not None:
        url = request.rel_url.update_query(cursor=str(page.next_cursor))
        headers["Link"] = f'<{url}>; rel="next"'
    return web.json_response({"executors": page.items}, headers=headers)


@routes.delete("/playwright/executors/{name}")
async def delete_executor(request: web.Request) -> web.Response:
    query = request_query(request)
    await request.app[MANAGER].delete(request.match_info["name"], bool(query["close_tab"]))
    return web.Response(status=204)


def _cursor(raw: Any) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest.for_field(
            "cursor", "is not a cursor of this list",
            "cursor is not one this list gave out") from None


def setup(app: web.Application) -> Lifecycle:
    manager = PlaywrightManager(app[SETTINGS], app[CDP])
    app[MANAGER] = manager

    async def playwright_probe() -> dict[str, Any]:
        return manager.snapshot()

    app.router.add_routes(routes)
    return Lifecycle("playwright", start=manager.start, begin_shutdown=manager.begin_shutdown,
                     close=manager.close, probes={"playwright": playwright_probe})
