"""The official Kernel Python SDK as a client: created with `base_url` pointing at one
daemon and its token as the API key, it drives the computer, filesystem, process, logs and
curl calls (through the `/browsers/{id}/...` aliases), and every effect is checked from the
other side: the page over CDP, the bytes on disk, the local server's log."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import stat
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import BINARY, Recorder, origin_app, serving
from common import ADMIN_TOKEN, SCREEN_H, SCREEN_W, MakeClient
from helpers import Chromium, Xvfb, async_wait_until, free_port
from kernel import APIStatusError, AsyncKernel
from PIL import Image

BROWSER = "this-browser"
WAIT = 15.0


@pytest.fixture
async def sdk(make_client: MakeClient, xvfb: Xvfb, chromium: Chromium
              ) -> AsyncIterator[AsyncKernel]:
    api = await make_client(display=xvfb.name, cdp_address=chromium.address,
                            cdp_proxy_port=0)
    client = AsyncKernel(api_key=ADMIN_TOKEN, base_url=str(api.make_url("")).rstrip("/"),
                         max_retries=0, timeout=60)
    async with client:
        yield client


async def first(stream: Any, predicate: Any, timeout: float = WAIT) -> list[Any]:
    """Items of an SDK stream up to and including the first one matching `predicate`."""
    seen: list[Any] = []

    async def read() -> None:
        async for item in stream:
            seen.append(item)
            if predicate(item):
                return
        raise AssertionError(f"stream ended without the expected item; saw {seen}")

    await asyncio.wait_for(read(), timeout)
    return seen


async def test_sdk_drives_the_computer(sdk: AsyncKernel, chromium: Chromium) -> None:
    await chromium.open("""<body style='margin:0'>
      <button id=b style='position:absolute;left:100px;top:100px;width:200px;height:80px'
        onclick='window.clicks++'>press</button>
      <input id=i style='position:absolute;left:100px;top:250px;width:300px;height:40px'>
      <div style='height:5000px'></div>
      <script>window.clicks = 0; window.keys = [];
        addEventListener('keydown', e => keys.push(e.key));</script></body>""")
    ox, oy = await chromium.viewport_origin()
    computer = sdk.browsers.computer

    await computer.click_mouse(BROWSER, x=ox + 200, y=oy + 140)
    await async_wait_until(lambda: chromium.evaluate("window.clicks === 1"), timeout=WAIT,
                           what="the click to reach the page")
    await computer.click_mouse(BROWSER, x=ox + 250, y=oy + 270)
    await computer.type_text(BROWSER, text="hello SDK")
    await async_wait_until(lambda: chromium.evaluate("i.value === 'hello SDK'"),
                           timeout=WAIT, what="the typed text")
    await computer.press_key(BROWSER, keys=["Return"])
    await async_wait_until(lambda: chromium.evaluate("keys.includes('Enter')"),
                           timeout=WAIT, what="the key press")

    await computer.move_mouse(BROWSER, x=ox + 50, y=oy + 400)
    position = await computer.get_mouse_position(BROWSER)
    assert (position.x, position.y) == (ox + 50, oy + 400)
    await computer.scroll(BROWSER, x=ox + 400, y=oy + 400, delta_y=5)
    await async_wait_until(lambda: chromium.evaluate("window.scrollY > 0"), timeout=WAIT,
                           what="the page to scroll")

    shot = await computer.capture_screenshot(BROWSER)
    image = Image.open(io.BytesIO(await shot.read()))
    assert image.format == "PNG" and image.size == (SCREEN_W, SCREEN_H)

    await computer.write_clipboard(BROWSER, text="clip ✓ 日本")
    assert (await computer.read_clipboard(BROWSER)).text == "clip ✓ 日本"


async def test_sdk_drives_the_filesystem(sdk: AsyncKernel, tmp_path: Path) -> None:
    fs = sdk.browsers.fs
    folder = tmp_path / "dir"
    await fs.create_directory(BROWSER, path=str(folder))
    assert folder.is_dir()

    target = folder / "hello.bin"
    await fs.write_file(BROWSER, b"hello\x00bytes\xff", path=str(target))
    assert target.read_bytes() == b"hello\x00bytes\xff"
    assert await (await fs.read_file(BROWSER, path=str(target))).read() == b"hello\x00bytes\xff"

    info = await fs.file_info(BROWSER, path=str(target))
    assert info.size_bytes == 12 and info.is_dir is False and info.name == "hello.bin"
    listing = await fs.list_files(BROWSER, path=str(folder))
    assert [entry.name for entry in listing] == ["hello.bin"]

    await fs.set_file_permissions(BROWSER, path=str(target), mode="600")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    moved = folder / "moved.bin"
    await fs.move(BROWSER, src_path=str(target), dest_path=str(moved))
    assert moved.is_file() and not target.exists()

    await fs.upload(BROWSER, files=[
        {"file": ("a.txt", b"uploaded", "text/plain"), "dest_path": str(folder / "a.txt")}])
    assert (folder / "a.txt").read_bytes() == b"uploaded"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("inner/z.txt", "zipped")
    await fs.upload_zip(BROWSER, dest_path=str(tmp_path / "unzipped"),
                        zip_file=("z.zip", archive.getvalue(), "application/zip"))
    assert (tmp_path / "unzipped" / "inner" / "z.txt").read_text() == "zipped"
    download = await fs.download_dir_zip(BROWSER, path=str(folder))
    with zipfile.ZipFile(io.BytesIO(await download.read())) as z:
        assert {Path(n).name for n in z.namelist()} >= {"moved.bin", "a.txt"}

    await fs.delete_file(BROWSER, path=str(moved))
    assert not moved.exists()
    await fs.delete_directory(BROWSER, path=str(tmp_path / "unzipped"))
    assert not (tmp_path / "unzipped").exists()


async def test_sdk_watches_the_filesystem(sdk: AsyncKernel, tmp_path: Path) -> None:
    watch = sdk.browsers.fs.watch
    started = await watch.start(BROWSER, path=str(tmp_path), recursive=True)
    assert started.watch_id
    stream = await watch.events(started.watch_id, id_or_name=BROWSER)
    try:
        (tmp_path / "created.txt").write_text("x")
        events = await first(stream, lambda e: e.name == "created.txt" or
                             e.path.endswith("created.txt"))
        assert events[-1].type in ("CREATE", "WRITE")
    finally:
        await stream.close()
        await watch.stop(started.watch_id, id_or_name=BROWSER)


async def test_sdk_drives_processes(sdk: AsyncKernel) -> None:
    process = sdk.browsers.process
    done = await process.exec(BROWSER, command="sh",
                              args=["-c", "echo out; echo err >&2; exit 3"])
    assert done.exit_code == 3
    assert base64.b64decode(done.stdout_b64 or "") == b"out\n"
    assert base64.b64decode(done.stderr_b64 or "") == b"err\n"

    spawned = await process.spawn(BROWSER, command="sh",
                                  args=["-c", "read line; echo got:$line"])
    assert spawned.process_id and spawned.pid
    await process.stdin(spawned.process_id, id_or_name=BROWSER,
                        data_b64=base64.b64encode(b"hi\n").decode())
    stream = await process.stdout_stream(spawned.process_id, id_or_name=BROWSER)
    try:
        items = await first(stream, lambda item: item.event == "exit")
    finally:
        await stream.close()
    output = b"".join(base64.b64decode(i.data_b64) for i in items if i.data_b64)
    assert b"got:hi" in output
    assert items[-1].exit_code == 0
    status = await process.status(spawned.process_id, id_or_name=BROWSER)
    assert status.state == "exited" and status.exit_code == 0

    sleeper = await process.spawn(BROWSER, command="sleep", args=["60"])
    assert (await process.kill(sleeper.process_id, id_or_name=BROWSER, signal="TERM")).ok

    async def exited() -> bool:
        state = await process.status(sleeper.process_id, id_or_name=BROWSER)
        return state.state == "exited"

    await async_wait_until(exited, timeout=WAIT, what="the killed process to exit")


async def test_sdk_streams_logs(sdk: AsyncKernel, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("line one\nline two\n")
    stream = await sdk.browsers.logs.stream(BROWSER, source="path", path=str(log),
                                            follow=False)
    events = [event async for event in stream]
    assert [e.message for e in events] == ["line one", "line two"]
    assert all(e.event == "log" for e in events)


async def test_sdk_makes_curl_calls(sdk: AsyncKernel) -> None:
    recorder = Recorder()
    async with serving(origin_app(recorder)) as url:
        answer = await sdk.browsers.curl(BROWSER, url=f"{url}/echo", method="POST",
                                         body="from the sdk", headers={"X-Sdk": "1"})
        assert answer.status == 200
        assert answer.headers["Content-Type"] == ["application/json; charset=utf-8"]
        seen = json.loads(answer.body)
        assert seen["method"] == "POST" and seen["body"] == "from the sdk"
        assert ["X-Sdk", "1"] in seen["headers"]
        assert recorder.requests[-1]["body"] == "from the sdk"

        binary = await sdk.browsers.curl(BROWSER, url=f"{url}/binary",
                                         response_encoding="base64")
        assert base64.b64decode(binary.body) == BINARY

    with pytest.raises(APIStatusError) as failed:
        await sdk.browsers.curl(BROWSER, url=f"http://127.0.0.1:{free_port()}/")
    assert failed.value.status_code == 502
    body = failed.value.body
    assert isinstance(body, dict) and body["net_error"] == -102


async def test_sdk_errors_carry_the_error_json(sdk: AsyncKernel) -> None:
    with pytest.raises(APIStatusError) as failed:
        await sdk.browsers.fs.file_info(BROWSER, path=f"/nonexistent-{os.getpid()}/x")
    assert failed.value.status_code == 404
    assert isinstance(failed.value.body, dict) and failed.value.body["code"] == "not_found"
