"""Soak under faults: the stack started as `make run` starts it (supervisor/run-local.sh:
supervisord, Xvfb, Chromium, the daemon), on a free display, free ports and a private
supervisord socket, under 20 concurrent clients, while its parts are killed.

Load (each client a seeded mix, so runs are alike): screenshots, clicks and typing into a
page, file writes read back and checked by SHA-256, multi-file uploads, exec, spawns read
to the end over SSE, watches that must report a write, supervisord log streams, and
/curl through the browser to a local server; plus one reader that stops reading a stream
and a writer that fills a small tmpfs (as root).

Faults, in turn, every FAULT_EVERY_S: the daemon SIGKILLed, Xvfb SIGKILLed, Chromium
SIGKILLed (supervisord restarts each).

What must hold: no 5xx but the documented ones (503: a component is down; 507: the disk
is full; 502 and 504 from /curl: the browser dropped or did not finish the request, as
while it is killed and restarted), and connection errors
only while the daemon itself is down; each fault recovered (/health ok) within RECOVERY_S;
every completed write is read back whole, and every file on disk is one that was written
whole (never torn, never a temporary file left after a full disk); after the run the
daemon's fds, threads and RSS are back near where they were, no zombie children, and no
process spawned by the SIGKILLed daemon still runs (the next daemon stops them when it
starts: see agent/processes/spool.py).

AGENT_SOAK_SECONDS sets the length (75 in `make test`, 600 in `make soak`). The figures
are printed (run pytest with -s to see them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import web
from helpers import SSEReader, free_display, free_port, wait_until
from process_helpers import browser_user

from agent.computer.screen import ENCODERS
from agent.logs.manager import IO_THREADS

REPO = Path(__file__).resolve().parents[2]
SOAK_S = float(os.environ.get("AGENT_SOAK_SECONDS", "75"))
CLIENTS = 20
FAULT_EVERY_S = 20.0
FIRST_FAULT_S = 8.0
RECOVERY_S = 30.0  # the bound: a killed part is back and answering within it
TOKEN = "soak-test-token-0123456789"
STAGING_PREFIX = ".agent-upload-"  # agent/files/ops.py
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAGE = ("<html><body style='margin:0'><input id=box style='width:600px;height:40px'>"
        "<script>document.getElementById('box').focus()</script></body></html>")
FAULTS = ("agent", "xvfb", "chromium")


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    env: dict[str, str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def supervisorctl(self, *args: str) -> str:
        result = subprocess.run(
            ["supervisorctl", "-c", str(REPO / "supervisor/supervisord.conf"), *args],
            env=self.env, capture_output=True, text=True, timeout=30)
        return result.stdout

    def pid_of(self, program: str) -> int:
        text = self.supervisorctl("pid", program).strip()
        return int(text) if text.isdigit() else 0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    display = free_display(700, 999)
    port = free_port()
    user = browser_user() or psutil.Process().username()
    profile = tmp_path / "profile"
    profile.mkdir()
    entry = pwd.getpwnam(user)
    os.chown(profile, entry.pw_uid, entry.pw_gid)
    env = {
        **os.environ,
        "AGENT_DEFAULT_USER": user,
        "AGENT_DISPLAY": f":{display}",
        "AGENT_PORT": str(port),
        "AGENT_HOST": "127.0.0.1",
        "AGENT_API_TOKEN": TOKEN,
        "AGENT_CDP_ADDRESS": f"127.0.0.1:{free_port()}",
        "AGENT_CDP_PROXY_PORT": str(free_port()),
        "AGENT_SUPERVISOR_SOCKET": str(tmp_path / "run/supervisor.sock"),
        "AGENT_EXTENSIONS_DIR": str(tmp_path / "extensions"),
        "AGENT_PROCESS_SPOOL_DIR": str(tmp_path / "spool"),
        "AGENT_LOG_LEVEL": "warning",
        # 20 clients on one token are load, not abuse: rate limits (tested on their own)
        # would answer most of it with 429.
        "AGENT_RATE_LIMITS": "false",
        "STACK_LOG_DIR": str(tmp_path / "log"),
        "CHROMIUM_PROFILE_DIR": str(profile),
        "XVFB_SCREEN": "1024x768x24",
    }
    for name in ("AGENT_API_TOKENS", "DISPLAY"):
        env.pop(name, None)
    proc = subprocess.Popen(["sh", str(REPO / "supervisor/run-local.sh")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    running = Stack(proc, port, tmp_path, env)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for leftover in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(str(tmp_path) in part for part in leftover.info["cmdline"] or []):
                    leftover.kill()


# --- accounting -------------------------------------------------------------------------


@dataclass
class Tally:
    served: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    down_since: float | None = None  # the daemon is down (killed, not yet answering)
    down_until: float = 0.0
    written: dict[str, set[str]] = field(default_factory=dict)  # path → digests allowed

    def daemon_down(self) -> bool:
        now = time.monotonic()
        return self.down_since is not None or now < self.down_until

    def fail(self, what: str) -> None:
        self.failures.append(what)


class Client:
    def __init__(self, number: int, session: aiohttp.ClientSession, tally: Tally,
                 scratch: Path, curl_url: str) -> None:
        self.n = number
        self.rng = random.Random(number)
        self.session = session
        self.tally = tally
        self.dir = scratch / f"client-{number}"
        self.curl_url = curl_url
        self.count = 0

    async def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200,),
                   **kwargs: Any) -> tuple[int, bytes]:
        """One request; its status (0: no answer) and body, accounted."""
        started_down = self.tally.daemon_down()
        try:
            async with self.session.request(method, path, **kwargs) as resp:
                body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind = type(exc).__name__
            if started_down or self.tally.daemon_down():
                self.tally.errors[f"no answer while the daemon was down ({kind})"] += 1
            else:
                self.tally.errors[f"no answer ({kind})"] += 1
                self.tally.fail(f"{method} {path}: {kind} {exc} while the daemon was up")
            return 0, b""
        self.tally.served += 1
        self.tally.by_status[resp.status] += 1
        documented = resp.status in (503, 507) or (resp.status in (502, 504)
                                                    and path == "/curl")
        if resp.status >= 500 and not documented:
            self.tally.fail(f"{method} {path}: {resp.status} {body[:300]!r}")
        elif resp.status not in ok and resp.status != 503:
            self.tally.errors[f"{resp.status} on {path.split('?')[0]}"] += 1
        return resp.status, body

    # --- the operations -----------------------------------------------------------------

    async def screenshot(self) -> None:
        status, body = await self.call("POST", "/computer/screenshot", json={})
        if status == 200 and not body.startswith(b"\x89PNG"):
            self.tally.fail("screenshot is not a PNG")

    async def click_and_type(self) -> None:
        await self.call("POST", "/computer/click_mouse",
                        json={"x": self.rng.randrange(10, 500), "y": 20})
        await self.call("POST", "/computer/type", json={"text": "soak"})

    async def write_and_read(self) -> None:
        path = f"{self.dir}/file-{self.rng.randrange(4)}.bin"
        data = self.rng.randbytes(self.rng.randrange(1, 300_000))
        digest = hashlib.sha256(data).hexdigest()
        allowed = self.tally.written.setdefault(path, set())
        allowed.add(digest)  # in flight: may land whole even if the answer is lost
        status, _ = await self.call("PUT", f"/fs/write_file?path={path}", data=data,
                                    ok=(201,))
        if status != 201:
            return
        self.tally.written[path] = {digest}  # completed: the file is this now
        status, body = await self.call("GET", f"/fs/read_file?path={path}")
        if status == 200 and hashlib.sha256(body).hexdigest() != digest:
            self.tally.fail(f"{path}: read back differs from the completed write")

    async def upload(self) -> None:
        form = aiohttp.FormData()
        contents = {}
        for i in range(3):
            dest = f"{self.dir}/upload-{i}.bin"
            contents[dest] = self.rng.randbytes(self.rng.randrange(1, 100_000))
            form.add_field(f"files[{i}][file]", contents[dest], filename="x")
            form.add_field(f"files[{i}][dest_path]", dest)
        for dest, data in contents.items():
            self.tally.written.setdefault(dest, set()).add(hashlib.sha256(data).hexdigest())
        status, _ = await self.call("POST", "/fs/upload", data=form, ok=(201,))
        if status == 201:
            for dest, data in contents.items():
                self.tally.written[dest] = {hashlib.sha256(data).hexdigest()}

    async def exec(self) -> None:
        status, body = await self.call("POST", "/process/exec",
                                       json={"command": "sh", "args": ["-c", "echo $((6*7))"]})
        if status == 200 and base64.b64decode(json.loads(body)["stdout_b64"]) != b"42\n":
            self.tally.fail("exec output wrong")

    async def spawn_and_read(self) -> None:
        size = self.rng.randrange(1, 2_000_000)
        status, body = await self.call("POST", "/process/spawn", json={
            "command": "sh", "args": ["-c", f"head -c {size} /dev/zero; true", "soak-spawn"]})
        if status != 200:
            return
        process_id = json.loads(body)["process_id"]
        got = 0
        exit_code = None
        try:
            async with self.session.get(f"/process/{process_id}/stdout/stream") as resp:
                if resp.status != 200:
                    self.tally.by_status[resp.status] += 1
                    return
                reader = SSEReader(resp)
                while (frame := await reader.event(timeout=60)) is not None:
                    event = frame.data
                    if "data_b64" in event:
                        got += len(base64.b64decode(event["data_b64"]))
                    elif event.get("event") == "exit":
                        exit_code = event["exit_code"]
        except (TimeoutError, aiohttp.ClientError):
            if not self.tally.daemon_down():
                self.tally.fail("output stream broke while the daemon was up")
            return
        self.tally.served += 1
        if exit_code is not None and (got != size or exit_code != 0):
            self.tally.fail(f"spawn: {got} of {size} bytes, exit {exit_code}")

    async def watch(self) -> None:
        status, body = await self.call("POST", "/fs/watch", json={"path": str(self.dir)},
                                       ok=(200, 201))
        if status not in (200, 201):
            return
        watch_id = json.loads(body)["watch_id"]
        await self.call("DELETE", f"/fs/watch/{watch_id}", ok=(200, 204))

    async def logs(self) -> None:
        await self.call("GET", "/logs/stream?source=supervisor&supervisor_process=xvfb"
                               "&follow=false&tail=20")

    async def curl(self) -> None:
        status, body = await self.call("POST", "/curl", json={"url": self.curl_url,
                                                               "timeout_ms": 10000})
        if status == 200 and json.loads(body).get("body") != "soak ok":
            self.tally.fail(f"/curl answered {body[:200]!r}")

    def make_dir(self) -> None:
        """The client's directory, owned like the scratch directory (the browser user's)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        owner = self.dir.parent.stat()
        os.chown(self.dir, owner.st_uid, owner.st_gid)

    async def run(self, stop: asyncio.Event, paused: asyncio.Event) -> None:
        await asyncio.to_thread(self.make_dir)
        ops = [self.screenshot, self.click_and_type, self.write_and_read, self.upload,
               self.exec, self.spawn_and_read, self.watch, self.logs, self.curl]
        while not stop.is_set():
            await paused.wait()
            op = ops[self.rng.randrange(len(ops))]
            try:
                await asyncio.wait_for(op(), 60)
            except TimeoutError:
                self.tally.fail(f"{op.__name__} took more than 60 s")
            self.count += 1
            if self.tally.daemon_down():
                await asyncio.sleep(0.1)  # the connection is refused at once: no spin


