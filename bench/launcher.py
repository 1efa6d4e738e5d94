"""The one way the benches start the daemon: `python -m agent` on a free loopback port with
the bench token, measured flat out (rate limits off), with the browser user's environment
(as root, processes and file operations act as that user, as in the image); waited for
until it answers, and stopped with TERM (KILL after 10 s).

    with running_daemon("--display", display) as daemon:
        urllib.request.urlopen(daemon.base + "/health")
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import free_port, stop_process, wait_until  # noqa: E402
from process_helpers import browser_user_env  # noqa: E402

TOKEN = "bench-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def health(self) -> dict[str, Any] | None:
        """GET /health (200 or 503), or None while it does not answer."""
        request = urllib.request.Request(self.base + "/health", headers=AUTH)
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read())) if exc.code == 503 else None
        except OSError:
            return None

    def stop(self) -> None:
        stop_process(self.proc)


def devtools_ok(daemon: Daemon) -> bool:
    """A readiness test: the daemon answers and holds its DevTools connection."""
    health = daemon.health()
    return bool(health and health.get("devtools", {}).get("ok"))


def start_daemon(*args: str, python: Sequence[str] = ("-m", "agent"), cwd: Path = ROOT,
                 env: Mapping[str, str] | None = None,
                 output: IO[bytes] | int = subprocess.DEVNULL) -> Daemon:
    """Started, not yet waited for. `args` come after the bench's own (and win);
    `python` replaces `-m agent` (e.g. `-c` code that first grows the process);
    `env` replaces this process's environment (the browser user's is added)."""
    port = free_port()
    argv = [sys.executable, *python, "--host", "127.0.0.1", "--port", str(port),
            "--api-token", TOKEN, "--rate-limits", "false", "--log-level", "warning"]
    if "--cdp-proxy-port" not in args:
        argv += ["--cdp-proxy-port", "0"]
    environ = {**(os.environ if env is None else env), **browser_user_env()}
    proc = subprocess.Popen([*argv, *args], cwd=cwd, env=environ, stdout=output,
                            stderr=subprocess.STDOUT if output != subprocess.DEVNULL
                            else subprocess.DEVNULL)
    return Daemon(proc, port)


def wait_ready(daemon: Daemon, ready: Callable[[Daemon], bool] | None = None,
               timeout: float = 30) -> None:
    def up() -> bool:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.proc.returncode}")
        return ready(daemon) if ready is not None else daemon.health() is not None

    wait_until(up, timeout=timeout, what="the daemon to answer")


@contextmanager
def running_daemon(*args: str, ready: Callable[[Daemon], bool] | None = None,
                   **options: Any) -> Iterator[Daemon]:
    daemon = start_daemon(*args, **options)
    try:
        wait_ready(daemon, ready)
        yield daemon
    finally:
        daemon.stop()
