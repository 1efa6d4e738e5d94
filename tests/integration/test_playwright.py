"""POST /playwright/execute and the executors, against a real Chromium, through the official
SDK and raw HTTP: results, TypeScript, errors, console output, timeouts that really stop
the code (seen from the page), concurrency between executors and order within one, the
listing and deletion of executors, Chromium restarting, and what the user's code can see
of the daemon (its user, its environment)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from browser_support import serving
from common import ADMIN_TOKEN, READ, TOKENS, MakeClient
from helpers import Chromium, Xvfb, async_wait_until, cdp_call, running_chromium
from kernel import AsyncKernel, ConflictError
from playwright_support import runtime_dir_for
from process_helpers import TEST_USER, ensure_user

BROWSER = "this-browser"
WAIT = 30.0

Client = TestClient[Any, Any]


@pytest.fixture(scope="module")
def browser_user() -> str:
    ensure_user()
    return TEST_USER


@pytest.fixture
def pw(xvfb: Xvfb, chromium: Chromium, browser_user: str) -> dict[str, Any]:
    """Settings of a daemon whose Playwright code runs as the tests' browser user."""
    return {"display": xvfb.name, "cdp_address": chromium.address,
            "default_user": browser_user, "playwright_dir": runtime_dir_for(browser_user)}


@pytest.fixture
def tidy_tabs(chromium: Chromium) -> Iterator[None]:
    """Tabs a test opened are closed after it: other tests drive the first page target."""
    before = {t["id"] for t in chromium.http_json("/json/list") if t["type"] == "page"}
    yield
    for target in chromium.http_json("/json/list"):
        if target["type"] == "page" and target["id"] not in before:
            try:
                chromium.http_json(f"/json/close/{target['id']}")
            except (OSError, ValueError):
                pass  # "Target is closing" (not JSON), or it closed meanwhile (404)


@pytest.fixture
async def api(make_client: MakeClient, pw: dict[str, Any], tidy_tabs: None) -> Client:
    return await make_client(**pw)


@pytest.fixture
async def sdk(api: Client) -> AsyncIterator[AsyncKernel]:
    client = AsyncKernel(api_key=ADMIN_TOKEN, base_url=str(api.make_url("")).rstrip("/"),
                         max_retries=0, timeout=60)
    async with client:
        yield client


async def execute(api: Client, code: str, **fields: Any) -> dict[str, Any]:
    resp = await api.post("/playwright/execute", json={"code": code, **fields})
    body = await resp.json()
    assert resp.status == 200, body
    return dict(body)


@pytest.fixture
async def site() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        title = request.match_info["title"]
        return web.Response(text=f"<title>{title}</title><h1>{title}</h1>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/page/{title}", page)
    async with serving(app) as base:
        yield base


# --- results, TypeScript, errors, output -------------------------------------------------


async def test_sdk_returns_the_value(sdk: AsyncKernel) -> None:
    result = await sdk.browsers.playwright.execute(BROWSER, code="return 1 + 1")
    assert result.success is True
    assert result.result == 2
    assert result.error is None
    assert result.tab is not None and result.tab.target_id


async def test_navigates_a_local_page_and_returns_its_title(
        sdk: AsyncKernel, site: str, chromium: Chromium) -> None:
    result = await sdk.browsers.playwright.execute(
        BROWSER, code=f"await page.goto('{site}/page/Hello-PW'); return await page.title();")
    assert result.success, result
    assert result.result == "Hello-PW"
    # The page the user sees navigated: Chromium's own view of its front page target.
    assert await chromium.evaluate("document.title") == "Hello-PW"
    front = next(t for t in chromium.http_json("/json/list") if t["type"] == "page")
    assert result.tab is not None and result.tab.target_id == front["id"]


