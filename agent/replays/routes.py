"""HTTP routes of the replays slice: start, list, stop, download (with `Range`), delete, and
a small page that plays a recording in the browser.

Downloads are sent by the kernel (`sendfile`) with `Content-Length`; while a recording is
still being written or finalised the answer is a 202 with `Retry-After`, never a partial
file.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import functools
import html
import os
import urllib.parse
from importlib import resources
from typing import Any

from aiohttp import web

from agent.appkeys import RESIZE_GUARDS, SETTINGS
from agent.errors import NotFound
from agent.ranges import byte_range
from agent.replays.manager import Pending, ReplayManager
from agent.replays.recorder import ReplayInfo
from agent.slices import Lifecycle
from agent.spec import ALIAS_PREFIX, request_json, request_query

MANAGER = web.AppKey("replay_manager", ReplayManager)

# The player page: no script, only our own media (the download URL) and its inline style.
VIEW_CSP = ("default-src 'none'; media-src 'self'; style-src 'unsafe-inline'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

routes = web.RouteTableDef()


def setup(app: web.Application) -> Lifecycle:
    manager = ReplayManager(app[SETTINGS])
    app[MANAGER] = manager
    app[RESIZE_GUARDS].append(manager.resize_refusal)  # the screen keeps its size meanwhile
    app.router.add_routes(routes)
    return Lifecycle("replays", start=manager.start, close=manager.close,
                     probes={"replays": manager.health})


def _manager(request: web.Request) -> ReplayManager:
    return request.app[MANAGER]


def _prefix(request: web.Request) -> str:
    """`/browsers/{id}` when the request came through that alias, so links stay in it."""
    browser_id = request.match_info.get("browser_id")
    return ALIAS_PREFIX.replace("{browser_id}", browser_id) if browser_id is not None else ""


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _replay_json(request: web.Request, info: ReplayInfo) -> dict[str, Any]:
    """A BrowserReplay; its view URL is absolute, on the host the client called."""
    view = request.url.origin().with_path(f"{_prefix(request)}/replays/{info.replay_id}/view")
    return {
        "replay_id": info.replay_id,
        "started_at": _iso(info.started_at),
        "finished_at": _iso(info.finished_at),
        "replay_view_url": str(view),
    }


@routes.post("/replays")
async def start_replay(request: web.Request) -> web.Response:
    body = await request_json(request)
    info = await _manager(request).start_recording(body.get("framerate"),
                                                   body.get("max_duration_in_seconds"),
                                                   bool(body.get("record_audio", False)))
    return web.json_response(_replay_json(request, info), status=201)


@routes.get("/replays")
async def list_replays(request: web.Request) -> web.Response:
    query = request_query(request)
    infos, next_cursor = _manager(request).list(query.get("limit"), query.get("cursor"))
    response = web.json_response([_replay_json(request, info) for info in infos])
    if next_cursor is not None:
        url = request.url.update_query(cursor=next_cursor)
        response.headers["Link"] = f'<{url}>; rel="next"'
    return response


@routes.post("/replays/{replay_id}/stop")
async def stop_replay(request: web.Request) -> web.Response:
    await _manager(request).stop(request.match_info["replay_id"])
    return web.Response(status=200)


@routes.delete("/replays/{replay_id}")
async def delete_replay(request: web.Request) -> web.Response:
    await asyncio.to_thread(_manager(request).delete, request.match_info["replay_id"])
    return web.Response(status=204)


@routes.get("/replays/{replay_id}")
async def download_replay(request: web.Request) -> web.StreamResponse:
    found = _manager(request).download(request.match_info["replay_id"])
    if isinstance(found, Pending):
        return web.json_response(
            {"code": "replay_in_progress",
             "message": f"the replay is still {found.state}; try again later",
             "state": found.state},
            status=202, headers={"Retry-After": str(found.retry_after)})
    try:
        video = await asyncio.to_thread(open, found.path, "rb")
    except FileNotFoundError:  # deleted between the lookup and the open
        raise NotFound(f"no such replay: {request.match_info['replay_id']}") from None
    try:
        size = (await asyncio.to_thread(os.fstat, video.fileno())).st_size
        last_modified = email.utils.formatdate(found.mtime, usegmt=True)
        selected = byte_range(request.headers.get("Range"), size,
                              request.headers.get("If-Range"), found.etag, last_modified)
        start, end = selected if selected is not None else (0, size)
        response = web.StreamResponse(status=206 if selected is not None else 200, headers={
            "Content-Type": "video/mp4",
            "Accept-Ranges": "bytes",
            "ETag": found.etag,
            "Last-Modified": last_modified,
            "Cache-Control": "private, no-cache",
        })
        if selected is not None:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response.content_length = end - start
        await response.prepare(request)
        if request.method == "HEAD" or end == start or request.transport is None:
            return response
        loop = asyncio.get_running_loop()
        try:
            sent = await loop.sendfile(request.transport, video, start, end - start)
        except ConnectionError:
            return response
        if sent < end - start and request.transport is not None:
            request.transport.abort()  # cannot happen to a finished file; never send short
        return response
    finally:
        video.close()


@functools.cache
def _view_template() -> str:
    return resources.files("agent.replays").joinpath("view.html").read_text(encoding="utf-8")


@routes.get("/replays/{replay_id}/view")
async def view_replay(request: web.Request) -> web.Response:
    info = _manager(request).info(request.match_info["replay_id"])
    video_url = urllib.parse.quote(f"{_prefix(request)}/replays/{info.replay_id}")
    page = (_view_template().replace("{video_url}", html.escape(video_url, quote=True))
            .replace("{replay_id}", html.escape(info.replay_id, quote=True)))
    return web.Response(text=page, content_type="text/html", headers={
        "Content-Security-Policy": VIEW_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    })
