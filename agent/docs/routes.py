"""HTTP routes of the docs slice: `GET /docs`, Swagger UI over the daemon's own /spec.json.

The page and every file it loads are files of this package: our page and its script
(`page/`) and Swagger UI (`vendor/swagger-ui/`, from the npm lockfile in `web/`, copied
by `make docs-assets`). Nothing is loaded from elsewhere, and the page's
Content-Security-Policy tells the browser so. The page holds no secret and needs no
token; "try it out" requests go to this same origin with the token typed into the page.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from agent.errors import DocsUnavailable, NotFound
from agent.slices import Lifecycle

# Same origin only: no other script, style, image, font or connection; no framing.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

# URL name → (file in this package, content type)
ASSETS = {
    "swagger-ui-bundle.js": ("vendor/swagger-ui/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("vendor/swagger-ui/swagger-ui.css", "text/css"),
    "docs.js": ("page/docs.js", "text/javascript"),
    "docs.css": ("page/docs.css", "text/css"),
}
PAGE = ("page/index.html", "text/html")

routes = web.RouteTableDef()


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@functools.cache
def _load(name: str, content_type: str) -> Asset:
    path = resources.files("agent.docs").joinpath(name)
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        raise DocsUnavailable(
            f"this installation has no {name}: Swagger UI is installed into the package "
            "by `make docs-assets` (before `pip install .`)") from None
    return Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def _answer(request: web.Request, asset: Asset) -> web.Response:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type,
                        charset="utf-8", headers=headers)


@routes.get("/docs")
async def docs_page(request: web.Request) -> web.Response:
    for name, content_type in ASSETS.values():
        _load(name, content_type)  # the page only when it can work
    return _answer(request, _load(*PAGE))


@routes.get("/docs/{asset}")
async def docs_asset(request: web.Request) -> web.Response:
    found = ASSETS.get(request.match_info["asset"])
    if found is None:
        raise NotFound(f"no such docs file: {request.match_info['asset']}")
    return _answer(request, _load(*found))


def setup(app: web.Application) -> Lifecycle:
    app.router.add_routes(routes)
    return Lifecycle("docs")
