"""Shared fixtures: a real Xvfb, a real Chromium on it, and the real app under test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from common import ADMIN, SCREEN_H, SCREEN_W, TOKENS, MakeClient
from helpers import Chromium, Xvfb, running_chromium, running_xvfb
from process_helpers import browser_user, ensure_user

from agent.app import create_app, limit_connections, server_options
from agent.config import make_settings


@pytest.fixture(scope="session")
def xvfb() -> Iterator[Xvfb]:
    with running_xvfb(SCREEN_W, SCREEN_H) as server:
        yield server


@pytest.fixture(scope="session")
def chromium(xvfb: Xvfb) -> Iterator[Chromium]:
    with running_chromium(xvfb.name, SCREEN_W, SCREEN_H) as browser:
        yield browser


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A fresh directory per test that the browser user owns, as its home would be: file
    operations act as that user, and pytest's own temporary directories are root's
    alone (mode 0700)."""
    base = Path(tempfile.mkdtemp(prefix="agent-test-"))
    user = browser_user()
    if user is not None:
        entry = ensure_user(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """`client = await make_client(display=..., cdp_address=...)`: the real app, real
    settings (tokens: TOKENS unless `tokens=` says otherwise; as root, the browser user
    is process_helpers.TEST_USER unless `default_user=` says otherwise); requests go to
    127.0.0.1 and send the admin token by default."""
    clients: list[TestClient[Any, Any]] = []

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        overrides.setdefault("tokens", TOKENS)
        overrides.setdefault("display", ":0")
        overrides.setdefault("cdp_proxy_port", 0)  # the public DevTools endpoint: off
        # pytest's own children (Xvfb, Chromium, supervisord) are not the daemon's: an app
        # hosted in this process must not take them for adopted orphans.
        overrides.setdefault("adopt_orphans", False)
        overrides.setdefault("default_user", browser_user())
        settings = make_settings(**overrides)
        server = TestServer(create_app(settings))
        # The server options of __main__ (TestServer passes them on from start_server,
        # and adds handler_cancellation itself), and its connection limit.
        options = {k: v for k, v in server_options(settings).items()
                   if k != "handler_cancellation"}
        await server.start_server(**options)
        assert server.runner is not None and server.runner.server is not None
        limit_connections(server.runner.server, settings.max_connections)
        client: TestClient[Any, Any] = TestClient(
            server, headers=ADMIN if settings.tokens else None)
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
