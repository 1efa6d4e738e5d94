"""One malloc arena (osutil.single_malloc_arena): memory that threads used for big,
short-lived buffers (screen frames, PNG bands) goes back to the system at the idle trim,
where glibc's per-thread arenas would keep it. Each case runs in a fresh interpreter,
since the setting only holds when made before any thread allocates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys, threading
from agent.osutil import libc, single_malloc_arena
if sys.argv[1] == "one":
    assert single_malloc_arena()

def rss_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20

warm = bytearray(9 << 20)  # glibc raises its thresholds past a freed block this big
del warm
before = rss_mib()
kept = []

def work():
    for _ in range(20):
        kept.append(bytes(64 << 10))  # something kept, below the frame in the heap
        frame = bytearray(8 << 20)  # a 1920x1080 BGRX frame, at the top of the heap
        frame[::4096] = b"\\1" * len(frame[::4096])
        del frame

threads = [threading.Thread(target=work) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc().malloc_trim(0)  # what the daemon does once screenshots go quiet
print(rss_mib() - before)
"""


def grown_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return float(out)


def test_freed_frames_go_back_to_the_system_with_one_arena() -> None:
    one, default = grown_mib("one"), grown_mib("default")
    print(f"\n[malloc] kept after the trim: one arena {one:.1f} MiB, "
          f"glibc's default arenas {default:.1f} MiB (2 threads x 20 frames of 8 MiB)")
    assert one < 5  # the 2.5 MiB of small blocks kept, and no frame
