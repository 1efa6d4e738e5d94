"""The Playwright runtime where the tests' browser user can read it: the checkout's own
agent/playwright/runtime when it can, else a copy in a world-readable temporary directory
(a checkout under a private home directory is not readable by other users)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

from agent.playwright.manager import RUNTIME_DIR
from agent.playwright.worker import identity_for, readable_by


@functools.cache
def runtime_dir_for(user: str) -> str:
    """'' (the default) when `user` can read the runtime, else the path of a copy."""
    identity = identity_for(user) if os.geteuid() == 0 else None
    if identity is None or readable_by(RUNTIME_DIR / "worker.mjs", identity):
        return ""
    copy = Path(tempfile.mkdtemp(prefix="agent-playwright-runtime-"))
    copy.chmod(0o755)
    atexit.register(shutil.rmtree, copy, True)
    target = copy / "runtime"
    shutil.copytree(RUNTIME_DIR, target, symlinks=True)
    for root, dirs, files in os.walk(target):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)
    return str(target)
