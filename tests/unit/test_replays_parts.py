"""Replay parts that need no display: cutting a torn fragmented MP4 to what plays, loading
recordings left on disk, listing them in pages, and the settings' bounds."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import ConfigError, load_settings, make_settings
from agent.errors import BadRequest
from agent.replays.manager import ReplayManager
from agent.replays.recorder import FRAGMENT_ARGS, playable_end


def _fragmented(path: Path, seconds: int = 6, fps: int = 10) -> None:
    """A fragmented MP4 as the recorder writes it (a test pattern instead of a screen)."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi",
         "-i", f"testsrc2=size=320x240:rate={fps}:duration={seconds}",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(fps),
         *FRAGMENT_ARGS, "-f", "mp4", str(path)], check=True)


def _decode(path: Path) -> tuple[int, str]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True)
    frames = int(result.stdout.strip() or 0) if result.returncode == 0 else 0
    return frames, result.stderr.strip()


def test_a_torn_fragmented_mp4_is_cut_to_its_whole_fragments(tmp_path: Path) -> None:
    whole = tmp_path / "whole.mp4"
    _fragmented(whole)
    data = whole.read_bytes()
    end, media = playable_end(whole)
    assert media and end == len(data)  # nothing to cut
    assert _decode(whole) == (60, "")

    seen = []
    for cut in (len(data) // 3, len(data) // 2, len(data) * 3 // 4):
        torn = tmp_path / f"torn-{cut}.mp4"
        torn.write_bytes(data[:cut])
        end, media = playable_end(torn)
        assert media and 0 < end <= cut
        torn.write_bytes(data[:end])
        frames, errors = _decode(torn)
        assert errors == "" and 10 <= frames < 60
        assert frames % 10 == 0  # whole one-second fragments
        seen.append(frames)
    assert seen == sorted(seen) and len(set(seen)) > 1
    # Cut in the index ffmpeg writes last: every frame is still there.
    torn = tmp_path / "no-index.mp4"
    torn.write_bytes(data[:-10])
    end, media = playable_end(torn)
    torn.write_bytes(data[:end])
    assert _decode(torn) == (60, "")

    header_only = tmp_path / "header.mp4"
    header_only.write_bytes(data[:40])
    end, media = playable_end(header_only)
    assert not media and end <= 40


def _leave(directory: Path, replay_id: str, started_at: float, *,
           video: bool = True) -> None:
    meta = {"replay_id": replay_id, "started_at": started_at, "framerate": 10,
            "max_duration_s": 60, "state": "done", "finished_at": started_at + 5,
            "size": 4, "error": None, "stop_reason": "stopped"}
    (directory / f"{replay_id}.json").write_text(json.dumps(meta))
    if video:
        (directory / f"{replay_id}.mp4").write_bytes(b"mp4!")


@pytest.fixture
def left_dir() -> Iterator[Path]:
    """Recordings an earlier run left, in a directory of the daemon's user."""
    with tempfile.TemporaryDirectory() as base:
        directory = Path(base) / "replays"
        directory.mkdir(mode=0o700)
        for number in range(5):
            _leave(directory, f"r{number}", 1_000_000.0 + number)
        _leave(directory, "same-time", 1_000_002.0)  # ties are ordered by id
        (directory / "broken.json").write_text("{not json")
        (directory / "r9.json").write_text(json.dumps({"replay_id": "elsewhere",
                                                       "started_at": 1.0, "framerate": 1,
                                                       "max_duration_s": 1}))
        (directory / "r0.mp4.remux.tmp").write_bytes(b"half")
        yield directory


async def test_recordings_on_disk_are_listed_newest_first_in_pages(left_dir: Path) -> None:
    directory = left_dir
    manager = ReplayManager(make_settings(replays_dir=str(directory)))
    await manager.start()
    everything, cursor = manager.list()
    order = [info.replay_id for info in everything]
    assert order == ["r4", "r3", "same-time", "r2", "r1", "r0"] and cursor is None
    assert not (directory / "r0.mp4.remux.tmp").exists()

    pages: list[str] = []
    cursor = None
    while True:
        page, cursor = manager.list(limit=4, cursor=cursor)
        pages += [info.replay_id for info in page]
        if cursor is None:
            break
    assert pages == order
    with pytest.raises(BadRequest):
        manager.list(limit=2, cursor="not-a-cursor")

    assert manager.download("r1").size == 4  # type: ignore[union-attr]
    manager.delete("r1")
    assert not (directory / "r1.mp4").exists() and not (directory / "r1.json").exists()
    await manager.close()


def test_replay_settings(tmp_path: Path) -> None:
    settings = load_settings(["--replays-dir", str(tmp_path), "--replays-max-active", "3"],
                             {"AGENT_REPLAY_MAX_BYTES": "1000", "AGENT_FFMPEG": "/opt/ff"})
    assert (settings.replays_dir, settings.replays_max_active) == (str(tmp_path), 3)
    assert (settings.replay_max_bytes, settings.ffmpeg) == (1000, "/opt/ff")
    with pytest.raises(ConfigError, match="--replays-max-active"):
        load_settings(["--replays-max-active", "0"], {})
    with pytest.raises(ConfigError, match="--replay-max-duration"):
        load_settings([], {"AGENT_REPLAY_MAX_DURATION": "0"})