async def test_default_executor_follows_the_tab_in_front(api: Client, chromium: Chromium,
                                                        tidy_tabs: None) -> None:
    """`page` is the tab Chromium shows: a new foreground tab, then the first one again
    once Chromium activates it."""
    first = next(t["id"] for t in chromium.http_json("/json/list") if t["type"] == "page")
    await chromium.open("<title>first tab</title>")
    browser = chromium.http_json("/json/version")["webSocketDebuggerUrl"]
    created = await cdp_call(browser, "Target.createTarget",
                             {"url": "data:text/html,<title>second tab</title>"})
    second = created["targetId"]

    async def bound_title() -> str:
        body = await execute(api, "return await page.title()")
        assert body["success"], body
        return f"{body['result']}|{body['tab']['target_id']}"

    await async_wait_until(lambda: _is(bound_title(), f"second tab|{second}"),
                           timeout=WAIT, what="the new tab to be bound")
    await cdp_call(browser, "Target.activateTarget", {"targetId": first})
    await async_wait_until(lambda: _is(bound_title(), f"first tab|{first}"),
                           timeout=WAIT, what="the first tab to be bound again")


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_typescript_with_types_and_interfaces(api: Client) -> None:
    code = """
        interface Point { x: number; y: number }
        type Pair = [Point, Point];
        enum Axis { X = 'x', Y = 'y' }
        const pair: Pair = [{ x: 1, y: 2 }, { x: 3, y: 4 }];
        function sum<T extends Point>(points: T[], axis: Axis): number {
          return points.reduce((total, p) => total + p[axis], 0);
        }
        const wrong: string = 42 as unknown as string;  // types are not checked
        return { x: sum(pair, Axis.X), y: sum(pair, Axis.Y), wrong };
    """
    body = await execute(api, code)
    assert body["success"] is True, body
    assert body["result"] == {"x": 4, "y": 6, "wrong": 42}


async def test_syntax_error_names_the_line_and_column(api: Client) -> None:
    body = await execute(api, "const a = 1;\nconst b = a +* 2;\nreturn b;")
    assert body["success"] is False
    assert "line 2, column 14" in body["error"], body
    assert "const b = a +* 2;" in body["stderr"]
    assert "tab" not in body  # it failed before binding a tab


async def test_thrown_error_gives_message_and_stack(api: Client) -> None:
    body = await execute(api, "const x: number = 1;\n\nthrow new Error('boom ' + x);")
    assert body["success"] is False
    assert body["error"] == "boom 1"
    assert "Error: boom 1" in body["stderr"]
    # The stack points at the user's line (3), not at the transpiled text.
    assert "user-code.ts:3:" in body["stderr"], body["stderr"]
    assert "worker.mjs" not in body["stderr"]


async def test_console_output_goes_to_stdout_and_stderr(api: Client) -> None:
    body = await execute(api, """
        console.log('log', 1); console.info('info', { a: 1 }); console.debug('debug');
        console.error('error'); console.warn('warn');
        return 'done';
    """)
    assert body["success"] is True, body
    assert body["stdout"] == "log 1\ninfo { a: 1 }\ndebug\n"
    assert body["stderr"] == "error\nwarn\n"
    assert "stdout_truncated" not in body


async def test_output_is_capped_and_flagged(make_client: MakeClient, pw: dict[str, Any]
                                            ) -> None:
    api = await make_client(**pw, playwright_output_cap=100)
    body = await execute(api, "for (let i = 0; i < 50; i++) console.log('x'.repeat(10)); "
                              "console.error('short'); return 1")
    assert body["success"] is True
    assert len(body["stdout"].encode()) == 100
    assert body["stdout_truncated"] is True
    assert body["stderr"] == "short\n"
    assert "stderr_truncated" not in body


async def test_large_output_and_results(api: Client) -> None:
    body = await execute(api, "console.log('\\u0001'.repeat(3 << 20)); return 'x'.repeat(1 << 20)")
    assert body["success"] is True
    assert len(body["stdout"]) == 1 << 20 and body["stdout_truncated"] is True
    assert body["result"] == "x" * (1 << 20)
    body = await execute(api, "return 'x'.repeat(9 << 20)")
    assert body["success"] is False and "limit" in body["error"], body["error"][:200]


@pytest.mark.parametrize(("code", "where"), [
    ("return page", "result is a Page"),
    ("return { n: 10n }", "result.n is a BigInt"),
    ("const a: any = {}; a.self = a; return a", "result.self refers back to itself"),
    ("return [1, () => 2]", "result[1] is a function"),
    ("return new Map([[1, 2]])", "result is a Map"),
])
async def test_values_that_are_not_json_fail_clearly(api: Client, code: str, where: str) -> None:
    body = await execute(api, code)
    assert body["success"] is False, body
    assert "cannot be sent as JSON" in body["error"] and where in body["error"], body["error"]
    assert "result" not in body


