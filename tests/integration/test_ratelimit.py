"""Rate limits seen from clients: headers that count down and reset, 429 `rate_limited`
with Retry-After, one bucket per token and class, streams counted once, /health exempt,
limits off. The limiter's clock is a test clock, so refills happen when the test says."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from common import READ, READ_TOKEN, WRITE, MakeClient

from agent.ratelimit import RATE_LIMITER

LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frozen(client: TestClient[Any, Any]) -> Clock:
    clock = Clock()
    client.app[RATE_LIMITER].clock = clock
    return clock


def counters(headers: Any) -> tuple[int, int, int]:
    limit, remaining, reset = (int(headers[name]) for name in LIMIT_HEADERS)
    return limit, remaining, reset


async def info(client: TestClient[Any, Any], path: str, headers: dict[str, str] | None = None
               ) -> tuple[int, Any, dict[str, Any]]:
    resp = await client.get("/fs/file_info", params={"path": path}, headers=headers)
    return resp.status, resp.headers, await resp.json()


async def test_a_burst_past_the_limit_gets_429_with_retry_after_and_the_headers_reset(
        make_client: MakeClient, tmp_path: Path) -> None:
    # 30 a minute = one every 2 s; bursts of 3.
    client = await make_client(rate_limit_read=(30, 3))
    clock = frozen(client)
    seen = []
    for _ in range(3):
        status, headers, _body = await info(client, str(tmp_path))
        assert status == 200
        seen.append(counters(headers))
    # Remaining counts down; Reset is the time until the bucket is full again (2 s each).
    assert seen == [(3, 2, 2), (3, 1, 4), (3, 0, 6)]

    status, headers, body = await info(client, str(tmp_path))
    assert status == 429
    assert body["code"] == "rate_limited" and "30 read requests a minute" in body["message"]
    assert headers["Retry-After"] == "2"
    assert counters(headers) == (3, 0, 6)

    clock.now += 1.5  # a quarter of a request short
    status, headers, _body = await info(client, str(tmp_path))
    assert (status, headers["Retry-After"]) == (429, "1")

    clock.now += 0.5  # now exactly one request has refilled
    status, headers, _body = await info(client, str(tmp_path))
    assert status == 200 and counters(headers) == (3, 0, 6)
    assert "Retry-After" not in headers

    clock.now += 6  # full again
    status, headers, _body = await info(client, str(tmp_path))
    assert status == 200 and counters(headers) == (3, 2, 2)


async def test_errors_carry_the_headers_and_count(make_client: MakeClient,
                                                  tmp_path: Path) -> None:
    client = await make_client(rate_limit_read=(60, 5))
    frozen(client)
    status, headers, body = await info(client, str(tmp_path / "missing"))
    assert status == 404 and body["code"] == "not_found"
    assert counters(headers)[:2] == (5, 4)
    status, headers, body = await info(client, "relative")
    assert status == 400 and counters(headers)[:2] == (5, 3)


async def test_each_token_and_class_has_its_own_bucket(make_client: MakeClient,
                                                       tmp_path: Path) -> None:
    client = await make_client(rate_limit_read=(60, 2), rate_limit_write=(60, 2))
    frozen(client)
    for _ in range(2):
        assert (await info(client, str(tmp_path), READ))[0] == 200
    assert (await info(client, str(tmp_path), READ))[0] == 429
    # Another token's reads are untouched, and so are the read token's own... writes
    # (which this token may not make: its 403 comes before any counting).
    status, headers, _body = await info(client, str(tmp_path), WRITE)
    assert status == 200 and counters(headers)[1] == 1
    resp = await client.put("/fs/create_directory", json={"path": str(tmp_path / "d")},
                            headers=WRITE)
    assert resp.status == 201 and counters(resp.headers)[1] == 1  # the write bucket
    resp = await client.put("/fs/create_directory", json={"path": str(tmp_path / "e")},
                            headers=READ)
    assert resp.status == 403 and "X-RateLimit-Limit" not in resp.headers
    assert (await info(client, str(tmp_path), READ))[0] == 429
    # Buckets are keyed by a digest: the token itself is kept nowhere in the limiter.
    assert READ_TOKEN not in repr(vars(client.app[RATE_LIMITER]))


async def test_process_starts_have_their_own_bucket(make_client: MakeClient) -> None:
    client = await make_client(rate_limit_write=(60, 5), rate_limit_process=(60, 1))
    frozen(client)
    resp = await client.post("/process/exec", json={"command": "true"})
    assert resp.status == 200 and counters(resp.headers)[:2] == (1, 0)
    resp = await client.post("/process/spawn", json={"command": "true"})
    assert resp.status == 429 and (await resp.json())["code"] == "rate_limited"
    assert resp.headers["Retry-After"] == "1"
    resp = await client.put("/fs/create_directory", json={"path": "/tmp"})
    assert resp.status == 201 and counters(resp.headers)[:2] == (5, 4)


async def test_a_stream_counts_once_when_it_opens(make_client: MakeClient,
                                                  tmp_path: Path) -> None:
    client = await make_client(rate_limit_read=(60, 10))
    frozen(client)
    resp = await client.post("/fs/watch", json={"path": str(tmp_path)})
    watch_id = (await resp.json())["watch_id"]
    async with client.get(f"/fs/watch/{watch_id}/events") as stream:
        # Starting the watch (a read) took one request, opening its stream one more.
        assert stream.status == 200 and counters(stream.headers)[1] == 8
        events = 0
        for i in range(20):
            (tmp_path / f"f{i}").write_text("x")
        async with asyncio.timeout(10):
            while events < 20:
                line = await stream.content.readline()
                if line.startswith(b"data: "):
                    if json.loads(line[6:]).get("type") == "CREATE":
                        events += 1
        status, headers, _body = await info(client, str(tmp_path))
        assert status == 200 and counters(headers)[1] == 7  # 20 events later: one more


async def test_health_is_exempt(make_client: MakeClient) -> None:
    client = await make_client(rate_limit_read=(60, 1))
    frozen(client)
    for _ in range(5):
        resp = await client.get("/health", headers=READ)
        assert resp.status in (200, 503)
        assert not any(name in resp.headers for name in LIMIT_HEADERS)


async def test_without_tokens_the_client_address_is_the_caller(make_client: MakeClient,
                                                               tmp_path: Path) -> None:
    client = await make_client(tokens={}, rate_limit_read=(60, 2))
    frozen(client)
    assert [(await info(client, str(tmp_path)))[0] for _ in range(3)] == [200, 200, 429]


async def test_unchecked_tokens_on_open_operations_share_the_address_bucket(
        make_client: MakeClient) -> None:
    # /spec.json needs no token, so a token sent to it is never checked: made-up tokens
    # must not each get a fresh bucket.
    client = await make_client(rate_limit_read=(60, 2))
    frozen(client)
    statuses = []
    for i in range(3):
        resp = await client.get("/spec.json", headers={"Authorization": f"Bearer made-up-{i}"})
        statuses.append(resp.status)
    assert statuses == [200, 200, 429]
    assert len(client.app[RATE_LIMITER]) == 1


async def test_limits_off_means_no_headers_and_no_429(make_client: MakeClient,
                                                      tmp_path: Path) -> None:
    client = await make_client(rate_limits=False, rate_limit_read=(60, 1))
    assert RATE_LIMITER not in client.app
    for _ in range(5):
        status, headers, _body = await info(client, str(tmp_path))
        assert status == 200
        assert not any(name in headers for name in LIMIT_HEADERS)
