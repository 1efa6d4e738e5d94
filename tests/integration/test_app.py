"""The foundation seen from a client: auth and scopes, the Error JSON for every failure,
request ids, the /browsers/{id} aliases, /health, and the spec matching the routes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import psutil
import pytest
import yaml
from common import READ, TOKENS, WRITE, MakeClient
from helpers import Chromium, Xvfb, assert_error, free_port, wait_until
from process_helpers import browser_user, browser_user_env

from agent.app import create_app
from agent.config import make_settings
from agent.openapi import operations
from agent.spec import ALIAS_PREFIX


def served_routes() -> set[tuple[str, str]]:
    app = create_app(make_settings(tokens=TOKENS, default_user=browser_user()))
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        if path.startswith("/browsers/"):
            continue
        routes.add((route.method.lower(), path))
    return routes


def test_every_route_is_in_the_spec_and_every_spec_route_is_served() -> None:
    served = served_routes()
    documented = set(operations())
    assert served - documented == set(), "routes missing from agent/openapi.yaml"
    assert documented - served == set(), "spec names routes the daemon does not serve"


def test_every_operation_declares_its_scope() -> None:
    for (method, path), op in operations().items():
        assert op.scope in ("none", "read", "write", "admin"), (method, path)
        if op.scope == "none":
            assert op.raw.get("security") == [], f"{method} {path} is open but not security: []"


def test_every_route_has_a_browser_alias() -> None:
    app = create_app(make_settings(tokens=TOKENS, default_user=browser_user()))
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    for _method, path in served_routes():
        assert ALIAS_PREFIX + path in paths


async def test_spec_is_served_as_yaml_and_json(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/spec.json", headers={"Authorization": ""})
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    resp = await client.get("/spec.yaml", headers={"Authorization": ""})
    assert resp.status == 200
    assert resp.content_type == "application/yaml"
    assert yaml.safe_load(await resp.text()) == doc


async def test_health_is_open_and_reports_display_and_devtools(
    make_client: MakeClient, xvfb: Xvfb, chromium: Chromium
) -> None:
    client = await make_client(display=xvfb.name, cdp_address=chromium.address)
    resp = await client.get("/health", headers={"Authorization": ""})
    body = await resp.json()
    assert resp.status == 200, body
    assert body == {"status": "ok"}  # without a token: nothing but ok/degraded
    resp = await client.get("/health", headers=READ)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["status"] == "ok"
    assert body["display"]["ok"] is True
    assert body["devtools"]["ok"] is True
    assert body["version"]
    resp = await client.get("/health", headers={"Authorization": "Bearer wrong-but-long-0123"})
    assert resp.status == 401


async def test_health_degraded_when_components_are_down(make_client: MakeClient) -> None:
    dead_port = free_port()
    client = await make_client(display=":499", cdp_address=f"127.0.0.1:{dead_port}")
    resp = await client.get("/health")
    body = await resp.json()
    assert resp.status == 503
    assert body["status"] == "degraded"
    assert body["display"]["ok"] is False and body["display"]["error"]
    assert body["devtools"]["ok"] is False and body["devtools"]["error"]


async def test_missing_and_wrong_tokens_are_401(make_client: MakeClient, xvfb: Xvfb) -> None:
    client = await make_client(display=xvfb.name)
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"},
                    {"Authorization": "Basic dGVzdDp0ZXN0"}):
        resp = await client.post("/computer/get_mouse_position", headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert_error(await resp.json(), "unauthorized")


async def test_scopes(make_client: MakeClient, xvfb: Xvfb) -> None:
    client = await make_client(display=xvfb.name)
    # read token: reads pass, writes are 403
    resp = await client.post("/computer/get_mouse_position", headers=READ)
    assert resp.status == 200, await resp.text()
    resp = await client.post("/computer/click_mouse", json={"x": 1, "y": 1}, headers=READ)
    assert resp.status == 403
    body = await resp.json()
    assert_error(body, "forbidden")
    assert "write" in body["message"]
    # write token may act
    resp = await client.post("/computer/move_mouse", json={"x": 3, "y": 4, "smooth": False},
                             headers=WRITE)
    assert resp.status == 200, await resp.text()


async def test_without_tokens_everything_is_allowed_on_loopback(
    make_client: MakeClient, xvfb: Xvfb
) -> None:
    client = await make_client(display=xvfb.name, tokens={})
    resp = await client.post("/computer/get_mouse_position")
    assert resp.status == 200


async def test_unknown_route_and_method_are_json(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/no/such/thing")
    assert resp.status == 404
    assert_error(await resp.json(), "not_found")
    resp = await client.get("/computer/click_mouse")
    assert resp.status == 405
    assert_error(await resp.json(), "method_not_allowed")


async def test_bad_bodies_are_400_naming_the_field(make_client: MakeClient, xvfb: Xvfb) -> None:
    client = await make_client(display=xvfb.name)
    resp = await client.post("/computer/click_mouse", data=b"{not json",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request")

    resp = await client.post("/computer/click_mouse", json={"x": "ten", "y": 1})
    body = await resp.json()
    assert resp.status == 400
    assert [d["field"] for d in body["details"]] == ["x"]

    resp = await client.post("/computer/click_mouse", json={"x": 1})
    body = await resp.json()
    assert resp.status == 400
    assert body["details"][0]["field"] == "y"
    assert body["details"][0]["code"] == "missing_field"

    resp = await client.post("/computer/click_mouse", json={"x": 1, "y": 1, "bogus": True})
    body = await resp.json()
    assert resp.status == 400
    assert body["details"][0]["field"] == "bogus"

    resp = await client.post("/computer/click_mouse", json=[1, 2])
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request")

    resp = await client.post("/computer/batch", json={"actions": [
        {"type": "click_mouse", "click_mouse": {"x": 1, "y": "2"}}]})
    body = await resp.json()
    assert resp.status == 400
    assert body["details"][0]["field"] == "actions.0.click_mouse.y"


async def test_oversized_json_body_is_413(make_client: MakeClient, xvfb: Xvfb) -> None:
    client = await make_client(display=xvfb.name, max_body_bytes=1024)
    resp = await client.post("/computer/type", json={"text": "x" * 4096})
    assert resp.status == 413
    assert_error(await resp.json(), "payload_too_large")


async def test_request_id_is_kept_or_made_and_logged(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client()
    with caplog.at_level(logging.INFO, logger="agent.access"):
        resp = await client.get("/spec.json", headers={"X-Request-Id": "abc-123"})
        assert resp.headers["X-Request-Id"] == "abc-123"
        resp = await client.get("/nope", headers={"X-Request-Id": "bad id\twith spaces"})
        made = resp.headers["X-Request-Id"]
        assert made != "bad id\twith spaces" and len(made) == 32
        assert_error(await resp.json(), "not_found")
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.access"]
    assert len(lines) == 2
    assert "GET /spec.json 200" in lines[0] and "rid=abc-123" in lines[0]
    assert "GET /nope 404" in lines[1] and f"rid={made}" in lines[1]


async def test_browser_alias_and_id_check(make_client: MakeClient, xvfb: Xvfb) -> None:
    client = await make_client(display=xvfb.name, browser_id="b-1")
    resp = await client.post("/browsers/b-1/computer/get_mouse_position")
    assert resp.status == 200
    assert set(await resp.json()) == {"x", "y"}
    resp = await client.post("/browsers/other/computer/get_mouse_position")
    assert resp.status == 404
    assert_error(await resp.json(), "not_found")
    # without a configured id any id is accepted
    client = await make_client(display=xvfb.name)
    resp = await client.post("/browsers/whatever/computer/get_mouse_position")
    assert resp.status == 200


def run_daemon(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        env={**os.environ, **browser_user_env(), **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )


def test_refuses_to_start_on_a_public_address_without_token() -> None:
    proc = run_daemon("--host", "0.0.0.0", "--port", str(free_port()))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "without an API token" in out and "--allow-unauthenticated" in out


def listening_addresses(pid: int, port: int) -> set[str]:
    try:
        conns = psutil.Process(pid).net_connections(kind="inet")
    except psutil.NoSuchProcess:
        return set()
    return {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, {"127.0.0.1"}),
        (("--allow-unauthenticated", "--host", "0.0.0.0"), {}, {"0.0.0.0"}),
        ((), {"AGENT_API_TOKEN": "listen-test-token-0123456789"}, {"0.0.0.0"}),
    ],
)
def test_listen_address_defaults(args: tuple[str, ...], env: dict[str, str],
                                 expected: set[str]) -> None:
    port = free_port()
    proc = run_daemon("--port", str(port), *args, env={"AGENT_HOST": "", **env})
    try:
        found = wait_until(lambda: listening_addresses(proc.pid, port), timeout=30,
                           what="the daemon to listen")
        assert found == expected
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "listen-test-token" not in out  # the token is never logged


def test_help_documents_every_option() -> None:
    from agent.config import OPTIONS

    out = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for opt in OPTIONS:
        assert opt.flag in out and opt.env in out


async def test_integral_floats_are_integers(make_client: MakeClient, xvfb: Xvfb) -> None:
    """3.0 is an integer to JSON Schema, so the handlers must take it as 3 (never a 500);
    3.5 is not."""
    client = await make_client(display=xvfb.name)
    resp = await client.post("/computer/move_mouse", json={"x": 3.0, "y": 4, "smooth": False})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/computer/get_mouse_position")
    assert await resp.json() == {"x": 3, "y": 4}
    resp = await client.post("/computer/screenshot",
                             json={"scale_to": {"width": 120, "height": 50.0}})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/computer/move_mouse", json={"x": 3.5, "y": 4, "smooth": False})
    body = await resp.json()
    assert resp.status == 400, body
    assert body["details"][0]["field"] == "x"