async def test_undefined_gives_no_result(api: Client) -> None:
    body = await execute(api, "await page.title();")
    assert body["success"] is True
    assert "result" not in body
    body = await execute(api, "return null")
    assert body["success"] is True and body["result"] is None


async def test_each_call_gets_a_fresh_scope(api: Client) -> None:
    assert (await execute(api, "const x = 1; return x"))["result"] == 1
    body = await execute(api, "const x = 2; return typeof y === 'undefined' ? x : 'leak'")
    assert body["result"] == 2


async def test_bad_requests(api: Client) -> None:
    for body, field in (({"code": "return 1", "timeout_sec": 0}, "timeout_sec"),
                        ({"code": "return 1", "timeout_sec": 301}, "timeout_sec"),
                        ({"timeout_sec": 5}, "code"),
                        ({"code": "return 1", "executor": "no spaces"}, "executor"),
                        ({"code": "return 1", "extra": 1}, "extra")):
        resp = await api.post("/playwright/execute", json=body)
        payload = await resp.json()
        assert resp.status == 400, payload
        assert payload["details"][0]["field"] == field


# --- timeouts ---------------------------------------------------------------------------


async def test_busy_loop_times_out_and_the_next_call_works(api: Client) -> None:
    await execute(api, "return 0")  # the worker is warm
    started = time.monotonic()
    body = await execute(api, "while (true) {}", timeout_sec=1)
    elapsed = time.monotonic() - started
    assert body["success"] is False
    assert "timed out after 1s" in body["error"]
    assert elapsed < 3.0, elapsed  # ~1 s; the rest is margin for a loaded machine
    body = await execute(api, "return 1 + 1")
    assert body == {**body, "success": True, "result": 2}


async def test_timed_out_code_no_longer_drives_the_page(api: Client, chromium: Chromium) -> None:
    """Code that keeps awaiting (which no in-process timeout could stop) is stopped too:
    the page stops counting once the answer came."""
    await chromium.open("<title>ticks</title><script>window.ticks = 0</script>")
    code = "console.log('started'); for (;;) { await page.evaluate(() => window.ticks++); }"
    body = await execute(api, code, timeout_sec=1)
    assert body["success"] is False and "timed out" in body["error"]
    assert body["stdout"] == "started\n"  # output up to the timeout is kept
    ticks = await chromium.evaluate("window.ticks")
    assert ticks > 0
    await asyncio.sleep(0.5)  # code still running would count on meanwhile
    assert await chromium.evaluate("window.ticks") == ticks


# --- executors --------------------------------------------------------------------------

SPAN = """
const started = Date.now();
await new Promise((resolve) => setTimeout(resolve, %d));
return { started, ended: Date.now() };
"""


async def test_two_executors_run_concurrently(api: Client) -> None:
    await asyncio.gather(execute(api, "return 0", executor="alpha"),
                         execute(api, "return 0", executor="beta"))  # both warm
    wall = time.monotonic()
    a, b = await asyncio.gather(execute(api, SPAN % 1500, executor="alpha"),
                                execute(api, SPAN % 1000, executor="beta"))
    wall = time.monotonic() - wall
    assert a["success"] and b["success"], (a, b)
    first, second = a["result"], b["result"]
    # They overlapped in time: each started before the other ended.
    assert first["started"] < second["ended"] and second["started"] < first["ended"]
    # So the wall time is about the longer one, well under the sum of both.
    spans = [(r["ended"] - r["started"]) / 1000 for r in (first, second)]
    assert max(spans) <= wall < sum(spans), (wall, spans)
    # Each named executor has a tab of its own.
    assert a["tab"]["target_id"] != b["tab"]["target_id"]


async def test_one_executor_runs_its_calls_in_order(api: Client) -> None:
    """Calls on one executor run one at a time, in the order they arrived."""
    await execute(api, "return 0", executor="solo")

    async def solo_is(key: str, value: object) -> bool:  # as /playwright/executors says
        listing = await (await api.get("/playwright/executors")).json()
        return any(ex["name"] == "solo" and ex[key] == value for ex in listing["executors"])

    tasks = [asyncio.create_task(execute(api, SPAN % 300, executor="solo"))]
    await async_wait_until(lambda: solo_is("busy", True), timeout=WAIT, what="the first call")
    for waiting in (1, 2):  # each arrives once the one before is queued
        tasks.append(asyncio.create_task(execute(api, SPAN % 300, executor="solo")))
        await async_wait_until(lambda n=waiting: solo_is("queued", n), timeout=WAIT,
                               what=f"{waiting} calls waiting")
    results = [(await asyncio.wait_for(task, WAIT))["result"] for task in tasks]
    for earlier, later in itertools.pairwise(results):
        assert earlier["ended"] <= later["started"], results


