"""Streaming transfers through the API: aborted and concurrent writes, multipart uploads in
every accepted form, zip uploads against hostile archives, streamed directory zips."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import stat
import tempfile
import urllib.parse
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from common import ADMIN_TOKEN, MakeClient
from helpers import assert_error, async_wait_until

from agent.files.ops import STAGING_PREFIX


def staged_files(*directories: Path | str) -> list[str]:
    return [name for d in directories for name in os.listdir(d)
            if name.startswith(STAGING_PREFIX)]


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    return await make_client()


# ---------------------------------------------------------------- write_file


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_aborted_upload_leaves_the_old_file_and_no_temporary(
        client: TestClient[Any, Any], tmp_path: Path, framing: str) -> None:
    target = tmp_path / "target.bin"
    target.write_bytes(b"the old content")
    query = urllib.parse.urlencode({"path": str(target)})
    head = (f"PUT /fs/write_file?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\n")
    head += ("Content-Length: 104857600\r\n\r\n" if framing == "content-length"
             else "Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * (3 << 20)
    if framing == "chunked":
        chunk = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head.encode() + chunk)
    await writer.drain()
    await async_wait_until(lambda: staged_files(tmp_path), what="the upload to start")
    writer.transport.abort()  # the client goes away mid-body
    await async_wait_until(lambda: os.listdir(tmp_path) == ["target.bin"], timeout=10,
                           what="the temporary file to be removed")
    assert target.read_bytes() == b"the old content"
    del reader
    resp = await client.get("/fs/file_info", params={"path": str(target)})
    assert resp.status == 200  # and the daemon still answers


async def test_concurrent_writers_never_interleave(client: TestClient[Any, Any],
                                                   tmp_path: Path) -> None:
    target = tmp_path / "shared"
    size = 4 << 20
    contents = {b"A" * size, b"B" * size}
    target.write_bytes(b"start")
    valid = contents | {b"start"}

    async def body(fill: bytes) -> AsyncIterator[bytes]:
        for _ in range(size // 65536):
            yield fill * 65536
            await asyncio.sleep(0)  # let the other writer and the reader in

    done = False
    torn: list[int] = []

    async def reader() -> int:
        reads = 0
        while not done:
            resp = await client.get("/fs/read_file", params={"path": str(target)})
            data = await resp.read()
            if data not in valid:
                torn.append(len(data))
            reads += 1
        return reads

    reading = asyncio.create_task(reader())
    results = await asyncio.gather(
        client.put("/fs/write_file", params={"path": str(target)}, data=body(b"A")),
        client.put("/fs/write_file", params={"path": str(target)}, data=body(b"B")),
    )
    done = True
    reads = await reading
    assert [r.status for r in results] == [201, 201]
    assert target.read_bytes() in contents
    assert not torn, f"a reader saw a half-written file ({torn})"
    assert reads > 1
    assert os.listdir(tmp_path) == ["shared"]


async def test_large_write_and_read_stream(client: TestClient[Any, Any], tmp_path: Path) -> None:
    # 64 different blocks: a block lost, repeated or out of order changes the digest.
    blocks = [os.urandom(1 << 20) for _ in range(64)]
    expected = hashlib.sha256(b"".join(blocks)).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for block in blocks:
            yield block

    target = tmp_path / "big"
    resp = await client.put("/fs/write_file", params={"path": str(target)}, data=body())
    assert resp.status == 201
    on_disk = await asyncio.to_thread(lambda: hashlib.sha256(target.read_bytes()).hexdigest())
    assert on_disk == expected
    resp = await client.get("/fs/read_file", params={"path": str(target)})
    assert resp.headers["Content-Length"] == str(64 << 20)
    digest = hashlib.sha256()
    received = 0
    async for chunk in resp.content.iter_chunked(1 << 20):
        digest.update(chunk)
        received += len(chunk)
    assert received == 64 << 20 and digest.hexdigest() == expected


# ---------------------------------------------------------------- upload


def form(*fields: tuple[str, bytes | str, bool]) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value, is_file in fields:
        if is_file:
            content = io.BytesIO(value if isinstance(value, bytes) else value.encode())
            data.add_field(name, content, filename="blob",
                           content_type="application/octet-stream")
        else:
            data.add_field(name, value)
    return data


async def test_upload_accepts_every_field_form(client: TestClient[Any, Any],
                                               tmp_path: Path) -> None:
    dest = tmp_path / "up"
    big = os.urandom(3 << 20)
    # /tmp is shared with whatever else runs on the machine: only ours count.
    others = set(staged_files(tempfile.gettempdir()))
    resp = await client.post("/fs/upload", data=form(
        ("files[0][dest_path]", str(dest / "indexed.txt"), False),
        ("files[0][file]", b"indexed", True),
        ("files[1].file", big, True),  # the file before its destination
        ("files[1].dest_path", str(dest / "deep" / "dotted.bin"), False),
        ("files.2.dest_path", str(dest / "plain.txt"), False),
        ("files.2.file", b"plain", True),
    ))
    assert resp.status == 201, await resp.text()
    assert (dest / "indexed.txt").read_bytes() == b"indexed"
    assert (dest / "deep" / "dotted.bin").read_bytes() == big
    assert (dest / "plain.txt").read_bytes() == b"plain"
    assert stat.S_IMODE((dest / "plain.txt").stat().st_mode) == 0o644
    resp = await client.post("/fs/upload", data=form(
        ("dest_path", str(dest / "single"), False), ("file", b"one", True)))
    assert resp.status == 201 and (dest / "single").read_bytes() == b"one"
    assert not staged_files(dest, dest / "deep")
    assert not set(staged_files(tempfile.gettempdir())) - others


@pytest.mark.parametrize(("fields", "status", "field"), [
    ([("files[0][dest_path]", "{d}/a", False), ("files[0][file]", b"a", True),
      ("files[1][dest_path]", "relative/b", False), ("files[1][file]", b"b", True)],
     400, "files[1].dest_path"),
    ([("files[0][dest_path]", "{d}/a", False), ("files[0][file]", b"a", True),
      ("files[1][dest_path]", "{d}/b", False)], 400, "files[1].file"),
    ([("files[0][dest_path]", "{d}/a", False), ("files[0][file]", b"a", True),
      ("files[1][dest_path]", "{d}/existing-dir", False), ("files[1][file]", b"b", True)],
     400, "files[1].dest_path"),
    ([("files[0][dest_path]", "{d}/a", False), ("files[0][file]", b"a", True),
      ("files[1][dest_path]", "{d}/a", False), ("files[1][file]", b"b", True)],
     400, "files[1].dest_path"),
    ([("files[0][dest_path]", "{d}/a", False), ("files[0][file]", b"a", True),
      ("surprise", "x", False)], 400, "surprise"),
    ([("files[0][file]", b"a", True), ("files[0][dest_path]", "{d}/a\x00b", False)],
     400, "files[0].dest_path"),
    ([("files[0][dest_path]", "{d}/a", False), ("files[0][file]", b"a", True),
      ("files[1][dest_path]", "{d}/existing-dir/f/under-a-file", False),
      ("files[1][file]", b"b", True)], 400, "files[1].dest_path"),
    ([], 400, None),
], ids=["relative", "no-file", "onto-dir", "duplicate", "unknown-field", "nul", "under-file",
        "empty"])
async def test_bad_uploads_write_nothing(client: TestClient[Any, Any], tmp_path: Path,
                                         fields: list[tuple[str, Any, bool]], status: int,
                                         field: str | None) -> None:
    (tmp_path / "existing-dir").mkdir()
    (tmp_path / "existing-dir" / "f").write_text("a file")
    before = set(staged_files(tempfile.gettempdir()))
    data = form(*[(name, value.format(d=tmp_path) if isinstance(value, str) else value, is_file)
                  for name, value, is_file in fields])
    if not fields:
        data.add_field("files", "", content_type="text/plain")
    resp = await client.post("/fs/upload", data=data)
    assert resp.status == status, await resp.text()
    assert_error(await resp.json(), "bad_request", field)
    assert os.listdir(tmp_path) == ["existing-dir"], "no file may be placed"
    assert os.listdir(tmp_path / "existing-dir") == ["f"]
    assert set(staged_files(tempfile.gettempdir())) <= before


async def test_upload_needs_multipart(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/fs/upload", json={"files": []})
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request")
    resp = await client.post("/fs/upload", data=b"--x\r\nbroken",
                             headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request")


async def test_upload_aborted_mid_part_leaves_nothing(client: TestClient[Any, Any],
                                                      tmp_path: Path) -> None:
    boundary = "agentboundary"
    prefix = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files[0][dest_path]\""
              f"\r\n\r\n{tmp_path / 'x.bin'}\r\n--{boundary}\r\nContent-Disposition: form-data;"
              ' name="files[0][file]"; filename="x"\r\n\r\n').encode()
    head = ("POST /fs/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            "Content-Length: 104857600\r\n\r\n").encode()
    _reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + prefix + b"y" * (3 << 20))
    await writer.drain()
    await async_wait_until(lambda: staged_files(tmp_path), what="the part to be staged")
    writer.transport.abort()
    await async_wait_until(lambda: os.listdir(tmp_path) == [], timeout=10,
                           what="the staged part to be removed")


# ---------------------------------------------------------------- upload_zip


def zip_bytes(entries: list[tuple[str, bytes, int | None]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


async def post_zip(client: TestClient[Any, Any], data: bytes, dest: Path) -> Any:
    return await client.post("/fs/upload_zip", data=form(("dest_path", str(dest), False),
                                                         ("zip_file", data, True)))


async def test_upload_zip_extracts(client: TestClient[Any, Any], tmp_path: Path) -> None:
    data = zip_bytes([("a/b/c.txt", b"c", None), ("empty/", b"", stat.S_IFDIR | 0o755),
                      ("link", b"a/b/c.txt", stat.S_IFLNK | 0o777), ("top", b"t", 0o100600)])
    resp = await post_zip(client, data, tmp_path / "out")
    assert resp.status == 201, await resp.text()
    out = tmp_path / "out"
    assert (out / "a" / "b" / "c.txt").read_bytes() == b"c" and (out / "empty").is_dir()
    assert os.readlink(out / "link") == "a/b/c.txt"
    assert stat.S_IMODE((out / "top").stat().st_mode) == 0o600
    assert sorted(os.listdir(out)) == ["a", "empty", "link", "top"]


@pytest.mark.parametrize("entries", [
    [("fine", b"x", None), ("../../zip-slip.txt", b"x", None)],
    [("fine", b"x", None), ("/etc/absolute-entry", b"x", None)],
    [("fine", b"x", None), ("esc", b"/etc", stat.S_IFLNK | 0o777)],
    [("fine", b"x", None), ("esc", b"../..", stat.S_IFLNK | 0o777)],
], ids=["zip-slip", "absolute", "symlink-absolute", "symlink-dotdot"])
async def test_upload_zip_rejects_escapes(client: TestClient[Any, Any], tmp_path: Path,
                                          entries: list[tuple[str, bytes, int | None]]) -> None:
    resp = await post_zip(client, zip_bytes(entries), tmp_path / "a" / "b")
    assert resp.status == 400, await resp.text()
    assert_error(await resp.json(), "bad_request")
    assert os.listdir(tmp_path) == []


async def test_upload_zip_bomb_is_413(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client(zip_max_bytes=8 << 20, zip_max_entries=50)
    bomb = zip_bytes([(f"zeros{i}", b"\0" * (4 << 20), None) for i in range(3)])
    assert len(bomb) < 100_000
    resp = await post_zip(client, bomb, tmp_path / "d")
    assert resp.status == 413
    assert_error(await resp.json(), "payload_too_large")
    many = zip_bytes([(f"f{i}", b"", None) for i in range(51)])
    resp = await post_zip(client, many, tmp_path / "d")
    assert resp.status == 413
    assert os.listdir(tmp_path) == []


async def test_upload_zip_bad_forms(client: TestClient[Any, Any], tmp_path: Path) -> None:
    resp = await post_zip(client, b"not a zip at all", tmp_path / "d")
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request")
    resp = await client.post("/fs/upload_zip", data=form(("zip_file", zip_bytes([]), True)))
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request", "dest_path")
    resp = await client.post("/fs/upload_zip", data=form(("dest_path", "relative", False)))
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request", "dest_path")
    (tmp_path / "file").write_text("x")
    resp = await post_zip(client, zip_bytes([("a", b"a", None)]), tmp_path / "file")
    assert resp.status == 400
    assert os.listdir(tmp_path) == ["file"]


# ---------------------------------------------------------------- download_dir_zip


async def test_download_dir_zip(client: TestClient[Any, Any], tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "empty").mkdir(parents=True)
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("nested")
    payload = os.urandom(2 << 20)
    (root / "data.bin").write_bytes(payload)
    resp = await client.get("/fs/download_dir_zip", params={"path": str(root)})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/zip"
    assert "Content-Length" not in resp.headers  # streamed while built
    assert 'filename="site.zip"' in resp.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as archive:
        assert set(archive.namelist()) == {"empty/", "a/", "a/b/", "a/b/f.txt", "data.bin"}
        assert archive.read("a/b/f.txt") == b"nested" and archive.read("data.bin") == payload
    resp = await client.get("/fs/download_dir_zip", params={"path": str(root / "data.bin")})
    assert resp.status == 400
    resp = await client.get("/fs/download_dir_zip", params={"path": str(root / "none")})
    assert resp.status == 404
    assert_error(await resp.json(), "not_found")


async def test_download_abandoned_by_client_stops_the_zip_thread(
        client: TestClient[Any, Any], tmp_path: Path) -> None:
    import threading

    for i in range(8):
        (tmp_path / f"f{i}").write_bytes(os.urandom(4 << 20))
    resp = await client.get("/fs/download_dir_zip", params={"path": str(tmp_path)})
    await resp.content.readexactly(1 << 20)
    resp.close()  # the client goes away with most of the zip unsent
    await async_wait_until(
        lambda: not any(t.name == "dir-zip" for t in threading.enumerate()), timeout=10,
        what="the zip thread to stop")
