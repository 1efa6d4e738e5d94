"""HTTP routes of the browser slice: POST /curl, POST /extensions; the DevTools connection
(and the public DevTools endpoint beside the API) as the slice's managers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from agent.aio import run_to_end
from agent.appkeys import FS_USER, SETTINGS
from agent.browser.cdp import CdpManager
from agent.browser.curl import CurlRequest, CurlTargets, curl
from agent.browser.devtools_proxy import DevtoolsProxy
from agent.browser.extensions import MAX_NAME_PART_BYTES, ExtensionUpload
from agent.errors import BadRequest, UnsupportedMediaType
from agent.slices import Lifecycle
from agent.spec import request_json

CDP = web.AppKey("browser_cdp", CdpManager)
CURL_TARGETS = web.AppKey("browser_curl_targets", CurlTargets)
DEVTOOLS_PROXY = web.AppKey("browser_devtools_proxy", DevtoolsProxy)
# One extension install (unpack, swap, restart) at a time.
INSTALLING = web.AppKey("browser_extensions_installing", asyncio.Lock)

routes = web.RouteTableDef()


@routes.post("/curl")
async def post_curl(request: web.Request) -> web.Response:
    body = await request_json(request)
    result = await curl(request.app[CURL_TARGETS], CurlRequest.from_json(body))
    return web.json_response(result.to_json())


@routes.post("/extensions")
async def post_extensions(request: web.Request) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        raise UnsupportedMediaType("POST /extensions takes multipart/form-data")
    async with ExtensionUpload(request.app[SETTINGS], request.app[FS_USER]) as upload:
        try:
            await _receive(request, upload)
        except (ValueError, AssertionError, HttpProcessingError) as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from None
        # From here on files change: the swap and the restart are never left half-way.
        await run_to_end(_install(request.app, upload))
    return web.Response(status=201)


async def _install(app: web.Application, upload: ExtensionUpload) -> None:
    async with app[INSTALLING]:
        await upload.install(app[CDP])


async def _receive(request: web.Request, upload: ExtensionUpload) -> None:
    """Every part of the form into `upload` (zips streamed to its staging directory)."""
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart parts are not accepted")
        index, key = upload.field(part.name or "")
        if key == "zip_file":
            await upload.add_zip(index, _chunks(part))
        else:
            raw = bytearray()
            async for chunk in _chunks(part):
                raw += chunk
                if len(raw) > MAX_NAME_PART_BYTES:
                    raise BadRequest(f"extensions[{index}].name is too long")
            upload.set_name(index, bytes(raw))


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk():
        yield bytes(chunk)


def setup(app: web.Application) -> Lifecycle:
    settings = app[SETTINGS]
    cdp = CdpManager(settings.cdp_address)
    proxy = DevtoolsProxy(cdp, settings)
    curl = CurlTargets(cdp, app[SETTINGS].curl_max_bytes)
    app[CDP] = cdp
    app[CURL_TARGETS] = curl
    app[DEVTOOLS_PROXY] = proxy
    app[INSTALLING] = asyncio.Lock()

    async def devtools_probe() -> dict[str, Any]:
        return {**cdp.snapshot(), **proxy.snapshot()}

    async def start() -> None:
        await cdp.start()
        await proxy.start()

    async def close() -> None:
        await proxy.close()
        await curl.close()
        await cdp.close()

    app.router.add_routes(routes)
    return Lifecycle("browser", start=start, close=close, probes={"devtools": devtools_probe})