async def test_executor_tabs_listing_and_deletion(sdk: AsyncKernel, api: Client, site: str,
                                                  chromium: Chromium) -> None:
    front = next(t["id"] for t in chromium.http_json("/json/list") if t["type"] == "page")
    first = await sdk.browsers.playwright.execute(
        BROWSER, code=f"await page.goto('{site}/page/Worker'); return page.url()",
        executor="worker")
    assert first.success and first.tab is not None and first.tab.created is True
    tab = first.tab.target_id
    assert tab != front
    second = await sdk.browsers.playwright.execute(BROWSER, code="return page.url()",
                                                   executor="worker")
    assert second.tab is not None and second.tab.created is False
    assert second.tab.target_id == tab and second.result == f"{site}/page/Worker"
    # The default executor still binds the tab in front, not the executor's.
    default = await sdk.browsers.playwright.execute(BROWSER, code="return 1")
    assert default.tab is not None and default.tab.target_id == front

    listing = await sdk.browsers.playwright.executors.list(BROWSER)
    names = [ex.name for ex in listing.executors]
    assert names == ["default", "worker"]
    default_ex, worker_ex = listing.executors
    assert default_ex.target_id is None and default_ex.busy is False
    assert worker_ex.target_id == tab and worker_ex.url == f"{site}/page/Worker"
    assert worker_ex.last_used_at >= worker_ex.created_at

    await sdk.browsers.playwright.executors.delete("worker", id_or_name=BROWSER)
    await async_wait_until(
        lambda: tab not in {t["id"] for t in chromium.http_json("/json/list")},
        timeout=WAIT, what="the executor's tab to close")
    listing = await sdk.browsers.playwright.executors.list(BROWSER)
    assert [ex.name for ex in listing.executors] == ["default"]
    # The name can be reused: a new executor with a new tab.
    again = await sdk.browsers.playwright.execute(BROWSER, code="return 1", executor="worker")
    assert again.tab is not None and again.tab.created is True and again.tab.target_id != tab

    resp = await api.delete("/playwright/executors/nobody")
    assert resp.status == 404


async def test_a_named_executor_keeps_its_tab_across_a_timeout(api: Client) -> None:
    first = await execute(api, "await page.goto('data:text/html,<title>kept</title>')",
                          executor="sticky")
    tab = first["tab"]["target_id"]
    body = await execute(api, "while (true) {}", executor="sticky", timeout_sec=1)
    assert body["success"] is False and "timed out" in body["error"]
    assert body["tab"] == {"created": False, "target_id": tab}  # bound before it overran
    # The replacement worker takes over the same tab.
    body = await execute(api, "return await page.title()", executor="sticky")
    assert body["result"] == "kept"
    assert body["tab"] == {"created": False, "target_id": tab}


async def test_deleting_keeps_the_tab_when_asked(api: Client, chromium: Chromium) -> None:
    body = await execute(api, "return 1", executor="keeper")
    tab = body["tab"]["target_id"]
    resp = await api.delete("/playwright/executors/keeper", params={"close_tab": "false"})
    assert resp.status == 204
    assert tab in {t["id"] for t in chromium.http_json("/json/list")}


async def test_closed_tab_is_reopened(api: Client, chromium: Chromium) -> None:
    body = await execute(api, "return 1", executor="reopen")
    body = await execute(api, "await page.close(); return 1", executor="reopen")
    assert body["success"], body
    body2 = await execute(api, "return 2", executor="reopen")
    assert body2["tab"]["created"] is True
    assert body2["tab"]["target_id"] != body["tab"]["target_id"]