# --- the run ----------------------------------------------------------------------------


async def healthy(session: aiohttp.ClientSession) -> bool:
    try:
        async with session.get("/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            body = await resp.json()
            return resp.status == 200 and body.get("status") == "ok"
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return False


async def wait_healthy(session: aiohttp.ClientSession, timeout: float) -> float:
    started = time.monotonic()
    while not await healthy(session):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the stack was not healthy within {timeout} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


# Every thread the daemon may hold at once: the main thread, asyncio's default executor
# (min(32, cores + 4)), the browser user's file threads (FsUser, 16), the log tailers
# (IO_THREADS), the PNG encoders (one per core), the X input and read connections, the
# clipboard owner, the screen watch, and a directory zip in flight.
DAEMON_THREADS_BOUND = (1 + min(32, (os.cpu_count() or 1) + 4) + 16 + IO_THREADS + ENCODERS
                        + 2 + 1 + 1 + 1)


def resources(pid: int) -> dict[str, Any]:
    proc = psutil.Process(pid)
    kinds: Counter[str] = Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)  # socket:[n], pipe:[n], anon_inode:..., /a/path
            kinds[target.split("/")[1] if target.startswith("/") else target.split(":")[0]] += 1
    with proc.oneshot():
        return {"fds": proc.num_fds(), "threads": proc.num_threads(),
                "rss_mb": round(proc.memory_info().rss / 1e6, 1), "fd_kinds": dict(kinds)}


