"""POST /extensions with Chromium under a real supervisord: an uploaded content script
really runs in pages after the restart; bad uploads change nothing."""

from __future__ import annotations

import asyncio
import io
import json
import os
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from browser_support import (
    Recorder,
    SupervisedChromium,
    origin_app,
    serving,
)
from common import ADMIN_TOKEN, WRITE, MakeClient
from helpers import async_wait_until, cdp_call
from kernel import AsyncKernel

from agent.browser.routes import CDP

Api = TestClient[Any, Any]


@pytest.fixture
async def api(make_client: MakeClient, supervised: SupervisedChromium) -> Api:
    client = await make_client(display=supervised.display, cdp_address=supervised.address,
                               cdp_proxy_port=0, supervisor_socket=supervised.socket,
                               extensions_dir=str(supervised.extensions))
    cdp = client.server.app[CDP]
    await async_wait_until(lambda: cdp.state == "connected", timeout=15,
                           what="the daemon's DevTools connection")
    return client


@pytest.fixture
async def site() -> AsyncIterator[str]:
    recorder = Recorder()
    async with serving(origin_app(recorder)) as url:
        yield url


def extension_zip(value: str, folder: str = "", manifest: bool = True, key: str = "mark",
                  extra: tuple[str, ...] = ()) -> bytes:
    """A Manifest V3 extension whose content script sets `data-<key>` on the page's root
    element to `value`: each test marks the page under a key of its own, so extensions
    that earlier tests left in the shared browser never decide what a test sees."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if manifest:
            archive.writestr(folder + "manifest.json", json.dumps({
                "manifest_version": 3, "name": f"marks {key}", "version": "1.0",
                "content_scripts": [{"matches": ["<all_urls>"], "js": ["content.js"],
                                     "run_at": "document_end"}],
            }))
        archive.writestr(folder + "content.js",
                         f"document.documentElement.dataset[{json.dumps(key)}] = "
                         f"{json.dumps(value)};")
        for name in extra:
            archive.writestr(folder + name, "// not part of the next version")
    return buffer.getvalue()


def form(*parts: tuple[str, str | bytes]) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in parts:
        if isinstance(value, bytes):
            data.add_field(name, value, filename="extension.zip",
                           content_type="application/zip")
        else:
            data.add_field(name, value)
    return data


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def page_value(supervised: SupervisedChromium, url: str,
                     expression: str) -> str:
    """`expression` in a page freshly loaded from `url` (once it has loaded)."""
    ws = await asyncio.to_thread(supervised.page_ws)
    await cdp_call(ws, "Page.navigate", {"url": url})

    async def value() -> str | None:
        result = await cdp_call(ws, "Runtime.evaluate", {
            "expression": f"document.readyState === 'complete' ? String({expression}) : null",
            "returnByValue": True})
        return result["result"].get("value")

    return str(await async_wait_until(value, timeout=15, what="the page to load"))


async def wait_for_mark(supervised: SupervisedChromium, url: str, key: str,
                        expected: str) -> None:
    async def shows() -> bool:
        return await page_value(supervised, url, mark(key)) == expected

    await async_wait_until(shows, timeout=20, interval=0.2,
                           what=f"the page's {key} mark to become {expected!r}")


def mark(key: str) -> str:
    return f"document.documentElement.dataset[{json.dumps(key)}]"


async def test_an_uploaded_extension_runs_after_the_restart(
        api: Api, supervised: SupervisedChromium, site: str) -> None:
    assert await page_value(supervised, f"{site}/page", mark("upload")) == "undefined"
    pid = supervised.chromium_pid()
    resp = await api.post("/extensions", data=form(
        ("extensions[0][name]", "upload-marker"),
        ("extensions[0][zip_file]", extension_zip("set by the extension", key="upload")),
    ))
    assert resp.status == 201, await resp.text()
    # The 201 came after the restart, with DevTools answering again.
    assert supervised.chromium_pid() != pid
    assert supervised.version() is not None
    installed = supervised.extensions / "upload-marker"
    assert (installed / "manifest.json").is_file() and (installed / "content.js").is_file()
    await wait_for_mark(supervised, f"{site}/page", "upload", "set by the extension")


async def test_a_zip_in_a_folder_replaces_the_extension_of_the_same_name(
        api: Api, supervised: SupervisedChromium, site: str) -> None:
    for version, folder, extra in (("first", "", ("old.js",)), ("second", "build/", ())):
        resp = await api.post("/extensions", data=form(
            ("extensions.0.name", "replaced"),
            ("extensions.0.zip_file", extension_zip(version, folder=folder, key="replaced",
                                                    extra=extra)),
        ))
        assert resp.status == 201, await resp.text()
        installed = supervised.extensions / "replaced"
        assert sorted(p.name for p in installed.iterdir()) == sorted(
            ["content.js", "manifest.json", *extra])
        await wait_for_mark(supervised, f"{site}/page", "replaced", version)


@pytest.mark.parametrize(("parts", "field"), [
    ((("extensions[0][name]", "no-manifest"),
      ("extensions[0][zip_file]", extension_zip("x", manifest=False))),
     "extensions[0].zip_file"),
    ((("extensions[0][name]", "not-a-zip"),
      ("extensions[0][zip_file]", b"this is not a zip archive")),
     "extensions[0].zip_file"),
    ((("extensions[0][name]", ".."), ("extensions[0][zip_file]", extension_zip("x"))),
     "extensions[0].name"),
    ((("extensions[0][name]", "a/b"), ("extensions[0][zip_file]", extension_zip("x"))),
     "extensions[0].name"),
    ((("extensions[0][zip_file]", extension_zip("x")),), "extensions[0].name"),
    ((("extensions[0][name]", "alone"),), "extensions[0].zip_file"),
    ((("extensions[0][name]", "ok"), ("extensions[0][zip_file]", extension_zip("x")),
      ("extensions[1][name]", "broken"),
      ("extensions[1][zip_file]", extension_zip("x", manifest=False))),
     "extensions[1].zip_file"),
    ((("something_else", "x"),), "something_else"),
])
async def test_bad_uploads_are_refused_and_change_nothing(
        api: Api, supervised: SupervisedChromium, parts: tuple[tuple[str, Any], ...],
        field: str) -> None:
    pid = supervised.chromium_pid()
    before = listing(supervised.extensions)
    resp = await api.post("/extensions", data=form(*parts))
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    assert body["code"] == "bad_request"
    assert field in [d["field"] for d in body["details"]]
    assert supervised.chromium_pid() == pid  # not restarted, still running
    assert listing(supervised.extensions) == before  # nothing unpacked, no staging left


async def test_a_body_that_is_not_multipart_is_a_415(api: Api) -> None:
    resp = await api.post("/extensions", json={"extensions": []})
    assert resp.status == 415
    assert (await resp.json())["code"] == "unsupported_media_type"


async def test_extensions_need_the_admin_scope(
        api: Api, supervised: SupervisedChromium) -> None:
    pid = supervised.chromium_pid()
    resp = await api.post("/extensions", headers=WRITE, data=form(
        ("extensions[0][name]", "not-allowed"),
        ("extensions[0][zip_file]", extension_zip("x"))))
    assert resp.status == 403
    assert supervised.chromium_pid() == pid
    assert not (supervised.extensions / "not-allowed").exists()


async def test_without_supervisord_it_is_a_503_and_nothing_is_unpacked(
        make_client: MakeClient, supervised: SupervisedChromium, tmp_path: Path) -> None:
    api = await make_client(display=supervised.display, cdp_address=supervised.address,
                            cdp_proxy_port=0, supervisor_socket=str(tmp_path / "none.sock"),
                            extensions_dir=str(tmp_path / "extensions"))
    resp = await api.post("/extensions", data=form(
        ("extensions[0][name]", "unused"), ("extensions[0][zip_file]", extension_zip("x"))))
    assert resp.status == 503, await resp.text()
    assert os.listdir(tmp_path / "extensions") == []


async def test_the_kernel_sdk_loads_extensions(
        api: Api, supervised: SupervisedChromium, site: str) -> None:
    # The SDK sends extensions[][name] and extensions[][zip_file] parts.
    pid = supervised.chromium_pid()
    client = AsyncKernel(api_key=ADMIN_TOKEN, base_url=str(api.make_url("")).rstrip("/"),
                         max_retries=0)
    async with client:
        await client.browsers.load_extensions("this-browser", extensions=[
            {"name": "from-sdk", "zip_file": ("ext.zip", extension_zip("loaded", key="sdk"),
                                              "application/zip")},
        ])
    assert supervised.chromium_pid() != pid
    assert (supervised.extensions / "from-sdk" / "manifest.json").is_file()

    await wait_for_mark(supervised, f"{site}/page", "sdk", "loaded")