async def test_listing_shows_busy_and_pages(api: Client) -> None:
    for name in ("p1", "p2", "p3"):
        await execute(api, "return 0", executor=name)
    running = asyncio.create_task(execute(api, SPAN % 2000, executor="p2"))

    async def p2_busy() -> bool:
        listing = await (await api.get("/playwright/executors")).json()
        return any(ex["name"] == "p2" and ex["busy"] for ex in listing["executors"])

    await async_wait_until(p2_busy, timeout=WAIT, what="p2 to be busy")
    resp = await api.get("/playwright/executors", params={"limit": "2"})
    page1 = await resp.json()
    assert [ex["name"] for ex in page1["executors"]] == ["default", "p1"]
    link = resp.headers["Link"]
    assert link.endswith('rel="next"')
    resp = await api.get(link[1:link.index(">")])
    page2 = await resp.json()
    assert [ex["name"] for ex in page2["executors"]] == ["p2", "p3"]
    assert "Link" not in resp.headers
    await running


async def test_deleting_a_busy_executor_fails_its_call(api: Client) -> None:
    await execute(api, "return 0", executor="doomed")
    running = asyncio.create_task(execute(api, "await new Promise(() => {})",
                                          executor="doomed"))

    async def busy() -> bool:
        listing = await (await api.get("/playwright/executors")).json()
        return any(ex["name"] == "doomed" and ex["busy"] for ex in listing["executors"])

    await async_wait_until(busy, timeout=WAIT, what="the call to start")
    resp = await api.delete("/playwright/executors/doomed")
    assert resp.status == 204
    body = await asyncio.wait_for(running, WAIT)
    assert body["success"] is False and "deleted" in body["error"], body


async def test_waiting_calls_are_bounded(api: Client) -> None:
    await execute(api, "return 0", executor="queue")
    blocker = asyncio.create_task(execute(api, "await new Promise(() => {})",
                                          executor="queue"))

    async def busy() -> bool:
        listing = await (await api.get("/playwright/executors")).json()
        return any(ex["name"] == "queue" and ex["busy"] for ex in listing["executors"])

    await async_wait_until(busy, timeout=WAIT, what="the blocking call to start")
    waiting = [asyncio.create_task(execute(api, "return 1", executor="queue"))
               for _ in range(16)]

    async def all_waiting() -> bool:
        listing = await (await api.get("/playwright/executors")).json()
        return any(ex["name"] == "queue" and ex["queued"] == 16
                   for ex in listing["executors"])

    await async_wait_until(all_waiting, timeout=WAIT, what="16 calls to wait")
    resp = await api.post("/playwright/execute", json={"code": "return 1", "executor": "queue"})
    body = await resp.json()
    assert resp.status == 429 and body["code"] == "executor_busy", body
    assert resp.headers["Retry-After"] == "1"
    # Deleting the executor fails the running call and every waiting one.
    assert (await api.delete("/playwright/executors/queue")).status == 204
    results = await asyncio.wait_for(asyncio.gather(blocker, *waiting), WAIT)
    assert all(r["success"] is False and "deleted" in r["error"] for r in results), results


async def test_restarting_the_default_executor(api: Client) -> None:
    await execute(api, "return 0")
    running = asyncio.create_task(execute(api, "await new Promise(() => {})"))

    async def busy() -> bool:
        listing = await (await api.get("/playwright/executors")).json()
        return bool(listing["executors"][0]["busy"])

    await async_wait_until(busy, timeout=WAIT, what="the call to start")
    resp = await api.delete("/playwright/executors/default")
    assert resp.status == 204
    body = await asyncio.wait_for(running, WAIT)
    assert body["success"] is False and "restarted" in body["error"], body
    assert (await execute(api, "return 3"))["result"] == 3


async def test_executor_cap(make_client: MakeClient, pw: dict[str, Any],
                            tidy_tabs: None) -> None:
    api = await make_client(**pw, playwright_max_executors=2)
    await execute(api, "return 1", executor="one")
    await execute(api, "return 1", executor="two")
    resp = await api.post("/playwright/execute", json={"code": "return 1", "executor": "three"})
    body = await resp.json()
    assert resp.status == 409
    assert body["code"] == "too_many_executors"
    assert [ex["name"] for ex in body["executors"]] == ["default", "one", "two"]
    # Through the SDK: a ConflictError, not retried.
    sdk = AsyncKernel(api_key=ADMIN_TOKEN, base_url=str(api.make_url("")).rstrip("/"))
    async with sdk:
        with pytest.raises(ConflictError):
            await sdk.browsers.playwright.execute(BROWSER, code="return 1", executor="three")
    # The default executor does not count, and deleting one makes room.
    assert (await execute(api, "return 1"))["success"]
    assert (await api.delete("/playwright/executors/one")).status == 204
    assert (await execute(api, "return 1", executor="three"))["success"]


