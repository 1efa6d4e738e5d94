"""Helpers for the process tests: run/spawn through the HTTP API, read SSE output streams,
and a real unprivileged user."""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from helpers import SSEReader

TEST_USER = "agent-proc-test"

Client = TestClient[Any, Any]


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def ensure_user(name: str = TEST_USER) -> pwd.struct_passwd:
    """A real unprivileged account with a home directory (created once, kept)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
        return pwd.getpwnam(name)


def browser_user() -> str | None:
    """The browser user a daemon under test acts as: a real unprivileged account when the
    tests run as root (the daemon refuses root without one), else none (itself)."""
    if os.geteuid() != 0:
        return None
    ensure_user(TEST_USER)
    return TEST_USER


def browser_user_env() -> dict[str, str]:
    """`AGENT_DEFAULT_USER` for a daemon started as a subprocess."""
    user = browser_user()
    return {"AGENT_DEFAULT_USER": user} if user else {}


async def exec_ok(client: Client, **body: Any) -> dict[str, Any]:
    resp = await client.post("/process/exec", json=body)
    payload = await resp.json()
    assert resp.status == 200, payload
    return dict(payload)


async def spawn(client: Client, **body: Any) -> str:
    resp = await client.post("/process/spawn", json=body)
    payload = await resp.json()
    assert resp.status == 200, payload
    return str(payload["process_id"])


async def status(client: Client, process_id: str) -> dict[str, Any]:
    resp = await client.get(f"/process/{process_id}/status")
    payload = await resp.json()
    assert resp.status == 200, payload
    return dict(payload)


async def wait_exited(client: Client, process_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = await status(client, process_id)
        if state["state"] == "exited":
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"process {process_id} still running after {timeout}s")
        await asyncio.sleep(0.02)


async def write_stdin(client: Client, process_id: str, data: bytes | str,
                      eof: bool = False) -> int:
    body: dict[str, Any] = {"data_b64": b64(data)}
    if eof:
        body["eof"] = True
    resp = await client.post(f"/process/{process_id}/stdin", json=body)
    payload = await resp.json()
    assert resp.status == 200, payload
    return int(payload["written_bytes"])


@dataclass
class Event:
    id: int | None
    data: dict[str, Any]

    @property
    def bytes(self) -> bytes:
        return base64.b64decode(self.data.get("data_b64", ""))


@dataclass
class SSE:
    """An open output stream, read incrementally."""

    resp: ClientResponse
    events: list[Event] = field(default_factory=list)
    ended: bool = False

    def __post_init__(self) -> None:
        self.reader = SSEReader(self.resp)

    async def next(self, timeout: float = 20) -> Event | None:
        """The next event, None at the end; TimeoutError after `timeout` in all (the
        stream's keepalive comments do not extend it)."""
        async with asyncio.timeout(timeout):
            frame = await self.reader.event(timeout)
        if frame is None:
            self.ended = True
            return None
        event = Event(frame.id, frame.data)
        self.events.append(event)
        return event

    async def until(self, wanted: bytes | str, stream: str = "stdout",
                    timeout: float = 20) -> bytes:
        """Read until the stream's output so far contains `wanted`; that output."""
        needle = wanted.encode() if isinstance(wanted, str) else wanted
        deadline = time.monotonic() + timeout
        while needle not in self.output(stream):
            remaining = deadline - time.monotonic()
            try:
                ended = remaining <= 0 or await self.next(remaining) is None
            except TimeoutError:
                ended = True
            if ended:
                raise AssertionError(f"{needle!r} never came in {timeout:g} s; got "
                                     f"{self.output(stream)!r}; events {self.events[-5:]}")
        return self.output(stream)

    async def rest(self, timeout: float = 30) -> list[Event]:
        deadline = time.monotonic() + timeout
        while await self.next(max(deadline - time.monotonic(), 0.01)) is not None:
            pass
        return self.events

    def output(self, stream: str = "stdout") -> bytes:
        return b"".join(e.bytes for e in self.events if e.data.get("stream") == stream)

    def exit_code(self) -> int | None:
        for event in self.events:
            if event.data.get("event") == "exit":
                return int(event.data["exit_code"])
        return None

    def close(self) -> None:
        self.resp.close()


async def open_stream(client: Client, process_id: str,
                      headers: dict[str, str] | None = None, query: str = "") -> SSE:
    resp = await client.get(f"/process/{process_id}/stdout/stream{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return SSE(resp)


async def read_all(client: Client, process_id: str, **kwargs: Any) -> SSE:
    sse = await open_stream(client, process_id, **kwargs)
    await sse.rest()
    return sse


def pid_alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def processes_with_env(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (spawned by a test, any depth)."""
    found = []
    needle = marker.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as env_file:
                environ = env_file.read()
        except OSError:
            continue
        if needle in environ and pid_alive(int(name)):
            found.append(int(name))
    return found
