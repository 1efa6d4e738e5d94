"""The public DevTools endpoint and the daemon's own DevTools connection, with Chromium
run by a real supervisord and restarted the way the daemon restarts it."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp.test_utils import TestClient
from browser_support import SupervisedChromium
from common import READ, MakeClient
from helpers import async_wait_until, cdp_call, free_port
from websockets.exceptions import InvalidStatus

from agent.appkeys import SETTINGS
from agent.browser.routes import CDP

Api = TestClient[Any, Any]
ADMIN_BEARER = {"Authorization": "Bearer test-admin-token-0123456789"}
# The Node side of the tests (`make node-deps` installs its packages).
NODE_DIR = Path(__file__).resolve().parents[1] / "node"


@pytest.fixture
async def api(make_client: MakeClient, supervised: SupervisedChromium) -> Api:
    return await make_client(display=supervised.display, cdp_address=supervised.address,
                             cdp_proxy_port=free_port(), cdp_proxy_host="127.0.0.1",
                             supervisor_socket=supervised.socket,
                             extensions_dir=str(supervised.extensions))


def endpoint(api: Api) -> str:
    return f"127.0.0.1:{api.server.app[SETTINGS].cdp_proxy_port}"


def http_get(url: str, headers: dict[str, str] | None = None,
             method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def get(url: str, headers: dict[str, str] | None = None,
              method: str = "GET") -> tuple[int, Any]:
    return await asyncio.to_thread(http_get, url, headers, method)


async def restart_chromium(supervised: SupervisedChromium) -> None:
    await asyncio.to_thread(supervised.restart)


async def test_json_version_points_back_at_the_daemon(
        api: Api, supervised: SupervisedChromium) -> None:
    status, info = await get(f"http://{endpoint(api)}/json/version", ADMIN_BEARER)
    assert status == 200, info
    assert info["Browser"].startswith("Chrome/")
    assert info["webSocketDebuggerUrl"].startswith(
        f"ws://{endpoint(api)}/devtools/browser/")
    direct = supervised.version()
    assert direct is not None
    assert supervised.address not in json.dumps(info)


async def test_browser_get_version_works_through_the_endpoint_and_after_a_restart(
        api: Api, supervised: SupervisedChromium) -> None:
    status, info = await get(f"http://{endpoint(api)}/json/version", ADMIN_BEARER)
    assert status == 200, info
    public_url = info["webSocketDebuggerUrl"]
    version = await cdp_call(public_url, "Browser.getVersion", headers=ADMIN_BEARER)
    assert version["product"].startswith("Chrome/")

    cdp = api.server.app[CDP]
    await async_wait_until(lambda: cdp.state == "connected", timeout=10,
                           what="the daemon's DevTools connection")
    generation, pid = cdp.generation, supervised.chromium_pid()
    direct_before = supervised.version()
    assert direct_before
    await restart_chromium(supervised)
    assert supervised.chromium_pid() != pid
    # The new Chromium answers when it is ready, not necessarily at once.
    direct_after = await async_wait_until(
        lambda: asyncio.to_thread(supervised.version), timeout=30,
        what="the restarted Chromium to answer /json/version")
    # Chromium's own URL changed (a new browser id) ...
    assert direct_after["webSocketDebuggerUrl"] != direct_before["webSocketDebuggerUrl"]
    # ... the one the daemon handed out still works.
    version = await cdp_call(public_url, "Browser.getVersion", headers=ADMIN_BEARER)
    assert version["product"].startswith("Chrome/")
    # And the daemon's own connection came back on its own, and says so in /health.
    await async_wait_until(lambda: cdp.generation > generation and cdp.state == "connected",
                           timeout=15, what="the daemon to reconnect")
    health = await (await api.get("/health")).json()
    assert health["devtools"]["ok"] is True and health["devtools"]["state"] == "connected"


async def test_clients_without_the_token_are_refused(api: Api) -> None:
    base = f"http://{endpoint(api)}"
    status, body = await get(f"{base}/json/version")
    assert status == 401 and body["code"] == "unauthorized"
    status, body = await get(f"{base}/json/version", {"Authorization": "Bearer wrong"})
    assert status == 401
    status, body = await get(f"{base}/json/list", READ)
    assert status == 403 and body["code"] == "forbidden"
    status, info = await get(f"{base}/json/version", ADMIN_BEARER)
    with pytest.raises(InvalidStatus) as refused:
        await cdp_call(info["webSocketDebuggerUrl"], "Browser.getVersion")
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        await cdp_call(info["webSocketDebuggerUrl"], "Browser.getVersion",
                       headers={"Authorization": "Bearer test-read-token-0123456789"})
    assert refused.value.response.status_code == 403


async def test_its_errors_are_the_apis_errors(api: Api) -> None:
    """The same error JSON and request id as the API, for a refusal and an unknown path."""
    def answer(path: str, headers: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
        request = urllib.request.Request(f"http://{endpoint(api)}{path}",
                                         headers={**headers, "X-Request-Id": "trace-7"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.headers["X-Request-Id"], json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["X-Request-Id"], json.loads(exc.read())

    for path, headers, status, code in (("/json/version", {}, 401, "unauthorized"),
                                        ("/nowhere", ADMIN_BEARER, 404, "not_found")):
        got_status, request_id, body = await asyncio.to_thread(answer, path, headers)
        assert (got_status, request_id, body["code"]) == (status, "trace-7", code), body
    status, request_id, _ = await asyncio.to_thread(answer, "/json/version", ADMIN_BEARER)
    assert (status, request_id) == (200, "trace-7")


async def test_a_token_in_the_query_is_carried_into_the_socket_urls(api: Api) -> None:
    status, info = await get(f"http://{endpoint(api)}/json/version?token=test-write-token-0123456789")
    assert status == 200, info
    url = info["webSocketDebuggerUrl"]
    assert url.endswith("?token=test-write-token-0123456789")
    version = await cdp_call(url, "Browser.getVersion")  # the URL alone is enough
    assert version["product"].startswith("Chrome/")


async def test_page_targets_are_listed_and_reachable_through_the_endpoint(
        api: Api, supervised: SupervisedChromium) -> None:
    supervised.page_ws()  # Chromium has its page up
    status, targets = await get(f"http://{endpoint(api)}/json/list", ADMIN_BEARER)
    assert status == 200, targets
    pages = [t for t in targets if t["type"] == "page"]
    assert pages
    for target in targets:
        assert target["webSocketDebuggerUrl"].startswith(f"ws://{endpoint(api)}/devtools/")
        assert supervised.address not in json.dumps(target)
    result = await cdp_call(pages[0]["webSocketDebuggerUrl"], "Runtime.evaluate",
                            {"expression": "6 * 7", "returnByValue": True},
                            headers=ADMIN_BEARER)
    assert result["result"]["value"] == 42


async def test_json_new_opens_a_tab_reachable_through_the_endpoint(
        api: Api, supervised: SupervisedChromium) -> None:
    """PUT /json/new answers the new target with its socket URL pointing back at the daemon;
    /json lists it like /json/list; /json/close closes it (in Chromium, over its own
    loopback endpoint)."""
    base = f"http://{endpoint(api)}"
    status, opened = await get(f"{base}/json/new?about:blank", ADMIN_BEARER, "PUT")
    assert status == 200, opened
    socket_url = f"ws://{endpoint(api)}/devtools/page/{opened['id']}"
    assert opened["webSocketDebuggerUrl"] == socket_url
    result = await cdp_call(socket_url, "Runtime.evaluate",
                            {"expression": "6 * 7", "returnByValue": True},
                            headers=ADMIN_BEARER)
    assert result["result"]["value"] == 42
    status, listed = await get(f"{base}/json", ADMIN_BEARER)
    assert status == 200 and opened["id"] in [t["id"] for t in listed], listed
    assert all(t["webSocketDebuggerUrl"].startswith(f"ws://{endpoint(api)}/") for t in listed)
    _, upstream = await asyncio.to_thread(http_get, f"http://{supervised.address}/json/list")
    assert opened["id"] in [t["id"] for t in upstream]  # Chromium itself has it
    status, _ = await asyncio.to_thread(
        http_text, f"{base}/json/close/{opened['id']}", ADMIN_BEARER)
    assert status == 200

    async def closed() -> bool:
        _, now = await asyncio.to_thread(http_get, f"http://{supervised.address}/json/list")
        return opened["id"] not in [t["id"] for t in now]

    await async_wait_until(closed, what="the tab to close")


def http_text(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status, resp.read().decode()


async def test_playwright_connects_over_cdp_through_the_endpoint(api: Api) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(
            f"http://{endpoint(api)}", headers=ADMIN_BEARER)
        try:
            page = browser.contexts[0].pages[0]
            assert await page.evaluate("1 + 2") == 3
        finally:
            await browser.close()


async def run_puppeteer(options: dict[str, Any], title: str) -> dict[str, Any]:
    """tests/node/puppeteer_connect.mjs under node: `puppeteer.connect(options)`, a new page
    titled `title` left open; its JSON report."""
    node = shutil.which("node")
    assert node, "node is not installed (make system)"
    assert (NODE_DIR / "node_modules" / "puppeteer-core").is_dir(), \
        "puppeteer-core is not installed (make node-deps)"
    proc = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / "puppeteer_connect.mjs"), json.dumps(options), title,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().splitlines()
    assert lines, f"node exited {proc.returncode} without a report: {err.decode()}"
    report: dict[str, Any] = json.loads(lines[-1])
    assert report["ok"] is (proc.returncode == 0), (proc.returncode, report, err.decode())
    return report


async def test_puppeteer_connects_through_the_endpoint(
        api: Api, supervised: SupervisedChromium) -> None:
    base = f"http://{endpoint(api)}"
    status, with_query = await get(f"{base}/json/version?token=test-write-token-0123456789")
    assert status == 200, with_query
    status, with_header = await get(f"{base}/json/version", ADMIN_BEARER)
    assert status == 200, with_header
    bare_url = with_header["webSocketDebuggerUrl"]  # no token in it
    marker = uuid.uuid4().hex
    direct = supervised.version()
    assert direct is not None

    async def pages_titled() -> dict[str, str]:
        _, targets = await asyncio.to_thread(http_get, f"http://{supervised.address}/json/list")
        return {t["title"]: t["id"] for t in targets
                if t["type"] == "page" and marker in t["title"]}

    async def both_pages() -> dict[str, str] | None:
        titles = await pages_titled()
        return titles if {f"query {marker}", f"header {marker}"} <= titles.keys() else None

    try:
        by_query, by_header, refused = await asyncio.gather(
            run_puppeteer({"browserWSEndpoint": with_query["webSocketDebuggerUrl"]},
                          f"query {marker}"),
            run_puppeteer({"browserWSEndpoint": bare_url,
                           "headers": {"Authorization": "Bearer test-write-token-0123456789"}},
                          f"header {marker}"),
            run_puppeteer({"browserWSEndpoint": bare_url}, f"refused {marker}"))
        for report, how in ((by_query, "query"), (by_header, "header")):
            assert report["ok"], report
            assert report["title"] == f"{how} {marker}"
            assert report["userAgent"] == with_query["User-Agent"]
            assert report["version"] == direct["Browser"]
        assert not refused["ok"] and "401" in refused["error"], refused
        # Chromium itself has the two pages Puppeteer made, and no third.
        titles = await async_wait_until(both_pages, timeout=10,
                                        what="Puppeteer's pages in Chromium")
        assert f"refused {marker}" not in titles
    finally:
        for target_id in (await pages_titled()).values():
            await cdp_call(direct["webSocketDebuggerUrl"], "Target.closeTarget",
                           {"targetId": target_id})


async def test_port_zero_turns_the_endpoint_off(
        make_client: MakeClient, supervised: SupervisedChromium) -> None:
    def listening() -> set[tuple[str, int]]:
        return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("tcp")
                if c.status == psutil.CONN_LISTEN}

    before = listening()
    api = await make_client(display=supervised.display, cdp_address=supervised.address,
                            cdp_proxy_port=0)
    health = await (await api.get("/health")).json()
    assert health["devtools"]["proxy"] == "off"
    # Nothing listens but the API itself: no DevTools endpoint on any port.
    assert listening() - before == {("127.0.0.1", api.port)}


async def test_a_taken_port_is_reported_not_fatal(
        make_client: MakeClient, api: Api, supervised: SupervisedChromium) -> None:
    port = api.server.app[SETTINGS].cdp_proxy_port
    second = await make_client(display=supervised.display, cdp_address=supervised.address,
                               cdp_proxy_port=port, cdp_proxy_host="127.0.0.1")
    health = await (await second.get("/health")).json()
    assert "cannot listen" in health["devtools"]["proxy_error"]
    resp = await second.get("/spec.json")
    assert resp.status == 200