# --- Chromium restarts, identity, environment ---------------------------------------------


async def test_a_call_after_chromium_was_killed_and_restarted(
        make_client: MakeClient, xvfb: Xvfb, pw: dict[str, Any]) -> None:
    with running_chromium(xvfb.name, 1280, 800) as own:
        api = await make_client(**{**pw, "cdp_address": own.address})
        first = await execute(api, "return await page.evaluate(() => 40 + 2)")
        assert first["result"] == 42
        assert own.proc is not None
        own.proc.kill()
        own.proc.wait()
        own.start()  # same port, a new browser
        body = await execute(api, "return await page.evaluate(() => 6 * 7)", timeout_sec=30)
        assert body["success"] is True, body
        assert body["result"] == 42
        assert body["tab"]["target_id"] != first["tab"]["target_id"]


async def test_user_code_runs_as_the_browser_user_with_a_clean_environment(
        make_client: MakeClient, pw: dict[str, Any], browser_user: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "env-secret-token-value"
    monkeypatch.setenv("AGENT_API_TOKEN", secret)
    monkeypatch.setenv("AGENT_SOMETHING", "daemon-only")
    api = await make_client(**pw)
    body = await execute(api, "return { uid: process.getuid(), env: { ...process.env } }")
    assert body["success"], body
    assert body["result"]["uid"] == ensure_user().pw_uid
    env = body["result"]["env"]
    assert env["USER"] == browser_user
    text = repr(env)
    for token in (secret, *TOKENS):
        assert token not in text
    assert not any(name.startswith("AGENT_") for name in env)
    assert set(env) <= {"PATH", "HOME", "USER", "LOGNAME", "LANG", "NODE_ENV"}


def worker_pids(executor: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                    argv = cmdline.read().split(b"\0")
            except OSError:
                continue
            if any(arg.endswith(b"worker.mjs") for arg in argv) and executor.encode() in argv:
                pids.append(int(name))
    return pids


async def test_workers_stop_with_the_daemon(make_client: MakeClient, pw: dict[str, Any],
                                            tidy_tabs: None) -> None:
    api = await make_client(**pw)
    name = f"stray-{os.getpid()}"
    await execute(api, "return 1", executor=name)
    assert len(worker_pids(name)) == 1
    await api.close()
    assert worker_pids(name) == []


async def test_a_worker_that_cannot_start_is_a_clear_503(
        make_client: MakeClient, pw: dict[str, Any]) -> None:
    api = await make_client(**pw, node_program="no-such-node-binary")
    resp = await api.post("/playwright/execute", json={"code": "return 1", "executor": "n1"})
    body = await resp.json()
    assert resp.status == 503
    assert body["code"] == "playwright_unavailable" and "no-such-node-binary" in body["message"]
    # It took no place among the executors, and /health says what is missing.
    listing = await (await api.get("/playwright/executors")).json()
    assert [ex["name"] for ex in listing["executors"]] == ["default"]
    health = await (await api.get("/health")).json()
    assert health["playwright"]["ok"] is False
    assert "no-such-node-binary" in health["playwright"]["error"]


async def test_health_reports_the_workers(api: Client) -> None:
    health = await (await api.get("/health")).json()
    assert health["playwright"] == {"ok": True, "executors": 0, "workers": 0, "default": "idle"}
    await execute(api, "return 1", executor="h1")
    health = await (await api.get("/health")).json()
    assert health["playwright"]["executors"] == 1
    assert health["playwright"]["workers"] == 1


async def test_read_scope_lists_but_cannot_execute(api: Client) -> None:
    read = READ
    resp = await api.get("/playwright/executors", headers=read)
    assert resp.status == 200
    resp = await api.post("/playwright/execute", json={"code": "return 1"}, headers=read)
    assert resp.status == 403
    resp = await api.delete("/playwright/executors/default", headers=read)
    assert resp.status == 403
