"""Spec-driven fuzzing: schemathesis generates requests for every operation in
agent/openapi.yaml (valid and invalid ones) against the real daemon on an Xvfb and a
Chromium of its own. No answer may be a 5xx, and every answer must match the spec: a
documented status code, content type and body schema.

Every generated absolute path is moved into a scratch directory (with `..` segments
defused) so that generated deletes and moves cannot touch the machine, and every value
that sets a duration, a count, a list length or a string length is capped (see `tame`),
present or absent, so that a run stays short (a 1,000-point drag in each of 100 batched
actions is valid, and takes minutes); capped values stay within the schema."""

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
from common import SCREEN_H, SCREEN_W
from helpers import (
    Chromium,
    Supervisord,
    Xvfb,
    free_port,
    running_chromium,
    running_supervisord,
    running_xvfb,
    wait_until,
)
from hypothesis import HealthCheck, settings
from playwright_support import runtime_dir_for
from process_helpers import browser_user, browser_user_env
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agent.openapi import spec_document

TOKEN = "fuzz-test-token-0123456789"
SPEC = spec_document()
schema = schemathesis.openapi.from_dict(SPEC)

# Every value that decides how long a call takes or how much it does is bounded, whatever
# the JSON type it was generated as (an integral float is an integer to the daemon), and so
# is every absent or null one whose default is larger (or unbounded). Each cap is at or
# above the schema's minimum for that key.
# key → largest value sent
CAPS = {
    "duration_ms": 60, "delay": 5, "step_delay_ms": 5, "duration": 20,
    "steps_per_segment": 3, "timeout_sec": 2, "timeout_ms": 1500, "num_clicks": 3,
}
# key → largest magnitude sent
SIGNED_CAPS = {"delta_x": 5, "delta_y": 5}
# key → most items sent (at or above the schema's minItems); other lists get DEFAULT_ITEMS
LIST_CAPS = {"path": 4, "actions": 10, "keys": 5, "hold_keys": 5}
DEFAULT_ITEMS = 8
# Every string (in lists and maps too, and map keys) is cut to this many characters: text
# typed key by key, key names pressed one by one, arguments, curl bodies.
MAX_TEXT = 40
# Query values forced whatever was generated: a followed log never ends by itself.
FORCED_QUERY = {"follow": "false"}


def is_path_key(key: str) -> bool:
    return key == "cwd" or key.endswith("path") or key.endswith("dir")


def confine(path: str, root: str) -> str:
    """An absolute path moved under `root`; relative ones stay (they must be a 400)."""
    if not path.startswith("/"):
        return path
    return root + re.sub(r"(^|/)\.\.(?=/|$)", r"\1dotdot", path)


