"""HTTP routes of the display slice: GET and PATCH /display."""

from __future__ import annotations

from aiohttp import web

from agent.appkeys import RESIZE_GUARDS
from agent.computer.routes import COMPUTER
from agent.display.manager import DisplayManager
from agent.slices import Lifecycle
from agent.spec import request_json

DISPLAY = web.AppKey("display_manager", DisplayManager)
routes = web.RouteTableDef()


@routes.get("/display")
async def get_display(request: web.Request) -> web.Response:
    size = await request.app[DISPLAY].size()
    return web.json_response(size.to_json())


@routes.patch("/display")
async def patch_display(request: web.Request) -> web.Response:
    body = await request_json(request)
    size, windows = await request.app[DISPLAY].resize(int(body["width"]), int(body["height"]))
    return web.json_response({**size.to_json(), "windows_fitted": windows})


def setup(app: web.Application) -> Lifecycle:
    """After the computer slice (its input connection does the work)."""
    guards = app[RESIZE_GUARDS]  # the list itself: guards added later are seen
    app[DISPLAY] = DisplayManager(app[COMPUTER], guards)
    app.router.add_routes(routes)
    return Lifecycle("display")
