"""Who may call, and from where (API.md, "Auth"; SECURITY.md).

Where from: `check_origin` refuses a request whose `Host` is not one of ours (DNS
rebinding) or that a web page sent from another origin (`Origin`, `Sec-Fetch-Site`), with
or without a token. The daemon's own origin is allowed, so its own pages may call it.

Who: bearer tokens with scopes, admin ⊃ write ⊃ read, compared in constant time and never
logged. `authenticate` tries the `Authorization` header, then `?token=` (only on a real
WebSocket upgrade of an operation marked `x-websocket`), then every credential check the
app registered in `CREDENTIALS` (e.g. a session cookie of the daemon's own pages). With
no token configured the daemon is reachable only from loopback (or where
--allow-unauthenticated says so), and every caller has every scope.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from aiohttp import web

from agent.appkeys import SETTINGS
from agent.errors import Forbidden, Unauthorized
from agent.sessions import SessionStore, cookie_name

RANK = {"read": 1, "write": 2, "admin": 3}
SCOPE_KEY = web.RequestKey("scope", str)
# A credential check beside bearer tokens: the scope it grants, or None when the request
# does not carry that credential (raise Unauthorized when it carries a bad one).
CredentialCheck = Callable[[web.Request], str | None]
CREDENTIALS = web.AppKey("credentials", list[CredentialCheck])

_TOKEN_CHARS = re.compile(r"^[!-~]+$")  # visible ASCII (config.check_token is stricter)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class HostNotAllowed(Forbidden):
    code = "host_not_allowed"


class OriginNotAllowed(Forbidden):
    code = "origin_not_allowed"


# ---------------------------------------------------------------- where from


def split_host(host: str) -> tuple[str, str]:
    """(name, port) of a Host header value; the name lower-cased, IPv6 without brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    return name, port


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_allowed(name: str, listen_host: str, allowed: tuple[str, ...]) -> bool:
    """Loopback names and addresses, the listen address (any address literal when
    listening on all of them: a rebinding attack needs a name), and `allowed`."""
    if not name:
        return False
    if "*" in allowed:
        return True
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _ip(name)
    if address is not None and address.is_loopback:
        return True
    listen = listen_host.lower()
    if name == listen:
        return True
    if address is not None and listen in ("0.0.0.0", "::", ""):
        return True
    for pattern in allowed:
        if pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def origin_allowed(origin: str, request_host: str, allowed_origins: tuple[str, ...]) -> bool:
    """The daemon's own origin (the same host:port the request was sent to) or one the
    settings allow. `null` (sandboxed frames, files) is never allowed."""
    origin = origin.strip().lower()
    if origin in allowed_origins:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
        return False
    return parts.netloc == request_host.strip().lower()


def check_origin(request: web.Request) -> None:
    """403 for a foreign Host (DNS rebinding) or a request a foreign web page made."""
    settings = request.app[SETTINGS]
    check_origin_for(request, settings.listen_host, settings.allowed_hosts,
                     settings.allowed_origins)


def check_origin_for(request: web.Request, listen_host: str, allowed_hosts: tuple[str, ...],
                     allowed_origins: tuple[str, ...]) -> None:
    host = request.headers.get("Host", "")
    name, _port = split_host(host)
    if not host_allowed(name, listen_host, allowed_hosts):
        raise HostNotAllowed(
            f"Host {host[:100]!r} is not one of this daemon's names; call it by a loopback "
            "address, its listen address, or a name in AGENT_ALLOWED_HOSTS")
    origin = request.headers.get("Origin")
    if origin is not None:
        if not origin_allowed(origin, host, allowed_origins):
            raise OriginNotAllowed(
                f"requests from the web origin {origin[:100]!r} are refused; allow it with "
                "AGENT_ALLOWED_ORIGINS if it is trusted")
        return
    # A browser sends no Origin on a cross-site GET (an <img>, a navigation), but it says
    # where the request comes from: anything but our own origin or the user is refused.
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        raise OriginNotAllowed(f"a {site} request from a web page is refused")


