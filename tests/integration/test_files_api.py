"""The /fs endpoints seen from a client, on real files in temporary directories: every
endpoint, every error as the spec's Error JSON, scopes, ownership, and the official SDK."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from common import ADMIN_TOKEN, READ, WRITE, MakeClient
from helpers import assert_error

BROWSER_USER = "agentfs"




async def run(*argv: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, (argv, err)
    return out


@pytest.fixture(scope="module")
def browser_user() -> Iterator[pwd.struct_passwd]:
    """A real unprivileged user, like the browser's user in the image."""
    try:
        entry = pwd.getpwnam(BROWSER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", BROWSER_USER], check=True)
        entry = pwd.getpwnam(BROWSER_USER)
    yield entry


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    return await make_client()


# ---------------------------------------------------------------- reading and listing


async def test_read_write_roundtrip_and_headers(client: TestClient[Any, Any],
                                                tmp_path: Path) -> None:
    data = os.urandom(300_000)
    resp = await client.put("/fs/write_file", params={"path": str(tmp_path / "f.bin")},
                            data=data)
    assert resp.status == 201, await resp.text()
    assert (tmp_path / "f.bin").read_bytes() == data
    resp = await client.get("/fs/read_file", params={"path": str(tmp_path / "f.bin")})
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Accept-Ranges"] == "bytes" and resp.headers["ETag"]
    assert await resp.read() == data
    resp = await client.head("/fs/read_file", params={"path": str(tmp_path / "f.bin")})
    assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))


