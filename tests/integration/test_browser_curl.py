"""POST /curl against local servers, made by the real Chromium: what the servers receive,
what comes back, and that the screen does not change."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from browser_support import (
    BINARY,
    Recorder,
    browser_ws,
    origin_app,
    proxy_app,
    screenshot,
    serving,
)
from common import READ, SCREEN_H, SCREEN_W, MakeClient
from helpers import Chromium, Xvfb, async_wait_until, free_port, running_chromium

Api = TestClient[Any, Any]


@pytest.fixture
async def origin() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    async with serving(origin_app(recorder)) as url:
        try:
            yield url, recorder
        finally:
            recorder.release.set()


@pytest.fixture
async def api(make_client: MakeClient, xvfb: Xvfb, chromium: Chromium) -> Api:
    return await make_client(display=xvfb.name, cdp_address=chromium.address,
                             cdp_proxy_port=0)


async def stable_screenshot(display: str, timeout: float = 15.0) -> bytes:
    """A screenshot equal to the one taken a moment before it."""
    deadline = time.monotonic() + timeout
    previous = await asyncio.to_thread(screenshot, display)
    while True:
        await asyncio.sleep(0.3)
        current = await asyncio.to_thread(screenshot, display)
        if current == previous:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"the screen did not settle within {timeout}s")
        previous = current


async def curl(api: Api, **body: Any) -> tuple[int, dict[str, Any]]:
    resp = await api.post("/curl", json=body)
    assert resp.content_type == "application/json"
    return resp.status, await resp.json()


def header_values(seen: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in seen["headers"] if k.lower() == name.lower()]


async def test_get_answers_status_headers_body_and_duration(
        api: Api, origin: tuple[str, Recorder]) -> None:
    url, recorder = origin
    status, result = await curl(api, url=f"{url}/echo?x=1")
    assert status == 200, result
    assert set(result) == {"status", "headers", "body", "duration_ms"}
    assert result["status"] == 200
    assert result["headers"]["Content-Type"] == ["application/json; charset=utf-8"]
    seen = json.loads(result["body"])
    assert seen["method"] == "GET" and seen["path"] == "/echo?x=1"
    assert isinstance(result["duration_ms"], int) and 0 <= result["duration_ms"] < 10_000
    # Chromium's own request: its user agent and fetch metadata, not a Python client's.
    assert "Chrome/" in header_values(seen, "User-Agent")[0]
    assert header_values(seen, "Sec-Fetch-Mode") == ["navigate"]
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                    "OPTIONS"])
async def test_every_method_reaches_the_server(
        api: Api, origin: tuple[str, Recorder], method: str) -> None:
    url, recorder = origin
    body = {"body": f"payload of {method}"} if method not in ("GET", "HEAD") else {}
    status, result = await curl(api, url=f"{url}/echo", method=method, **body)
    assert status == 200, result
    assert result["status"] == 200
    assert recorder.requests[-1]["method"] == method
    if method == "HEAD":
        assert result["body"] == ""
    else:
        assert json.loads(result["body"])["method"] == method
    if body:
        assert recorder.requests[-1]["body"] == body["body"]


async def test_post_body_and_custom_headers_arrive_merged_with_the_browsers(
        api: Api, origin: tuple[str, Recorder]) -> None:
    url, recorder = origin
    payload = json.dumps({"name": "Zoë", "n": [1, 2, 3]})
    status, result = await curl(api, url=f"{url}/echo", method="POST", body=payload, headers={
        "Content-Type": "application/json", "X-Custom": "yes, custom",
        "accept": "application/json",
    })
    assert status == 200, result
    seen = recorder.requests[-1]
    assert seen["body"] == payload
    assert header_values(seen, "X-Custom") == ["yes, custom"]
    assert header_values(seen, "Content-Type") == ["application/json"]
    # A custom header replaces the browser's of the same name (whatever its case) ...
    assert header_values(seen, "Accept") == ["application/json"]
    # ... and the browser's other headers stay.
    assert "Chrome/" in header_values(seen, "User-Agent")[0]
    assert header_values(seen, "Accept-Language")


async def test_a_cookie_of_the_browser_profile_is_sent(
        api: Api, origin: tuple[str, Recorder], chromium: Chromium) -> None:
    url, recorder = origin
    value = f"v{time.monotonic_ns()}"
    await chromium.cdp("Storage.setCookies", {"cookies": [
        {"name": "profile_cookie", "value": value, "domain": "127.0.0.1", "path": "/"},
    ]}, ws_url=await browser_ws(chromium))
    status, result = await curl(api, url=f"{url}/echo")
    assert status == 200, result
    cookies = "; ".join(header_values(recorder.requests[-1], "Cookie"))
    assert f"profile_cookie={value}" in cookies


async def test_every_set_cookie_is_reported_and_lands_in_the_profile(
        api: Api, origin: tuple[str, Recorder], chromium: Chromium) -> None:
    url, _ = origin
    status, result = await curl(api, url=f"{url}/set-cookies")
    assert status == 200, result
    assert result["headers"]["Set-Cookie"] == [
        "first=1; Path=/", "second=2; Path=/; HttpOnly", "third=3; Path=/; SameSite=Strict"]
    assert result["headers"]["X-Multi"] == ["a", "b"]
    jar = await chromium.cdp("Storage.getCookies", {}, ws_url=await browser_ws(chromium))
    names = {c["name"]: c["value"] for c in jar["cookies"] if c["domain"] == "127.0.0.1"}
    assert names["first"] == "1" and names["second"] == "2" and names["third"] == "3"


async def test_a_binary_body_round_trips_in_base64(
        api: Api, origin: tuple[str, Recorder]) -> None:
    url, _ = origin
    status, result = await curl(api, url=f"{url}/binary", response_encoding="base64")
    assert status == 200, result
    assert base64.b64decode(result["body"]) == BINARY


async def test_a_compressed_body_comes_back_decoded(
        api: Api, origin: tuple[str, Recorder]) -> None:
    url, _ = origin
    status, result = await curl(api, url=f"{url}/compressed")
    assert status == 200, result
    assert result["body"] == "squeezed " * 1000
    assert result["headers"]["Content-Encoding"][0] in ("gzip", "deflate", "br", "zstd")


async def test_a_refused_port_is_a_502_with_chromiums_net_error(api: Api) -> None:
    status, result = await curl(api, url=f"http://127.0.0.1:{free_port()}/")
    assert status == 502, result
    assert result["net_error"] == -102
    assert result["net_error_name"] == "net::ERR_CONNECTION_REFUSED"
    assert "ERR_CONNECTION_REFUSED" in result["message"]


async def test_tls_is_chromiums_a_self_signed_certificate_is_refused(
        api: Api, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    await asyncio.to_thread(subprocess.run, [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-days", "1", "-keyout", str(key), "-out", str(cert)], check=True,
        capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="over tls")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        status, result = await curl(api, url=f"https://127.0.0.1:{port}/")
    finally:
        await runner.cleanup()
    assert status == 502, result
    assert result["net_error_name"] == "net::ERR_CERT_AUTHORITY_INVALID"
    assert result["net_error"] == -202


async def test_a_slow_server_hits_the_timeout_as_a_504(
        api: Api, origin: tuple[str, Recorder]) -> None:
    url, recorder = origin
    started = time.monotonic()
    status, result = await curl(api, url=f"{url}/slow", timeout_ms=1000)
    elapsed = time.monotonic() - started
    assert status == 504, result
    assert result["code"] == "gateway_timeout"
    assert "1000 ms" in result["message"]
    assert 1.0 <= elapsed < 5.0
    assert recorder.requests[-1]["path"] == "/slow"  # it did go out, and was cut


async def test_redirects_are_followed_like_the_browser_follows_them(
        api: Api, origin: tuple[str, Recorder]) -> None:
    url, recorder = origin
    # 302 after POST: the browser goes on with a GET; the custom header goes along.
    status, result = await curl(api, url=f"{url}/redirect/302", method="POST", body="x",
                                headers={"X-Hop": "every"})
    assert status == 200, result
    final = json.loads(result["body"])
    assert final["method"] == "GET" and final["path"] == "/echo?redirected=1"
    assert header_values(final, "X-Hop") == ["every"]
    # 307 keeps the method and the body.
    status, result = await curl(api, url=f"{url}/redirect/307", method="PUT", body="kept")
    assert status == 200, result
    assert recorder.requests[-1]["method"] == "PUT"
    assert recorder.requests[-1]["body"] == "kept"


@pytest.mark.parametrize("code", [301, 302, 303])
async def test_a_post_redirected_by_301_302_or_303_goes_on_as_a_get(
        api: Api, origin: tuple[str, Recorder], code: int) -> None:
    url, recorder = origin
    status, result = await curl(api, url=f"{url}/redirect/{code}", method="POST", body="x")
    assert status == 200, result
    assert [(seen["method"], seen["path"]) for seen in recorder.requests] == [
        ("GET", "/echo?redirected=1")]
    assert recorder.requests[0]["body"] == ""


async def test_credentials_stay_with_the_origin_across_redirects(
        api: Api, origin: tuple[str, Recorder]) -> None:
    """Authorization and Cookie given in `headers` follow a redirect within the origin and
    are dropped once it leaves; other custom headers go everywhere."""
    url, recorder = origin
    other_recorder = Recorder()
    sent = {"Authorization": "Bearer for-the-origin-only", "Cookie": "given=by-the-caller",
            "X-Hop": "every"}
    async with serving(origin_app(other_recorder)) as other:
        assert other.split(":")[-1] != url.split(":")[-1]  # another port: another origin
        for target, seen_by in ((f"{url}/echo", recorder), (f"{other}/echo", other_recorder)):
            status, result = await curl(api, url=f"{url}/redirect-to?to={target}",
                                        headers=sent)
            assert status == 200, result
            landed = seen_by.requests[-1]
            assert header_values(landed, "X-Hop") == ["every"]
            cookies = "; ".join(header_values(landed, "Cookie"))
            if seen_by is recorder:
                assert header_values(landed, "Authorization") == [sent["Authorization"]]
                assert "given=by-the-caller" in cookies
            else:
                assert header_values(landed, "Authorization") == []
                assert "given=by-the-caller" not in cookies


async def test_nineteen_redirects_are_followed_and_the_twentieth_is_an_error(
        api: Api, origin: tuple[str, Recorder]) -> None:
    url, recorder = origin
    status, result = await curl(api, url=f"{url}/chain/19")
    assert status == 200, result
    assert recorder.requests[-1]["path"] == "/echo?chain=end"
    recorder.requests.clear()
    status, result = await curl(api, url=f"{url}/chain/20")
    assert status == 502, result
    assert "ERR_TOO_MANY_REDIRECTS" in result["message"]
    assert recorder.requests == []  # it never landed


async def test_the_browsers_cache_is_bypassed(
        api: Api, chromium: Chromium, origin: tuple[str, Recorder]) -> None:
    """An answer cacheable for an hour, loaded by a page first: every /curl still reaches
    the server, asking it not to answer from a cache either."""
    url, recorder = origin
    await chromium.cdp("Page.navigate", {"url": f"{url}/cached"})
    await async_wait_until(lambda: chromium.evaluate(
        "document.readyState === 'complete' && document.body.innerText === 'served 1'"),
        what="the page to show the cacheable answer")
    bodies = []
    for _ in range(2):
        status, result = await curl(api, url=f"{url}/cached")
        assert status == 200, result
        bodies.append(result["body"])
    assert bodies == ["served 2", "served 3"]
    for seen in recorder.requests[1:]:
        assert header_values(seen, "Cache-Control") == ["no-cache"]


async def test_an_empty_answer_has_an_empty_body(
        api: Api, origin: tuple[str, Recorder]) -> None:
    url, _ = origin
    status, result = await curl(api, url=f"{url}/no-content")
    assert status == 200, result
    assert result["status"] == 204 and result["body"] == ""


async def test_concurrent_requests_each_get_their_own_answer(
        api: Api, origin: tuple[str, Recorder]) -> None:
    url, _ = origin
    answers = await asyncio.gather(*(curl(api, url=f"{url}/echo?n={n}") for n in range(6)))
    for n, (status, result) in enumerate(answers):
        assert status == 200, result
        assert json.loads(result["body"])["path"] == f"/echo?n={n}"


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "ftp://127.0.0.1/x"}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": "http://127.0.0.1/", "body": "x"}, "body"),
    ({"url": "http://127.0.0.1/", "method": "HEAD", "body": "x"}, "body"),
    ({"url": "http://127.0.0.1/", "headers": {"Host": "other"}}, "headers.Host"),
    ({"url": "http://127.0.0.1/", "headers": {"X-Bad": "a\r\nInjected: 1"}}, "headers.X-Bad"),
    ({"url": "http://127.0.0.1/", "headers": {"Bad Name": "x"}}, "headers.Bad Name"),
    ({"url": "http://127.0.0.1/", "timeout_ms": 999}, "timeout_ms"),
    ({"url": "http://127.0.0.1/", "method": "TRACE"}, "method"),
    ({"url": "http://127.0.0.1/", "response_encoding": "hex"}, "response_encoding"),
    ({"url": "http://127.0.0.1/", "follow": True}, "follow"),
    ({}, "url"),
])
async def test_bad_requests_are_400s_naming_the_field(
        api: Api, body: dict[str, Any], field: str) -> None:
    status, result = await curl(api, **body)
    assert status == 400, result
    assert result["code"] == "bad_request"
    assert field in [d["field"] for d in result["details"]]


async def test_curl_needs_the_write_scope(api: Api, origin: tuple[str, Recorder]) -> None:
    url, recorder = origin
    resp = await api.post("/curl", json={"url": f"{url}/echo"}, headers=READ)
    assert resp.status == 403
    assert (await resp.json())["code"] == "forbidden"
    assert recorder.requests == []


async def test_a_curl_changes_nothing_on_screen(
        api: Api, origin: tuple[str, Recorder], chromium: Chromium, xvfb: Xvfb) -> None:
    url, recorder = origin
    await chromium.open("<body style='margin:0;background:#2a6'>"
                        "<h1 style='color:#fff'>the user's tab</h1></body>")
    pages_before = [t["id"] for t in await asyncio.to_thread(chromium.http_json, "/json/list")
                    if t["type"] == "page"]
    # The browser's own UI settles after a navigation (the omnibox's security chip
    # slides in): start from a screen that stays the same.
    before = await stable_screenshot(xvfb.name)
    # While a request is in flight ...
    slow = asyncio.create_task(curl(api, url=f"{url}/slow", timeout_ms=3000))
    await async_wait_until(lambda: any(r["path"] == "/slow" for r in recorder.requests),
                           timeout=10, what="the slow request to reach the server")
    during = await asyncio.to_thread(screenshot, xvfb.name)
    recorder.release.set()
    status, _ = await slow
    assert status == 200
    # ... and after complete ones.
    for path in ("/echo", "/binary", "/set-cookies"):
        status, _ = await curl(api, url=url + path)
        assert status == 200
    after = await asyncio.to_thread(screenshot, xvfb.name)
    assert len(before) == SCREEN_W * SCREEN_H * 3
    assert during == before, "the screen changed while a curl was in flight"
    assert after == before, "the screen changed after curl calls"
    pages_after = [t["id"] for t in await asyncio.to_thread(chromium.http_json, "/json/list")
                   if t["type"] == "page"]
    assert pages_after == pages_before
    assert await chromium.evaluate("document.visibilityState") == "visible"


async def test_the_request_goes_through_the_browsers_proxy(
        make_client: MakeClient, xvfb: Xvfb, origin: tuple[str, Recorder]) -> None:
    origin_url, origin_recorder = origin
    recorder = Recorder()
    async with serving(proxy_app(recorder)) as proxy_url:
        proxy = proxy_url.removeprefix("http://")
        flags = (f"--proxy-server=http://{proxy}", "--proxy-bypass-list=<-loopback>")
        with running_chromium(xvfb.name, 800, 600, extra_flags=flags) as proxied:
            api = await make_client(display=xvfb.name, cdp_address=proxied.address,
                                    cdp_proxy_port=0)
            for target in (f"{origin_url}/echo", "http://curl-via-proxy.invalid/a?b=c"):
                status, result = await curl(api, url=target)
                assert status == 200, result
                assert json.loads(result["body"])["via"] == "test-proxy"
                assert recorder.requests[-1]["url"] == target
    assert origin_recorder.requests == []  # the origin never saw it directly


async def test_health_reports_the_devtools_connection(
        make_client: MakeClient, xvfb: Xvfb, chromium: Chromium) -> None:
    api = await make_client(display=xvfb.name, cdp_address=chromium.address,
                            cdp_proxy_port=0)

    async def devtools() -> dict[str, Any]:
        body = await (await api.get("/health")).json()
        return dict(body["devtools"])

    await async_wait_until(lambda: _connected(devtools()), timeout=10,
                           what="the DevTools connection")
    state = await devtools()
    assert state["ok"] is True and state["state"] == "connected"
    assert state["browser"].startswith("Chrome/")
    assert state["proxy"] == "off"


async def _connected(state: Any) -> bool:
    return bool((await state)["ok"])


async def test_without_chromium_health_is_degraded_and_curl_a_503(
        make_client: MakeClient, xvfb: Xvfb) -> None:
    dead = f"127.0.0.1:{free_port()}"
    api = await make_client(display=xvfb.name, cdp_address=dead, cdp_proxy_port=0)
    resp = await api.get("/health")
    assert resp.status == 503
    devtools = (await resp.json())["devtools"]
    assert devtools["ok"] is False and devtools["address"] == dead
    assert devtools["state"] in ("connecting", "disconnected")
    status, result = await curl(api, url="http://127.0.0.1:1/", timeout_ms=1000)
    assert status == 503, result
    assert result["code"] == "browser_unavailable"


async def test_requests_leave_no_targets_behind(
        make_client: MakeClient, xvfb: Xvfb, chromium: Chromium,
        origin: tuple[str, Recorder]) -> None:
    url, _ = origin
    browser = await browser_ws(chromium)

    async def target_count() -> int:
        found = await chromium.cdp("Target.getTargets", {}, ws_url=browser)
        return len(found["targetInfos"])

    baseline = await target_count()
    api = await make_client(display=xvfb.name, cdp_address=chromium.address,
                            cdp_proxy_port=0)
    for _ in range(4):
        assert (await curl(api, url=f"{url}/echo"))[0] == 200
    assert (await curl(api, url=f"http://127.0.0.1:{free_port()}/"))[0] == 502
    assert (await curl(api, url=f"{url}/slow", timeout_ms=1000))[0] == 504
    results = await asyncio.gather(*(curl(api, url=f"{url}/echo") for _ in range(5)))
    assert [status for status, _ in results] == [200] * 5
    # A couple are kept warm for the next request; the rest are closed.
    await async_wait_until(lambda: _at_most(target_count(), baseline + 2), timeout=10,
                           what="spare curl targets to be closed")
    await api.close()
    await async_wait_until(lambda: _at_most(target_count(), baseline), timeout=10,
                           what="every curl target to be closed on shutdown")


async def _at_most(count: Any, limit: int) -> bool:
    return bool(await count <= limit)
