"""The HTTP edge's own middlewares, for every server the daemon runs (the API and the
DevTools endpoint): a request id on every request and answer, one access-log line each,
and every failure rendered as the spec's Error JSON, never a traceback or an HTML page."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from agent.errors import AgentError, InternalError

log = logging.getLogger("agent.app")
access_log = logging.getLogger("agent.access")

REQUEST_ID_KEY = web.RequestKey("request_id", str)
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: AgentError, request_id: str | None = None) -> web.Response:
    response = web.json_response(exc.to_json(), status=exc.status, headers=exc.headers)
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id (kept from the caller when sane) and one access-log line per request."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        # The path only: query strings may carry tokens.
        access_log.info(
            "%s %s %s %d %.1fms rid=%s",
            request.remote, request.method, request.path, status,
            (time.perf_counter() - started) * 1000, request_id,
        )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure as the spec's Error JSON; never a traceback or HTML page."""
    request_id = request.get(REQUEST_ID_KEY)
    try:
        return await handler(request)
    except AgentError as exc:
        if exc.status >= 500:
            log.warning("%s %s failed: %s rid=%s", request.method, request.path, exc.message,
                        request_id)
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, f"http_{exc.status}")
        message = exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} not allowed on {request.path}"
        return error_response(AgentError(message, code=code, status=exc.status), request_id)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s rid=%s", request.method, request.path,
                      request_id)
        return error_response(
            InternalError(f"internal error (request id {request_id})"), request_id
        )


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID_KEY)
    if request_id and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = request_id
