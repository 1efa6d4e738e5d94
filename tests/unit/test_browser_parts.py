"""The browser slice's pure parts: form field names, request checks, net error names,
raw header splitting, the zip checks of extensions (no Chromium needed)."""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.browser.curl import CurlRequest, CurlTransportError, _raw_headers
from agent.browser.extensions import ExtensionUpload
from agent.browser.net_errors import net_error_code
from agent.config import make_settings
from agent.errors import BadRequest, PayloadTooLarge


def test_net_error_names_map_to_chromiums_codes() -> None:
    assert net_error_code("net::ERR_CONNECTION_REFUSED") == -102
    assert net_error_code("ERR_NAME_NOT_RESOLVED") == -105
    assert net_error_code("CERT_AUTHORITY_INVALID") == -202
    assert net_error_code("net::ERR_ABORTED") == -3
    assert net_error_code("net::ERR_SOMETHING_NEW") is None
    error = CurlTransportError("http://x/", "net::ERR_SOMETHING_NEW")
    assert error.to_json()["net_error_name"] == "net::ERR_SOMETHING_NEW"
    assert "net_error" not in error.to_json()
    assert error.status == 502


def test_raw_headers_split_repeated_lines() -> None:
    assert _raw_headers({"headers": {"Set-Cookie": "a=1\nb=2", "X": "y"}}) == {
        "Set-Cookie": ["a=1", "b=2"], "X": ["y"]}


@pytest.mark.parametrize("body", [
    {"url": "file:///etc/passwd"},
    {"url": "http://"},
    {"url": "http://host:99999/"},
    {"url": "http://host/ with space"},
    {"url": "http://host/", "headers": {"Content-Length": "3"}},
    {"url": "http://host/", "headers": {"X": "a\nb"}},
    {"url": "http://host/", "method": "GET", "body": ""},
])
def test_requests_chromium_cannot_make_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        CurlRequest.from_json(body)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1000):
        yield data[start:start + 1000]


@pytest.mark.parametrize(("files", "message"), [
    ({"content.js": b"x"}, "must contain manifest.json"),
    ({"a/manifest.json": b"{}", "b/x.js": b"x"}, "must contain manifest.json"),
    ({"manifest.json": b"[1, 2]"}, "not a JSON object"),
    ({"manifest.json": b"{nope"}, "unreadable manifest.json"),
    ({"manifest.json": b"{}", "../escape.js": b"x"}, "escapes the destination"),
    ({"manifest.json": b"{}", "/abs.js": b"x"}, "has an absolute name"),
])
async def test_zips_are_checked_before_anything_is_installed(
        tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    settings = make_settings(extensions_dir=str(tmp_path / "ext"))
    async with ExtensionUpload(settings) as upload:
        upload.set_name(0, b"one")
        await upload.add_zip(0, chunks(zip_bytes(files)))
        with pytest.raises(BadRequest) as refused:
            await upload.prepare()
        assert message in refused.value.message
        assert refused.value.details[0]["field"] == "extensions[0].zip_file"
    assert list((tmp_path / "ext").iterdir()) == []  # the staging directory is gone


async def test_a_symlink_out_of_the_extension_is_refused_and_nothing_is_left(
        tmp_path: Path) -> None:
    """The extractor file uploads use: a link may point within the extension, not out."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.json", b"{}")
        link = zipfile.ZipInfo("secrets")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc")
    settings = make_settings(extensions_dir=str(tmp_path / "ext"))
    async with ExtensionUpload(settings) as upload:
        upload.set_name(0, b"one")
        await upload.add_zip(0, chunks(buffer.getvalue()))
        with pytest.raises(BadRequest) as refused:
            await upload.prepare()
        assert "points outside the destination" in refused.value.message
    assert list((tmp_path / "ext").iterdir()) == []


async def test_a_zip_that_inflates_past_the_cap_is_a_413_naming_the_part(
        tmp_path: Path) -> None:
    settings = make_settings(extensions_dir=str(tmp_path / "ext"), zip_max_bytes=50_000)
    async with ExtensionUpload(settings) as upload:
        upload.set_name(0, b"one")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("manifest.json", b"{}")
            archive.writestr("big.js", b"x" * 100_000)  # about 200 bytes deflated
        await upload.add_zip(0, chunks(buffer.getvalue()))
        with pytest.raises(PayloadTooLarge) as refused:
            await upload.prepare()
        assert refused.value.details[0]["field"] == "extensions[0].zip_file"


async def test_a_zip_larger_than_the_cap_is_a_413(tmp_path: Path) -> None:
    settings = make_settings(extensions_dir=str(tmp_path / "ext"), zip_max_bytes=5000)
    async with ExtensionUpload(settings) as upload:
        with pytest.raises(PayloadTooLarge):
            await upload.add_zip(0, chunks(b"x" * 6000))


async def test_names_are_checked(tmp_path: Path) -> None:
    settings = make_settings(extensions_dir=str(tmp_path / "ext"))
    async with ExtensionUpload(settings) as upload:
        for bad in (b"", b".", b"..", b".hidden", b"a/b", b"x" * 256, b"\xff"):
            with pytest.raises(BadRequest):
                upload.set_name(0, bad)
        upload.set_name(0, b"good.name_1-2")
        with pytest.raises(BadRequest):
            upload.set_name(0, b"again")
