"""What tests share besides fixtures: the test tokens, the screen size of the shared
display, and the type of the `make_client` fixture (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

# Tokens are at least 16 characters (shorter ones are refused at start).
ADMIN_TOKEN = "test-admin-token-0123456789"
WRITE_TOKEN = "test-write-token-0123456789"
READ_TOKEN = "test-read-token-0123456789"
TOKENS = {ADMIN_TOKEN: "admin", WRITE_TOKEN: "write", READ_TOKEN: "read"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}

SCREEN_W, SCREEN_H = 1280, 800

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]
