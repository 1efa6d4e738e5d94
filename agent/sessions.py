"""Browser sessions for the daemon's own pages (live view, replay player, /docs).

A browser cannot send a bearer header on a navigation, and a token in a URL ends up in
history, logs and Referer headers. So an authenticated client mints a *link*: a random,
single-use code, valid for a short time, that names a scope (at most the minter's) and the
page to open. Opening the link trades the code for a *session*: another random id, kept
only server-side with its scope and expiry, handed to the browser as an HttpOnly,
SameSite=Strict cookie. The auth middleware accepts that cookie as a credential for
same-origin requests only. The long-lived API token never reaches the browser.

Both tables are bounded: the oldest entry goes when a table is full, and expired entries
are swept on every change.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import BadRequest, NotFound

COOKIE_PREFIX = "agent_session"
SESSION_SCOPES = ("read", "write")
MAX_LINKS = 256
MAX_SESSIONS = 256
LINK_TTL_MIN_S, LINK_TTL_MAX_S, LINK_TTL_DEFAULT_S = 5, 600, 60
SESSION_TTL_MIN_S, SESSION_TTL_MAX_S, SESSION_TTL_DEFAULT_S = 60, 86_400, 3_600
# A page of the daemon: an absolute path, no scheme or host, no "//" or backslash tricks.
_LOCAL_PATH = re.compile(r"^/(?![/\\])[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$")


@dataclass(frozen=True)
class Link:
    code: str
    scope: str
    path: str
    expires_at: float  # monotonic
    session_ttl_s: int


@dataclass(frozen=True)
class Session:
    id: str
    scope: str
    expires_at: float  # monotonic
    ttl_s: int


def cookie_name(port: int | None) -> str:
    """The cookie's name for the port the browser talks to: cookies ignore ports, so two
    daemons forwarded to one host (localhost:10001, localhost:10002) must not share one."""
    return f"{COOKIE_PREFIX}_{port}" if port else COOKIE_PREFIX


def check_path(path: str) -> str:
    if not _LOCAL_PATH.match(path) or len(path) > 1024:
        raise BadRequest.for_field(
            "path", "must be an absolute local path",
            "path must be a path on this daemon, such as /live")
    return path


class SessionStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._links: OrderedDict[str, Link] = OrderedDict()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def mint(self, scope: str, path: str = "/live", expires_in_s: int = LINK_TTL_DEFAULT_S,
             session_ttl_s: int = SESSION_TTL_DEFAULT_S) -> Link:
        """A new single-use link (the caller checked `scope` against its own)."""
        if scope not in SESSION_SCOPES:
            raise BadRequest.for_field("scope", "must be read or write")
        check_path(path)
        self._sweep()
        while len(self._links) >= MAX_LINKS:
            self._links.popitem(last=False)
        link = Link(secrets.token_urlsafe(24), scope, path, self._clock() + expires_in_s,
                    session_ttl_s)
        self._links[link.code] = link
        return link

    def redeem(self, code: str) -> tuple[Session, str]:
        """The session a link opens, and the page to go to; the link is used up."""
        self._sweep()
        link = self._links.pop(code, None)
        if link is None:
            raise NotFound("this link is unknown, used or expired: mint a new one",
                           code="link_invalid")
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        session = Session(secrets.token_urlsafe(32), link.scope,
                          self._clock() + link.session_ttl_s, link.session_ttl_s)
        self._sessions[session.id] = session
        return session, link.path

    def lookup(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            self._sessions.pop(session_id, None)
            return None
        return session

    def seconds_left(self, session_id: str) -> float:
        session = self.lookup(session_id)
        return 0.0 if session is None else session.expires_at - self._clock()

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def counts(self) -> dict[str, int]:
        self._sweep()
        return {"links": len(self._links), "sessions": len(self._sessions)}

    def _sweep(self) -> None:
        now = self._clock()
        for table in (self._links, self._sessions):
            for key in [k for k, v in table.items() if v.expires_at <= now]:
                del table[key]
