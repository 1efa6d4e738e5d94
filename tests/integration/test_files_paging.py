"""`/fs/list_files` in pages: `limit`, an opaque `cursor`, `Link: <…>; rel="next"`; every
entry exactly once, also while the directory changes; the SDK still sees whole listings."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from common import ADMIN_TOKEN, MakeClient
from kernel import AsyncKernel

NEXT = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


def make_files(folder: Path, names: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o644))


async def walk(client: TestClient[Any, Any], url: str,
               params: dict[str, str] | None = None) -> tuple[list[list[str]], list[str]]:
    """Follows `Link` headers from `url` to the end: (names of each page, the links)."""
    pages: list[list[str]] = []
    links: list[str] = []
    while True:
        resp = await client.get(url, params=params)
        assert resp.status == 200, await resp.text()
        pages.append([entry["name"] for entry in await resp.json()])
        link = resp.headers.get("Link")
        if link is None:
            return pages, links
        match = NEXT.match(link)
        assert match, link
        url, params = match["url"], None
        links.append(url)
        assert len(pages) < 1000, "the links do not end"


async def test_ten_thousand_entries_page_through_exactly_once(make_client: MakeClient,
                                                              tmp_path: Path) -> None:
    names = [f"entry-{i:05d}-{'x' * (i % 7)}" for i in range(10_000)]
    make_files(tmp_path / "big", names)
    client = await make_client()
    pages, links = await walk(client, "/fs/list_files",
                              {"path": str(tmp_path / "big"), "limit": "777"})
    assert [len(page) for page in pages] == [777] * 12 + [10_000 - 12 * 777]
    listed = [name for page in pages for name in page]
    assert listed == sorted(names)  # every entry once, in name order
    # Each link is this request again with a cursor: same path, same limit.
    assert all(link.startswith("/fs/list_files?") and "limit=777" in link for link in links)

    # Without a limit the whole directory is one page, as the SDK expects.
    resp = await client.get("/fs/list_files", params={"path": str(tmp_path / "big")})
    assert len(await resp.json()) == 10_000 and "Link" not in resp.headers


async def test_paging_while_the_directory_changes(make_client: MakeClient,
                                                  tmp_path: Path) -> None:
    folder = tmp_path / "d"
    make_files(folder, [f"{c}" for c in "bdfhjl"])
    client = await make_client()
    resp = await client.get("/fs/list_files", params={"path": str(folder), "limit": "3"})
    first = [entry["name"] for entry in await resp.json()]
    assert first == ["b", "d", "f"]
    match = NEXT.match(resp.headers["Link"])
    assert match
    # Between the pages: an entry before the cursor appears, a listed one goes, one after
    # the cursor appears and one not yet listed goes.
    make_files(folder, ["a", "g"])
    (folder / "d").unlink()
    (folder / "j").unlink()
    pages, _links = await walk(client, match["url"])
    rest = [name for page in pages for name in page]
    assert rest == ["g", "h", "l"]  # nothing twice; every entry present throughout once


async def test_bad_paging_parameters_are_400(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    for params in ({"cursor": "not a cursor"}, {"cursor": "Zm9v"}, {"limit": "0"},
                   {"limit": "100001"}, {"limit": "ten"}):
        resp = await client.get("/fs/list_files", params={"path": str(tmp_path), **params})
        body = await resp.json()
        assert resp.status == 400, (params, body)
        assert body["code"] == "bad_request"
        assert body["details"][0]["field"] == next(iter(params)), body


async def test_links_keep_the_browser_prefix(make_client: MakeClient, tmp_path: Path) -> None:
    make_files(tmp_path / "p", ["one", "two", "three"])
    client = await make_client()
    pages, links = await walk(client, "/browsers/b1/fs/list_files",
                              {"path": str(tmp_path / "p"), "limit": "2"})
    assert pages == [["one", "three"], ["two"]]
    assert links[0].startswith("/browsers/b1/fs/list_files?")


async def test_the_sdk_lists_ordinary_directories_whole(make_client: MakeClient,
                                                        tmp_path: Path) -> None:
    names = [f"file-{i}" for i in range(2500)]
    make_files(tmp_path / "s", names)
    api = await make_client()
    sdk = AsyncKernel(api_key=ADMIN_TOKEN, base_url=str(api.make_url("")).rstrip("/"),
                      max_retries=0, timeout=60)
    async with sdk:
        listing = await sdk.browsers.fs.list_files("b1", path=str(tmp_path / "s"))
    assert [entry.name for entry in listing] == sorted(names)
