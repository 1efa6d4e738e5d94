"""HTTP routes of the processes slice: /process/exec, /process/spawn, and per process its
status, output stream (SSE), stdin, kill, resize, and the interactive WebSocket attach."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from typing import Any

from aiohttp import WSMsgType, web

from agent import sse
from agent.appkeys import SETTINGS
from agent.auth import require_scope
from agent.errors import AgentError, BadRequest
from agent.processes.launch import Command
from agent.processes.manager import ProcessManager
from agent.processes.output import Chunk, Exited, Missed, stream_events
from agent.processes.process import ManagedProcess, TtySize
from agent.processes.pty import DEFAULT_COLS, DEFAULT_ROWS
from agent.slices import Lifecycle
from agent.spec import request_json
from agent.sse import last_event_id

MANAGER = web.AppKey("process_manager", ProcessManager)

routes = web.RouteTableDef()


def setup(app: web.Application) -> Lifecycle:
    manager = ProcessManager(app[SETTINGS])
    app[MANAGER] = manager
    app.router.add_routes(routes)
    # Shutdown: output streams end with the exit events before handlers are waited for.
    return Lifecycle("processes", start=manager.start, begin_shutdown=manager.begin_shutdown,
                     close=manager.close)


def _manager(request: web.Request) -> ProcessManager:
    return request.app[MANAGER]


def _process(request: web.Request) -> ManagedProcess:
    return _manager(request).get(request.match_info["process_id"])


def _command(request: web.Request, body: dict[str, Any]) -> Command:
    if body.get("as_user") is not None or body.get("as_root"):
        require_scope(request, "admin", "running a process as another user or as root")
    timeout = body.get("timeout_sec")
    return Command(
        command=body["command"],
        args=list(body.get("args") or []),
        cwd=body.get("cwd"),
        env=dict(body.get("env") or {}),
        as_user=body.get("as_user"),
        as_root=bool(body.get("as_root")),
        timeout_s=float(timeout) if timeout is not None else None,
    )


def _decode_b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest.for_field(field, "is not valid base64") from None


@routes.post("/process/exec")
async def process_exec(request: web.Request) -> web.Response:
    body = await request_json(request)
    result = await _manager(request).exec(_command(request, body))
    return web.json_response(result.to_json())


@routes.post("/process/spawn")
async def process_spawn(request: web.Request) -> web.Response:
    body = await request_json(request)
    command = _command(request, body)
    tty = None
    if body.get("allocate_tty"):
        # JSON Schema's integer admits 24.0: make it an int.
        tty = TtySize(int(body.get("rows") or DEFAULT_ROWS), int(body.get("cols") or DEFAULT_COLS))
    proc = _manager(request).spawn(command, tty)
    started = proc.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return web.json_response({"process_id": proc.id, "pid": proc.pid, "started_at": started})


@routes.get("/process/{process_id}/status")
async def process_status(request: web.Request) -> web.Response:
    proc = _process(request)
    cpu_pct, mem_bytes = await proc.usage()
    return web.json_response(proc.status_json(cpu_pct, mem_bytes))


@routes.get("/process/{process_id}/stdout/stream")
async def process_stream(request: web.Request) -> web.StreamResponse:
    proc = _process(request)
    after = last_event_id(request)
    proc.output.check_resume_point(after)
    if request.method == "HEAD":  # the headers only; following the output could take hours
        return web.Response(content_type="text/event-stream",
                            headers={"X-SSE-Content-Type": "application/json"})
    return await sse.stream(request, stream_events(proc.output.read(after)))


@routes.post("/process/{process_id}/stdin")
async def process_stdin(request: web.Request) -> web.Response:
    body = await request_json(request)
    data = _decode_b64(body["data_b64"], "data_b64")
    written = await _process(request).write_stdin(data, bool(body.get("eof")))
    return web.json_response({"written_bytes": written})


@routes.post("/process/{process_id}/kill")
async def process_kill(request: web.Request) -> web.Response:
    body = await request_json(request)
    _process(request).send_signal(body["signal"])
    return web.json_response({"ok": True})


@routes.post("/process/{process_id}/resize")
async def process_resize(request: web.Request) -> web.Response:
    body = await request_json(request)
    _process(request).resize(int(body["rows"]), int(body["cols"]))
    return web.json_response({"ok": True})


# --- the interactive WebSocket ----------------------------------------------------------


def _int_field(message: dict[str, Any], name: str) -> int:
    value = message.get(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise BadRequest.for_field(name, "must be an integer from 1 to 65535")
    return value


async def _control(proc: ManagedProcess, text: str) -> None:
    """One JSON control message: resize, eof or signal."""
    try:
        message = json.loads(text)
    except ValueError:
        raise BadRequest("control messages are JSON objects") from None
    if not isinstance(message, dict):
        raise BadRequest("control messages are JSON objects")
    kind = message.get("type")
    if kind == "resize":
        proc.resize(_int_field(message, "rows"), _int_field(message, "cols"))
    elif kind == "eof":
        await proc.write_stdin(b"", eof=True)
    elif kind == "signal":
        name = message.get("signal")
        if name not in ("TERM", "KILL", "INT", "HUP"):
            raise BadRequest.for_field(
                "signal", "must be TERM, KILL, INT or HUP",
                "signal must be one of TERM, KILL, INT, HUP")
        proc.send_signal(name)
    else:
        raise BadRequest(f"unknown control message type {kind!r} (resize, eof, signal)")


@routes.get("/process/{process_id}/attach")
async def process_attach(request: web.Request) -> web.WebSocketResponse:
    proc = _process(request)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=request.app[SETTINGS].max_body_bytes)
    if not ws.can_prepare(request).ok:
        raise BadRequest("this endpoint speaks WebSocket: send a GET with Upgrade: websocket",
                         code="websocket_required")
    await ws.prepare(request)
    lock = asyncio.Lock()

    async def send_json(message: dict[str, Any]) -> None:
        async with lock:
            await ws.send_json(message)

    async def forward_output() -> None:
        async with contextlib.aclosing(proc.output.read(0)) as items:
            async for _seq, item in items:
                if isinstance(item, Chunk):
                    async with lock:
                        await ws.send_bytes(item.data)
                elif isinstance(item, Missed):
                    await send_json({"type": "gap", "missed_events": item.events,
                                     "missed_bytes": item.bytes})
                elif isinstance(item, Exited):
                    await send_json({"type": "exit", "exit_code": item.status.exit_code})
        await ws.close()

    output = asyncio.create_task(forward_output())
    try:
        async for msg in ws:
            try:
                if msg.type == WSMsgType.BINARY:
                    await proc.write_stdin(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await _control(proc, msg.data)
            except AgentError as exc:
                await send_json({"type": "error", **exc.to_json()})
    finally:
        output.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await output
    return ws
