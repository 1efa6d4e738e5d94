"""Recordings are the daemon's: the browser user can neither read, change nor redirect them
(through its own processes or through the file endpoints, which act as that user)."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import WRITE, MakeClient
from helpers import Chromium, Xvfb

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a browser user")


@pytest.fixture
def root_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="agent-replays-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_the_browser_user_cannot_touch_recordings(make_client: MakeClient, xvfb: Xvfb,
                                                        chromium: Chromium,
                                                        root_dir: Path) -> None:
    replays = root_dir / "replays"
    api = await make_client(display=xvfb.name, replays_dir=str(replays))
    async with api.post("/replays", json={}) as resp:
        assert resp.status == 201
        replay_id = (await resp.json())["replay_id"]
    async with api.post(f"/replays/{replay_id}/stop") as resp:
        assert resp.status == 200
    video = replays / f"{replay_id}.mp4"
    assert video.stat().st_uid == os.geteuid()
    assert oct(replays.stat().st_mode & 0o777) == oct(0o700)

    # A write token's processes run as the browser user.
    for script in (f"ls {replays}", f"cat {video} > /dev/null", f"touch {replays}/x",
                   f"mv {video} {replays}/y"):
        async with api.post("/process/exec", json={"command": "sh", "args": ["-c", script]},
                            headers=WRITE) as resp:
            assert resp.status == 200
            result = await resp.json()
        assert result["exit_code"] != 0, script
        assert "Permission denied" in base64.b64decode(result["stderr_b64"]).decode(), script
    # The file endpoints act as the browser user too.
    async with api.get("/fs/read_file", params={"path": str(video)}) as resp:
        assert resp.status == 403
    async with api.get(f"/replays/{replay_id}") as resp:
        assert resp.status == 200  # while the API serves it


async def test_a_directory_the_browser_user_could_swap_is_refused(
        make_client: MakeClient, xvfb: Xvfb, tmp_path: Path) -> None:
    # tmp_path belongs to the browser user: it could rename the directory away and leave
    # a link in its place, so the daemon would write wherever that user chose.
    api = await make_client(display=xvfb.name, replays_dir=str(tmp_path / "replays"))
    async with api.post("/replays", json={}) as resp:
        body = await resp.json()
        assert resp.status == 503, body
        assert "belongs to another user" in body["message"]
    async with api.get("/health") as resp:
        replays = (await resp.json())["replays"]
        assert replays["ok"] is False and "belongs to another user" in replays["error"]
    assert not (tmp_path / "replays").exists()
