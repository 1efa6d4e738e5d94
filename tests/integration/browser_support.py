"""Real parts for the browser slice's tests: local HTTP servers, Chromium under a real
supervisord (so that it can be restarted the way the daemon restarts it), screenshots."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mss
from aiohttp import web
from helpers import Chromium, Supervisord, free_port, running_supervisord, wait_until
from process_helpers import browser_user

from agent.supervisor import SupervisorClient

# Bytes of every value in a fixed, non-trivial order: what a binary body must round-trip.
BINARY = bytes((i * 7919 + 13) % 256 for i in range(70_000)) + bytes(range(256))


@dataclass
class Recorder:
    """What a test server saw."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def origin_app(recorder: Recorder) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen = {"method": request.method, "path": request.path_qs,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body.decode("utf-8", errors="replace")}
        recorder.requests.append(seen)
        return web.json_response(seen)

    async def set_cookies(request: web.Request) -> web.Response:
        response = web.json_response({"ok": True})
        response.headers.add("Set-Cookie", "first=1; Path=/")
        response.headers.add("Set-Cookie", "second=2; Path=/; HttpOnly")
        response.headers.add("Set-Cookie", "third=3; Path=/; SameSite=Strict")
        response.headers.add("X-Multi", "a")
        response.headers.add("X-Multi", "b")
        return response

    async def binary(request: web.Request) -> web.Response:
        return web.Response(body=BINARY, content_type="application/octet-stream")

    async def compressed(request: web.Request) -> web.Response:
        response = web.Response(text="squeezed " * 1000, content_type="text/plain")
        response.enable_compression(strategy=None)
        return response

    async def slow(request: web.Request) -> web.Response:
        recorder.requests.append({"method": request.method, "path": request.path_qs})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recorder.release.wait(), 30)
        return web.Response(text="late")

    async def redirect(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"Location": "/echo?redirected=1"})

    async def redirect_to(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def chain(request: web.Request) -> web.Response:
        """`/chain/N` redirects N times before it lands on /echo."""
        left = int(request.match_info["left"])
        target = f"/chain/{left - 1}" if left > 1 else "/echo?chain=end"
        return web.Response(status=302, headers={"Location": target})

    async def cached(request: web.Request) -> web.Response:
        """An answer any cache may keep for an hour; says how often it was asked for."""
        recorder.requests.append({"method": request.method, "path": request.path_qs,
                                  "headers": [[k, v] for k, v in request.headers.items()]})
        count = sum(1 for seen in recorder.requests if seen["path"] == request.path_qs)
        return web.Response(text=f"served {count}",
                            headers={"Cache-Control": "public, max-age=3600"})

    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html><head><title>original</title></head>"
                                 "<body><h1>test page</h1></body></html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/set-cookies", set_cookies)
    app.router.add_get("/binary", binary)
    app.router.add_get("/compressed", compressed)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/redirect/{code}", redirect)
    app.router.add_get("/no-content", no_content)
    app.router.add_route("*", "/redirect-to", redirect_to)
    app.router.add_get("/chain/{left}", chain)
    app.router.add_get("/cached", cached)
    app.router.add_get("/page", page)
    return app


def proxy_app(recorder: Recorder) -> web.Application:
    """A forward proxy that answers everything itself and records what it was asked."""

    async def answer(request: web.Request) -> web.Response:
        seen = {"method": request.method, "url": str(request.url),
                "host": request.headers.get("Host", "")}
        recorder.requests.append(seen)
        return web.json_response({"via": "test-proxy", **seen})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Run `app` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def screenshot(display: str) -> bytes:
    """The whole X screen, raw RGB, straight from the X server."""
    with mss.MSS(display=display) as grabber:
        return bytes(grabber.grab(grabber.monitors[0]).rgb)


async def browser_ws(chromium: Chromium) -> str:
    info = await asyncio.to_thread(chromium.http_json, "/json/version")
    return str(info["webSocketDebuggerUrl"])


# --------------------------------------------------------------------- supervised Chromium

REPO = Path(__file__).resolve().parents[2]

# The stack's own launcher (scripts/chromium-launch.sh) as the stack's supervisord runs
# it: waits for X, clears stale locks, loads every folder of the extensions directory.
CHROMIUM_PROGRAM = """[program:chromium]
command={repo}/scripts/chromium-launch.sh
environment=STACK_HOME="{repo}",AGENT_DISPLAY="{display}",AGENT_CDP_ADDRESS="127.0.0.1:{port}",
    AGENT_EXTENSIONS_DIR="{{root}}/extensions",CHROMIUM_PROFILE_DIR="{{root}}/profile",
    XVFB_SCREEN="1280x800x24",AGENT_DEFAULT_USER="{user}",CHROMIUM_SANDBOX="off"
autostart=true
autorestart=true
startsecs=1
stopasgroup=true
killasgroup=true
stopwaitsecs=10
stdout_logfile={{root}}/chromium.log
redirect_stderr=true
"""


@dataclass
class SupervisedChromium:
    """Chromium as the program `chromium` of a real supervisord, like in the image."""

    supervisor: Supervisord
    display: str
    port: int

    @property
    def root(self) -> Path:
        return self.supervisor.root

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def socket(self) -> str:
        return self.supervisor.socket

    @property
    def extensions(self) -> Path:
        return self.root / "extensions"

    def chromium_pid(self) -> int:
        return int(SupervisorClient(self.socket, 30.0).process_info("chromium")["pid"])

    def restart(self) -> None:
        """What `supervisorctl restart chromium` does."""
        SupervisorClient(self.socket).restart("chromium")

    def version(self) -> dict[str, Any] | None:
        browser = Chromium(self.display, 0, 0, port=self.port)
        try:
            return dict(browser.http_json("/json/version"))
        except OSError:
            return None

    def page_ws(self) -> str:
        browser = Chromium(self.display, 0, 0, port=self.port)
        return str(wait_until(browser.page_target, timeout=30, what="a page target"))


@contextlib.contextmanager
def supervised_chromium(display: str) -> Iterator[SupervisedChromium]:
    port = free_port()
    program = CHROMIUM_PROGRAM.format(repo=REPO, display=display, port=port,
                                      user=pwd.getpwuid(os.getuid()).pw_name)
    with running_supervisord(program, prefix="agent-test-supervised-") as supervisor:
        browser = SupervisedChromium(supervisor, display, port)
        browser.extensions.mkdir(parents=True, exist_ok=True)
        user = browser_user()
        if user is not None:  # the daemon unpacks extensions as the browser user
            entry = pwd.getpwnam(user)
            os.chown(browser.extensions, entry.pw_uid, entry.pw_gid)
            browser.root.chmod(0o711)
        wait_until(browser.version, timeout=30, what="supervised Chromium's DevTools")
        yield browser