def zombies_of(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children(recursive=True)
            if child.status() == psutil.STATUS_ZOMBIE]


def processes_with(marker: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if marker in (proc.info["cmdline"] or []):
                found.append(proc.pid)
    return found


@contextlib.asynccontextmanager
async def curl_target() -> AsyncIterator[str]:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(text="soak ok")

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def stop_reading_reader(session: aiohttp.ClientSession, stop: asyncio.Event,
                              tally: Tally) -> None:
    """A reader that takes the first event of a chatty process and then stops reading, for
    the whole run: the process must not wait for it (its output goes to the spool)."""
    status_code, body = 0, b""
    with contextlib.suppress(aiohttp.ClientError):
        async with session.post("/process/spawn", json={
                "command": "sh", "args": ["-c", "head -c 50000000 /dev/zero"]}) as resp:
            status_code, body = resp.status, await resp.read()
    if status_code != 200:
        return
    process_id = json.loads(body)["process_id"]
    with contextlib.suppress(aiohttp.ClientError):
        async with session.get(f"/process/{process_id}/stdout/stream") as resp:
            await resp.content.readline()
            started = time.monotonic()
            while not stop.is_set():
                async with session.get(f"/process/{process_id}/status") as state:
                    if (await state.json())["state"] == "exited":
                        tally.errors["stalled reader: its process ran on and exited"] += 1
                        return
                if time.monotonic() - started > 30:
                    tally.fail("a process waited for a reader that stopped reading")
                    return
                await asyncio.sleep(0.5)


async def fill_small_disk(client: Client, mount: Path, stop: asyncio.Event) -> Counter[int]:
    """Writes and uploads into a 4 MiB tmpfs until it is full, and on."""
    statuses: Counter[int] = Counter()
    rng = random.Random(99)
    while not stop.is_set():
        path = f"{mount}/f-{rng.randrange(40)}.bin"
        data = rng.randbytes(rng.randrange(100_000, 600_000))
        digest = hashlib.sha256(data).hexdigest()
        client.tally.written.setdefault(path, set()).add(digest)
        status, _ = await client.call("PUT", f"/fs/write_file?path={path}", data=data,
                                      ok=(201, 507))
        statuses[status] += 1
        if status == 201:
            client.tally.written[path] = {digest}
        await asyncio.sleep(0.05)
    return statuses


def check_files(tally: Tally, roots: list[Path],
                daemon_kills: list[float]) -> tuple[list[str], list[str], list[str]]:
    """Every file written is whole (the last completed content, or one in flight when its
    answer was lost). Files nobody wrote are strays, except the hidden staging files of
    uploads the SIGKILLed daemon was receiving (last written before a kill): a killed
    daemon cannot remove them, and nothing does so yet (they never take a target's
    name). Returns (torn, strays, left by a killed daemon)."""
    torn = []
    for path, allowed in tally.written.items():
        file = Path(path)
        if file.exists() and hashlib.sha256(file.read_bytes()).hexdigest() not in allowed:
            torn.append(path)
    strays, left = [], []
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file() or str(path) in tally.written:
                continue
            staging = path.name.startswith(STAGING_PREFIX) and path.name.endswith(".part")
            mtime = path.stat().st_mtime
            if staging and any(mtime <= killed for killed in daemon_kills):
                left.append(str(path))
            else:
                strays.append(str(path))
    return torn, strays, left


async def soak(stack: Stack, scratch: Path, disk: Path | None) -> None:
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=90)
    async with aiohttp.ClientSession(stack.base, headers=AUTH, connector=connector,
                                     timeout=timeout) as session, \
            curl_target() as curl_url:
        await wait_healthy(session, 120)
        page = "data:text/html," + PAGE
        await session.post("/process/exec", json={"command": "true"})
        # Open the page with focus, through the browser's own DevTools.
        cdp = stack.env["AGENT_CDP_ADDRESS"]
        async with session.get(f"http://{cdp}/json/list") as resp:
            target = next(t for t in await resp.json() if t["type"] == "page")
        async with session.ws_connect(target["webSocketDebuggerUrl"]) as ws:
            await ws.send_json({"id": 1, "method": "Page.navigate", "params": {"url": page}})
            await ws.receive()

        stop = asyncio.Event()
        paused = asyncio.Event()
        paused.set()
        clients = [Client(i, session, tally, scratch, curl_url) for i in range(CLIENTS)]
        tasks = [asyncio.create_task(c.run(stop, paused)) for c in clients]
        stalled = asyncio.create_task(stop_reading_reader(session, stop, tally))
        filler = (asyncio.create_task(fill_small_disk(Client(99, session, tally, scratch,
                                                             curl_url), disk, stop))
                  if disk is not None else None)
        recoveries: list[tuple[str, float]] = []
        baseline: dict[str, Any] | None = None
        daemon_kills: list[float] = []
        try:
            started = time.monotonic()
            old_daemon_spawns: list[int] = []
            next_fault = FIRST_FAULT_S
            fault = 0
            while time.monotonic() - started < SOAK_S:
                await asyncio.sleep(0.2)
                if time.monotonic() - started < next_fault or \
                        time.monotonic() - started > SOAK_S - 10:
                    continue
                program = FAULTS[fault % len(FAULTS)]
                fault += 1
                pid = stack.pid_of(program)
                assert pid > 0, f"{program} is not running"
                if program == "agent":
                    # A long child of the daemon about to die: the next daemon must stop it.
                    orphan = {"command": "sh", "args": ["-c", "sleep 3600; true", "soak-orphan"]}
                    async with session.post("/process/spawn", json=orphan) as resp:
                        assert resp.status == 200
                    old_daemon_spawns = processes_with("soak-orphan")
                    assert old_daemon_spawns
                    tally.down_since = time.monotonic()
                killed_at = time.monotonic()
                if program == "agent":
                    daemon_kills.append(time.time())
                os.kill(pid, signal.SIGKILL)
                await asyncio.to_thread(wait_until, lambda p=pid: not psutil.pid_exists(p)
                                        or psutil.Process(p).status() == psutil.STATUS_ZOMBIE,
                                        10)
                await asyncio.sleep(0.5)  # let the death be seen before probing health
                await wait_healthy(session, RECOVERY_S)
                recovered = time.monotonic() - killed_at
                recoveries.append((program, recovered))
                if program == "agent":
                    tally.down_since = None
                    tally.down_until = time.monotonic() + 1
                    left = [p for p in old_daemon_spawns if psutil.pid_exists(p)
                            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
                    if left:
                        tally.fail(f"the killed daemon's children still run: {left}")
                    if baseline is None:
                        # The new daemon, warmed up by the load (its thread pools grow on
                        # demand, to their bounds), then quiet: the reference.
                        await asyncio.sleep(5)
                        paused.clear()
                        await asyncio.sleep(3)
                        baseline = resources(stack.pid_of("agent"))
                        paused.set()
                next_fault += FAULT_EVERY_S

        finally:
            stop.set()
            results = await asyncio.gather(*tasks, stalled, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        disk_statuses = await filler if filler is not None else Counter()
        await wait_healthy(session, RECOVERY_S)
    # The clients' connections are closed now; give the daemon a moment to see it.
    agent_pid = stack.pid_of("agent")
    await asyncio.sleep(3)
    after = resources(agent_pid)
    zombies = zombies_of(agent_pid)
    leftovers = processes_with("soak-spawn")

    roots = [scratch, *([disk] if disk else [])]
    torn, strays, left = await asyncio.to_thread(check_files, tally, roots, daemon_kills)

    print(f"\nsoak: {SOAK_S:.0f} s, {CLIENTS} clients, {sum(c.count for c in clients)} "
          f"operations, {tally.served} requests answered")
    print(f"  statuses: {dict(sorted(tally.by_status.items()))}")
    print(f"  errors by kind: {dict(tally.errors)}")
    for program, seconds in recoveries:
        print(f"  recovery after SIGKILL of {program}: {seconds:.1f} s")
    if disk is not None:
        print(f"  writes into the full 4 MiB tmpfs: {dict(disk_statuses)}")
    print(f"  daemon resources after its restart: {baseline}")
    print(f"  daemon resources after the run:     {after}")
    print(f"  staging files left by the SIGKILLed daemon: {len(left)}")

    assert not tally.failures, "\n".join(tally.failures[:20])
    assert {program for program, _ in recoveries} == set(FAULTS)
    assert all(seconds <= RECOVERY_S for _, seconds in recoveries)
    assert not torn, f"torn or unknown content: {torn}"
    assert not strays, f"files nobody wrote whole: {strays[:10]}"
    assert disk is None or disk_statuses[507] > 0, "the small disk never filled"
    assert baseline is not None
    assert after["fds"] <= baseline["fds"] + 10, (baseline, after)
    # The daemon's thread pools grow on demand up to their sizes, so how many threads the
    # baseline catches depends on the load before it (14 to 20 seen): compare with the
    # bound of every pool instead. A thread kept per operation would pass it many times
    # over (thousands of operations).
    assert after["threads"] <= DAEMON_THREADS_BOUND, (baseline, after)
    assert after["rss_mb"] <= baseline["rss_mb"] + 80, (baseline, after)
    assert not zombies, zombies
    assert not leftovers, f"spawned processes still running: {leftovers}"


@contextlib.contextmanager
def small_disk(root: Path) -> Iterator[Path | None]:
    """A 4 MiB tmpfs (root only): the full file system writes and uploads meet."""
    if os.geteuid() != 0:
        yield None
        return
    mount = root / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def owned_by(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


@pytest.mark.timeout(SOAK_S + 600)
def test_soak_under_faults(stack: Stack) -> None:
    # File operations act as the browser user: its own directories, reachable by it.
    root = Path(tempfile.mkdtemp(prefix="agent-soak-"))
    try:
        root.chmod(0o755)
        scratch = root / "work"
        scratch.mkdir()
        owned_by(scratch, stack.env["AGENT_DEFAULT_USER"])
        with small_disk(root) as disk:
            if disk is not None:
                owned_by(disk, stack.env["AGENT_DEFAULT_USER"])
            asyncio.run(soak(stack, scratch, disk))
    finally:
        shutil.rmtree(root, ignore_errors=True)
