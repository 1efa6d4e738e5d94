"""The browser user swaps a directory for a symbolic link to root's directory, over and
over, while uploads, zip extractions and an owner change aim into it: no file the user
does not own may change. The loop runs as that user, is bounded, and stops by itself."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers import Chromium, Xvfb
from process_helpers import TEST_USER, ensure_user
from support import ADMIN, WRITE, Daemon, running_daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a browser user")

SWAPPER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
a, b, stop, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
swaps = 0
while swaps < limit and not os.path.exists(stop):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), RENAME_EXCHANGE) == 0:
        swaps += 1
print(swaps)
"""
ROUNDS = 25


@pytest.fixture(scope="module")
def daemon(xvfb: Xvfb, chromium: Chromium) -> Iterator[Daemon]:
    with running_daemon(xvfb.name, chromium.address) as running:
        yield running


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() else b""
        found[str(path.relative_to(root))] = (st.st_ino, st.st_uid, st.st_mode, data)
    return found


def start_swapper(user_uid: int, user_gid: int, a: Path, b: Path,
                  stop: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["setpriv", f"--reuid={user_uid}", f"--regid={user_gid}", "--init-groups",
         "/usr/bin/python3", "-c", SWAPPER, str(a), str(b), str(stop), "2000000"],
        stdout=subprocess.PIPE, text=True, cwd="/")


def victim_beside(path: Path) -> Path:
    return Path(os.path.realpath(path)).parent / f"{path.name}-root"


def a_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("f", b"from the zip")
        archive.writestr("sub/g", b"deeper")
    return buffer.getvalue()


async def test_swapping_symlinks_never_changes_a_file_the_user_does_not_own(
        daemon: Daemon, tmp_path: Path) -> None:
    user = ensure_user(TEST_USER)
    victim = victim_beside(tmp_path)
    victim.mkdir(mode=0o755)  # root's directory, beside the user's
    try:
        (victim / "f").write_text("root's file")
        (victim / "sub").mkdir()
        (victim / "sub" / "g").write_text("root's other file")
        before = snapshot(victim)
        work = tmp_path / "d"
        work.mkdir()
        os.chown(work, user.pw_uid, user.pw_gid)
        link = tmp_path / "alt"
        link.symlink_to(victim)
        os.lchown(link, user.pw_uid, user.pw_gid)
        stop = tmp_path / "stop"
        swapper = start_swapper(user.pw_uid, user.pw_gid, work, link, stop)
        statuses: set[int] = set()
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(ROUNDS):
                    form = aiohttp.FormData()
                    form.add_field("files[0][file]", f"upload {i}".encode(), filename="f")
                    form.add_field("files[0][dest_path]", str(work / "f"))
                    form.add_field("files[1][file]", b"deep", filename="g")
                    form.add_field("files[1][dest_path]", str(work / "sub" / "g"))
                    async with session.post(daemon.base + "/fs/upload", data=form,
                                            headers=WRITE) as resp:
                        statuses.add(resp.status)
                    zform = aiohttp.FormData()
                    zform.add_field("zip_file", a_zip(), filename="a.zip")
                    zform.add_field("dest_path", str(work))
                    async with session.post(daemon.base + "/fs/upload_zip", data=zform,
                                            headers=WRITE) as resp:
                        statuses.add(resp.status)
                    async with session.put(daemon.base + "/fs/write_file",
                                           params={"path": str(work / "w")},
                                           data=b"written", headers=WRITE) as resp:
                        statuses.add(resp.status)
                    # Root's one file operation: giving a file away (admin).
                    async with session.put(daemon.base + "/fs/set_file_permissions",
                                           json={"path": str(work / "f"), "mode": "666",
                                                 "owner": "0"}, headers=ADMIN) as resp:
                        statuses.add(resp.status)
                    await asyncio.sleep(0)
        finally:
            stop.touch()
            out, _ = swapper.communicate(timeout=60)
        assert int(out.strip()) > 0, "the swapper never swapped"
        assert statuses <= {200, 201, 400, 403, 404, 409}, statuses
        assert snapshot(victim) == before
        # Where the path really was the user's directory, the work landed there.
        assert any(p.exists() for p in (work / "w", link / "w"))
    finally:
        for path in sorted(victim.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()
        victim.rmdir()
