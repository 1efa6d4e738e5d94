"""Bearer tokens with scopes (API.md, "Auth"): admin ⊃ write ⊃ read.

Tokens are compared in constant time and never logged. With no token configured the
daemon is reachable only from loopback (or where --allow-unauthenticated says so), and
every caller has every scope.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from aiohttp import web

from agent.errors import Forbidden, Unauthorized
from agent.sessions import SessionStore, cookie_name

RANK = {"read": 1, "write": 2, "admin": 3}
SCOPE_KEY = web.RequestKey("scope", str)


def token_scope(tokens: Mapping[str, str], presented: str) -> str | None:
    """The scope of `presented`, comparing against every token in constant time."""
    found: str | None = None
    given = presented.encode()
    for token, scope in tokens.items():
        if hmac.compare_digest(token.encode(), given):
            found = scope
    return found


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    kind, _, value = header.partition(" ")
    if kind.lower() == "bearer" and value.strip():
        return value.strip()
    # Browsers cannot set headers on a WebSocket: there, `?token=` stands in.
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return request.query.get("token") or None
    return None


def same_origin(request: web.Request) -> bool:
    """Whether a browser request comes from the daemon's own pages: no foreign Origin, and
    no cross-origin fetch metadata (a page on another port of the same host is same-site,
    so SameSite=Strict alone would let it send the cookie)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return False
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def session_scope(request: web.Request, sessions: SessionStore) -> str | None:
    """The scope of the request's session cookie (sessions.py), for same-origin requests."""
    session_id = request.cookies.get(cookie_name(request.url.port))
    if not session_id or not same_origin(request):
        return None
    session = sessions.lookup(session_id)
    return session.scope if session is not None else None


def authenticate(request: web.Request, tokens: Mapping[str, str], token: str | None) -> str:
    """The caller's scope; raises 401 when a token is needed and missing or wrong."""
    if not tokens:
        return "admin"
    if token is None:
        raise Unauthorized("missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    scope = token_scope(tokens, token)
    if scope is None:
        raise Unauthorized("invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return scope


def has_scope(granted: str, needed: str) -> bool:
    return RANK.get(granted, 0) >= RANK.get(needed, 99)


def require_scope(request: web.Request, needed: str, what: str = "this operation") -> None:
    """For checks that depend on the body (as_user, owner changes): 403 below `needed`."""
    granted = request.get(SCOPE_KEY, "read")
    if not has_scope(granted, needed):
        raise Forbidden(f"{what} needs the {needed} scope; this token has {granted}")
