"""The files domain on real files in temporary directories: path checks, error mapping,
FileInfo records, ranges, atomic staging and placing, moves."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import osutil
from agent.errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge
from agent.files import info as fileinfo
from agent.files import ops, staging
from agent.ranges import RangeNotSatisfiable, byte_range


@pytest.mark.parametrize("value", ["", "relative/path", "./x", "~/x", "/a\x00b", "/\udc80\ud800"])
def test_check_path_rejects_what_is_not_an_absolute_os_path(value: str) -> None:
    with pytest.raises(BadRequest) as info:
        osutil.check_path(value, "dest_path")
    assert info.value.details and info.value.details[0]["field"] == "dest_path"


def test_check_path_keeps_absolute_paths_as_given() -> None:
    assert osutil.check_path("/tmp/a/../b") == "/tmp/a/../b"


@pytest.mark.parametrize(("text", "mode"), [("644", 0o644), ("0755", 0o755), ("7777", 0o7777),
                                            (None, None)])
def test_parse_mode(text: str | None, mode: int | None) -> None:
    assert ops.parse_mode(text) == mode


@pytest.mark.parametrize("text", ["999", "abc", "-1"])
def test_parse_mode_rejects_non_octal(text: str) -> None:
    with pytest.raises(BadRequest):
        ops.parse_mode(text)


@pytest.mark.parametrize(("err", "kind"), [
    (errno.ENOENT, NotFound), (errno.EACCES, Forbidden), (errno.EPERM, Forbidden),
    (errno.EEXIST, Conflict), (errno.ENOTEMPTY, Conflict), (errno.EISDIR, BadRequest),
    (errno.ENOTDIR, BadRequest), (errno.ENAMETOOLONG, BadRequest), (errno.ELOOP, BadRequest),
    (errno.ENOSPC, osutil.InsufficientStorage), (errno.EFBIG, PayloadTooLarge),
    (errno.EIO, osutil.FilesystemError),
])
def test_os_errors_map_to_client_errors(err: int, kind: type[Exception]) -> None:
    mapped = osutil.os_error(OSError(err, os.strerror(err)), "/x/y", "read")
    assert isinstance(mapped, kind)
    assert "/x/y" in mapped.message


def test_file_info_of_file_directory_and_symlink(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"12345")
    os.chmod(tmp_path / "f.txt", 0o640)
    (tmp_path / "d").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # a link to itself
    info = fileinfo.file_info(str(tmp_path / "f.txt"))
    assert info["name"] == "f.txt" and info["path"] == str(tmp_path / "f.txt")
    assert info["size_bytes"] == 5 and info["is_dir"] is False and info["mode"] == "-rw-r-----"
    assert info["mod_time"].endswith("Z") and "T" in info["mod_time"]
    directory = fileinfo.file_info(str(tmp_path / "d"))
    assert directory["is_dir"] is True and directory["size_bytes"] == 0
    assert directory["mode"].startswith("d")
    link = fileinfo.file_info(str(tmp_path / "loop"))
    assert link["mode"].startswith("l") and link["link_target"] == str(tmp_path / "loop")
    with pytest.raises(NotFound):
        fileinfo.file_info(str(tmp_path / "missing"))


def test_list_files_sorted_and_describes_links(tmp_path: Path) -> None:
    for name in ("b", "a", "c"):
        (tmp_path / name).write_text(name)
    (tmp_path / "sub").mkdir()
    (tmp_path / "up").symlink_to("..")
    names = [e["name"] for e in fileinfo.list_files(str(tmp_path))]
    assert names == ["a", "b", "c", "sub", "up"]
    up = next(e for e in fileinfo.list_files(str(tmp_path)) if e["name"] == "up")
    assert up["is_dir"] is False and up["link_target"] == ".."
    with pytest.raises(BadRequest, match="not a directory"):
        fileinfo.list_files(str(tmp_path / "a"))


def test_byte_range() -> None:
    etag, date = '"e"', "Mon, 01 Jan 2024 00:00:00 GMT"
    assert byte_range(None, 100, None, etag, date) is None
    assert byte_range("bytes=0-9", 100, None, etag, date) == (0, 10)
    assert byte_range("bytes=90-", 100, None, etag, date) == (90, 100)
    assert byte_range("bytes=90-500", 100, None, etag, date) == (90, 100)
    assert byte_range("bytes=-10", 100, None, etag, date) == (90, 100)
    assert byte_range("bytes=-500", 100, None, etag, date) == (0, 100)
    # Ignored (whole file): malformed, other units, several ranges, reversed.
    for header in ("bytes=a-b", "items=0-1", "bytes=0-1,5-6", "bytes=5-2", "bytes", "bytes=-"):
        assert byte_range(header, 100, None, etag, date) is None, header
    for header in ("bytes=100-", "bytes=200-300", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable) as info:
            byte_range(header, 100, None, etag, date)
        assert info.value.headers["Content-Range"] == "bytes */100"
    assert byte_range("bytes=5-", 100, etag, etag, date) == (5, 100)
    assert byte_range("bytes=5-", 100, date, etag, date) == (5, 100)
    assert byte_range("bytes=5-", 100, '"other"', etag, date) is None


def test_make_dirs_creates_parents_with_mode(tmp_path: Path) -> None:
    created = osutil.make_dirs(str(tmp_path / "a" / "b" / "c"), 0o700, None)
    assert created == [str(tmp_path / p) for p in ("a", "a/b", "a/b/c")]
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b").st_mode) == 0o700
    assert osutil.make_dirs(str(tmp_path / "a"), 0o755, None) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(Conflict):
        osutil.make_dirs(str(tmp_path / "file" / "sub"), 0o755, None)


async def _chunks(*parts: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for index, part in enumerate(parts):
        if fail_after is not None and index == fail_after:
            raise BadRequest("the request body ended early")
        await asyncio.sleep(0)
        yield part


async def test_write_file_replaces_atomically_and_keeps_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    big = os.urandom(3 * staging.WRITE_BATCH + 17)
    size = await staging.write_file(str(target), _chunks(big[:1000], big[1000:]), None, None)
    assert size == len(big) and target.read_bytes() == big
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    os.chmod(target, 0o600)
    await staging.write_file(str(target), _chunks(b"new"), None, None)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    await staging.write_file(str(target), _chunks(b"newer"), 0o640, None)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


async def test_failed_stream_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_bytes(b"old content")
    with pytest.raises(BadRequest):
        await staging.write_file(str(target), _chunks(b"x" * staging.WRITE_BATCH, b"y" * 10, b"z",
                                                  fail_after=2), None, None)
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["keep.txt"]


async def test_write_creates_parents_and_writes_through_symlinks(tmp_path: Path) -> None:
    await staging.write_file(str(tmp_path / "new" / "deep" / "f"), _chunks(b"1"), None, None)
    assert (tmp_path / "new" / "deep" / "f").read_bytes() == b"1"
    (tmp_path / "real").write_bytes(b"old")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    await staging.write_file(str(tmp_path / "link"), _chunks(b"via link"), None, None)
    assert (tmp_path / "link").is_symlink()
    assert (tmp_path / "real").read_bytes() == b"via link"


async def test_write_onto_a_directory_or_under_a_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadRequest, match="is a directory"):
        await staging.write_file(str(tmp_path / "d"), _chunks(b"1"), None, None)
    with pytest.raises(BadRequest, match="not a directory"):
        await staging.write_file(str(tmp_path / "f" / "x"), _chunks(b"1"), None, None)
    with pytest.raises(BadRequest, match="not a directory"):
        await staging.write_file(str(tmp_path / "f" / "x" / "y"), _chunks(b"1"), None, None)
    assert sorted(os.listdir(tmp_path)) == ["d", "f"]


def test_delete_file_and_directory_kinds(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("x")
    (tmp_path / "f").write_text("x")
    (tmp_path / "dlink").symlink_to(tmp_path / "d")
    with pytest.raises(BadRequest, match="delete_directory"):
        ops.delete_file(str(tmp_path / "d"))
    with pytest.raises(BadRequest, match="delete_file"):
        ops.delete_directory(str(tmp_path / "f"))
    with pytest.raises(BadRequest, match="symbolic link"):
        ops.delete_directory(str(tmp_path / "dlink"))
    ops.delete_file(str(tmp_path / "dlink"))  # the link, not its target
    assert (tmp_path / "d" / "e" / "f").exists()
    ops.delete_directory(str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()
    with pytest.raises(NotFound):
        ops.delete_file(str(tmp_path / "d"))
    with pytest.raises(BadRequest, match="root"):
        ops.delete_directory("/")


def test_move_never_replaces(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(Conflict):
        ops.move(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "a").read_text() == "a" and (tmp_path / "b").read_text() == "b"
    ops.move(str(tmp_path / "a"), str(tmp_path / "c"))
    assert not (tmp_path / "a").exists() and (tmp_path / "c").read_text() == "a"
    with pytest.raises(NotFound):
        ops.move(str(tmp_path / "missing"), str(tmp_path / "x"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(BadRequest):
        ops.move(str(tmp_path / "dir"), str(tmp_path / "dir" / "inside"))


def test_move_across_file_systems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("this test needs /dev/shm on another file system than the temp dir")
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"data")
    (src / "link").symlink_to("sub/f")
    dest = shm / f"agent-move-{os.getpid()}"
    try:
        ops.move(str(src), str(dest))
        assert not src.exists()
        assert (dest / "sub" / "f").read_bytes() == b"data"
        assert os.readlink(dest / "link") == "sub/f"
        assert not [n for n in os.listdir(shm) if n.startswith(ops.STAGING_PREFIX)]
    finally:
        import shutil

        shutil.rmtree(dest, ignore_errors=True)


def test_resolve_ids() -> None:
    assert ops.resolve_ids(None, None) == (-1, -1)
    assert ops.resolve_ids("root", "root") == (0, 0)
    assert ops.resolve_ids("1234", "4321") == (1234, 4321)
    with pytest.raises(BadRequest, match="no such user"):
        ops.resolve_ids("no-such-user-here", None)
    with pytest.raises(BadRequest, match="no such group"):
        ops.resolve_ids(None, "no-such-group-here")
    with pytest.raises(BadRequest, match="out of range"):
        ops.resolve_ids("99999999999", None)


def test_open_for_read_refuses_non_regular_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # opening a FIFO for reading must not hang
    with pytest.raises(BadRequest, match="not a regular file"):
        ops.open_for_read(str(tmp_path / "fifo"))
    with pytest.raises(BadRequest, match="is a directory"):
        ops.open_for_read(str(tmp_path))
