"""A real daemon (`python -m agent`) as its own process, for the attacks of tests/security:
tokens from a root-only file, the browser user configured, Chromium's DevTools behind the
daemon's public DevTools endpoint."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers import free_port, wait_until
from process_helpers import browser_user_env

ADMIN_TOKEN = "sec-admin-token-8b1f0c2e7d"
WRITE_TOKEN = "sec-write-token-5a9e3c1d44"
READ_TOKEN = "sec-read-token-77c2e0a9b13"
# Only in the daemon's environment (AGENT_API_TOKEN): no request may ever reveal it.
ENV_TOKEN = "sec-env-admin-token-e4d2a1f09c"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
ALL_TOKENS = (ADMIN_TOKEN, WRITE_TOKEN, READ_TOKEN, ENV_TOKEN)


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    port: int
    proxy_port: int
    token_file: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def devtools(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"


def _clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}


@contextlib.contextmanager
def running_daemon(display: str, cdp_address: str, *, tokens: bool = True,
                   args: tuple[str, ...] = ()) -> Iterator[Daemon]:
    secrets = Path(tempfile.mkdtemp(prefix="agent-sec-secrets-"))  # mode 0700, root's
    token_file = secrets / "tokens"
    token_file.write_text(f"{ADMIN_TOKEN}:admin\n{WRITE_TOKEN}:write\n{READ_TOKEN}:read\n")
    token_file.chmod(0o600)
    port, proxy_port = free_port(), free_port()
    env = {**_clean_environment(), **browser_user_env()}
    if tokens:
        env["AGENT_API_TOKENS_FILE"] = str(token_file)
        env["AGENT_API_TOKEN"] = ENV_TOKEN
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--host", "127.0.0.1", "--port", str(port),
         "--display", display, "--cdp-address", cdp_address,
         "--cdp-proxy-port", str(proxy_port), "--log-level", "warning", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    daemon = Daemon(proc, port, proxy_port, token_file)

    def answers() -> bool:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"the daemon exited: {out}")
        try:
            with urllib.request.urlopen(daemon.base + "/health", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # answers (503 while a component is down)
        except OSError:
            return False

    try:
        wait_until(answers, timeout=30, what="the daemon to answer")
        yield daemon
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        shutil.rmtree(secrets, ignore_errors=True)


def run_daemon_to_exit(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Start the daemon expecting it to refuse: its exit code and output."""
    proc = subprocess.run([sys.executable, "-m", "agent", "--port", str(free_port()), *args],
                          env={**_clean_environment(), **env}, capture_output=True,
                          text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr
