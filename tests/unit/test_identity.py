"""Threads acting as the browser user: the kernel's answers for that user, on those
threads only, and back to root after a short section."""

from __future__ import annotations

import errno
import os

import pytest
from process_helpers import TEST_USER, ensure_user

from agent.identity import FsUser, acting_as_root, open_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching identity needs root")


def probe() -> dict[str, object]:
    found: dict[str, object] = {"root": acting_as_root(), "groups": sorted(os.getgroups())}
    for path in ("/etc/shadow", "/etc/hostname"):
        try:
            os.close(open_path(path, os.O_RDONLY))
            found[path] = "read"
        except PermissionError:
            found[path] = "denied"
    return found


async def test_the_threads_act_as_the_user_and_only_they() -> None:
    user = ensure_user(TEST_USER)
    fs = FsUser(TEST_USER)
    try:
        seen = await fs.run(probe)
        assert seen["/etc/shadow"] == "denied" and seen["/etc/hostname"] == "read"
        assert seen["root"] is False
        assert seen["groups"] == sorted(os.getgrouplist(TEST_USER, user.pw_gid))
        # New files belong to the user without any chown.
        path = "/tmp/agent-identity-test"
        fd = await fs.run(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            assert os.stat(path).st_uid == user.pw_uid
        finally:
            os.unlink(path)
        # This thread stayed root; a short section as the user comes back to root.
        assert probe()["/etc/shadow"] == "read"
        groups = sorted(os.getgroups())
        with fs.acting():
            assert probe()["/etc/shadow"] == "denied"
        assert probe()["/etc/shadow"] == "read" and sorted(os.getgroups()) == groups
    finally:
        fs.close()


def test_magic_links_are_refused() -> None:
    fd = os.open("/etc/hostname", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as caught:
            open_path(f"/proc/self/fd/{fd}", os.O_RDONLY)
        assert caught.value.errno == errno.ELOOP
        os.close(open_path("/etc/hostname", os.O_RDONLY))  # an ordinary path opens
    finally:
        os.close(fd)
