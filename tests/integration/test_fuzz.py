"""Spec-driven fuzzing: schemathesis generates requests for every operation in
agent/openapi.yaml (valid and invalid ones) against the real daemon on a real Xvfb and
Chromium. No answer may be a 5xx, and every answer must match the spec: a documented
status code, content type and body schema.

Every generated absolute path is moved into a scratch directory (with `..` segments
defused) so that generated deletes and moves cannot touch the machine, and durations,
counts and list lengths in generated bodies are capped so that a run stays short (a
1,000-point drag in each of 100 batched actions is valid, and takes minutes); all stay
within the schema."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import SCREEN_H, SCREEN_W
from helpers import Chromium, Supervisord, Xvfb, free_port, running_supervisord, wait_until
from hypothesis import HealthCheck, settings
from playwright_support import runtime_dir_for
from process_helpers import browser_user, browser_user_env
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agent.spec import spec_document

TOKEN = "fuzz-test-token-0123456789"
schema = schemathesis.openapi.from_dict(spec_document())

# key → largest value sent (each at or above the schema's minimum for that key)
CAPS = {
    "duration_ms": 60, "delay": 5, "step_delay_ms": 5, "duration": 20,
    "steps_per_segment": 3, "timeout_sec": 2, "timeout_ms": 1500,
}
MAX_TEXT = 40
# key → most items sent (each at or above the schema's minItems for that key)
LIST_CAPS = {"path": 4, "actions": 10, "keys": 5, "hold_keys": 5}
# key → largest magnitude sent
SIGNED_CAPS = {"delta_x": 5, "delta_y": 5, "num_clicks": 3}


def is_path_key(key: str) -> bool:
    return key == "cwd" or key.endswith("path") or key.endswith("dir")


def confine(path: str, root: str) -> str:
    """An absolute path moved under `root`; relative ones stay (they must be a 400)."""
    if not path.startswith("/"):
        return path
    return root + re.sub(r"(^|/)\.\.(?=/|$)", r"\1dotdot", path)


def tame(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and is_path_key(key) and isinstance(item, str):
                value[key] = confine(item, root)
            elif key in CAPS and isinstance(item, int) and not isinstance(item, bool):
                value[key] = min(item, CAPS[key])
            elif key in SIGNED_CAPS and isinstance(item, int) and not isinstance(item, bool):
                value[key] = max(-SIGNED_CAPS[key], min(item, SIGNED_CAPS[key]))
            elif key in LIST_CAPS and isinstance(item, list):
                del item[LIST_CAPS[key]:]
                tame(item, root)
            elif key == "text" and isinstance(item, str):
                value[key] = item[:MAX_TEXT]
            else:
                tame(item, root)
    elif isinstance(value, list):
        for item in value:
            tame(item, root)
    return value


@pytest.fixture(scope="module")
def scratch() -> Iterator[str]:
    """The browser user's directory (file operations act as that user)."""
    path = tempfile.mkdtemp(prefix="agent-fuzz-")
    user = browser_user()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def replays_dir() -> Iterator[str]:
    """The daemon's own directory for recordings (not the browser user's)."""
    path = tempfile.mkdtemp(prefix="agent-fuzz-replays-")
    yield f"{path}/replays"
    shutil.rmtree(path, ignore_errors=True)


PROGRAMS = """[program:talker]
command=/bin/sh -c 'echo ready; exec sleep 3600'
startsecs=0
stopasgroup=true
killasgroup=true
"""


@pytest.fixture(scope="module")
def supervisor() -> Iterator[Supervisord]:
    with running_supervisord(PROGRAMS) as running:
        yield running


def playwright_env() -> dict[str, str]:
    """A Playwright runtime the browser user can read (a copy if the checkout is private)."""
    user = browser_user()
    directory = runtime_dir_for(user) if user else ""
    return {"AGENT_PLAYWRIGHT_DIR": directory} if directory else {}


@pytest.fixture(scope="module")
def daemon(xvfb: Xvfb, chromium: Chromium, supervisor: Supervisord,
           scratch: str, replays_dir: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--port", str(port), "--display", xvfb.name,
         "--cdp-address", chromium.address, "--api-token", TOKEN,
         "--cdp-proxy-port", "0", "--supervisor-socket", supervisor.socket,
         "--extensions-dir", f"{scratch}/extensions", "--log-level", "warning",
         "--telemetry-dir", f"{scratch}/telemetry",
         "--replays-dir", replays_dir, "--replay-max-duration", "3"],
        cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **browser_user_env(), **playwright_env()},
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(base + "/spec.json", timeout=2):
                return True
        except OSError:
            return False

    wait_until(answers, timeout=30, what="the daemon to answer")
    yield base
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out, out


@schema.parametrize()
@settings(max_examples=int(os.environ.get("AGENT_FUZZ_EXAMPLES", "25")), deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_match_the_spec(case: Any, daemon: str,
                                                     scratch: str) -> None:
    for part in (case.body, case.query):
        if isinstance(part, (dict, list)):
            tame(part, scratch)
    if isinstance(case.query, dict) and "follow" in case.query:
        case.query["follow"] = False  # a followed log never ends by itself
    if case.path in ("/telemetry", "/telemetry/stream"):
        case.query = {**(case.query or {}), "follow": False}  # nor does a telemetry stream
    response = case.call(base_url=daemon, headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=30)
    if case.method.upper() == "PATCH" and case.path == "/display":
        # The X server is shared with the other tests: give it its size back.
        restore = urllib.request.Request(
            daemon + "/display", method="PATCH",
            data=f'{{"width": {SCREEN_W}, "height": {SCREEN_H}}}'.encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(restore, timeout=30) as answer:
            assert answer.status == 200
    case.validate_response(
        response,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance],
    )
