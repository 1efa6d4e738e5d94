"""HTTP routes of the files slice: every /fs/* endpoint.

Handlers parse and check the request, call the domain (`ops`, `archives`, `watches`)
and shape the answer. Every file operation runs in the threads of the app's `FsUser`,
acting as the browser user (agent/identity.py): a client can touch exactly what that
user can. Acting as root on files is the admin's `/process/exec` with `as_root`; the one
root operation here is giving a file to another owner (admin).

Bodies stream both ways: `read_file` hands the file to the kernel (`sendfile`) with
`Content-Length` and `Range`; `write_file` and uploads stream the request body to disk;
`download_dir_zip` sends the zip while it is being built.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import re
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from aiohttp import BodyPartReader, MultipartReader, web

from agent import osutil, sse
from agent.aio import run_to_end
from agent.appkeys import FS_USER, SETTINGS
from agent.archives import extract_zip
from agent.auth import require_scope
from agent.errors import AgentError, BadRequest, PayloadTooLarge, field_error
from agent.files import info, ops, staging
from agent.files.archives import DirZip
from agent.files.watches import WatchManager
from agent.identity import FsUser
from agent.multipart import IndexedFields
from agent.paging import next_link
from agent.ranges import byte_range
from agent.slices import Lifecycle
from agent.spec import RequestTimeout, body_timeout, request_json, request_query
from agent.sse import last_event_id

WATCHES = web.AppKey("fs_watches", WatchManager)

CHUNK = 1 << 20
MAX_TEXT_FIELD = 64 * 1024
MAX_UPLOAD_INDEX = 100_000

routes = web.RouteTableDef()
log = logging.getLogger(__name__)


def _fs(request: web.Request) -> FsUser:
    return request.app[FS_USER]


def _mode(request: web.Request, text: str | None) -> int | None:
    mode = ops.parse_mode(text)
    if mode is not None and mode & ops.SETID_BITS:
        require_scope(request, "admin", "setting setuid/setgid mode bits")
    return mode


def _abort(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """The body cannot be completed: drop the connection so the client sees it cut."""
    if request.transport is not None:
        request.transport.abort()
    return response


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    stall = request.app[SETTINGS].body_timeout_s
    try:
        while True:
            async with asyncio.timeout(stall):
                chunk = await request.content.readany()
            if not chunk:
                return
            yield chunk
    except TimeoutError:
        raise body_timeout(request) from None
    except AgentError:
        raise
    except Exception as exc:
        raise BadRequest(f"the request body ended early: {exc or type(exc).__name__}") from None


# ---------------------------------------------------------------- reading and listing


@routes.get("/fs/read_file")
async def read_file(request: web.Request) -> web.StreamResponse:
    path = osutil.check_path(request_query(request)["path"])
    handle = await _fs(request).run(ops.open_for_read, path)
    try:
        last_modified = email.utils.formatdate(handle.mtime, usegmt=True)
        selected = byte_range(request.headers.get("Range"), handle.size,
                                  request.headers.get("If-Range"), handle.etag, last_modified)
        start, end = selected if selected is not None else (0, handle.size)
        response = web.StreamResponse(status=206 if selected is not None else 200, headers={
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": handle.etag,
            "Last-Modified": last_modified,
        })
        if selected is not None:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{handle.size}"
        if handle.size == 0:
            return await _read_unsized(request, response, handle)
        response.content_length = end - start
        await response.prepare(request)
        if request.method == "HEAD" or end == start:
            return response
        transport = request.transport
        if transport is None:
            return response
        loop = asyncio.get_running_loop()
        try:
            sent = await loop.sendfile(transport, handle.file, start, end - start)
        except ConnectionError:
            return response
        if sent < end - start:  # the file shrank while being sent
            return _abort(request, response)
        return response
    finally:
        handle.close()


async def _read_unsized(request: web.Request, response: web.StreamResponse,
                        handle: ops.OpenFile) -> web.StreamResponse:
    """Files that report size 0 (e.g. in /proc) may still have content: read to EOF, or
    to AGENT_UNSIZED_READ_MAX bytes: a 413 when the first read shows more, else the
    response is cut there (the client sees an incomplete body)."""
    cap = request.app[SETTINGS].unsized_read_max_bytes
    first = await asyncio.to_thread(handle.file.read, min(CHUNK, cap + 1))
    if not first:
        response.content_length = 0
        await response.prepare(request)
        return response
    if len(first) > cap:
        raise PayloadTooLarge(f"this file reports no size and holds more than {cap} bytes "
                              "(AGENT_UNSIZED_READ_MAX)", code="unsized_file_too_large")
    response.set_status(200)
    response.headers.pop("Content-Range", None)
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk, total = first, len(first)
    try:
        while chunk:
            await response.write(chunk)
            chunk = await asyncio.to_thread(handle.file.read, min(CHUNK, cap + 1 - total))
            total += len(chunk)
            if total > cap:
                log.warning("read_file: %s holds more than %d bytes (AGENT_UNSIZED_READ_MAX); "
                            "response cut", osutil.shown(request.query.get("path", "?")), cap)
                return _abort(request, response)
    except ConnectionError:
        pass
    return response


@routes.get("/fs/list_files")
async def list_files(request: web.Request) -> web.Response:
    query = request_query(request)
    path = osutil.check_path(query["path"])
    # Listed and serialised in a thread: a directory of 100,000 entries does not hold up
    # the event loop (and the other requests) while its JSON is built.
    body, next_cursor = await _fs(request).run(_listing_json, path, query["limit"],
                                               query.get("cursor"))
    response = web.Response(body=body, content_type="application/json")
    if next_cursor is not None:
        response.headers["Link"] = next_link(request.rel_url, next_cursor)
    return response


def _listing_json(path: str, limit: int, cursor: str | None) -> tuple[bytes, str | None]:
    page = info.list_page(path, limit, cursor)
    return json.dumps(page.items).encode(), page.next_cursor


@routes.get("/fs/file_info")
async def file_info(request: web.Request) -> web.Response:
    path = osutil.check_path(request_query(request)["path"])
    return web.json_response(await _fs(request).run(info.file_info, path))


# ---------------------------------------------------------------- changing files


@routes.put("/fs/write_file")
async def write_file(request: web.Request) -> web.Response:
    query = request_query(request)
    path = osutil.check_path(query["path"])
    mode = _mode(request, query.get("mode"))
    await staging.write_file(path, _body(request), mode, None, _fs(request))
    return web.Response(status=201)


@routes.put("/fs/create_directory")
async def create_directory(request: web.Request) -> web.Response:
    body = await request_json(request)
    path = osutil.check_path(body["path"])
    mode = _mode(request, body.get("mode"))
    await _fs(request).run(ops.create_directory, path, 0o755 if mode is None else mode, None)
    return web.Response(status=201)


@routes.put("/fs/delete_file")
async def delete_file(request: web.Request) -> web.Response:
    body = await request_json(request)
    await _fs(request).run(ops.delete_file, osutil.check_path(body["path"]))
    return web.Response(status=200)


@routes.put("/fs/delete_directory")
async def delete_directory(request: web.Request) -> web.Response:
    body = await request_json(request)
    await _fs(request).run(ops.delete_directory, osutil.check_path(body["path"]))
    return web.Response(status=200)


@routes.put("/fs/move")
async def move(request: web.Request) -> web.Response:
    body = await request_json(request)
    src = osutil.check_path(body["src_path"], "src_path")
    dest = osutil.check_path(body["dest_path"], "dest_path")
    await _fs(request).run(ops.move, src, dest)
    return web.Response(status=200)


@routes.put("/fs/set_file_permissions")
async def set_file_permissions(request: web.Request) -> web.Response:
    body = await request_json(request)
    path = osutil.check_path(body["path"])
    if body.get("owner") is not None or body.get("group") is not None:
        require_scope(request, "admin", "changing a file's owner or group")
    mode = _mode(request, body["mode"])
    assert mode is not None  # required by the schema
    uid, gid = ops.resolve_ids(body.get("owner"), body.get("group"))
    if uid == -1 and gid == -1:
        await _fs(request).run(ops.set_permissions, path, mode, uid, gid)
    else:  # root's power, on a path that no symbolic link can divert
        await asyncio.to_thread(ops.set_owner_as_root, path, mode, uid, gid)
    return web.Response(status=200)


# ---------------------------------------------------------------- multipart uploads


async def _multipart(request: web.Request) -> MultipartReader:
    try:
        return await request.multipart()
    except (AssertionError, KeyError, ValueError) as exc:
        raise BadRequest(f"expected a multipart/form-data body: {exc}") from None


async def _parts(request: web.Request) -> AsyncIterator[BodyPartReader]:
    reader = await _multipart(request)
    while True:
        try:
            part = await reader.next()
        except AgentError:
            raise
        except Exception as exc:
            raise BadRequest(f"malformed multipart body: {exc or type(exc).__name__}") from None
        if part is None:
            return
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        yield part


async def _part_chunks(part: BodyPartReader, field: str, stall: float) -> AsyncIterator[bytes]:
    try:
        while True:
            async with asyncio.timeout(stall):
                chunk = await part.read_chunk(CHUNK)
            if not chunk:
                return
            yield chunk
    except TimeoutError:
        raise RequestTimeout(f"{field}: the upload stalled: no data for {stall:g} s "
                             "(AGENT_BODY_TIMEOUT)", headers={"Connection": "close"}) from None
    except AgentError:
        raise
    except Exception as exc:
        raise BadRequest.for_field(
            field, "incomplete",
            f"{field}: the upload ended early: {exc or type(exc).__name__}") from None


async def _text_field(part: BodyPartReader, field: str, stall: float) -> str:
    data = bytearray()
    async for chunk in _part_chunks(part, field, stall):
        data += chunk
        if len(data) > MAX_TEXT_FIELD:
            raise BadRequest.for_field(field, "too long", f"{field} is too long")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadRequest.for_field(field, "is not UTF-8 text") from None


async def _stage_near(fs: FsUser, dest: str | None, chunks: AsyncIterator[bytes]) -> str:
    """Stage beside the destination when it is known (one rename later), else in the
    temporary directory (moved, or copied across file systems, when placed)."""
    directory = tempfile.gettempdir()
    if dest is not None:
        target = staging.write_target(dest)
        with osutil.mapped(dest, "write"):
            directory = await fs.run(staging.staging_dir, target)
    staged, _size = await staging.stage(chunks, directory, fs, dest)
    return staged


@dataclass
class _Upload:
    dest: str | None = None
    staged: str | None = None


def _place_all(uploads: dict[int, _Upload], owner: osutil.Owner | None) -> None:
    for index, entry in sorted(uploads.items()):
        assert entry.staged is not None and entry.dest is not None
        with _about(f"files[{index}].dest_path"):
            staging.place(entry.staged, entry.dest, None, owner)
        entry.staged = None


@routes.post("/fs/upload")
async def upload(request: web.Request) -> web.Response:
    uploads: dict[int, _Upload] = {}
    stall = request.app[SETTINGS].body_timeout_s
    # `file` and `dest_path` alone name a single file
    fields = IndexedFields("files", ("file", "dest_path"), MAX_UPLOAD_INDEX + 1,
                           singles=("file", "dest_path"))
    try:
        async for part in _parts(request):
            index, kind = fields.parse(part.name)
            entry = uploads.setdefault(index, _Upload())
            label = f"files[{index}].{kind}"
            if kind == "dest_path":
                if entry.dest is not None:
                    raise BadRequest.for_field(label, "given twice")
                entry.dest = osutil.check_path(await _text_field(part, label, stall), label)
            else:
                if entry.staged is not None:
                    raise BadRequest.for_field(label, "given twice")
                with _about(f"files[{index}].dest_path"):
                    entry.staged = await _stage_near(_fs(request), entry.dest,
                                                     _part_chunks(part, label, stall))
        if not uploads:
            raise BadRequest.for_field(
                "files", "is required", "no files in the upload", detail_code="missing_field")
        missing = [field_error(f"files[{i}].{kind}", "is required", "missing_field")
                   for i, entry in sorted(uploads.items())
                   for kind, value in (("file", entry.staged), ("dest_path", entry.dest))
                   if value is None]
        if missing:
            raise BadRequest("; ".join(d["message"] for d in missing), details=missing)
        targets: dict[str, int] = {}
        for index, entry in sorted(uploads.items()):
            assert entry.dest is not None
            if entry.dest in targets:
                label = f"files[{index}].dest_path"
                raise BadRequest.for_field(
                    label, "duplicate destination",
                    f"{label}: same destination as files[{targets[entry.dest]}]")
            targets[entry.dest] = index
            with _about(f"files[{index}].dest_path"):
                await _fs(request).run(staging.check_placeable, entry.dest)
        # No upload is left half placed; staged files are discarded only after.
        await run_to_end(_fs(request).run(_place_all, uploads, None))
    finally:
        for entry in uploads.values():
            if entry.staged is not None:
                await _fs(request).run(staging.discard_staged, entry.staged)
    return web.Response(status=201)


@contextlib.contextmanager
def _about(label: str) -> Iterator[None]:
    """An error raised inside names the upload field it is about."""
    try:
        yield
    except AgentError as exc:
        if not exc.details:
            exc.details = [field_error(label, exc.message)]
            exc.message = f"{label}: {exc.message}"
        raise


@routes.post("/fs/upload_zip")
async def upload_zip(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    stall = settings.body_timeout_s
    dest: str | None = None
    staged: str | None = None
    try:
        async for part in _parts(request):
            if part.name == "dest_path" and dest is None:
                dest = osutil.check_path(await _text_field(part, "dest_path", stall), "dest_path")
            elif part.name == "zip_file" and staged is None:
                staged = await _stage_near(_fs(request), dest,
                                           _part_chunks(part, "zip_file", stall))
            else:
                raise BadRequest.for_field(
                    part.name or "(unnamed)", "unexpected form field",
                    f"unexpected form field {part.name!r} "
                    "(expected zip_file and dest_path, once each)",
                    detail_code="unknown_field")
        missing = [field_error(name, "is required", "missing_field")
                   for name, value in (("zip_file", staged), ("dest_path", dest))
                   if value is None]
        if missing:
            raise BadRequest("; ".join(d["message"] for d in missing), details=missing)
        assert staged is not None and dest is not None
        await run_to_end(_fs(request).run(extract_zip, staged, dest, None,
                                          settings.zip_max_entries, settings.zip_max_bytes))
    finally:
        if staged is not None:
            await _fs(request).run(staging.discard_staged, staged)
    return web.Response(status=201)


@routes.get("/fs/download_dir_zip")
async def download_dir_zip(request: web.Request) -> web.StreamResponse:
    path = osutil.check_path(request_query(request)["path"])
    await _fs(request).run(DirZip.check, path)
    name = os.path.basename(path.rstrip("/")) or "root"
    fallback = re.sub(r'[^A-Za-z0-9._ -]', "_", name)
    response = web.StreamResponse(headers={
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="{fallback}.zip"; '
                               f"filename*=UTF-8''{urllib.parse.quote(name + '.zip')}",
    })
    response.enable_chunked_encoding()
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    archive = DirZip(path, _fs(request), request.app[SETTINGS].zip_download_max_bytes)
    try:
        async for chunk in archive:
            await response.write(chunk)
    except ConnectionError:
        return response
    except AgentError:  # logged by the zip thread; the cut stream tells the client
        return _abort(request, response)
    finally:
        await archive.close()
    await response.write_eof()
    return response


# ---------------------------------------------------------------- watches


@routes.post("/fs/watch")
async def start_watch(request: web.Request) -> web.Response:
    body = await request_json(request)
    path = osutil.check_path(body["path"])
    watch = await request.app[WATCHES].start(path, bool(body.get("recursive", False)))
    return web.json_response({"watch_id": watch.id}, status=201)


@routes.get("/fs/watch/{watch_id}/events")
async def watch_events(request: web.Request) -> web.StreamResponse:
    watch = request.app[WATCHES].get(request.match_info["watch_id"])
    after = last_event_id(request)
    return await sse.stream(request, watch.events(after))


@routes.delete("/fs/watch/{watch_id}")
async def stop_watch(request: web.Request) -> web.Response:
    request.app[WATCHES].stop(request.match_info["watch_id"])
    return web.Response(status=204)


def setup(app: web.Application) -> Lifecycle:
    settings = app[SETTINGS]
    watches = WatchManager(settings.watch_buffer, settings.watch_idle_s, app[FS_USER],
                           settings.max_watches, settings.max_watch_dirs)
    app[WATCHES] = watches
    app.router.add_routes(routes)
    # Closing the watches ends their event streams: done as shutdown begins, not held up.
    return Lifecycle("files", begin_shutdown=watches.close)
