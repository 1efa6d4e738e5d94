"""Replays with a real Xvfb, Chromium and ffmpeg: what is recorded is read back from the
video itself (ffprobe, decoded frames), the files from the disk, and the daemon is stopped,
restarted and killed for real."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from common import ADMIN_TOKEN, READ, READ_TOKEN, WRITE, MakeClient
from helpers import Chromium, Xvfb, async_wait_until, free_port
from kernel import APIStatusError, AsyncKernel
from process_helpers import browser_user_env
from replay_support import (
    NOISE_PAGE,
    RED_PAGE,
    centre,
    decode_errors,
    frames,
    is_blue,
    is_red,
    probe,
    recorders,
    remuxers,
)
from yarl import URL

WAIT = 30.0
Client = TestClient[Any, Any]


@pytest.fixture
def replays_dir() -> Iterator[Path]:
    """The daemon's own directory: root's (or the test user's), not the browser user's."""
    base = Path(tempfile.mkdtemp(prefix="agent-replays-"))
    try:
        yield base / "replays"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def api(make_client: MakeClient, xvfb: Xvfb, replays_dir: Path) -> Client:
    return await make_client(display=xvfb.name, replays_dir=str(replays_dir))


async def start(client: Client, status: int = 201, **body: Any) -> dict[str, Any]:
    async with client.post("/replays", json=body) as resp:
        answer = await resp.json()
        assert resp.status == status, answer
        return dict(answer)


async def stop(client: Client, replay_id: str) -> None:
    async with client.post(f"/replays/{replay_id}/stop") as resp:
        assert resp.status == 200, await resp.text()


async def listed(client: Client) -> dict[str, dict[str, Any]]:
    async with client.get("/replays") as resp:
        assert resp.status == 200
        return {item["replay_id"]: item for item in await resp.json()}


async def finished(client: Client, replay_id: str) -> bool:
    return (await listed(client))[replay_id]["finished_at"] is not None


async def download(client: Client, replay_id: str, path: Path) -> bytes:
    async with client.get(f"/replays/{replay_id}") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "video/mp4"
        body = await resp.read()
        assert int(resp.headers["Content-Length"]) == len(body)
    _save(path, body)
    return body


def _save(path: Path, body: bytes) -> None:
    path.write_bytes(body)


async def download_when_ready(client: Client, replay_id: str, path: Path) -> bytes:
    async def ready() -> bool:
        async with client.get(f"/replays/{replay_id}") as resp:
            assert resp.status in (200, 202), await resp.text()
            return resp.status == 200
    await async_wait_until(ready, timeout=WAIT, interval=0.2, what="the video to be ready")
    return await download(client, replay_id, path)


def files_of(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------- what is recorded


async def test_records_red_then_blue_and_serves_it(api: Client, chromium: Chromium,
                                                   replays_dir: Path, tmp_path: Path) -> None:
    await chromium.open(RED_PAGE)
    fps = 15
    s0 = time.monotonic()
    replay = await start(api, framerate=fps)
    s1 = time.monotonic()
    replay_id = replay["replay_id"]
    assert replay["started_at"] and replay["finished_at"] is None
    assert replay["replay_view_url"] == str(api.make_url(f"/replays/{replay_id}/view"))

    # Still recording: 202 with Retry-After, never a partial file; listed as running.
    async with api.get(f"/replays/{replay_id}") as resp:
        assert resp.status == 202
        assert int(resp.headers["Retry-After"]) >= 1
    assert (await listed(api))[replay_id]["finished_at"] is None
    assert files_of(replays_dir) == [f"{replay_id}.json", f"{replay_id}.part.mp4"]

    await async_wait_until(lambda: time.monotonic() - s1 > 2.0, what="2 s of red")
    c0 = time.monotonic()
    await chromium.evaluate("turnBlue()")
    c1 = time.monotonic()
    await async_wait_until(lambda: time.monotonic() - c1 > 2.0, what="2 s of blue")
    e0 = time.monotonic()
    await stop(api, replay_id)
    e1 = time.monotonic()

    video = tmp_path / "red-blue.mp4"
    body = await download(api, replay_id, video)
    info = probe(video)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    assert info.frame_rate == f"{fps}/1"
    assert (info.width, info.height) == (1280, 800)
    # The recorded time lies within the wall time of the recording, give or take 10%.
    assert 0.9 * (e0 - s1) <= info.duration <= 1.1 * (e1 - s0), (info.duration, e0 - s1, e1 - s0)
    assert abs(info.frames / info.duration - fps) <= 0.05 * fps
    assert decode_errors(video) == ""

    decoded = frames(video)
    assert len(decoded) == info.frames
    assert is_red(centre(decoded[0])), centre(decoded[0])
    assert is_blue(centre(decoded[-1])), centre(decoded[-1])
    first_blue = next(i for i, frame in enumerate(decoded) if is_blue(centre(frame)))
    assert all(is_red(centre(frame)) for frame in decoded[:first_blue])
    # The change shows up at the moment it happened (the first frame was grabbed while the
    # start request was answered; a frame and the page's paint later at the most).
    at = first_blue / fps
    assert c0 - s1 - 1 / fps <= at <= c1 - s0 + 1.0, (at, c0 - s1, c1 - s0)

    # Byte ranges, as players seek.
    async with api.get(f"/replays/{replay_id}", headers={"Range": "bytes=100-199"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 100-199/{len(body)}"
        assert await resp.read() == body[100:200]
    async with api.get(f"/replays/{replay_id}", headers={"Range": "bytes=-50"}) as resp:
        assert resp.status == 206 and await resp.read() == body[-50:]
    async with api.get(f"/replays/{replay_id}",
                       headers={"Range": f"bytes={len(body)}-"}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == f"bytes */{len(body)}"

    item = (await listed(api))[replay_id]
    assert item["finished_at"] is not None and item["started_at"] == replay["started_at"]
    assert files_of(replays_dir) == [f"{replay_id}.json", f"{replay_id}.mp4"]

    # The player page: read scope, static, the video's URL inside, no token.
    async with api.get(f"/replays/{replay_id}/view", headers=READ) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
        assert f'src="/replays/{replay_id}"' in page
        assert READ_TOKEN not in page and "<script" not in page
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    async with api.get(f"/replays/{replay_id}/view",
                       headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 401

    async with api.delete(f"/replays/{replay_id}", headers=WRITE) as resp:
        assert resp.status == 204
    assert files_of(replays_dir) == []
    for method, path in (("GET", f"/replays/{replay_id}"), ("DELETE", f"/replays/{replay_id}"),
                         ("POST", f"/replays/{replay_id}/stop"),
                         ("GET", f"/replays/{replay_id}/view")):
        async with api.request(method, path) as resp:
            assert resp.status == 404, (method, path)
            assert (await resp.json())["code"] == "not_found"
    assert await listed(api) == {}


async def test_concurrent_stops_make_one_good_file(api: Client, chromium: Chromium,
                                                   replays_dir: Path, tmp_path: Path) -> None:
    await chromium.open(NOISE_PAGE)
    replay_id = (await start(api))["replay_id"]
    await async_wait_until(lambda: _part_size(replays_dir, replay_id) > 0, timeout=WAIT,
                           what="a first fragment")
    stops = [api.post(f"/replays/{replay_id}/stop") for _ in range(4)]
    answers = await asyncio.gather(*stops)
    assert [resp.status for resp in answers] == [200] * 4
    for resp in answers:
        resp.release()
    video = tmp_path / "once.mp4"
    await download(api, replay_id, video)
    assert decode_errors(video) == ""
    assert probe(video).frames > 0
    assert files_of(replays_dir) == [f"{replay_id}.json", f"{replay_id}.mp4"]
    assert remuxers(replays_dir) == []
    await stop(api, replay_id)  # a stop after the end changes nothing
    assert (tmp_path / "once.mp4").read_bytes() == (replays_dir / f"{replay_id}.mp4").read_bytes()


def _frames_written(directory: Path, replay_id: str) -> int:
    """Frames in the whole fragments of a recording being written, as ffprobe sees them."""
    part = directory / f"{replay_id}.part.mp4"
    try:
        return probe(part).frames if _part_size(directory, replay_id) else 0
    except (subprocess.CalledProcessError, KeyError, IndexError, ValueError):
        return 0


def _part_size(directory: Path, replay_id: str) -> int:
    try:
        return (directory / f"{replay_id}.part.mp4").stat().st_size
    except FileNotFoundError:
        return 0


async def test_max_duration_ends_a_recording_by_itself(api: Client, chromium: Chromium,
                                                       xvfb: Xvfb, replays_dir: Path,
                                                       tmp_path: Path) -> None:
    await chromium.open(RED_PAGE)
    started = time.monotonic()
    replay_id = (await start(api, max_duration_in_seconds=2))["replay_id"]
    await async_wait_until(lambda: finished(api, replay_id), timeout=WAIT, interval=0.1,
                           what="the recording to end by itself")
    assert time.monotonic() - started < 2 + WAIT / 2
    video = tmp_path / "two-seconds.mp4"
    await download_when_ready(api, replay_id, video)
    assert recorders(xvfb.name) == []
    assert 1.8 <= probe(video).duration <= 3.2
    assert decode_errors(video) == ""

    # A stop racing the maximum duration: still one finalisation, one good file.
    raced = (await start(api, max_duration_in_seconds=1))["replay_id"]
    await async_wait_until(lambda: _part_size(replays_dir, raced) > 0, timeout=WAIT,
                           what="a first fragment")
    await asyncio.gather(stop(api, raced), stop(api, raced))
    await download(api, raced, tmp_path / "raced.mp4")
    assert decode_errors(tmp_path / "raced.mp4") == ""


async def test_a_killed_ffmpeg_leaves_a_playable_recording(api: Client, chromium: Chromium,
                                                           xvfb: Xvfb, replays_dir: Path,
                                                           tmp_path: Path) -> None:
    await chromium.open(NOISE_PAGE)
    replay_id = (await start(api, framerate=10))["replay_id"]
    await async_wait_until(lambda: _frames_written(replays_dir, replay_id) >= 10,
                           timeout=WAIT, interval=0.2, what="a whole fragment")
    [ffmpeg] = recorders(xvfb.name)
    # Stops racing ffmpeg's own (sudden) end: one finalisation, a playable file.
    ffmpeg.send_signal(signal.SIGKILL)
    await asyncio.gather(stop(api, replay_id), stop(api, replay_id))
    assert await finished(api, replay_id)
    video = tmp_path / "killed.mp4"
    await download(api, replay_id, video)
    assert decode_errors(video) == ""
    assert probe(video).frames >= 10
    assert files_of(replays_dir) == [f"{replay_id}.json", f"{replay_id}.mp4"]
    assert remuxers(replays_dir) == []


# ---------------------------------------------------------------- limits and errors


async def test_limits_and_bad_requests(make_client: MakeClient, xvfb: Xvfb,
                                       chromium: Chromium, replays_dir: Path) -> None:
    api = await make_client(display=xvfb.name, replays_dir=str(replays_dir),
                            replays_max_active=1, replay_max_duration_s=30)
    await chromium.open(RED_PAGE)
    for body, field in (({"framerate": 0}, "framerate"), ({"framerate": 61}, "framerate"),
                        ({"framerate": "ten"}, "framerate"),
                        ({"max_duration_in_seconds": 0}, "max_duration_in_seconds"),
                        ({"max_duration_in_seconds": 31}, "max_duration_in_seconds"),
                        ({"record_audio": True}, "record_audio"),
                        ({"colour": "red"}, "colour")):
        answer = await start(api, 400, **body)
        assert answer["details"][0]["field"] == field, answer
    async with api.get("/replays?limit=0") as resp:
        assert resp.status == 400
    async with api.get("/replays?cursor=garbage!") as resp:
        assert resp.status == 400

    first = (await start(api, max_duration_in_seconds=30))["replay_id"]
    answer = await start(api, 409)
    assert answer["code"] == "too_many_recordings"
    async with api.delete(f"/replays/{first}") as resp:
        assert resp.status == 409
    async with api.post("/replays", headers=READ, json={}) as resp:
        assert resp.status == 403
    async with api.post(f"/replays/{first}/stop", headers=READ) as resp:
        assert resp.status == 403
    async with api.post(f"/replays/{first}/stop", headers=WRITE) as resp:
        assert resp.status == 200
    second = (await start(api))["replay_id"]  # room again, and stopped at once
    await stop(api, second)
    assert list(await listed(api)) == [second, first]
    await download(api, second, replays_dir.parent / "at-once.mp4")
    assert probe(replays_dir.parent / "at-once.mp4").frames >= 1


async def test_a_recording_stops_at_its_byte_limit(make_client: MakeClient, xvfb: Xvfb,
                                                   chromium: Chromium, replays_dir: Path,
                                                   tmp_path: Path) -> None:
    cap = 2_500_000  # a few one-second fragments of noise
    api = await make_client(display=xvfb.name, replays_dir=str(replays_dir),
                            replay_max_bytes=cap)
    await chromium.open(NOISE_PAGE)
    replay_id = (await start(api, framerate=10))["replay_id"]
    await async_wait_until(lambda: finished(api, replay_id), timeout=WAIT, interval=0.1,
                           what="the recording to stop at its byte limit")
    video = tmp_path / "capped.mp4"
    body = await download_when_ready(api, replay_id, video)
    assert len(body) <= cap + 16_384  # the remux's index, a few bytes per frame
    assert decode_errors(video) == ""
    assert probe(video).frames >= 1


async def test_the_oldest_finished_recordings_make_room(make_client: MakeClient, xvfb: Xvfb,
                                                        chromium: Chromium, replays_dir: Path,
                                                        tmp_path: Path) -> None:
    budget = 3_000_000
    api = await make_client(display=xvfb.name, replays_dir=str(replays_dir),
                            replays_max_total_bytes=budget)
    await chromium.open(RED_PAGE)
    old = (await start(api))["replay_id"]
    await async_wait_until(lambda: _part_size(replays_dir, old) > 0, timeout=WAIT,
                           what="a first fragment")
    await stop(api, old)
    await chromium.open(NOISE_PAGE)
    new = (await start(api, framerate=10))["replay_id"]
    await async_wait_until(lambda: finished(api, new), timeout=WAIT, interval=0.1,
                           what="the recording to stop at the disk budget")
    replays = await listed(api)
    assert old not in replays and not (replays_dir / f"{old}.mp4").exists()
    body = await download_when_ready(api, new, tmp_path / "budget.mp4")
    assert len(body) <= budget + 16_384
    assert decode_errors(tmp_path / "budget.mp4") == ""


async def test_health_says_whether_recording_works(make_client: MakeClient, xvfb: Xvfb,
                                                   replays_dir: Path) -> None:
    good = await make_client(display=xvfb.name, replays_dir=str(replays_dir))
    async with good.get("/health") as resp:
        replays = (await resp.json())["replays"]
        assert replays == {"ok": True, "recording": 0}
    broken = await make_client(display=xvfb.name, replays_dir=str(replays_dir),
                               ffmpeg="/nonexistent/ffmpeg")
    async with broken.get("/health") as resp:
        assert resp.status == 503
        replays = (await resp.json())["replays"]
        assert replays["ok"] is False and "/nonexistent/ffmpeg" in replays["error"]
    answer = await start(broken, 503)
    assert "/nonexistent/ffmpeg" in answer["message"]
    nodisplay = await make_client(display=":4999", replays_dir=str(replays_dir))
    answer = await start(nodisplay, 503)
    assert answer["code"] == "display_unavailable", answer
    assert await listed(nodisplay) == {} and files_of(replays_dir) == []


async def test_browser_alias_and_pages(api: Client, chromium: Chromium) -> None:
    await chromium.open(RED_PAGE)
    async with api.post("/browsers/b1/replays", json={}) as resp:
        assert resp.status == 201
        replay = await resp.json()
    replay_id = replay["replay_id"]
    assert replay["replay_view_url"].endswith(f"/browsers/b1/replays/{replay_id}/view")
    async with api.post(f"/browsers/b1/replays/{replay_id}/stop") as resp:
        assert resp.status == 200
    async with api.get(f"/browsers/b1/replays/{replay_id}/view") as resp:
        assert f'src="/browsers/b1/replays/{replay_id}"' in await resp.text()
    ids = []
    for _ in range(2):
        ids.append((await start(api))["replay_id"])
        await stop(api, ids[-1])
    # Pages: newest first, a Link to the next page while there is more.
    seen: list[str] = []
    url: str | None = "/replays?limit=2"
    while url is not None:
        async with api.get(url) as resp:
            assert resp.status == 200
            seen += [item["replay_id"] for item in await resp.json()]
            link = resp.headers.get("Link")
        url = None
        if link is not None:
            assert link.endswith('>; rel="next"')
            target = URL(link[1:link.index(">")])
            assert target.host == "127.0.0.1"  # absolute, on the host called
            url = str(target.relative())
    assert seen == [ids[1], ids[0], replay_id]


# ---------------------------------------------------------------- restarts


async def test_recordings_outlive_the_daemon(make_client: MakeClient, xvfb: Xvfb,
                                             chromium: Chromium, replays_dir: Path,
                                             tmp_path: Path) -> None:
    await chromium.open(RED_PAGE)
    first = await make_client(display=xvfb.name, replays_dir=str(replays_dir))
    done = (await start(first))["replay_id"]
    await stop(first, done)
    running = (await start(first))["replay_id"]
    await async_wait_until(lambda: _part_size(replays_dir, running) > 0, timeout=WAIT,
                           what="a first fragment")
    await first.close()  # shutdown stops and finalises the running recording
    assert recorders(xvfb.name) == [] and remuxers(replays_dir) == []

    second = await make_client(display=xvfb.name, replays_dir=str(replays_dir))
    replays = await listed(second)
    assert list(replays) == [running, done]
    assert all(item["finished_at"] is not None for item in replays.values())
    for replay_id in (done, running):
        video = tmp_path / f"{replay_id}.mp4"
        await download(second, replay_id, video)
        assert decode_errors(video) == "" and probe(video).frames >= 1


async def test_a_recording_survives_a_killed_daemon(make_client: MakeClient, xvfb: Xvfb,
                                                    chromium: Chromium, replays_dir: Path,
                                                    tmp_path: Path) -> None:
    await chromium.open(NOISE_PAGE)
    port = free_port()
    daemon = _start_daemon(port, xvfb.name, replays_dir, tmp_path / "daemon.log")
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            async def up() -> bool:
                try:
                    async with session.get("/health"):
                        return True
                except aiohttp.ClientConnectionError:
                    return False
            await async_wait_until(up, timeout=WAIT, what="the daemon to listen")
            async with session.post("/replays", json={}) as resp:
                assert resp.status == 201, await resp.text()
                replay_id = (await resp.json())["replay_id"]
        await async_wait_until(lambda: _frames_written(replays_dir, replay_id) >= 10,
                               timeout=WAIT, interval=0.2, what="a whole fragment")
        daemon.kill()
        daemon.wait()
        # ffmpeg notices at its next write that nobody reads its output.
        await async_wait_until(lambda: recorders(xvfb.name) == [], timeout=WAIT,
                               what="ffmpeg to exit after its daemon died")
        await async_wait_until(lambda: remuxers(replays_dir) == [], timeout=WAIT,
                               what="the waiting remux to exit after its daemon died")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()

    api = await make_client(display=xvfb.name, replays_dir=str(replays_dir))
    item = (await listed(api))[replay_id]
    assert item["finished_at"] is not None
    video = tmp_path / "survivor.mp4"
    await download_when_ready(api, replay_id, video)
    assert decode_errors(video) == ""
    assert probe(video).frames >= 1
    assert files_of(replays_dir) == [f"{replay_id}.json", f"{replay_id}.mp4"]


def _start_daemon(port: int, display: str, replays_dir: Path, log: Path
                  ) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env.update(browser_user_env())
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "--port", str(port), "--display", display,
             "--replays-dir", str(replays_dir), "--cdp-proxy-port", "0",
             "--adopt-orphans", "false"],
            env=env, stdout=out, stderr=subprocess.STDOUT)


# ---------------------------------------------------------------- the official SDK


async def test_through_the_official_sdk(api: Client, chromium: Chromium, replays_dir: Path,
                                        tmp_path: Path) -> None:
    await chromium.open(RED_PAGE)
    browser = "this-browser"
    sdk = AsyncKernel(api_key=ADMIN_TOKEN, base_url=str(api.make_url("")).rstrip("/"),
                      max_retries=0, timeout=60)
    async with sdk:
        replays = sdk.browsers.replays
        started = await replays.start(browser, framerate=12, max_duration_in_seconds=60)
        assert started.finished_at is None and started.started_at is not None
        assert started.replay_view_url is not None
        assert started.replay_view_url.endswith(
            f"/browsers/{browser}/replays/{started.replay_id}/view")

        pending = await replays.with_raw_response.download(started.replay_id,
                                                           id_or_name=browser)
        assert pending.status_code == 202 and int(pending.headers["Retry-After"]) >= 1

        [item] = await replays.list(browser)
        assert item.replay_id == started.replay_id and item.finished_at is None

        await async_wait_until(lambda: _frames_written(replays_dir, started.replay_id) >= 12,
                               timeout=WAIT, interval=0.2, what="a whole fragment")
        assert await replays.stop(started.replay_id, id_or_name=browser) is None
        await replays.stop(started.replay_id, id_or_name=browser)  # idempotent

        video = await replays.download(started.replay_id, id_or_name=browser)
        path = tmp_path / "sdk.mp4"
        await video.write_to_file(path)
        info = probe(path)
        assert info.codec == "h264" and info.frame_rate == "12/1" and info.frames >= 12
        assert is_red(centre(frames(path)[-1]))

        [item] = await replays.list(browser)
        assert item.finished_at is not None and item.started_at == started.started_at

        with pytest.raises(APIStatusError) as bad:
            await replays.start(browser, record_audio=True)
        assert bad.value.status_code == 400
        with pytest.raises(APIStatusError) as missing:
            await replays.download("no-such-replay", id_or_name=browser)
        assert missing.value.status_code == 404
        with pytest.raises(APIStatusError) as missing:
            await replays.stop("no-such-replay", id_or_name=browser)
        assert missing.value.status_code == 404


async def test_the_player_page_plays_in_chromium(make_client: MakeClient, xvfb: Xvfb,
                                                 chromium: Chromium, replays_dir: Path) -> None:
    # Without tokens (loopback only), so a plain navigation may load the page.
    api = await make_client(display=xvfb.name, replays_dir=str(replays_dir), tokens={})
    await chromium.open(RED_PAGE)
    replay = await start(api, framerate=10)
    await async_wait_until(lambda: _frames_written(replays_dir, replay["replay_id"]) >= 20,
                           timeout=WAIT, interval=0.2, what="two seconds of video")
    await stop(api, replay["replay_id"])
    duration = probe(replays_dir / f"{replay['replay_id']}.mp4").duration

    await chromium.cdp("Page.navigate", {"url": replay["replay_view_url"]})
    state = await async_wait_until(lambda: chromium.evaluate(
        "(() => { const v = document.querySelector('video');"
        " return v && v.readyState >= 2 && !v.error"
        " ? [v.videoWidth, v.videoHeight, v.duration, v.currentSrc] : null; })()"),
        timeout=WAIT, interval=0.2, what="the page's video to load")
    width, height, played_duration, src = state
    assert (width, height) == (1280, 800)
    assert abs(played_duration - duration) < 0.2  # the remuxed header's duration
    assert src == str(api.make_url(f"/replays/{replay['replay_id']}"))
