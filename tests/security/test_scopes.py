"""Scopes mean what they say, against a real daemon: a read token cannot reach a token, a
write token acts as the browser user (not as root), and nothing the browser user can read
holds a token."""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers import Chromium, Xvfb
from process_helpers import TEST_USER, ensure_user
from support import (
    ADMIN,
    ALL_TOKENS,
    ENV_TOKEN,
    READ,
    WRITE,
    Daemon,
    running_daemon,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a browser user")


@pytest.fixture(scope="module")
def daemon(xvfb: Xvfb, chromium: Chromium) -> Iterator[Daemon]:
    with running_daemon(xvfb.name, chromium.address) as running:
        yield running


async def read(daemon: Daemon, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(
            daemon.base + "/fs/read_file", params={"path": path}, headers=headers) as resp:
        return resp.status, await resp.read()


def leaks(body: bytes) -> list[str]:
    return [token for token in ALL_TOKENS if token.encode() in body]


async def test_a_read_token_reaches_no_token(daemon: Daemon) -> None:
    pid = daemon.proc.pid
    for path in (f"/proc/{pid}/environ", "/proc/self/environ", str(daemon.token_file),
                 "/etc/shadow", f"/proc/{pid}/fd/0", f"/proc/{pid}/mem"):
        for headers in (READ, WRITE, ADMIN):  # files act as the browser user for everyone
            status, body = await read(daemon, path, headers)
            assert status in (400, 403), (path, status, body[:200])
            assert not leaks(body), path
    async with aiohttp.ClientSession() as session:
        for url in ("/fs/list_files", "/fs/file_info"):  # the files the daemon has open
            for path in (f"/proc/{pid}/fd", "/proc/self/fd/0", f"/proc/{pid}/task"):
                async with session.get(daemon.base + url, params={"path": path},
                                       headers=READ) as resp:
                    assert resp.status == 403, (url, path)
    # What the browser user may read, it may read; it holds no token.
    status, body = await read(daemon, f"/proc/{pid}/cmdline", READ)
    assert status == 200 and b"agent" in body and not leaks(body)
    async with aiohttp.ClientSession() as session:
        for path in (f"/proc/{pid}/environ", str(daemon.token_file)):
            async with session.get(daemon.base + "/logs/stream", headers=READ,
                                   params={"source": "path", "path": path}) as resp:
                assert resp.status == 403, path
                assert not leaks(await resp.read())
        # /health says nothing without a token; no detail holds a token with one.
        async with session.get(daemon.base + "/health") as resp:
            assert set(await resp.json()) == {"status"}
        async with session.get(daemon.base + "/health", headers=READ) as resp:
            assert "display" in await resp.json()
            assert not leaks(await resp.read())


def test_nothing_the_browser_user_can_read_holds_a_token(daemon: Daemon) -> None:
    """Every process environment and command line the browser user can read, and the
    token file, scanned as that user."""
    user = ensure_user(TEST_USER)
    scan = f"""
import os, sys
tokens = [t.encode() for t in sys.argv[1:]]
me = str(os.getpid())  # its own command line holds the tokens it looks for
found = []
for pid in [p for p in os.listdir("/proc") if p.isdigit() and p != me]:
    for name in ("environ", "cmdline"):
        try:
            data = open(f"/proc/{{pid}}/{{name}}", "rb").read()
        except OSError:
            continue
        found += [f"{{pid}}/{{name}}" for t in tokens if t in data]
try:
    open({str(daemon.token_file)!r}).read()
    found.append("token file")
except OSError:
    pass
print(found)
"""
    out = subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         "/usr/bin/python3", "-c", scan, *ALL_TOKENS],
        capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stdout
    # And the daemon's own environment did hold one (so the scan could have found it).
    assert ENV_TOKEN.encode() in Path(f"/proc/{daemon.proc.pid}/environ").read_bytes()


PASSWD = Path("/usr/bin/passwd")


def fingerprint() -> tuple[str, int, int, int]:
    """/usr/bin/passwd (a setuid-root program) and /etc/passwd, as they are now."""
    st = PASSWD.stat()
    return (hashlib.sha256(PASSWD.read_bytes()).hexdigest(), st.st_mode, st.st_uid,
            Path("/etc/passwd").stat().st_mode)


def exists(path: str) -> bool:
    return os.path.lexists(path)


async def test_a_write_token_does_not_write_as_root(daemon: Daemon, tmp_path: Path) -> None:
    passwd = PASSWD
    before = fingerprint()
    suid = tmp_path / "suid-tool"  # root's setuid file in the browser user's directory
    suid.write_bytes(b"#!/bin/sh\n")
    suid.chmod(0o4755)
    async with aiohttp.ClientSession() as session:
        for path in ("/root/agent-sec-x", "/etc/agent-sec-x", "/usr/bin/agent-sec-x",
                     str(passwd), "/etc/passwd"):
            for headers in (WRITE, ADMIN):
                async with session.put(daemon.base + "/fs/write_file", params={"path": path},
                                       data=b"pwned", headers=headers) as resp:
                    assert resp.status == 403, (path, await resp.text())
                    assert path in (await resp.json())["message"]
            assert path in (str(passwd), "/etc/passwd") or not exists(path)
        async with session.put(daemon.base + "/fs/write_file", params={"path": str(suid)},
                               data=b"replaced", headers=WRITE) as resp:
            assert resp.status == 201  # the user may replace entries of its own directory
        st = suid.stat()
        user = pwd.getpwnam(TEST_USER)
        assert st.st_uid == user.pw_uid and not st.st_mode & (stat.S_ISUID | stat.S_ISGID)
        # Other ways of writing: a move, a directory, permissions, an upload, a zip.
        for method, url, kwargs in (
            ("PUT", "/fs/move", {"json": {"src_path": str(suid), "dest_path": "/etc/x"}}),
            ("PUT", "/fs/create_directory", {"json": {"path": "/root/agent-sec-d"}}),
            ("PUT", "/fs/set_file_permissions", {"json": {"path": "/etc/passwd",
                                                          "mode": "666"}}),
            ("PUT", "/fs/delete_file", {"json": {"path": "/etc/hostname"}}),
        ):
            async with session.request(method, daemon.base + url, headers=WRITE,
                                       **kwargs) as resp:
                assert resp.status == 403, (url, await resp.text())
        form = aiohttp.FormData()
        form.add_field("files[0][file]", b"pwned", filename="x")
        form.add_field("files[0][dest_path]", "/usr/bin/agent-sec-upload")
        async with session.post(daemon.base + "/fs/upload", data=form, headers=WRITE) as resp:
            assert resp.status == 403
    assert not exists("/usr/bin/agent-sec-upload")
    assert fingerprint() == before
