"""Reading recordings back from the other side: ffprobe's view of a video, every decoded
frame (scaled down, as RGB), and the ffmpeg processes recording a display."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

# A page that is red until `turnBlue()`; the recorded screen's centre is inside it.
RED_PAGE = """<body style='margin:0;background:rgb(255,0,0);height:100vh'>
<script>function turnBlue() { document.body.style.background = 'rgb(0,0,255)'; }</script>
</body>"""

# Coarse noise redrawn every frame: costly to encode, so recordings grow fast.
NOISE_PAGE = """<body style='margin:0'><canvas id=c width=160 height=100
 style='width:100vw;height:100vh;image-rendering:pixelated'></canvas><script>
const c = document.getElementById('c').getContext('2d');
const img = c.createImageData(160, 100);
let seed = 1;
function rnd() { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed & 255; }
function draw() {
  for (let i = 0; i < img.data.length; i += 4) {
    img.data[i] = rnd(); img.data[i + 1] = rnd(); img.data[i + 2] = rnd(); img.data[i + 3] = 255;
  }
  c.putImageData(img, 0, 0);
  requestAnimationFrame(draw);
}
draw();
</script></body>"""

SMALL_W, SMALL_H = 64, 40


@dataclass(frozen=True)
class Probe:
    codec: str
    width: int
    height: int
    frame_rate: str
    frames: int
    duration: float
    pix_fmt: str


def probe(path: Path) -> Probe:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=codec_name,width,height,r_frame_rate,nb_read_frames,pix_fmt"
         ":format=duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    stream = data["streams"][0]
    return Probe(stream["codec_name"], int(stream["width"]), int(stream["height"]),
                 stream["r_frame_rate"], int(stream["nb_read_frames"]),
                 float(data["format"]["duration"]), stream["pix_fmt"])


def decode_errors(path: Path) -> str:
    """What ffmpeg complains about when decoding every frame ('' for a clean file)."""
    result = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path),
                             "-f", "null", "-"], capture_output=True, text=True)
    return result.stderr.strip() + ("" if result.returncode == 0 else
                                    f" (exit {result.returncode})")


def frames(path: Path) -> list[bytes]:
    """Every frame, scaled to SMALL_W x SMALL_H, as raw RGB."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path),
         "-vf", f"scale={SMALL_W}:{SMALL_H}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True).stdout
    size = SMALL_W * SMALL_H * 3
    return [raw[i:i + size] for i in range(0, len(raw) - size + 1, size)]


def centre(frame: bytes) -> tuple[int, int, int]:
    offset = ((SMALL_H // 2) * SMALL_W + SMALL_W // 2) * 3
    r, g, b = frame[offset:offset + 3]
    return r, g, b


def is_red(rgb: tuple[int, int, int]) -> bool:
    return rgb[0] > 200 and rgb[1] < 60 and rgb[2] < 60


def is_blue(rgb: tuple[int, int, int]) -> bool:
    return rgb[2] > 200 and rgb[0] < 60 and rgb[1] < 60


def recorders(display: str) -> list[psutil.Process]:
    """Live ffmpeg processes grabbing `display`."""
    return ffmpegs(lambda cmdline: "x11grab" in cmdline and display in cmdline)


def remuxers(directory: Path) -> list[psutil.Process]:
    """Live ffmpeg processes writing into `directory` (the remuxes)."""
    return ffmpegs(lambda cmdline: any(arg.startswith(f"{directory}/") for arg in cmdline))


def ffmpegs(match: Callable[[list[str]], bool]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (proc.info["name"] == "ffmpeg" and match(cmdline)
                and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(proc)
    return found
