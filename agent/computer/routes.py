"""HTTP routes of the computer slice: /computer/* on the X display."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agent.appkeys import SETTINGS
from agent.computer.manager import ComputerManager
from agent.computer.screen import Shot
from agent.computer.watch import WaitResult, combine
from agent.errors import AgentError
from agent.slices import Lifecycle
from agent.spec import request_json

COMPUTER = web.AppKey("computer", ComputerManager)
routes = web.RouteTableDef()


def _computer(request: web.Request) -> ComputerManager:
    return request.app[COMPUTER]


def _waited(result: WaitResult | None, extra: dict[str, Any] | None = None) -> web.Response:
    """An action's answer: empty, or with a `wait`, how the wait went (JSON and headers)."""
    if result is None:
        return web.Response(status=200)
    return web.json_response({**result.to_json(), **(extra or {})}, headers=result.headers())


def _image(shot: Shot, result: WaitResult | None) -> web.Response:
    headers = {"Cache-Control": "no-store", **(result.headers() if result else {})}
    return web.Response(body=shot.data, content_type=shot.content_type, headers=headers)


# The input actions with a route of their own, by path (the Kernel API calls type_text's
# route /computer/type); each answers as `_waited` says.
ACTION_ROUTES = {"click_mouse": "click_mouse", "move_mouse": "move_mouse", "type": "type_text",
                 "press_key": "press_key", "scroll": "scroll", "drag_mouse": "drag_mouse"}


def _action_handler(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def act(request: web.Request) -> web.Response:
        body = await request_json(request)
        return _waited(await _computer(request).perform(kind, body))

    act.__name__ = kind
    return act


for _path, _kind in ACTION_ROUTES.items():
    routes.post(f"/computer/{_path}")(_action_handler(_kind))


@routes.post("/computer/cursor")
async def cursor(request: web.Request) -> web.Response:
    body = await request_json(request)
    await _computer(request).perform("set_cursor", body)
    return web.json_response({"ok": True})


@routes.post("/computer/batch")
async def batch(request: web.Request) -> web.Response:
    body = await request_json(request)
    outcome = await _computer(request).batch(body["actions"], body.get("wait"))
    results = [result for _, result in outcome.waits]
    if outcome.shot is not None:
        if outcome.shot_wait is not None:
            results.append(outcome.shot_wait)
        return _image(outcome.shot, combine(results) if results else None)
    if not results:
        return web.Response(status=200)
    return _waited(combine(results), {"waits": [{"index": index, **result.to_json()}
                                                for index, result in outcome.waits]})


@routes.post("/computer/get_mouse_position")
async def get_mouse_position(request: web.Request) -> web.Response:
    x, y = await _computer(request).mouse_position()
    return web.json_response({"x": x, "y": y})


@routes.post("/computer/screenshot")
async def screenshot(request: web.Request) -> web.Response:
    body = await request_json(request)
    shot, result = await _computer(request).screenshot_waiting(body)
    return _image(shot, result)


@routes.post("/computer/clipboard/read")
async def clipboard_read(request: web.Request) -> web.Response:
    text = await _computer(request).clipboard_read()
    return web.json_response({"text": text})


@routes.post("/computer/clipboard/write")
async def clipboard_write(request: web.Request) -> web.Response:
    body = await request_json(request)
    await _computer(request).clipboard_write(body["text"])
    return web.Response(status=200)


async def _display_probe(computer: ComputerManager, name: str) -> dict[str, Any]:
    try:
        await computer.display_ok()
    except AgentError as exc:
        return {"ok": False, "name": name, "error": exc.message}
    return {"ok": True, "name": name}


def setup(app: web.Application) -> Lifecycle:
    """Routes, and the controller (its connections open on first use; closed at cleanup)."""
    app.router.add_routes(routes)
    name = app[SETTINGS].display
    computer = ComputerManager(name, app[SETTINGS].clipboard_max_bytes)
    app[COMPUTER] = computer
    return Lifecycle("computer", close=computer.close,
                     probes={"display": lambda: _display_probe(computer, name)})
