"""The X server going away and coming back, held keys on shutdown, cursor state."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from computer_support import buttons_down, keys_down, post
from helpers import Xvfb, async_wait_until, free_display

from agent.computer.manager import Computer

ENDPOINTS: list[tuple[str, dict[str, Any] | None]] = [
    ("/computer/click_mouse", {"x": 10, "y": 10}),
    ("/computer/type", {"text": "é"}),
    ("/computer/screenshot", None),
    ("/computer/get_mouse_position", None),
    ("/computer/clipboard/read", None),
    ("/computer/clipboard/write", {"text": "x"}),
    ("/computer/cursor", {"hidden": True}),
]


@pytest.fixture
def own_xvfb() -> Iterator[Xvfb]:
    """A private X server that this test may kill and restart."""
    server = Xvfb(free_display(), 640, 480)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_x_server_restart_gives_503_then_works(make_client: Any, own_xvfb: Xvfb) -> None:
    client = await make_client(display=own_xvfb.name, cdp_proxy_port=0)
    for path, body in ENDPOINTS:  # every connection opened and working
        await post(client, path, body)
    own_xvfb.stop()
    for path, body in ENDPOINTS:
        resp = await client.post(path, json=body)
        answer = await resp.json()
        assert resp.status == 503, (path, answer)
        assert answer["code"] == "display_unavailable"
    health = await client.get("/health")
    assert (await health.json())["display"]["ok"] is False
    own_xvfb.start()
    for path, body in ENDPOINTS:
        await post(client, path, body)
    assert await post(client, "/computer/get_mouse_position") == {"x": 10, "y": 10}
    assert await post(client, "/computer/clipboard/read") == {"text": "x"}
    await post(client, "/computer/cursor", {"hidden": False})


async def test_never_started_display_is_503(make_client: Any) -> None:
    client = await make_client(display=f":{free_display()}", cdp_proxy_port=0)
    answer = await post(client, "/computer/click_mouse", {"x": 1, "y": 1}, 503)
    assert answer["code"] == "display_unavailable"
    answer = await post(client, "/computer/screenshot", None, 503)
    assert answer["code"] == "display_unavailable"


async def test_shutdown_during_a_held_key_releases_it(own_xvfb: Xvfb) -> None:
    computer = Computer(own_xvfb.name)
    hold = asyncio.create_task(computer.perform(
        "press_key", {"keys": ["a", "ctrl+b"], "hold_keys": ["shift"], "duration": 20_000}))
    await async_wait_until(lambda: len(keys_down(own_xvfb.name)) == 4, timeout=5,
                           what="the keys to be held")
    await computer.close()
    with pytest.raises(Exception) as info:
        await hold
    assert getattr(info.value, "code", "") == "display_unavailable"
    assert keys_down(own_xvfb.name) == []
    assert buttons_down(own_xvfb.name) == 0


async def test_cursor_state_is_kept(make_client: Any, own_xvfb: Xvfb) -> None:
    client = await make_client(display=own_xvfb.name, cdp_proxy_port=0)
    assert await post(client, "/computer/cursor", {"hidden": True}) == {"ok": True}
    assert await post(client, "/computer/cursor", {"hidden": True}) == {"ok": True}
    await post(client, "/computer/move_mouse", {"x": 30, "y": 30, "smooth": False})
    assert await post(client, "/computer/cursor", {"hidden": False}) == {"ok": True}
    answer = await post(client, "/computer/cursor", {}, 400)
    assert answer["details"][0]["field"] == "hidden"
