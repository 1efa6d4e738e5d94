"""Shared fixtures: a real Xvfb, a real Chromium on it, and the real app under test."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).parent))

from helpers import Chromium, Xvfb, running_chromium, running_xvfb

from agent.app import create_app
from agent.config import make_settings

TOKENS = {"test-admin": "admin", "test-write": "write", "test-read": "read"}
ADMIN = {"Authorization": "Bearer test-admin"}
WRITE = {"Authorization": "Bearer test-write"}
READ = {"Authorization": "Bearer test-read"}

SCREEN_W, SCREEN_H = 1280, 800


@pytest.fixture(scope="session")
def xvfb() -> Iterator[Xvfb]:
    with running_xvfb(SCREEN_W, SCREEN_H) as server:
        yield server


@pytest.fixture(scope="session")
def chromium(xvfb: Xvfb) -> Iterator[Chromium]:
    with running_chromium(xvfb.name, SCREEN_W, SCREEN_H) as browser:
        yield browser


MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """`client = await make_client(display=..., cdp_address=...)`: the real app, real
    settings (tokens: test-admin/test-write/test-read unless `tokens=` says otherwise);
    requests send the admin token by default."""
    clients: list[TestClient[Any, Any]] = []

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        overrides.setdefault("tokens", TOKENS)
        overrides.setdefault("display", ":0")
        overrides.setdefault("cdp_proxy_port", 0)  # the public DevTools endpoint: off
        # pytest's own children (Xvfb, Chromium, supervisord) are not the daemon's: an app
        # hosted in this process must not take them for adopted orphans.
        overrides.setdefault("adopt_orphans", False)
        settings = make_settings(**overrides)
        client: TestClient[Any, Any] = TestClient(
            TestServer(create_app(settings), handler_cancellation=True),  # as __main__
            headers=ADMIN if settings.tokens else None,
        )
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