async def test_read_ranges(client: TestClient[Any, Any], tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    (tmp_path / "r").write_bytes(data)
    params = {"path": str(tmp_path / "r")}
    resp = await client.get("/fs/read_file", params=params, headers={"Range": "bytes=100-199"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert await resp.read() == data[100:200]
    etag = resp.headers["ETag"]
    resp = await client.get("/fs/read_file", params=params,
                            headers={"Range": "bytes=10000-", "If-Range": etag})
    assert resp.status == 206 and await resp.read() == data[10000:]
    resp = await client.get("/fs/read_file", params=params, headers={"Range": "bytes=-5"})
    assert await resp.read() == data[-5:]
    resp = await client.get("/fs/read_file", params=params,
                            headers={"Range": "bytes=5-", "If-Range": '"stale"'})
    assert resp.status == 200 and await resp.read() == data
    resp = await client.get("/fs/read_file", params=params, headers={"Range": "bytes=99999-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(data)}"
    assert_error(await resp.json(), "range_not_satisfiable")
    resp = await client.get("/fs/read_file", params=params, headers={"Range": "garbage"})
    assert resp.status == 200 and await resp.read() == data


async def test_read_errors(client: TestClient[Any, Any], tmp_path: Path) -> None:
    cases = [
        ({"path": "relative/file"}, 400, "path"),
        ({"path": ""}, 400, "path"),
        ({}, 400, "path"),
        ({"path": str(tmp_path / "a\x00b")}, 400, "path"),
        ({"path": str(tmp_path / "missing")}, 404, None),
        ({"path": str(tmp_path)}, 400, None),
    ]
    for params, status, field in cases:
        resp = await client.get("/fs/read_file", params=params)
        assert resp.status == status, (params, await resp.text())
        assert_error(await resp.json(), {400: "bad_request", 404: "not_found"}[status], field)
    os.mkfifo(tmp_path / "fifo")
    resp = await client.get("/fs/read_file", params={"path": str(tmp_path / "fifo")})
    assert resp.status == 400 and "regular file" in (await resp.json())["message"]


async def test_files_that_report_no_size_are_read_to_the_end(client: TestClient[Any, Any]
                                                             ) -> None:
    assert os.stat("/proc/self/status").st_size == 0
    resp = await client.get("/fs/read_file", params={"path": "/proc/self/status"})
    assert resp.status == 200
    body = await resp.read()
    assert body.startswith(b"Name:") and b"\nPid:" in body


async def test_os_permission_errors_are_403(client: TestClient[Any, Any],
                                            disk_dir: Path) -> None:
    """An immutable file refuses even root (EPERM), as the daemon runs here."""
    tmp_path = disk_dir
    target = tmp_path / "immutable"
    target.write_text("keep")
    await run("chattr", "+i", str(target))
    try:
        attempts = [
            client.put("/fs/delete_file", json={"path": str(target)}),
            client.put("/fs/write_file", params={"path": str(target)}, data=b"new"),
            client.put("/fs/set_file_permissions", json={"path": str(target), "mode": "600"}),
            client.put("/fs/move", json={"src_path": str(target),
                                         "dest_path": str(tmp_path / "moved")}),
        ]
        for attempt in attempts:
            resp = await attempt
            assert resp.status == 403, await resp.text()
            assert_error(await resp.json(), "forbidden")
        assert target.read_text() == "keep" and os.listdir(tmp_path) == ["immutable"]
    finally:
        await run("chattr", "-i", str(target))
    resp = await client.put("/fs/delete_file", json={"path": "/proc/self/status"})
    assert resp.status == 403
    assert_error(await resp.json(), "forbidden")


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    """A directory on a disk file system (chattr does not work on a tmpfs /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="agent-fs-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_list_files_and_file_info(client: TestClient[Any, Any], tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("bb")
    (tmp_path / "a").mkdir()
    (tmp_path / "self").symlink_to(tmp_path / "self")
    resp = await client.get("/fs/list_files", params={"path": str(tmp_path)})
    assert resp.status == 200
    listing = await resp.json()
    assert [e["name"] for e in listing] == ["a", "b.txt", "self"]
    entry = listing[1]
    assert entry == {"name": "b.txt", "path": str(tmp_path / "b.txt"), "size_bytes": 2,
                     "is_dir": False, "mod_time": entry["mod_time"], "mode": "-rw-r--r--"}
    assert listing[0]["is_dir"] and listing[0]["size_bytes"] == 0
    assert listing[2]["mode"].startswith("l") and listing[2]["link_target"]
    resp = await client.get("/fs/file_info", params={"path": str(tmp_path / "self")})
    assert resp.status == 200 and (await resp.json())["mode"].startswith("l")
    resp = await client.get("/fs/list_files", params={"path": str(tmp_path / "b.txt")})
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request")
    resp = await client.get("/fs/file_info", params={"path": str(tmp_path / "nope")})
    assert resp.status == 404
    assert_error(await resp.json(), "not_found")


# ---------------------------------------------------------------- changing files


async def test_write_file_modes(client: TestClient[Any, Any], tmp_path: Path) -> None:
    target = str(tmp_path / "new" / "dir" / "m.sh")
    resp = await client.put("/fs/write_file", params={"path": target, "mode": "750"}, data=b"#")
    assert resp.status == 201
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o755
    for mode in ("77777", "abc", "999", "-644", "", "64"):
        resp = await client.put("/fs/write_file", params={"path": target, "mode": mode},
                                data=b"x")
        assert resp.status == 400, mode
        assert_error(await resp.json(), "bad_request", "mode")
    assert (tmp_path / "new" / "dir" / "m.sh").read_bytes() == b"#"
    resp = await client.put("/fs/write_file", params={"path": str(tmp_path)}, data=b"x")
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request")


async def test_create_delete_move(client: TestClient[Any, Any], tmp_path: Path) -> None:
    new = tmp_path / "x" / "y"
    resp = await client.put("/fs/create_directory", json={"path": str(new), "mode": "700"})
    assert resp.status == 201
    assert new.is_dir() and stat.S_IMODE(new.stat().st_mode) == 0o700
    resp = await client.put("/fs/create_directory", json={"path": str(new)})
    assert resp.status == 201  # like mkdir -p
    (tmp_path / "file").write_text("f")
    resp = await client.put("/fs/create_directory", json={"path": str(tmp_path / "file" / "d")})
    assert resp.status == 409
    assert_error(await resp.json(), "conflict")
    resp = await client.put("/fs/create_directory", json={"path": "rel", "mode": "755"})
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request", "path")
    resp = await client.put("/fs/create_directory", json={"path": str(new), "mode": "8"})
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request", "mode")

    resp = await client.put("/fs/move", json={"src_path": str(tmp_path / "file"),
                                               "dest_path": str(new / "moved")})
    assert resp.status == 200 and (new / "moved").read_text() == "f"
    (tmp_path / "other").write_text("o")
    resp = await client.put("/fs/move", json={"src_path": str(tmp_path / "other"),
                                               "dest_path": str(new / "moved")})
    assert resp.status == 409
    assert_error(await resp.json(), "conflict")
    assert (new / "moved").read_text() == "f" and (tmp_path / "other").exists()
    resp = await client.put("/fs/move", json={"src_path": str(tmp_path / "gone"),
                                               "dest_path": str(tmp_path / "z")})
    assert resp.status == 404

    resp = await client.put("/fs/delete_file", json={"path": str(tmp_path / "x")})
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request")
    resp = await client.put("/fs/delete_directory", json={"path": str(tmp_path / "other")})
    assert resp.status == 400
    resp = await client.put("/fs/delete_file", json={"path": str(tmp_path / "other")})
    assert resp.status == 200 and not (tmp_path / "other").exists()
    resp = await client.put("/fs/delete_directory", json={"path": str(tmp_path / "x")})
    assert resp.status == 200 and not (tmp_path / "x").exists()
    for url in ("/fs/delete_file", "/fs/delete_directory"):
        resp = await client.put(url, json={"path": str(tmp_path / "x")})
        assert resp.status == 404
        assert_error(await resp.json(), "not_found")
        resp = await client.put(url, json={"path": str(tmp_path), "extra": 1})
        assert resp.status == 400
        assert_error(await resp.json(), "bad_request", "extra")
        resp = await client.put(url, data=b"{not json",
                                headers={"Content-Type": "application/json"})
        assert resp.status == 400


async def test_set_file_permissions_and_scopes(client: TestClient[Any, Any], tmp_path: Path,
                                               browser_user: pwd.struct_passwd) -> None:
    target = tmp_path / "p"
    resp = await client.put("/fs/write_file", params={"path": str(target)}, data=b"x")
    assert resp.status == 201  # the browser user's file, as it acts as that user
    body = {"path": str(target), "mode": "600"}
    resp = await client.put("/fs/set_file_permissions", json=body, headers=WRITE)
    assert resp.status == 200 and stat.S_IMODE(target.stat().st_mode) == 0o600
    resp = await client.put("/fs/set_file_permissions", json=body, headers=READ)
    assert resp.status == 403
    owner = target.stat().st_uid
    resp = await client.put("/fs/set_file_permissions",
                            json={**body, "owner": BROWSER_USER}, headers=WRITE)
    assert resp.status == 403 and target.stat().st_uid == owner
    resp = await client.put("/fs/set_file_permissions", json={**body, "mode": "4755"},
                            headers=WRITE)
    assert resp.status == 403
    resp = await client.put("/fs/set_file_permissions",
                            json={**body, "owner": BROWSER_USER, "group": "0"})
    assert resp.status == 200
    assert target.stat().st_uid == browser_user.pw_uid and target.stat().st_gid == 0
    resp = await client.put("/fs/set_file_permissions",
                            json={**body, "owner": str(browser_user.pw_uid),
                                  "group": BROWSER_USER, "mode": "0640"})
    assert resp.status == 200 and target.stat().st_gid == browser_user.pw_gid
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    resp = await client.put("/fs/set_file_permissions", json={**body, "owner": "nobody-xyz"})
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request", "owner")
    resp = await client.put("/fs/set_file_permissions", json={"path": str(target)})
    assert resp.status == 400
    assert_error(await resp.json(), "bad_request", "mode")
    resp = await client.put("/fs/set_file_permissions",
                            json={"path": str(tmp_path / "none"), "mode": "644"})
    assert resp.status == 404
    resp = await client.put("/fs/write_file", params={"path": str(target)}, data=b"y",
                            headers=READ)
    assert resp.status == 403
    resp = await client.put("/fs/write_file", params={"path": str(target), "mode": "2755"},
                            data=b"y", headers=WRITE)
    assert resp.status == 403 and target.read_text() == "x"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's own temp root is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="agent-fs-"))
    os.chmod(path, 0o755)
    entry = pwd.getpwnam(BROWSER_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)  # as the browser user's home would be
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_created_files_belong_to_the_default_user(make_client: MakeClient,
                                                        browser_user: pwd.struct_passwd,
                                                        shared_dir: Path) -> None:
    tmp_path = shared_dir
    client = await make_client(default_user=BROWSER_USER)
    uid, gid = browser_user.pw_uid, browser_user.pw_gid
    resp = await client.put("/fs/write_file", params={"path": str(tmp_path / "d" / "w")},
                            data=b"w")
    assert resp.status == 201
    resp = await client.put("/fs/create_directory", json={"path": str(tmp_path / "c" / "c2")})
    assert resp.status == 201
    for path in ("d", "d/w", "c", "c/c2"):
        st = os.stat(tmp_path / path)
        assert (st.st_uid, st.st_gid) == (uid, gid), path
    # A file of root's in the user's directory: the user may replace it (as `mv` would),
    # and the new file is the user's; root's own directory stays out of reach.
    (tmp_path / "rootfile").write_text("r")
    resp = await client.put("/fs/write_file", params={"path": str(tmp_path / "rootfile")},
                            data=b"new")
    assert resp.status == 201 and (tmp_path / "rootfile").stat().st_uid == uid
    (tmp_path / "rootdir").mkdir(mode=0o755)
    resp = await client.put("/fs/write_file",
                            params={"path": str(tmp_path / "rootdir" / "x")}, data=b"new")
    assert resp.status == 403 and not (tmp_path / "rootdir" / "x").exists()
    # What the user now owns, the user can use: read it as them.
    output = await run("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                       "cat", str(tmp_path / "d" / "w"))
    assert output == b"w"


async def test_browser_alias_and_watch_404s(client: TestClient[Any, Any], tmp_path: Path) -> None:
    (tmp_path / "f").write_text("alias")
    resp = await client.get("/browsers/any-id/fs/read_file", params={"path": str(tmp_path / "f")})
    assert resp.status == 200 and await resp.text() == "alias"
    resp = await client.get("/fs/watch/not-a-watch/events")
    assert resp.status == 404
    assert_error(await resp.json(), "not_found")
    resp = await client.delete("/fs/watch/not-a-watch")
    assert resp.status == 404
    for body in ({"path": "relative"}, {"path": str(tmp_path / "f")}, {"recursive": True},
                 {"path": str(tmp_path), "recursive": "yes"}):
        resp = await client.post("/fs/watch", json=body)
        assert resp.status == 400, body
        assert_error(await resp.json(), "bad_request")
    resp = await client.post("/fs/watch", json={"path": str(tmp_path / "missing")})
    assert resp.status == 404


async def test_official_sdk_against_the_daemon(client: TestClient[Any, Any],
                                               tmp_path: Path) -> None:
    """The Kernel SDK, pointed straight at the daemon, as users would."""
    from kernel import AsyncKernel

    sdk = AsyncKernel(api_key=ADMIN_TOKEN, base_url=str(client.make_url("")).rstrip("/"))
    try:
        await sdk.browsers.fs.write_file("b1", b"from sdk", path=str(tmp_path / "w.txt"))
        await sdk.browsers.fs.upload("b1", files=[
            {"file": ("a.txt", b"first"), "dest_path": str(tmp_path / "up" / "a.txt")},
            {"file": ("b.txt", b"second"), "dest_path": str(tmp_path / "up" / "b.txt")},
        ])
        info = await sdk.browsers.fs.file_info("b1", path=str(tmp_path / "w.txt"))
        listing = await sdk.browsers.fs.list_files("b1", path=str(tmp_path / "up"))
        read = await sdk.browsers.fs.read_file("b1", path=str(tmp_path / "up" / "b.txt"))
        content = await read.read()
    finally:
        await sdk.close()
    assert (tmp_path / "w.txt").read_bytes() == b"from sdk" and info.size_bytes == 8
    assert [e.name for e in listing] == ["a.txt", "b.txt"]
    assert content == b"second"
