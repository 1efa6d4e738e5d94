"""The images every test here runs: built once per session by the script CI and
`make image` use."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("AGENT_TEST_IMAGE", "browser-agent:test")
SYSTEMD_IMAGE = f"{IMAGE}-systemd"


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Both variants, built by images/build.sh; prints time and size."""
    start = time.monotonic()
    env = {**os.environ, "IMAGE": IMAGE}
    result = subprocess.run(["sh", str(REPO / "images/build.sh")], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=1500)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        pytest.fail(f"image build failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                    f"{result.stderr[-4000:]}")
    sizes = {
        name: int(subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", name],
                                 capture_output=True, text=True, check=True).stdout)
        for name in (IMAGE, SYSTEMD_IMAGE)
    }
    print(f"\n[image] build of both variants: {elapsed:.0f}s; sizes: "
          + ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in sizes.items()))
    return {"supervisord": IMAGE, "systemd": SYSTEMD_IMAGE}
