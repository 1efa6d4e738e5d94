"""The clipboard against Chromium (copy in the page, paste into the page) and xclip."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from computer_support import click, keys_down, open_page, post, screen_point
from helpers import Chromium, Xvfb, async_wait_until

FIELD = """
<input id=field style="position:absolute;left:40px;top:40px;width:600px;font-size:18px">
"""
TEXT = "Grüße aus Köln — 日本語 😀 ñ €"


@pytest.fixture
async def client(make_client: Any, chromium: Chromium, xvfb: Xvfb) -> TestClient[Any, Any]:
    c: TestClient[Any, Any] = await make_client(display=xvfb.name, cdp_proxy_port=0)
    return c


async def focused_field(client: Any, chromium: Chromium, value: str = "") -> None:
    await open_page(chromium, FIELD)
    await chromium.evaluate(f"document.querySelector('#field').value = {json.dumps(value)}")
    await click(client, await screen_point(chromium, "#field"))
    await async_wait_until(lambda: chromium.evaluate(
        "document.activeElement.id === 'field' && document.hasFocus()"), what="focus")


async def test_written_text_pastes_into_the_page(client: Any, chromium: Chromium) -> None:
    await post(client, "/computer/clipboard/write", {"text": TEXT})
    assert await post(client, "/computer/clipboard/read") == {"text": TEXT}
    await focused_field(client, chromium)
    await post(client, "/computer/press_key", {"keys": ["ctrl+v"]})
    await async_wait_until(lambda: chromium.evaluate(
        f"document.querySelector('#field').value === {json.dumps(TEXT)}"),
        what="the pasted text")
    assert keys_down(chromium.display) == []


async def test_text_copied_in_the_page_is_read_back(client: Any, chromium: Chromium) -> None:
    await post(client, "/computer/clipboard/write", {"text": "something else"})
    copied = "copié depuis la page ✓ 漢字 🚀"
    await focused_field(client, chromium, copied)
    await post(client, "/computer/press_key", {"keys": ["ctrl+a", "ctrl+c"]})
    await async_wait_until(
        lambda: _clipboard_is(client, copied), timeout=10, what="the copied text")


async def _clipboard_is(client: Any, text: str) -> bool:
    return bool((await post(client, "/computer/clipboard/read"))["text"] == text)


def xclip_out(display: str, *args: str) -> bytes:
    env = {**os.environ, "DISPLAY": display}
    return subprocess.run(["xclip", "-selection", "clipboard", "-o", *args], env=env,
                          capture_output=True, timeout=10, check=True).stdout


@contextlib.contextmanager
def xclip_owning(display: str, data: bytes) -> Iterator[None]:
    """xclip as the clipboard owner (it serves requests until it loses the selection)."""
    env = {**os.environ, "DISPLAY": display}
    proc = subprocess.Popen(["xclip", "-selection", "clipboard", "-i", "-quiet"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.close()
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("size", [10, 300_000])
async def test_other_clients_read_and_write_it(client: Any, xvfb: Xvfb, size: int) -> None:
    text = ("Ünïcödé ✓ 日本 " * (size // 10 + 1))[:size]
    await post(client, "/computer/clipboard/write", {"text": text})
    assert xclip_out(xvfb.name, "-target", "UTF8_STRING").decode() == text
    targets = xclip_out(xvfb.name, "-target", "TARGETS").decode().split()
    assert "UTF8_STRING" in targets and "text/plain;charset=utf-8" in targets

    other = text[::-1]
    with xclip_owning(xvfb.name, other.encode()):
        await async_wait_until(lambda: _clipboard_is(client, other), timeout=10,
                               what="xclip's text")


async def test_empty_clipboard_reads_as_empty_text(make_client: Any) -> None:
    from helpers import running_xvfb

    with running_xvfb(320, 240) as server:
        c = await make_client(display=server.name, cdp_proxy_port=0)
        assert await post(c, "/computer/clipboard/read") == {"text": ""}
        # Writing "" replaces what was there (not a no-op that reads as empty by luck).
        await post(c, "/computer/clipboard/write", {"text": "not empty"})
        assert await post(c, "/computer/clipboard/read") == {"text": "not empty"}
        await post(c, "/computer/clipboard/write", {"text": ""})
        assert await post(c, "/computer/clipboard/read") == {"text": ""}
