"""Real components for tests: Xvfb on a free display, Chromium with DevTools on a free
port, and a small CDP client to read the page's side of every effect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-features=Translate,MediaRouter",
    "--password-store=basic",
    "--use-mock-keychain",
    "--disable-dev-shm-usage",
    "--disable-session-crashed-bubble",
    "--hide-crash-restore-bubble",
)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], Any], timeout: float = 10.0,
                           interval: float = 0.02, what: str = "condition") -> Any:
    """Like wait_until, for async predicates (coroutine functions) or plain ones."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def stop_process(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """TERM, then KILL after `grace` seconds; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_display(first: int = 50, last: int = 500) -> int:
    """A display number no X server holds: no lock file, no socket on disk, and no
    abstract socket (a container on the host network leaves only the latter). Stacks
    that start their own Xvfb take theirs from a range of their own."""
    with open("/proc/net/unix") as table:
        abstract = set(re.findall(r"@/tmp/\.X11-unix/X(\d+)", table.read()))
    for number in range(first, last):
        if (
            str(number) not in abstract
            and not os.path.exists(f"/tmp/.X{number}-lock")
            and not os.path.exists(f"/tmp/.X11-unix/X{number}")
        ):
            return number
    raise RuntimeError("no free X display number")


@dataclass
class Xvfb:
    number: int
    width: int
    height: int
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f":{self.number}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            # -noreset, as the stack's launcher: without it the server resets whenever its
            # last client leaves, and a client connecting in that moment is cut off.
            ["Xvfb", self.name, "-screen", "0", f"{self.width}x{self.height}x24",
             "-nolisten", "tcp", "-noreset", "-ac", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self.answers, timeout=15, what=f"Xvfb {self.name} to answer")

    def answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Xvfb {self.name} exited with {self.proc.returncode}")
        result = subprocess.run(["xdpyinfo", "-display", self.name],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return result.returncode == 0

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


async def cdp_call(ws_url: str, method: str, params: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One DevTools command over a fresh WebSocket; returns its result."""
    async with websockets.connect(ws_url, max_size=None,
                                  additional_headers=headers or {}) as ws:
        await ws.send(json.dumps({"id": 1, "method": method, "params": params or {}}))
        while True:
            message = json.loads(await ws.recv())
            if message.get("id") == 1:
                if "error" in message:
                    raise RuntimeError(f"CDP {method} failed: {message['error']}")
                return dict(message.get("result", {}))


@dataclass
class Chromium:
    display: str
    width: int
    height: int
    port: int = 0
    extra_flags: tuple[str, ...] = ()
    reduced_motion: bool = False  # as the stack's launcher does (CHROMIUM_REDUCED_MOTION)
    proc: subprocess.Popen[bytes] | None = None
    profile: str = ""
    _page_id: str = ""
    _own_profile: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if not self.port:
            self.port = free_port()
        if not self.profile:
            self.profile = tempfile.mkdtemp(prefix="agent-test-profile-")
            self._own_profile = True
        env = {**os.environ, "DISPLAY": self.display}
        if self.reduced_motion:
            xdg = Path(self.profile) / "StackXdg"
            (xdg / "gtk-3.0").mkdir(parents=True, exist_ok=True)
            (xdg / "gtk-3.0/settings.ini").write_text("[Settings]\ngtk-enable-animations=false\n")
            env["XDG_CONFIG_DIRS"] = f"{xdg}:{os.environ.get('XDG_CONFIG_DIRS', '/etc/xdg')}"
        self.proc = subprocess.Popen(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
             f"--remote-debugging-port={self.port}", "--remote-debugging-address=127.0.0.1",
             "--window-position=0,0", f"--window-size={self.width},{self.height}",
             "--start-maximized", *self.extra_flags, "about:blank"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self.page_target, timeout=30, what="Chromium's DevTools to list a page")

    def page_target(self) -> str:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Chromium exited with {self.proc.returncode}")
        try:
            targets = self.http_json("/json/list")
        except OSError:
            return ""
        for target in targets:
            if target.get("type") == "page":
                self._page_id = target["id"]
                return str(target["webSocketDebuggerUrl"])
        return ""

    def http_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None
        if self._own_profile:
            shutil.rmtree(self.profile, ignore_errors=True)

    # --- CDP, one short-lived connection per call: simple and stateless -------------

    async def cdp(self, method: str, params: dict[str, Any] | None = None,
                  ws_url: str | None = None) -> dict[str, Any]:
        """One DevTools command on the page target (or `ws_url`); returns its result."""
        url = ws_url or await asyncio.to_thread(self.page_target)
        return await cdp_call(url, method, params)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JS expression in the page (promises awaited)."""
        result = await self.cdp("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        })
        if "exceptionDetails" in result:
            raise RuntimeError(f"page raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def open(self, html: str) -> None:
        """Show `html` in the page and wait until it has loaded and has focus."""
        marker = f"agent-test-{time.monotonic_ns()}"
        document = html + f"<script>document.documentElement.dataset.marker='{marker}'</script>"
        await self.cdp("Page.navigate", {"url": "data:text/html;charset=utf-8,"
                                         + urllib.request.quote(document)})
        await async_wait_until(
            lambda: self.evaluate(
                f"document.readyState === 'complete' && "
                f"document.documentElement.dataset.marker === '{marker}'"
            ),
            timeout=15, what="the test page to load",
        )
        await self.cdp("Page.bringToFront")

    async def viewport_origin(self) -> tuple[int, int]:
        """Screen coordinates of the page's (0, 0), to turn page into screen positions."""
        x, y = await self.evaluate(
            "[window.screenX + (window.outerWidth - window.innerWidth) / 2,"
            " window.screenY + (window.outerHeight - window.innerHeight)]"
        )
        return round(x), round(y)


@contextlib.contextmanager
def running_xvfb(width: int = 1280, height: int = 800) -> Iterator[Xvfb]:
    server = Xvfb(free_display(), width, height)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_chromium(display: str, width: int, height: int,
                     extra_flags: tuple[str, ...] = (),
                     reduced_motion: bool = False) -> Iterator[Chromium]:
    browser = Chromium(display, width, height, extra_flags=extra_flags,
                       reduced_motion=reduced_motion)
    browser.start()
    try:
        yield browser
    finally:
        browser.stop()


SUPERVISORD_HEAD = """\
[unix_http_server]
file={root}/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={root}/supervisord.log
pidfile={root}/supervisord.pid
childlogdir={root}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

"""


@dataclass
class Supervisord:
    """A real supervisord running `programs` (conf sections; `{root}` is its directory)."""

    root: Path
    programs: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.root / "supervisor.sock")

    def start(self) -> None:
        conf = self.root / "supervisord.conf"
        conf.write_text(SUPERVISORD_HEAD.format(root=self.root)
                        + self.programs.format(root=self.root))
        self.proc = subprocess.Popen(["supervisord", "-n", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_until(self._answers, timeout=20, what="supervisord to answer")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"supervisord exited with {self.proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(self.socket)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def running_supervisord(programs: str, files: dict[str, str] | None = None,
                        prefix: str = "agent-sv-") -> Iterator[Supervisord]:
    """supervisord in a fresh short directory (unix socket paths are limited to 108
    bytes) holding `files` (name → text) before it starts."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    supervisor = Supervisord(root, programs)
    try:
        supervisor.start()
        yield supervisor
    finally:
        supervisor.stop()
        shutil.rmtree(root, ignore_errors=True)


def assert_error(body: dict[str, Any], code: str, field: str | None = None) -> None:
    """An answer in the daemon's error model: this code, a message, and (with `field`) a
    detail naming that field."""
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    if field is not None:
        assert any(d.get("field") == field for d in body.get("details", [])), body


# --- server-sent events: the one parser of the tests ------------------------------------


@dataclass
class SSEFrame:
    """One frame of an event stream: its `id:` (None without one), its `data:` parsed as
    JSON (None for an id-only or comment-only frame), and its comments."""

    id: int | None
    data: Any
    comments: list[str] = field(default_factory=list)


def _sse_frame(lines: list[str]) -> SSEFrame | None:
    frame_id: int | None = None
    data: list[str] = []
    comments: list[str] = []
    for line in lines:
        if line.startswith(":"):
            comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            frame_id = int(value)
        elif name == "data":
            data.append(value)
        else:
            raise AssertionError(f"unexpected SSE line {line!r}")
    if frame_id is None and not data and not comments:
        return None
    return SSEFrame(frame_id, json.loads("\n".join(data)) if data else None, comments)


def parse_sse(raw: bytes) -> list[SSEFrame]:
    """Every frame of a whole event-stream body."""
    frames = (_sse_frame([line for line in block.split("\n") if line])
              for block in raw.decode().split("\n\n"))
    return [frame for frame in frames if frame is not None]


class SSEReader:
    """An event-stream response read frame by frame, as it comes."""

    def __init__(self, response: Any) -> None:
        """`response`: an aiohttp ClientResponse; its headers are checked here."""
        assert response.status == 200, response.status
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-SSE-Content-Type"] == "application/json"
        self.response = response

    async def frame(self, timeout: float = 10.0) -> SSEFrame | None:
        """The next frame, comment-only and id-only ones included; None at the end."""
        lines: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    assert not lines, f"the stream ended mid-frame: {lines}"
                    return None
                line = raw.decode().rstrip("\n")
                if line:
                    lines.append(line)
                    continue
                frame = _sse_frame(lines)
                lines = []
                if frame is not None:
                    return frame

    async def event(self, timeout: float = 10.0) -> SSEFrame | None:
        """The next frame with data (comments and id-only frames skipped); None at the
        end. `timeout` bounds the wait for each frame."""
        while (frame := await self.frame(timeout)) is not None:
            if frame.data is not None:
                return frame
        return None

    async def events(self, count: int, timeout: float = 10.0) -> list[SSEFrame]:
        found: list[SSEFrame] = []
        for _ in range(count):
            frame = await self.event(timeout)
            assert frame is not None, f"the stream ended after {[f.data for f in found]}"
            found.append(frame)
        return found

    async def rest(self, timeout: float = 10.0) -> list[SSEFrame]:
        """Every frame with data until the stream ends."""
        found = []
        while (frame := await self.event(timeout)) is not None:
            found.append(frame)
        return found
