"""Zip extraction against hostile archives, and directory zips streamed while built —
real archives, real files in temporary directories."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from agent.archives import declared_entries, extract_zip
from agent.errors import BadRequest, PayloadTooLarge
from agent.files.archives import DirZip

MAX_ENTRIES = 100
MAX_BYTES = 1 << 20


def make_zip(path: Path, entries: list[tuple[str, bytes | str, int | None]]) -> Path:
    """(name, data, unix mode or None); a mode with S_IFLNK makes a symlink entry."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return path


def link(name: str, target: str) -> tuple[str, str, int]:
    return name, target, stat.S_IFLNK | 0o777


def tree(root: Path) -> set[str]:
    found = set()
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


def extract(archive: Path, dest: Path, **caps: int) -> int:
    return extract_zip(str(archive), str(dest), None, caps.get("entries", MAX_ENTRIES),
                       caps.get("bytes", MAX_BYTES))


def test_extracts_files_dirs_modes_and_inside_links(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "ok.zip", [
        ("top.txt", "top", 0o100640),
        ("empty/", "", stat.S_IFDIR | 0o750),
        ("a/b/c.txt", "deep", None),
        ("run.sh", "#!/bin/sh\n", 0o104755),  # setuid is dropped
        link("a/to-c", "b/c.txt"),
    ])
    dest = tmp_path / "out"
    assert extract(archive, dest) == 5
    assert (dest / "top.txt").read_text() == "top"
    assert stat.S_IMODE((dest / "top.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "empty").stat().st_mode) == 0o750
    assert (dest / "a" / "b" / "c.txt").read_text() == "deep"
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert os.readlink(dest / "a" / "to-c") == "b/c.txt"
    assert (dest / "a" / "to-c").read_text() == "deep"
    assert tree(dest) == {"top.txt", "empty", "a", "a/b", "a/b/c.txt", "run.sh", "a/to-c"}


@pytest.mark.parametrize("entries", [
    [("ok.txt", "fine", None), ("../evil.txt", "x", None)],
    [("ok.txt", "fine", None), ("a/../../evil.txt", "x", None)],
    [("ok.txt", "fine", None), ("/tmp/evil-absolute.txt", "x", None)],
    [("ok.txt", "fine", None), link("out", "/etc")],
    [("ok.txt", "fine", None), link("out", "../../outside")],
    [("ok.txt", "fine", None), link("here", "."), link("up", "here/..")],
    [("ok.txt", "fine", None), link("d", "sub"), ("d/file", "x", None)],
    [("ok.txt", "fine", None), ("a/", "", stat.S_IFDIR | 0o755), ("a", "file", None)],
], ids=["dotdot", "nested-dotdot", "absolute", "link-absolute", "link-dotdot",
        "link-through-link", "entry-through-link", "dir-and-file"])
def test_hostile_archives_are_rejected_whole(tmp_path: Path,
                                             entries: list[tuple[str, str, int | None]]) -> None:
    archive = make_zip(tmp_path / "bad.zip", entries)
    dest = tmp_path / "dest"
    with pytest.raises(BadRequest):
        extract(archive, dest)
    assert not dest.exists(), "nothing may be written, not even the destination"
    assert tree(tmp_path) == {"bad.zip"}


def test_existing_symlink_in_destination_cannot_lead_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    archive = make_zip(tmp_path / "a.zip", [("first.txt", "1", None), ("sub/x.txt", "x", None)])
    with pytest.raises(BadRequest, match="outside"):
        extract(archive, dest)
    assert list(outside.iterdir()) == [] and sorted(os.listdir(dest)) == ["sub"]
    archive = make_zip(tmp_path / "b.zip", [("sub/", "", stat.S_IFDIR | 0o777)])
    with pytest.raises(BadRequest, match="outside"):
        extract(archive, dest)
    assert stat.S_IMODE(outside.stat().st_mode) != 0o777


def test_zip_bomb_caps(tmp_path: Path) -> None:
    big = make_zip(tmp_path / "big.zip", [("zeros", b"\0" * (4 << 20), None)])
    assert big.stat().st_size < 64 * 1024  # compresses ~1000:1
    with pytest.raises(PayloadTooLarge):
        extract(big, tmp_path / "d1")
    many = make_zip(tmp_path / "many.zip", [(f"f{i}", "", None) for i in range(MAX_ENTRIES + 1)])
    assert declared_entries(str(many)) == MAX_ENTRIES + 1
    with pytest.raises(PayloadTooLarge):
        extract(many, tmp_path / "d2")
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()


def test_lying_sizes_are_caught_while_extracting(tmp_path: Path) -> None:
    """A header that declares a small size cannot smuggle more data past the cap."""
    path = make_zip(tmp_path / "lie.zip", [("a", b"A" * 1000, None), ("b", b"B" * 5000, None)])
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("b")
    # Patch the uncompressed size of "b" in its central directory record to 10 bytes.
    central = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 1)
    assert data[central + 46:central + 47] == b"b"
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert info.file_size == 5000
    with pytest.raises(BadRequest):
        extract(path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_corrupt_and_non_zip_archives(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip file" * 100)
    with pytest.raises(BadRequest, match="not a valid zip"):
        extract(junk, tmp_path / "d")
    good = make_zip(tmp_path / "good.zip", [("a.txt", "x" * 5000, None), ("b.txt", "y", None)])
    raw = bytearray(good.read_bytes())
    raw[60:70] = b"\xff" * 10  # inside the first entry's compressed data
    good.write_bytes(bytes(raw))
    with pytest.raises(BadRequest):
        extract(good, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_extract_into_existing_directory_replaces_files(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("keep")
    (dest / "over.txt").write_text("old")
    extract(make_zip(tmp_path / "a.zip", [("over.txt", "new", None)]), dest)
    assert (dest / "keep.txt").read_text() == "keep" and (dest / "over.txt").read_text() == "new"
    assert sorted(os.listdir(dest)) == ["keep.txt", "over.txt"]  # no staging left behind
    (dest / "f").write_text("file")
    with pytest.raises(BadRequest):
        extract(make_zip(tmp_path / "b.zip", [("f/inner", "x", None)]), dest)


async def test_dir_zip_streams_relative_paths_empty_dirs_and_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "empty").mkdir(parents=True)
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "deep.txt").write_text("deep")
    (root / "top.bin").write_bytes(os.urandom(3 << 20))
    (root / "photo.png").write_bytes(b"\x89PNG fake")
    (root / "link").symlink_to("a/b/deep.txt")
    (root / "dangling").symlink_to("/nonexistent/target")
    os.mkfifo(root / "fifo")
    DirZip.check(str(root))
    chunks = [chunk async for chunk in DirZip(str(root))]
    assert len(chunks) > 1, "the zip arrives in pieces, not as one buffer"
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        names = set(archive.namelist())
        assert names == {"empty/", "a/", "a/b/", "a/b/deep.txt", "top.bin", "photo.png",
                         "link", "dangling"}
        assert archive.read("a/b/deep.txt") == b"deep"
        assert archive.read("top.bin") == (root / "top.bin").read_bytes()
        assert archive.getinfo("photo.png").compress_type == zipfile.ZIP_STORED
        assert stat.S_ISLNK(archive.getinfo("link").external_attr >> 16)
        assert archive.read("dangling") == b"/nonexistent/target"
        assert b"fifo" in archive.comment
        assert archive.testzip() is None


def test_dir_zip_check(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadRequest):
        DirZip.check(str(tmp_path / "f"))
    from agent.errors import NotFound

    with pytest.raises(NotFound):
        DirZip.check(str(tmp_path / "missing"))
