"""Reading the telemetry stream in tests: SSE frames parsed by hand (ids, comments, data),
and every envelope checked against the daemon's published schema as it is read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from helpers import SSEReader
from jsonschema import Draft202012Validator

from agent.openapi import spec_document

ENVELOPE = Draft202012Validator({"$ref": "#/components/schemas/TelemetryEventEnvelope",
                                 "components": spec_document()["components"]})


HEALTH = Draft202012Validator({"$ref": "#/components/schemas/HealthResponse",
                               "components": spec_document()["components"]})


def check_health(body: dict[str, Any]) -> dict[str, Any]:
    errors = sorted(HEALTH.iter_errors(body), key=str)
    assert not errors, f"{body} does not match HealthResponse: {errors[0]}"
    return body


def check(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope, after checking it against TelemetryEventEnvelope (and that it carries
    the SDK's `category`)."""
    errors = sorted(ENVELOPE.iter_errors(envelope), key=str)
    assert not errors, f"{envelope} does not match the schema: {errors[0]}"
    event = envelope["event"]
    assert event["category"] == event["type"].split("_")[0]
    return envelope


@dataclass
class Frame:
    id: int | None
    envelope: dict[str, Any] | None
    comments: list[str] = field(default_factory=list)

    @property
    def type(self) -> str:
        return self.envelope["event"]["type"] if self.envelope else ""

    @property
    def data(self) -> dict[str, Any]:
        return (self.envelope or {}).get("event", {}).get("data", {})


class Stream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.reader = SSEReader(response)
        self.response = response
        self.seen: list[Frame] = []

    async def frame(self, timeout: float = 10.0) -> Frame | None:
        """The next frame (comment-only frames included); None when the stream ends."""
        raw = await self.reader.frame(timeout)
        if raw is None:
            return None
        envelope = check(raw.data) if raw.data is not None else None
        if envelope is not None:
            assert envelope["seq"] == raw.id
        found = Frame(raw.id, envelope, raw.comments)
        self.seen.append(found)
        return found

    async def until(self, predicate: Callable[[Frame], bool], timeout: float = 15.0
                    ) -> list[Frame]:
        """Frames up to and including the first that matches."""
        found: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frame(timeout)
                assert frame is not None, f"stream ended; saw {[f.type for f in found]}"
                found.append(frame)
                if predicate(frame):
                    return found

    async def rest(self, timeout: float = 15.0) -> list[Frame]:
        """Every frame until the stream ends (follow=false)."""
        found = []
        while (frame := await self.frame(timeout)) is not None:
            found.append(frame)
        return found


def events(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.envelope is not None]


def of_type(frames: list[Frame], kind: str) -> list[Frame]:
    return [f for f in frames if f.type == kind]


def site_app(pages: dict[str, str]) -> web.Application:
    """HTML pages by path, plus /ok (JSON), /text (long text), /slow-ok, /img/{n}."""

    def page(html: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=html, content_type="text/html")
        return handler

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "n": request.query.get("n", "")})

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="0123456789" * 1000, content_type="text/plain")

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/ok?n=redirected"})

    async def pixel(request: web.Request) -> web.Response:
        # a 1x1 GIF
        return web.Response(body=bytes.fromhex(
            "47494638396101000100800000000000ffffff21f90401000000002c000000000100010000020144"
            "003b"), content_type="image/gif")

    app = web.Application()
    for path, html in pages.items():
        app.router.add_get(path, page(html))
    app.router.add_get("/ok", ok)
    app.router.add_get("/text", text)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/img/{n}", pixel)
    return app
