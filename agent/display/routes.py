"""HTTP routes of the display slice: GET and PATCH /display."""

from __future__ import annotations

from aiohttp import web

from agent.appkeys import RESIZE_GUARDS
from agent.browser.routes import CDP
from agent.computer.routes import COMPUTER
from agent.display.manager import DisplayManager
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
    size, fitted = await request.app[DISPLAY].resize(int(body["width"]), int(body["height"]))
    return web.json_response({**size.to_json(), "browser_window_fitted": fitted})


def setup(app: web.Application) -> None:
    """Needs the computer and browser slices (their X connection and DevTools client)."""
    guards = app[RESIZE_GUARDS]  # the list itself: guards added later are seen
    app[DISPLAY] = DisplayManager(app[COMPUTER], app[CDP], guards)
    app.router.add_routes(routes)