# ---------------------------------------------------------------- who


def token_scope(tokens: Mapping[str, str], presented: str) -> str | None:
    """The scope of `presented`, comparing against every token in constant time."""
    found: str | None = None
    given = presented.encode("ascii", "replace")
    for token, scope in tokens.items():
        if hmac.compare_digest(token.encode(), given):
            found = scope
    return found


def bearer_token(request: web.Request) -> str | None:
    """The token of the `Authorization: Bearer` header; None without the header; 401 for a
    header that is not a well-formed bearer token."""
    header = request.headers.get("Authorization", "")
    if not header.strip():
        return None  # absent (or sent empty, as some clients do to clear it)
    kind, _, value = header.strip().partition(" ")
    value = value.strip()
    if kind.lower() != "bearer" or not value or not _TOKEN_CHARS.match(value):
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'",
                           headers=_CHALLENGE)
    return value


def is_websocket_upgrade(request: web.Request) -> bool:
    """A real WebSocket handshake, not just a header saying so."""
    headers = request.headers
    return (request.method == "GET"
            and headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in headers.get("Connection", "").lower()
            and bool(headers.get("Sec-WebSocket-Key")))


def query_token(request: web.Request) -> str | None:
    """`?token=`, for browsers (which cannot set headers on a WebSocket): the caller has
    checked that the operation is a WebSocket endpoint; only a real upgrade counts."""
    token = request.query.get("token")
    if token is None or not is_websocket_upgrade(request):
        return None
    if not _TOKEN_CHARS.match(token):
        raise Unauthorized("malformed token parameter", headers=_CHALLENGE)
    return token


def authenticate(request: web.Request, tokens: Mapping[str, str], *,
                 websocket: bool = False) -> str:
    """The caller's scope; 401 when a credential is needed and missing, bad or malformed.

    `websocket`: the operation is a WebSocket endpoint, where `?token=` is accepted."""
    if not tokens:
        return "admin"
    token = bearer_token(request)
    if token is None and websocket:
        token = query_token(request)
    if token is not None:
        scope = token_scope(tokens, token)
        if scope is None:
            raise Unauthorized("invalid bearer token", headers=_CHALLENGE)
        return scope
    for check in request.app.get(CREDENTIALS, ()):
        granted = check(request)
        if granted is not None:
            return granted
    raise Unauthorized("missing bearer token", headers=_CHALLENGE)


def optional_scope(request: web.Request) -> str | None:
    """The caller's scope on an operation that needs none (e.g. /health's details):
    None without a credential; a bad one is still a 401."""
    settings = request.app[SETTINGS]
    if not settings.tokens:
        return "admin"
    if request.headers.get("Authorization", "").strip():
        return authenticate(request, settings.tokens)
    for check in request.app.get(CREDENTIALS, ()):
        granted = check(request)
        if granted is not None:
            return granted
    return None


def same_origin(request: web.Request) -> bool:
    """Whether a browser request comes from the daemon's own pages: no foreign Origin
    (not even one AGENT_ALLOWED_ORIGINS allows) and no cross-origin fetch metadata."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return False
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def session_scope(request: web.Request, sessions: SessionStore) -> str | None:
    """A CredentialCheck: the scope of the request's session cookie (sessions.py), for
    same-origin requests only."""
    session_id = request.cookies.get(cookie_name(request.url.port))
    if not session_id or not same_origin(request):
        return None
    session = sessions.lookup(session_id)
    return session.scope if session is not None else None


def has_scope(granted: str, needed: str) -> bool:
    return RANK.get(granted, 0) >= RANK.get(needed, 99)


def require_scope(request: web.Request, needed: str, what: str = "this operation") -> None:
    """For checks that depend on the body (as_user, owner changes): 403 below `needed`."""
    granted = request.get(SCOPE_KEY, "read")
    if not has_scope(granted, needed):
        raise Forbidden(f"{what} needs the {needed} scope; this token has {granted}")
