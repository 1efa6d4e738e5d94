"""The edges of authentication: malformed credentials, ?token= only on a real WebSocket
upgrade, deeply nested JSON, JSON without its Content-Type, and start-up refusals."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from common import ADMIN, READ, READ_TOKEN, WRITE_TOKEN, MakeClient
from process_helpers import spawn
from support import run_daemon_to_exit


async def raw_request(host: str, port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head)
    answer = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    return answer


async def test_malformed_authorization_is_a_401(make_client: MakeClient) -> None:
    client = await make_client()
    host, port = client.server.host, client.server.port
    for value in (b"Bearer \xff", b"Bearer \xff\xfe-0123456789abcdef", b"Basic abc",
                  b"Bearer", b"Bearer tok en with spaces"):
        answer = await raw_request(host, port, b"POST /computer/get_mouse_position HTTP/1.1\r\n"
                                   b"Host: 127.0.0.1\r\nConnection: close\r\n"
                                   b"Authorization: " + value + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401"), (value, answer[:300])
        assert b'"unauthorized"' in answer


async def test_query_tokens_only_on_a_real_websocket_upgrade(make_client: MakeClient) -> None:
    client = await make_client()
    no_auth = {"Authorization": ""}
    # Not a WebSocket endpoint: the query token is ignored, even with upgrade headers.
    for headers in ({}, {"Upgrade": "websocket"},
                    {"Upgrade": "websocket", "Connection": "Upgrade",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                     "Sec-WebSocket-Version": "13"}):
        resp = await client.get(f"/fs/list_files?path=/tmp&token={READ_TOKEN}",
                                headers={**no_auth, **headers})
        assert resp.status == 401, headers
    process_id = await spawn(client, command="sleep", args=["30"])
    url = f"/process/{process_id}/attach?token={WRITE_TOKEN}"
    # The WebSocket endpoint, but a plain GET (a header claiming an upgrade is not one).
    resp = await client.get(url, headers={**no_auth, "Upgrade": "websocket"})
    assert resp.status == 401
    async with client.ws_connect(url, headers=no_auth) as ws:  # a real upgrade
        assert not ws.closed
    await client.post(f"/process/{process_id}/kill", json={"signal": "KILL"})


async def test_deeply_nested_json_is_a_400(make_client: MakeClient) -> None:
    client = await make_client()
    for depth in (100_000, 65):
        body = b"[" * depth + b"]" * depth
        resp = await client.post("/process/exec", data=body,
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 400, depth
        assert "nested" in (await resp.json())["message"]
    nested: object = "x"
    for _ in range(60):  # deep, but under the limit: validated as usual
        nested = [nested]
    resp = await client.post("/process/exec", json={"command": "true", "args": nested})
    assert (resp.status == 400 and (await resp.json())["code"] == "invalid_field") or \
        resp.status == 400


async def test_json_needs_its_content_type(make_client: MakeClient) -> None:
    client = await make_client()
    marker = f"/tmp/agent-sec-{uuid.uuid4().hex}"
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x"):
        resp = await client.post("/process/exec",
                                 data=f'{{"command": "touch", "args": ["{marker}"]}}',
                                 headers={**ADMIN, "Content-Type": content_type})
        assert resp.status == 415
        body = await resp.json()
        assert body["code"] == "unsupported_media_type" and "--json" in body["message"]
    assert not await asyncio.to_thread(os.path.exists, marker)


async def test_health_without_a_token_says_only_ok_or_degraded(
        make_client: MakeClient) -> None:
    client = await make_client(display=":499")
    resp = await client.get("/health", headers={"Authorization": ""})
    assert resp.status == 503 and await resp.json() == {"status": "degraded"}
    resp = await client.get("/health", headers=READ)
    body = await resp.json()
    assert body["status"] == "degraded" and body["display"]["ok"] is False


@pytest.mark.parametrize(("env", "message"), [
    ({"AGENT_API_TOKENS": "a-long-enough-token-123:superuser"}, "unknown scope 'superuser'"),
    ({"AGENT_API_TOKEN": "Zq9xW"}, "shorter than 16 characters"),
    ({"AGENT_API_TOKENS": "a-long-enough-token-123:read,tiny:write"}, "shorter than 16"),
])
def test_bad_tokens_are_refused_at_start(env: dict[str, str], message: str) -> None:
    code, out = run_daemon_to_exit([], {**env, "AGENT_DEFAULT_USER": "nobody"})
    assert code == 2 and message in out, out
    for value in env.values():
        assert value.split(":")[0] not in out  # no token echoed


@pytest.mark.skipif(os.geteuid() != 0, reason="only root must name a browser user")
def test_root_without_a_browser_user_is_refused_at_start() -> None:
    code, out = run_daemon_to_exit([], {})
    assert code == 2 and "AGENT_DEFAULT_USER" in out and "root" in out, out
