"""Every limit a hostile or buggy client could push against answers its clear error (the
real app, with each limit set low)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import zipfile
from pathlib import Path

import aiohttp
from common import ADMIN_TOKEN, MakeClient
from helpers import Chromium, Xvfb, assert_error, async_wait_until, free_port
from process_helpers import spawn, status

from agent.files.archives import pseudo_mounts


def give_to_browser_user(root: Path) -> None:
    """Everything under `root` to the owner of `root` (the browser user's tmp_path)."""
    st = root.stat()
    for path in root.rglob("*"):
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)




async def test_live_watches_and_their_directories_are_capped(
        make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client(max_watches=2, max_watch_dirs=4)
    for _ in range(2):
        resp = await client.post("/fs/watch", json={"path": str(tmp_path)})
        assert resp.status == 201
    resp = await client.post("/fs/watch", json={"path": str(tmp_path)})
    assert resp.status == 429
    assert_error(await resp.json(), "too_many_watches")

    client = await make_client(max_watch_dirs=4)
    tree = tmp_path / "tree"
    for name in "abcdef":
        (tree / name).mkdir(parents=True)
    give_to_browser_user(tmp_path)
    resp = await client.post("/fs/watch", json={"path": str(tree), "recursive": True})
    assert resp.status == 503
    assert_error(await resp.json(), "too_many_watched_directories")


async def test_concurrent_streams_are_capped(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client(max_streams=1)
    resp = await client.post("/fs/watch", json={"path": str(tmp_path)})
    watch_id = (await resp.json())["watch_id"]
    first = await client.get(f"/fs/watch/{watch_id}/events")
    assert first.status == 200
    second = await client.get(f"/fs/watch/{watch_id}/events")
    assert second.status == 429
    assert_error(await second.json(), "too_many_streams")
    first.close()
    # The slot comes back when the stream ends.
    async def frees() -> bool:
        resp = await client.get(f"/fs/watch/{watch_id}/events")
        ok = resp.status == 200
        resp.close()
        return ok
    await async_wait_until(frees, timeout=10, what="the stream slot to be free again")


async def test_connections_are_capped(make_client: MakeClient) -> None:
    client = await make_client(max_connections=2)
    host, port = client.server.host, client.server.port
    held = [await asyncio.open_connection(host, port) for _ in range(2)]
    reader, writer = await asyncio.open_connection(host, port)
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 503")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "too_many_connections"
    writer.close()
    for _, held_writer in held:
        held_writer.close()


async def test_slow_headers_and_stalled_bodies_are_cut(
        make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client(header_timeout_s=1, body_timeout_s=1)
    host, port = client.server.host, client.server.port
    # Slowloris: headers that never end. The connection is closed, not kept.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert await asyncio.wait_for(reader.read(), 15) == b""
    writer.close()
    # A body that stops arriving: 408, and nothing written.
    target = tmp_path / "stalled"
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"PUT /fs/write_file?path={target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 1000\r\n\r\n"
                  "only a part").encode())
    answer = await asyncio.wait_for(reader.read(), 15)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"body_timeout"' in answer
    writer.close()
    assert not target.exists() and os.listdir(tmp_path) == []


async def test_files_that_report_no_size_are_capped(make_client: MakeClient) -> None:
    client = await make_client(unsized_read_max_bytes=64)
    resp = await client.get("/fs/read_file", params={"path": "/proc/cpuinfo"})
    assert resp.status == 413
    assert_error(await resp.json(), "unsized_file_too_large")
    client = await make_client()
    resp = await client.get("/fs/read_file", params={"path": "/proc/cpuinfo"})
    assert resp.status == 200 and b"processor" in await resp.read()


async def test_directory_zips_skip_kernel_filesystems_fifos_and_stop_at_their_cap(
        make_client: MakeClient, tmp_path: Path) -> None:
    assert {"/proc", "/sys"} <= pseudo_mounts()
    client = await make_client(zip_download_max_bytes=1000)
    resp = await client.get("/fs/download_dir_zip", params={"path": "/proc"})
    assert resp.status == 400
    resp = await client.get("/fs/download_dir_zip", params={"path": "/sys/kernel"})
    assert resp.status in (400, 403)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "a-small").write_bytes(b"s" * 600)
    (tmp_path / "b-big").write_bytes(b"b" * 600)  # past the 1000-byte cap
    give_to_browser_user(tmp_path)
    resp = await asyncio.wait_for(
        client.get("/fs/download_dir_zip", params={"path": str(tmp_path)}), 30)
    assert resp.status == 200
    archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
    assert archive.namelist() == ["a-small"]  # no FIFO (never blocked on), no big file
    assert b"size cap of 1000 bytes" in archive.comment and b"fifo" in archive.comment


async def test_curl_bodies_are_capped(make_client: MakeClient, xvfb: Xvfb,
                                      chromium: Chromium) -> None:
    from aiohttp import web

    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000)

    app = web.Application()
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        client = await make_client(display=xvfb.name, cdp_address=chromium.address,
                                   curl_max_bytes=1000)
        resp = await client.post("/curl", json={"url": f"http://127.0.0.1:{port}/big"})
        assert resp.status == 413
        assert_error(await resp.json(), "response_too_large")
    finally:
        await runner.cleanup()


async def test_devtools_messages_are_capped(make_client: MakeClient, xvfb: Xvfb,
                                            chromium: Chromium) -> None:
    proxy_port = free_port()
    await make_client(display=xvfb.name, cdp_address=chromium.address,
                      cdp_proxy_port=proxy_port, cdp_proxy_host="127.0.0.1",
                      cdp_max_message_bytes=10_000)
    url = f"ws://127.0.0.1:{proxy_port}/devtools/browser/any"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as session, session.ws_connect(
            url, headers=headers) as ws:
        await ws.send_str(json.dumps({"id": 1, "method": "Browser.getVersion"}))
        reply = await ws.receive_json(timeout=10)
        assert reply["id"] == 1  # small messages pass
        await ws.send_str(json.dumps({"id": 2, "method": "Browser.getVersion",
                                      "params": {"pad": "x" * 20_000}}))
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_clipboard_reads_are_capped(make_client: MakeClient, xvfb: Xvfb) -> None:
    client = await make_client(display=xvfb.name, clipboard_max_bytes=1000)
    resp = await client.post("/computer/clipboard/write", json={"text": "c" * 5000})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/computer/clipboard/read", json={})
    assert resp.status == 413
    assert_error(await resp.json(), "clipboard_too_large")


async def test_a_slow_reader_cannot_hold_a_process_paused(make_client: MakeClient) -> None:
    """A reader that keeps making (slow) progress never paces the process: its output goes
    to the spool on disk, and the process runs on and finishes."""
    client = await make_client()
    process_id = await spawn(client, command="head", args=["-c", "20000000", "/dev/zero"])
    resp = await client.get(f"/process/{process_id}/stdout/stream")
    assert resp.status == 200
    read = 0
    try:
        while (await status(client, process_id))["state"] != "exited":
            chunk = await asyncio.wait_for(resp.content.read(4096), 30)
            assert chunk, "the stream ended before the process did"
            read += len(chunk)
            await asyncio.sleep(0.05)  # slow, but always some progress
    finally:
        resp.close()
    # At this pace the reader alone would have taken minutes to let 20 MB through.
    assert read < 20_000_000 * 4 / 3
