"""`make run`: supervisor/run-local.sh starts the image's own supervisord files on this host.

Runs the real script with a real supervisord, Xvfb, Chromium and the daemon, on a free
display and free ports, with every path in a temporary directory; leaves stale X and
profile locks behind first, as a crash would, to see the launchers clear them.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import cdp_call, free_display, free_port, wait_until
from process_helpers import browser_user

REPO = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    """A pid that belongs to no process (a process that was started and reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@dataclass
class Stack:
    proc: subprocess.Popen[str]
    port: int
    cdp_port: int
    display: int
    root: Path
    env: dict[str, str]

    def health(self) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                        timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return err.code, json.loads(err.read())
        except OSError:
            return 0, {}

    def supervisorctl(self, *args: str) -> str:
        result = subprocess.run(
            ["supervisorctl", "-c", str(REPO / "supervisor/supervisord.conf"), *args],
            env=self.env, capture_output=True, text=True, timeout=30)
        return result.stdout

    def processes_using(self, marker: str) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                pids.append(int(entry.name))
        return pids


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    display = free_display(600, 900)
    port, cdp_port = free_port(), free_port()
    profile = tmp_path / "profile"
    env = {
        **os.environ,
        "AGENT_DEFAULT_USER": browser_user() or pwd.getpwuid(os.getuid()).pw_name,
        "AGENT_DISPLAY": f":{display}",
        "AGENT_PORT": str(port),
        "AGENT_CDP_ADDRESS": f"127.0.0.1:{cdp_port}",
        "AGENT_CDP_PROXY_PORT": str(free_port()),
        "AGENT_SUPERVISOR_SOCKET": str(tmp_path / "run/supervisor.sock"),
        "AGENT_EXTENSIONS_DIR": str(tmp_path / "extensions"),
        "STACK_LOG_DIR": str(tmp_path / "log"),
        "CHROMIUM_PROFILE_DIR": str(profile),
        "XVFB_SCREEN": "1024x768x24",
    }
    for name in ("AGENT_API_TOKEN", "AGENT_API_TOKENS", "AGENT_HOST", "DISPLAY"):
        env.pop(name, None)
    # What a crash leaves: an X lock naming a dead server, a profile lock naming a dead
    # browser.
    x_lock = Path(f"/tmp/.X{display}-lock")
    x_lock.write_text(f"{dead_pid():>10}\n")
    profile.mkdir()
    user = pwd.getpwnam(env["AGENT_DEFAULT_USER"])
    os.chown(profile, user.pw_uid, user.pw_gid)
    (profile / "SingletonLock").symlink_to(f"{os.uname().nodename}-{dead_pid()}")
    proc = subprocess.Popen(["sh", str(REPO / "supervisor/run-local.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    stack = Stack(proc, port, cdp_port, display, tmp_path, env)
    try:
        yield stack
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        for pid in stack.processes_using(str(profile)):
            os.kill(pid, signal.SIGKILL)
        x_lock.unlink(missing_ok=True)


def test_run_local_starts_the_stack_and_stops_cleanly(stack: Stack) -> None:
    wait_until(lambda: stack.health()[0] == 200, timeout=60, interval=0.1,
               what="/health of the local stack")
    _, health = stack.health()
    assert health["display"] == {"ok": True, "name": f":{stack.display}"}
    status = stack.supervisorctl("status")
    for program in ("xvfb", "chromium", "agent"):
        assert f"{program} " in status
    wait_until(lambda: stack.supervisorctl("status").count("RUNNING") == 3, timeout=15,
               what="all three programs RUNNING")

    logs = stack.root / "log"
    assert {"supervisord.log", "xvfb.log", "chromium.log", "agent.log"} <= {
        path.name for path in logs.iterdir()}
    xvfb_log = (logs / "xvfb.log").read_text()
    assert "removing stale" in xvfb_log
    chromium_log = (logs / "chromium.log").read_text(errors="replace")
    assert "clearing stale profile lock" in chromium_log
    launch = next(line for line in chromium_log.splitlines()
                  if line.startswith("chromium-launch: exec "))
    assert f"--remote-debugging-port={stack.cdp_port}" in launch
    assert "--window-size=1024,768" in launch
    # Reduced motion by default (CHROMIUM_REDUCED_MOTION): GTK's setting reached Chromium,
    # which tells pages so.
    def page_target() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{stack.cdp_port}/json/list",
                                        timeout=5) as resp:
                targets = json.loads(resp.read())
        except OSError:
            return ""
        return next((t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"), "")

    page_ws = wait_until(page_target, timeout=15, what="Chromium's DevTools to list a page")
    result = asyncio.run(cdp_call(page_ws, "Runtime.evaluate", {
        "expression": "matchMedia('(prefers-reduced-motion: reduce)').matches",
        "returnByValue": True}))
    assert result["result"]["value"] is True

    # Ctrl-C / SIGTERM: supervisord stops all three and exits 0, well within 10 s.
    start = time.monotonic()
    os.kill(stack.proc.pid, signal.SIGTERM)
    code = stack.proc.wait(timeout=15)
    elapsed = time.monotonic() - start
    assert code == 0
    assert elapsed < 10
    assert stack.processes_using(str(stack.root)) == []  # Chromium, by its profile
    assert stack.processes_using(f":{stack.display}\0-screen") == []  # Xvfb
    assert stack.health()[0] == 0
