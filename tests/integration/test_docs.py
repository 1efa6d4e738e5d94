"""/docs in a real headless Chromium: Swagger UI renders every operation of the daemon's
own spec from files the daemon serves, no request leaves the machine, "try it out" shows
the daemon's answer, and a token typed into the page is sent but never stored."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import websockets
from aiohttp.test_utils import TestClient
from common import MakeClient
from helpers import Chromium, async_wait_until, running_chromium

from agent.docs.routes import ASSETS, CSP
from agent.openapi import operations

TOKEN = "docs-page-token-0123456789"


@pytest.fixture(scope="module")
def headless() -> Iterator[Chromium]:
    with running_chromium(":0", 1280, 900, extra_flags=("--headless=new",)) as browser:
        yield browser


class Page:
    """One DevTools connection to a page: commands, and every event kept in order."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            future = self.pending.pop(message.get("id", -1), None)
            if future is not None:
                future.set_result(message)
            elif "method" in message:
                self.events.append(message)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        future = self.pending[call_id] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        message = await asyncio.wait_for(future, 30)
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error']}")
        return dict(message.get("result", {}))

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout: float = 30) -> Any:
        return await async_wait_until(lambda: self.js(expression), timeout=timeout,
                                      what=what)

    async def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) in the middle of the element."""
        box = await self.wait_for(
            f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
                if (!el) return null; el.scrollIntoView({{block: 'center'}});
                const r = el.getBoundingClientRect();
                return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2] : null;
            }})()""", f"{selector} to be shown")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                            button="left", clickCount=1)

    async def type_into(self, selector: str, text: str) -> None:
        await self.click(selector)
        await self.send("Input.insertText", text=text)

    def requests(self) -> list[dict[str, Any]]:
        return [e["params"]["request"] for e in self.events
                if e["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        self.reader.cancel()


@contextlib.asynccontextmanager
async def page_of(browser: Chromium) -> AsyncIterator[Page]:
    ws_url = await asyncio.to_thread(browser.page_target)
    async with websockets.connect(ws_url, max_size=None) as ws:
        page = Page(ws)
        try:
            for domain in ("Network", "Page", "Runtime", "Log"):
                await page.send(f"{domain}.enable")
            yield page
        finally:
            with contextlib.suppress(Exception):
                await page.send("Page.navigate", url="about:blank")
            page.close()


def is_loopback(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    host = parts.hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def open_docs(page: Page, url: str) -> None:
    await page.send("Page.navigate", url=url)
    await page.wait_for(f"document.querySelectorAll('.opblock').length === {len(operations())}",
                        "Swagger UI to list every operation")


async def try_out(page: Page, block: str) -> None:
    await page.click(f"#{block} .opblock-summary-control")
    await page.click(f"#{block} .try-out__btn")


async def executed(page: Page, block: str) -> tuple[str, str]:
    await page.click(f"#{block} .execute")
    status = await page.wait_for(
        f"document.querySelector('#{block} .live-responses-table tr.response .response-col_status')"
        "?.textContent.trim()", "the answer to show")
    body = await page.js(f"document.querySelector('#{block} .live-responses-table "
                         "tr.response .response-col_description pre')?.textContent ?? ''")
    return str(status), str(body)


async def test_the_explorer_renders_every_operation_from_loopback_only(
        make_client: MakeClient, headless: Chromium) -> None:
    client = await make_client(tokens={TOKEN: "read"})
    async with page_of(headless) as page:
        await open_docs(page, str(client.make_url("/docs")))
        titles = await page.js("[...document.querySelectorAll('.opblock-summary-path')]"
                               ".map(e => e.getAttribute('data-path'))")
        assert set(titles) == {path for _method, path in operations()}
        urls = [request["url"] for request in page.requests()]
        origin = str(client.make_url("/")).rstrip("/")
        # What the page loaded: itself, its four files and the spec, all from the daemon.
        for name in ("/docs", "/spec.json", *(f"/docs/{asset}" for asset in ASSETS)):
            assert origin + name in urls, (name, urls)
        assert [url for url in urls if not is_loopback(url)] == []
        problems = [e["params"]["entry"]["text"] for e in page.events
                    if e["method"] == "Log.entryAdded"
                    and e["params"]["entry"]["level"] == "error"]
        assert problems == []  # e.g. nothing the Content-Security-Policy refused


async def test_try_it_out_shows_the_daemons_answers_and_never_stores_the_token(
        make_client: MakeClient, headless: Chromium) -> None:
    client = await make_client(tokens={TOKEN: "read"})
    origin = str(client.make_url("/")).rstrip("/")
    async with page_of(headless) as page:
        # Under the /browsers/{id} prefix, as the Kernel SDKs address a browser.
        await open_docs(page, origin + "/browsers/b1/docs")

        await try_out(page, "operations-Agent-getHealth")
        status, body = await executed(page, "operations-Agent-getHealth")
        assert status in ("200", "503")  # no display or DevTools behind this daemon
        assert json.loads(body)["status"] in ("ok", "degraded")
        sent = [r for r in page.requests() if r["url"].endswith("/health")]
        assert [r["url"] for r in sent] == [origin + "/browsers/b1/health"]

        # A token typed into "Authorize" goes with the requests that need one.
        await page.click(".auth-wrapper .authorize")
        await page.type_into(".auth-container input", TOKEN)
        await page.click(".auth-btn-wrapper button.authorize")
        await page.click(".auth-btn-wrapper .btn-done")
        block = "operations-Browser_Filesystem-fileInfo"
        await try_out(page, block)
        await page.type_into(f"#{block} tr[data-param-name='path'] input", "/")
        status, body = await executed(page, block)
        assert status == "200", body
        assert json.loads(body)["is_dir"] is True
        sent = [r for r in page.requests() if "/fs/file_info" in r["url"]]
        assert len(sent) == 1 and sent[0]["url"].startswith(origin + "/browsers/b1/")
        assert sent[0]["headers"].get("Authorization") == f"Bearer {TOKEN}"

        assert await page.js("!!document.querySelector('.auth-wrapper .authorize.locked')")
        stored = await page.js("JSON.stringify([Object.entries(localStorage),"
                               " Object.entries(sessionStorage), document.cookie])")
        assert TOKEN not in stored
        # A reload forgets it: the tab's memory was the only place it lived.
        await open_docs(page, origin + "/docs")
        assert await page.js("document.querySelector('.auth-wrapper .authorize.locked')") \
            is None


async def test_the_page_and_its_files(make_client: MakeClient) -> None:
    client: TestClient[Any, Any] = await make_client(tokens={TOKEN: "read"})
    resp = await client.get("/docs", headers={})  # no token needed
    assert resp.status == 200 and resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"] == CSP
    html = await resp.text()
    assert "http" not in html.replace("http-equiv", "")  # no absolute URL at all
    etag = resp.headers["ETag"]
    again = await client.get("/docs", headers={"If-None-Match": etag})
    assert again.status == 304
    for asset, (_file, content_type) in ASSETS.items():
        resp = await client.get(f"/docs/{asset}", headers={})
        assert resp.status == 200 and resp.content_type == content_type
        assert len(await resp.read()) > 0
    resp = await client.get("/docs/swagger-ui-bundle.js.map", headers={})
    assert resp.status in (400, 404)
    assert (await resp.json())["code"] in ("not_found", "bad_request")


async def test_an_installation_without_swagger_ui_says_how_to_get_it(
        make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = {**ASSETS, "swagger-ui.css": ("vendor/swagger-ui/not-installed.css", "text/css")}
    monkeypatch.setattr("agent.docs.routes.ASSETS", missing)
    client = await make_client()
    for url in ("/docs", "/docs/swagger-ui.css"):
        resp = await client.get(url)
        body = await resp.json()
        assert resp.status == 503 and body["code"] == "docs_unavailable"
        assert "make docs-assets" in body["message"]
