"""Default probes behind /health: does the X display answer, does Chromium's DevTools?

Slices that own these components replace the probes with ones reporting their managers'
own state; these defaults keep /health honest before and without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

from Xlib import display as xdisplay
from Xlib.error import DisplayError

from agent.appkeys import HealthProbe
from agent.config import Settings


def _open_close_display(name: str) -> None:
    conn = xdisplay.Display(name)
    conn.close()


def display_probe(name: str) -> HealthProbe:
    async def probe() -> dict[str, Any]:
        try:
            await asyncio.wait_for(asyncio.to_thread(_open_close_display, name), 2.0)
        except (TimeoutError, DisplayError, OSError) as exc:
            return {"ok": False, "name": name, "error": str(exc) or type(exc).__name__}
        return {"ok": True, "name": name}

    return probe


async def fetch_json_version(address: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET /json/version from Chromium's DevTools HTTP endpoint (a tiny HTTP/1.0 client,
    so a health check holds no session or pool)."""
    host, _, port = address.rpartition(":")

    async def fetch() -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET /json/version HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            body = await reader.readexactly(int(match.group(1))) if match else b""
            return head, body
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        head, body = await asyncio.wait_for(fetch(), timeout)
    except asyncio.IncompleteReadError:
        raise ValueError("DevTools closed the connection early") from None
    if head.split(b" ", 2)[1:2] != [b"200"]:
        raise ValueError(f"DevTools answered {head.splitlines()[0].decode(errors='replace')}")
    info = json.loads(body)
    if not isinstance(info, dict):
        raise ValueError("/json/version is not an object")
    return info


def devtools_probe(address: str) -> HealthProbe:
    async def probe() -> dict[str, Any]:
        try:
            info = await fetch_json_version(address)
        except (TimeoutError, OSError, ValueError) as exc:
            return {"ok": False, "address": address, "error": str(exc) or type(exc).__name__}
        return {"ok": True, "address": address, "browser": str(info.get("Browser", ""))}

    return probe


def default_probes(settings: Settings) -> dict[str, HealthProbe]:
    return {
        "display": display_probe(settings.display),
        "devtools": devtools_probe(settings.cdp_address),
    }
