"""Helpers for the computer tests: page ↔ screen coordinates, X-side state checks."""

from __future__ import annotations

import io
import json
from typing import Any

from aiohttp.test_utils import TestClient
from helpers import Chromium
from PIL import Image
from Xlib import display as xdisplay


async def open_page(chromium: Chromium, html: str) -> Chromium:
    """Show `html` and wait until it has been painted (two animation frames), so that
    input sent next reaches the new document."""
    await chromium.open(html)
    await chromium.evaluate(
        "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
    return chromium


async def screen_point(chromium: Chromium, selector: str, fx: float = 0.5,
                       fy: float = 0.5) -> tuple[int, int]:
    """Screen coordinates of a point inside the element (fractions of its box)."""
    ox, oy = await chromium.viewport_origin()
    rect = await chromium.evaluate(
        f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
        ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
    left, top, width, height = rect
    return round(ox + left + width * fx), round(oy + top + height * fy)


async def post(client: TestClient[Any, Any], path: str, body: Any = None,
               expect: int = 200) -> Any:
    if body is None:
        resp = await client.post(path)
    else:
        payload = json.dumps(body, ensure_ascii=False).encode()
        resp = await client.post(path, data=io.BytesIO(payload),
                                 headers={"Content-Type": "application/json"})
    raw = await resp.read()
    assert resp.status == expect, f"{path}: {resp.status} {raw[:500]!r}"
    if resp.content_type == "application/json":
        return json.loads(raw)
    return raw


async def click(client: TestClient[Any, Any], point: tuple[int, int], **extra: Any) -> None:
    await post(client, "/computer/click_mouse", {"x": point[0], "y": point[1], **extra})


async def screenshot(client: TestClient[Any, Any], **body: Any) -> Image.Image:
    resp = await client.post("/computer/screenshot", json=body or None)
    data = await resp.read()
    assert resp.status == 200, data[:300]
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def keys_down(display: str) -> list[int]:
    """Keycodes the X server considers pressed right now (XQueryKeymap)."""
    dpy = xdisplay.Display(display)
    try:
        keymap = dpy.query_keymap()
    finally:
        dpy.close()
    return [byte * 8 + bit for byte, bits in enumerate(keymap) for bit in range(8)
            if bits & (1 << bit)]


def buttons_down(display: str) -> int:
    """The pointer button mask (Button1Mask..Button5Mask bits) of the X server."""
    dpy = xdisplay.Display(display)
    try:
        mask = dpy.screen().root.query_pointer().mask
    finally:
        dpy.close()
    return int(mask) & 0x1F00