def deref(node: Any) -> dict[str, Any]:
    """A schema with its `$ref` (to #/...) followed."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].split("/")[1:]:
            target = target[part]
        node = target
    return node if isinstance(node, dict) else {}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def needs_default(prop: dict[str, Any], cap: int) -> bool:
    """An absent value whose default is unbounded or above the cap."""
    default = prop.get("default")
    return not is_number(default) or default > cap


def tame_item(key: Any, value: Any, prop: dict[str, Any], root: str) -> Any:
    if is_number(value) and key in CAPS:
        return min(value, CAPS[key]) if value > CAPS[key] else value
    if is_number(value) and key in SIGNED_CAPS:
        limit = SIGNED_CAPS[key]
        return max(-limit, min(value, limit))
    if isinstance(value, str):
        if isinstance(key, str) and is_path_key(key):
            return confine(value[:MAX_TEXT * 4], root)
        return value[:max(MAX_TEXT, prop.get("minLength", 0))]
    if isinstance(value, list):
        limit = max(LIST_CAPS.get(key, DEFAULT_ITEMS), prop.get("minItems", 0))
        del value[limit:]
        items = deref(prop.get("items"))
        value[:] = [tame_item(None, item, items, root) for item in value]
        return value
    if isinstance(value, dict):
        return tame(value, prop, root)
    return value


def tame(value: Any, schema_node: Any, root: str) -> Any:
    """`value` (a body, a query, anything inside them) bounded as described above."""
    node = deref(schema_node)
    if isinstance(value, dict):
        props = {name: deref(prop) for name, prop in node.get("properties", {}).items()}
        extra = deref(node.get("additionalProperties"))
        for name, prop in props.items():
            if name in CAPS and value.get(name) is None and needs_default(prop, CAPS[name]):
                value[name] = CAPS[name]
        tamed = {}
        for key, item in value.items():
            new_key = key[:MAX_TEXT] if isinstance(key, str) and key not in props else key
            tamed[new_key] = tame_item(key, item, props.get(key, extra), root)
        value.clear()
        value.update(tamed)
        return value
    return tame_item(None, value, node, root)


def operation_schemas(method: str, path: str) -> tuple[Any, dict[str, Any]]:
    """(JSON body schema, query object schema) of an operation in the spec."""
    operation = SPEC["paths"][path][method.lower()]
    content = deref(operation.get("requestBody")).get("content", {})
    body = next(iter(content.values()), {}).get("schema", {})
    query = {"type": "object", "properties": {
        p["name"]: p.get("schema", {}) for p in map(deref, operation.get("parameters", []))
        if p.get("in") == "query"}}
    return body, query


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
def fuzz_xvfb() -> Iterator[Xvfb]:
    """The fuzzer clicks, types and presses keys at random: on a display and a browser of
    its own, so that no later test inherits a pressed key, a dialog or a moved window."""
    with running_xvfb(SCREEN_W, SCREEN_H) as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_chromium(fuzz_xvfb: Xvfb) -> Iterator[Chromium]:
    with running_chromium(fuzz_xvfb.name, SCREEN_W, SCREEN_H) as browser:
        yield browser


@pytest.fixture(scope="module")
def daemon(fuzz_xvfb: Xvfb, fuzz_chromium: Chromium, supervisor: Supervisord,
           scratch: str, replays_dir: str) -> Iterator[str]:
    xvfb, chromium = fuzz_xvfb, fuzz_chromium
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--port", str(port), "--display", xvfb.name,
         "--cdp-address", chromium.address, "--api-token", TOKEN,
         "--cdp-proxy-port", "0", "--supervisor-socket", supervisor.socket,
         "--extensions-dir", f"{scratch}/extensions", "--log-level", "warning",
         "--telemetry-dir", f"{scratch}/telemetry",
         "--replays-dir", replays_dir, "--replay-max-duration", "3",
         # The fuzzer's flood of requests is not what rate limits are for (their own tests
         # cover them); a 429 would be an undocumented answer here.
         "--rate-limits", "false"],
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


# Derandomized: the same examples on every run (no example database either), so CI is
# decided by the code, never by the draw. `make fuzz` runs many more of them, randomized,
# to hunt (AGENT_FUZZ_RANDOM=1, AGENT_FUZZ_EXAMPLES).
RANDOM = os.environ.get("AGENT_FUZZ_RANDOM") == "1"
EXAMPLES = int(os.environ.get("AGENT_FUZZ_EXAMPLES", "25"))
# The slowest tamed call takes a few seconds (a batch of 10 capped actions, a 2 s exec or
# Playwright timeout with Node's start, a 1.5 s curl timeout); this bounds one call even if
# something hangs.
CALL_TIMEOUT_S = 20


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_match_the_spec(case: Any, daemon: str,
                                                     scratch: str) -> None:
    body_schema, query_schema = operation_schemas(case.operation.method, case.operation.path)
    if isinstance(case.body, (dict, list, str)):
        case.body = tame(case.body, body_schema, scratch)
    if isinstance(case.query, dict):
        tame(case.query, query_schema, scratch)
        for key, forced in FORCED_QUERY.items():
            if key in query_schema["properties"]:
                case.query[key] = forced
    if case.path in ("/telemetry", "/telemetry/stream"):
        case.query = {**(case.query or {}), "follow": "false"}  # nor does a telemetry stream
    response = case.call(base_url=daemon, headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=CALL_TIMEOUT_S)
    if case.method.upper() == "PATCH" and case.path == "/display":
        # Give the X server its size back for the examples that follow.
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
