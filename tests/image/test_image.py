"""The container image, built and run for real with podman.

Builds both variants with images/build.sh (the supervisord image and the systemd one),
starts each with host networking on free ports and a free display, and checks through the
API what an orchestrator relies on: healthy within seconds, a screenshot that shows
Chromium, input that reaches a page, processes as the browser user, Chromium's supervisor
log, Chromium coming back by itself after a kill, and a clean, quick stop.

Pages are opened and read over Chromium's own DevTools port: it listens on the container's
loopback, which host networking shares with the test, so the page side of every effect
is read without going through the daemon under test.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from helpers import Chromium, async_wait_until, free_port, parse_sse, wait_until
from PIL import Image
from replay_support import SMALL_H, SMALL_W, decode_errors, frames, probe

pytestmark = [
    pytest.mark.image,
    # The first test also waits for the build (minutes from scratch).
    pytest.mark.timeout(1500),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("AGENT_TEST_IMAGE", "browser-agent:test")
SYSTEMD_IMAGE = f"{IMAGE}-systemd"
SCREEN_W, SCREEN_H = 1280, 800
# What works in this sandbox: runc (crun fails on its cgroup layout), host networking,
# ulimits within what it may set. The systemd timers podman wants for HEALTHCHECKs do not
# exist without systemd on the host: the test runs the image's health check itself.
PODMAN_RUN = ("podman", "run", "-d", "--runtime", "runc", "--network", "host",
              "--ulimit", "nofile=10000:10000", "--ulimit", "nproc=10000:10000")
SERVICES = ("browser-agent-xvfb", "browser-agent-chromium", "browser-agent")
START_TO_HEALTHY_TARGET_S = 5.0


def run(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def reserve_display() -> int:
    """A display number free on this host, reserved with a lock file in the host's /tmp
    for the container's life. Host networking shares the abstract X socket namespace
    with the container: an X server started on the host with the same number would take
    the container's clients (and the container's Xvfb could not listen). The lock is the
    one X servers and the test helpers look for before taking a number."""
    with open("/proc/net/unix") as table:
        taken = table.read()
    for number in range(900, 1200):
        if f"@/tmp/.X11-unix/X{number}\n" in taken or os.path.exists(f"/tmp/.X11-unix/X{number}"):
            continue
        try:
            fd = os.open(f"/tmp/.X{number}-lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as lock:
            lock.write(f"{os.getpid():>10}\n")
        return number
    raise RuntimeError("no free X display number")


def release_display(number: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"/tmp/.X{number}-lock")


@dataclass
class Container:
    name: str
    api_port: int
    proxy_port: int
    cdp_port: int
    display: int
    token: str = ""
    started_at: float = 0.0
    healthy_after: float = 0.0  # seconds from `podman run` to healthy

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        """One API call; JSON bodies for dicts. Returns (status, headers, body)."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.api + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, dict(err.headers), err.read()
        except OSError:
            return 0, {}, b""

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, _, raw = self.request(method, path, body)
        assert status == 200, f"{method} {path} -> {status}: {raw[:500]!r}"
        return json.loads(raw)

    def healthy(self) -> bool:
        return self.request("GET", "/health", token="", timeout=5)[0] == 200

    def devtools_version(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.cdp_port}/json/version", timeout=3) as resp:
                return dict(json.loads(resp.read()))
        except (OSError, ValueError):
            return None

    def podman_exec(self, *argv: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        return run("podman", "exec", "--user", user, self.name, *argv, check=False)

    def write_file(self, path: str, text: str, user: str = "browser") -> None:
        result = subprocess.run(
            ["podman", "exec", "-i", "--user", user, self.name, "sh", "-c",
             'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path],
            input=text, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr

    def logs(self) -> str:
        result = run("podman", "logs", self.name, check=False)
        return result.stdout + result.stderr

    def stop(self) -> tuple[float, int]:
        """`podman stop` (the image's STOPSIGNAL to PID 1, SIGKILL after 10 s): how long
        it took, and the exit code (137 means it had to be killed)."""
        start = time.monotonic()
        run("podman", "stop", "--time", "10", self.name, timeout=30)
        elapsed = time.monotonic() - start
        code = int(run("podman", "inspect", "--format", "{{.State.ExitCode}}",
                       self.name).stdout)
        return elapsed, code


def start_container(image: str, *, systemd: bool = False, token: str = "",
                    extra_env: dict[str, str] | None = None) -> Container:
    container = Container(
        name=f"browser-agent-test-{os.getpid()}-{secrets.token_hex(3)}",
        api_port=free_port(), proxy_port=free_port(), cdp_port=free_port(),
        display=reserve_display(), token=token,
    )
    env = {
        "AGENT_PORT": str(container.api_port),
        "AGENT_CDP_PROXY_PORT": str(container.proxy_port),
        "AGENT_CDP_ADDRESS": f"127.0.0.1:{container.cdp_port}",
        "AGENT_DISPLAY": f":{container.display}",
        "XVFB_SCREEN": f"{SCREEN_W}x{SCREEN_H}x24",
        **(extra_env or {}),
    }
    if token:
        env["AGENT_API_TOKEN"] = token
    argv = [*PODMAN_RUN, "--name", container.name]
    if systemd:
        argv += ["--systemd=always"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    container.started_at = time.monotonic()
    try:
        run(*argv, image)
    except BaseException:
        remove(container)
        raise
    return container


def remove(container: Container) -> None:
    run("podman", "rm", "--force", "--time", "2", container.name, check=False, timeout=60)
    release_display(container.display)


def wait_healthy(container: Container, timeout: float = 60) -> float:
    """Seconds from `podman run` until /health is 200 and Chromium's DevTools answers."""
    try:
        wait_until(lambda: container.healthy() and container.devtools_version(),
                   timeout=timeout, interval=0.05, what="/health 200 and DevTools answering")
    except AssertionError:
        print(container.logs()[-4000:])
        raise
    return time.monotonic() - container.started_at


# --- the supervisord image (the default) -----------------------------------------------


@pytest.fixture(scope="module")
def box(images: dict[str, str]) -> Iterator[Container]:
    """The default image started the way an orchestrator would, without a token: the
    container makes one and prints it in its log."""
    container = start_container(images["supervisord"])
    try:
        took = container.healthy_after = wait_healthy(container)
        print(f"\n[image] supervisord variant: healthy with DevTools answering "
              f"{took:.2f}s after start (target {START_TO_HEALTHY_TARGET_S:.0f}s)")
        found = re.findall(r"AGENT_API_TOKEN=([0-9a-f]{64})\b", container.logs())
        assert len(found) == 1, f"expected the generated token once in the log:\n{container.logs()}"
        container.token = found[0]
        yield container
    finally:
        remove(container)


def page_browser(box: Container) -> Chromium:
    """The helpers' CDP client, pointed at the container's Chromium (not started by it)."""
    return Chromium(f":{box.display}", SCREEN_W, SCREEN_H, port=box.cdp_port)


def test_healthy_quickly_after_start(box: Container) -> None:
    assert 0 < box.healthy_after < START_TO_HEALTHY_TARGET_S
    status, _, raw = box.request("GET", "/health", token="")
    health = json.loads(raw)
    assert status == 200 and health["status"] == "ok", health


def test_generated_token_guards_the_api(box: Container) -> None:
    assert box.request("POST", "/computer/get_mouse_position", {}, token="")[0] == 401
    assert box.request("POST", "/computer/get_mouse_position", {}, token="wrong")[0] == 401
    assert box.request("POST", "/computer/get_mouse_position", {})[0] == 200
    # Kept for restarts, readable by root only, never in the browser's environment.
    listing = box.podman_exec("stat", "-c", "%a %U", "/var/lib/browser-agent/api-token")
    assert listing.stdout.split() == ["600", "root"]
    environ = box.podman_exec("sh", "-c", "cat /proc/$(pgrep -o -x chromium)/environ",
                              user="browser")
    assert environ.returncode == 0, environ.stderr
    assert "AGENT_API_TOKEN" not in environ.stdout and "DISPLAY=" in environ.stdout


def test_docs_are_served_from_the_image(box: Container) -> None:
    # Swagger UI is part of the installed package: the explorer works without internet.
    status, headers, raw = box.request("GET", "/docs", token="")
    assert status == 200 and headers["Content-Type"].startswith("text/html"), raw[:300]
    status, headers, raw = box.request("GET", "/docs/swagger-ui-bundle.js", token="")
    assert status == 200 and len(raw) > 100_000
    assert headers["Content-Type"].startswith("text/javascript")


def test_image_healthcheck_passes(box: Container) -> None:
    result = run("podman", "healthcheck", "run", box.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_screenshot_shows_chromium(box: Container) -> None:
    status, headers, raw = box.request("POST", "/computer/screenshot", {})
    assert status == 200, raw[:300]
    assert headers.get("Content-Type", "").startswith("image/png")
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    assert image.size == (SCREEN_W, SCREEN_H)
    colours = image.getcolors(maxcolors=1 << 20) or []
    # A blank X screen has 1 colour; Chromium's frame, tab strip, toolbar icons and
    # anti-aliased text have a few hundred.
    assert len(colours) >= 100, f"only {len(colours)} colours: is Chromium on screen?"
    # Chromium's window covers the screen (no black Xvfb background around it).
    corner = image.getpixel((SCREEN_W - 2, SCREEN_H - 2))
    assert corner != (0, 0, 0)


async def test_fonts_render_latin_cjk_and_emoji(box: Container) -> None:
    browser = page_browser(box)
    await browser.open(
        "<p id=latin style='font-family:sans-serif'>Hello, Grüße</p>"
        "<p id=cjk style='font-family:sans-serif'>日本語の文字 中文 한국어</p>"
        "<p id=emoji style='font-family:sans-serif'>😀🎉</p>"
    )
    url = await async_wait_until(lambda: browser.page_target(), what="the page target")
    fonts: dict[str, list[str]] = {}
    async with websockets.connect(url, max_size=None) as ws:
        ids = iter(range(1, 1000))

        async def call(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
            number = next(ids)
            await ws.send(json.dumps({"id": number, "method": method, "params": params or {}}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == number:
                    assert "error" not in message, message
                    return dict(message["result"])

        await call("DOM.enable")
        await call("CSS.enable")
        root = (await call("DOM.getDocument"))["root"]["nodeId"]
        for element in ("latin", "cjk", "emoji"):
            node = (await call("DOM.querySelector",
                               {"nodeId": root, "selector": f"#{element}"}))["nodeId"]
            text = (await call("DOM.describeNode", {"nodeId": node, "depth": 1}))
            child = text["node"]["children"][0]["backendNodeId"]
            pushed = await call("DOM.pushNodesByBackendIdsToFrontend",
                                {"backendNodeIds": [child]})
            used = await call("CSS.getPlatformFontsForNode", {"nodeId": pushed["nodeIds"][0]})
            fonts[element] = [font["familyName"] for font in used["fonts"]]
    assert any("DejaVu" in name for name in fonts["latin"]), fonts
    assert any("Noto Sans CJK" in name for name in fonts["cjk"]), fonts
    assert any("Noto Color Emoji" in name for name in fonts["emoji"]), fonts


async def test_click_and_typed_text_reach_the_page(box: Container) -> None:
    browser = page_browser(box)
    await browser.open(
        "<style>html,body{margin:0;height:100%}textarea{box-sizing:border-box;"
        "width:100%;height:100%;font-size:20px}</style>"
        "<textarea id=t></textarea><script>window.clicks=[];"
        "document.addEventListener('mousedown',e=>clicks.push([e.screenX,e.screenY]))"
        "</script>"
    )
    origin_x, origin_y = await browser.viewport_origin()
    x, y = origin_x + 200, origin_y + 150
    assert box.request("POST", "/computer/click_mouse", {"x": x, "y": y})[0] == 200
    await async_wait_until(lambda: browser.evaluate("window.clicks.length === 1"),
                           what="the click to reach the page")
    assert await browser.evaluate("window.clicks[0]") == [x, y]
    assert await browser.evaluate("document.activeElement.id") == "t"
    assert box.request("POST", "/computer/type", {"text": "typed in the image 42"})[0] == 200
    await async_wait_until(
        lambda: browser.evaluate("document.getElementById('t').value === "
                                 "'typed in the image 42'"),
        what="the typed text in the textarea")


def test_exec_runs_as_the_browser_user(box: Container) -> None:
    result = box.json("POST", "/process/exec", {"command": "id", "args": ["-un"]})
    assert result["exit_code"] == 0, result
    assert base64.b64decode(result["stdout_b64"]) == b"browser\n"


def test_a_replay_records_with_the_images_ffmpeg(box: Container, tmp_path: Path) -> None:
    """The image's ffmpeg (built with only what the recorder uses) grabs the screen and
    encodes H.264; the file is read back with the host's ffmpeg."""
    status, _, raw = box.request("POST", "/replays", {"framerate": 10})
    assert status == 201, raw[:300]
    replay_id = json.loads(raw)["replay_id"]
    began = time.monotonic()
    wait_until(lambda: time.monotonic() - began >= 2, timeout=10, what="2 s of recording")
    assert box.request("POST", f"/replays/{replay_id}/stop", {})[0] == 200
    wait_until(lambda: box.request("GET", f"/replays/{replay_id}")[0] == 200, timeout=30,
               what="the video to be ready")
    status, headers, video = box.request("GET", f"/replays/{replay_id}")
    assert status == 200 and headers["Content-Type"] == "video/mp4"
    path = tmp_path / "replay.mp4"
    path.write_bytes(video)
    info = probe(path)
    assert info.codec == "h264" and (info.width, info.height) == (SCREEN_W, SCREEN_H)
    assert info.frames >= 10, info
    assert decode_errors(path) == ""
    last = Image.frombytes("RGB", (SMALL_W, SMALL_H), frames(path)[-1])
    assert len(last.getcolors(maxcolors=1 << 16) or []) >= 10  # Chromium, not a blank X


def test_playwright_runs_under_the_images_node(box: Container) -> None:
    """Debian's nodejs, the lockfile's playwright-core and esbuild, as the browser user."""
    code = ("const n: number = 1 + 1; "
            "return { n, title: await page.title(), uid: process.getuid(), node: process.version }")
    result = box.json("POST", "/playwright/execute", {"code": code, "timeout_sec": 60})
    assert result["success"] is True, result
    assert result["result"]["n"] == 2
    uid = box.podman_exec("id", "-u", "browser").stdout.strip()
    assert str(result["result"]["uid"]) == uid
    print(f"\n[image] playwright under node {result['result']['node']}")
    health = json.loads(box.request("GET", "/health")[2])
    assert health["playwright"]["ok"] is True, health


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [frame.data for frame in parse_sse(raw) if frame.data is not None]


def test_chromium_supervisor_log_streams(box: Container) -> None:
    query = urllib.parse.urlencode({"source": "supervisor", "supervisor_process": "chromium",
                                    "follow": "false", "tail": "all"})
    status, headers, raw = box.request("GET", f"/logs/stream?{query}")
    assert status == 200, raw[:500]
    assert headers.get("Content-Type", "").startswith("text/event-stream")
    events = sse_events(raw)
    assert events and all(event["event"] == "log" for event in events)
    assert any(event["message"].startswith("chromium-launch: exec ") for event in events), \
        [event["message"] for event in events][:20]


def test_public_devtools_endpoint_needs_the_token(box: Container) -> None:
    url = f"http://127.0.0.1:{box.proxy_port}/json/version"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10).close()
    refused.value.close()
    assert refused.value.code == 401
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {box.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        version = json.loads(resp.read())
    assert version["Browser"].startswith(("Chrome/", "HeadlessChrome/"))
    assert f":{box.proxy_port}/" in version["webSocketDebuggerUrl"]


async def test_extensions_in_the_extensions_dir_are_loaded(box: Container) -> None:
    """The launcher loads every unpacked extension under AGENT_EXTENSIONS_DIR at start."""
    folder = "/home/browser/extensions/marker"
    box.write_file(f"{folder}/manifest.json", json.dumps({
        "manifest_version": 3, "name": "image test marker", "version": "1.0",
        "content_scripts": [{"matches": ["<all_urls>"], "js": ["mark.js"],
                             "run_at": "document_start"}],
    }))
    box.write_file(f"{folder}/mark.js",
                   "document.documentElement.dataset.imageTestExtension = 'loaded';")
    try:
        before = box.devtools_version()
        assert before
        restart = box.podman_exec("supervisorctl", "restart", "chromium")
        assert restart.returncode == 0, restart.stdout + restart.stderr
        wait_until(lambda: (v := box.devtools_version()) and v["webSocketDebuggerUrl"]
                   != before["webSocketDebuggerUrl"], timeout=30, what="Chromium to restart")
        launch = box.podman_exec("sh", "-c", "grep -a 'chromium-launch: exec' "
                                 "/var/log/browser-agent/chromium.log | tail -n 1")
        assert f"--load-extension={folder}" in launch.stdout, launch.stdout
        # Content scripts do not run on data: URLs: any http page will do, /health here.
        browser = page_browser(box)
        await browser.cdp("Page.navigate", {"url": f"{box.api}/health"})
        await async_wait_until(
            lambda: browser.evaluate(
                "document.documentElement.dataset.imageTestExtension === 'loaded'"),
            timeout=20, interval=0.1, what="the extension's content script to run")
    finally:
        box.podman_exec("rm", "-rf", folder)


def test_killed_chromium_comes_back_by_itself(box: Container) -> None:
    before = box.devtools_version()
    assert before
    killed = box.json("POST", "/process/exec",
                      {"command": "pkill", "args": ["-KILL", "-o", "-x", "chromium"]})
    assert killed["exit_code"] == 0, killed
    start = time.monotonic()
    wait_until(lambda: (v := box.devtools_version()) is not None
               and v["webSocketDebuggerUrl"] != before["webSocketDebuggerUrl"],
               timeout=30, interval=0.05, what="a new Chromium's DevTools")
    wait_until(box.healthy, timeout=30, interval=0.05, what="/health to recover")
    print(f"\n[image] Chromium back and /health 200 {time.monotonic() - start:.2f}s after "
          "SIGKILL")
    wait_until(lambda: "RUNNING" in box.podman_exec("supervisorctl", "status",
                                                      "chromium").stdout,
               timeout=10, what="supervisord to count Chromium as RUNNING")
    # The killed browser's profile lock was cleared by the launcher, not left to block.
    log = box.podman_exec("grep", "-a", "clearing stale profile lock",
                          "/var/log/browser-agent/chromium.log")
    assert log.returncode == 0, log.stdout


def test_stops_cleanly_within_10_seconds(box: Container) -> None:
    """Stopped while busy: a client follows a log, and a spawned process ignores SIGTERM."""
    stubborn = box.json("POST", "/process/spawn", {
        "command": "sh", "args": ["-c", "trap '' TERM; while :; do sleep 1; done"]})
    query = urllib.parse.urlencode({"source": "supervisor", "supervisor_process": "agent"})
    req = urllib.request.Request(f"{box.api}/logs/stream?{query}",
                                 headers={"Authorization": f"Bearer {box.token}"})
    follower = urllib.request.urlopen(req, timeout=30)
    try:
        elapsed, code = box.stop()
        follower.read()  # the stream ends when the daemon stops
    finally:
        follower.close()
    print(f"\n[image] supervisord variant stopped in {elapsed:.2f}s (exit {code}) with a "
          f"log follower and a child ignoring SIGTERM (pid {stubborn['pid']})")
    logs = box.logs()
    assert code == 0, logs[-3000:]
    assert elapsed < 10
    # Every program ended by itself within its stop time: supervisord killed none.
    logs = logs[logs.index("received SIGTERM"):]
    assert "killing '" not in logs, logs
    for program in ("agent", "chromium", "xvfb"):
        assert re.search(rf"stopped: {program} \((exit status 0|terminated by SIGTERM)\)",
                         logs), logs[-3000:]


# --- the systemd variant ------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_box(images: dict[str, str]) -> Iterator[Container]:
    container = start_container(images["systemd"], systemd=True, token=secrets.token_hex(16))
    try:
        took = wait_healthy(container)
        print(f"\n[image] systemd variant: healthy with DevTools answering {took:.2f}s "
              "after start")
        yield container
    finally:
        remove(container)


def test_systemd_runs_all_three_services(systemd_box: Container) -> None:
    result = systemd_box.podman_exec("systemctl", "is-active", *SERVICES,
                                     "browser-agent.target")
    assert result.stdout.split() == ["active"] * 4, result.stdout + result.stderr
    chromium_user = systemd_box.podman_exec("ps", "-o", "user=", "-C", "chromium")
    assert set(chromium_user.stdout.split()) == {"browser"}
    assert systemd_box.healthy()
    result = systemd_box.json("POST", "/process/exec", {"command": "id", "args": ["-un"]})
    assert base64.b64decode(result["stdout_b64"]) == b"browser\n"


def test_systemd_units_verify_clean(systemd_box: Container) -> None:
    result = systemd_box.podman_exec(
        "sh", "-c", "systemd-analyze verify /etc/systemd/system/browser-agent*.service "
                    "/etc/systemd/system/browser-agent.target 2>&1")
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_systemd_variant_stops_cleanly_within_10_seconds(systemd_box: Container) -> None:
    elapsed, code = systemd_box.stop()
    print(f"\n[image] systemd variant stopped in {elapsed:.2f}s (exit {code})")
    assert code == 0
    assert elapsed < 10
