"""Rate limits: a token bucket per caller and class of operation.

A caller is the authenticated token (kept only as a keyed digest, never as the token
itself) or, for requests that carry none (a daemon without tokens, the open pages), the
client address. Each caller has one bucket per class:

- `read`: operations whose `x-scope` is `read` (or `none`);
- `write`: operations that need `write` or `admin`;
- `process`: operations that start a process (`x-rate-class: process` in the spec).

An operation may name its class with `x-rate-class` (`none` exempts it: `/health`). A
bucket holds up to `burst` requests and refills at `per_minute / 60` a second; a request
takes one. A stream (SSE, WebSocket) is one request, counted when it opens.

The middleware sits after authentication; every answer to a limited operation (errors
included) carries `X-RateLimit-Limit` (the burst), `X-RateLimit-Remaining` and
`X-RateLimit-Reset` (seconds until the bucket is full again); over the limit the answer
is a 429 `rate_limited` with `Retry-After` (seconds until one request is allowed).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from agent.appkeys import SETTINGS
from agent.auth import SCOPE_KEY, bearer_token, query_token
from agent.errors import RateLimited
from agent.spec import operation_for

CLASSES = ("read", "write", "process")
EXEMPT = "none"
# Buckets kept at most; past that the least recently used is forgotten (a forgotten
# bucket is the same as a full one, so this only ever lets a caller in earlier).
MAX_BUCKETS = 10_000

HEADERS_KEY = web.RequestKey("rate_limit_headers", dict[str, str])


@dataclass(frozen=True)
class Limit:
    per_minute: int  # sustained rate
    burst: int  # bucket size: requests allowed at once

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until the next request is allowed (0 when allowed)

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp


def rate_class(scope: str, declared: object = None) -> str | None:
    """The class an operation counts against; None when it is exempt."""
    if declared is not None:
        return None if declared == EXEMPT else str(declared)
    return "read" if scope in ("none", "read") else "write"


class RateLimiter:
    def __init__(self, limits: Mapping[str, Limit], *, max_buckets: int = MAX_BUCKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        missing = set(CLASSES) - set(limits)
        if missing:
            raise ValueError(f"no limit for {sorted(missing)}")
        self.limits = dict(limits)
        self.max_buckets = max_buckets
        self.clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._key = secrets.token_bytes(32)  # digests of tokens mean nothing elsewhere

    def caller(self, token: str | None, address: str | None) -> str:
        """The bucket owner: a keyed digest of the token, else the client address."""
        if token is not None:
            digest = hashlib.blake2b(token.encode(), key=self._key, digest_size=16)
            return "token:" + digest.hexdigest()
        return f"address:{address or 'unknown'}"

    def take(self, klass: str, caller: str) -> Decision:
        """One request of `klass` by `caller`: allowed (and counted) or not."""
        limit = self.limits[klass]
        now = self.clock()
        key = (klass, caller)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(limit.burst), now)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.stamp)
            bucket.level = min(float(limit.burst), bucket.level + elapsed * limit.per_second)
            bucket.stamp = now
        allowed = bucket.level >= 1.0
        if allowed:
            bucket.level -= 1.0
        retry = 0 if allowed else max(1, math.ceil((1.0 - bucket.level) / limit.per_second))
        return Decision(
            allowed=allowed,
            limit=limit.burst,
            remaining=math.floor(bucket.level),
            reset_s=math.ceil((limit.burst - bucket.level) / limit.per_second),
            retry_after_s=retry,
        )

    def __len__(self) -> int:
        return len(self._buckets)


# ---------------------------------------------------------------- HTTP

RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts the request against its caller's bucket (after authentication)."""
    limiter = request.app.get(RATE_LIMITER)
    if limiter is None or request.match_info.http_exception is not None:
        return await handler(request)
    op = operation_for(request)
    if op is None:
        return await handler(request)
    klass = rate_class(op.scope, op.raw.get("x-rate-class"))
    if klass is None:
        return await handler(request)
    # Only a token the auth middleware accepted names a caller; any other request (no
    # tokens configured, an open page, a token nobody checked, a session cookie) is its
    # address.
    token = None
    if SCOPE_KEY in request and request.app[SETTINGS].tokens:
        token = bearer_token(request)
        if token is None and op.raw.get("x-websocket"):
            token = query_token(request)
    decision = limiter.take(klass, limiter.caller(token, request.remote))
    request[HEADERS_KEY] = decision.headers()
    if not decision.allowed:
        limit = limiter.limits[klass]
        raise RateLimited(
            f"rate limit exceeded: at most {limit.per_minute} {klass} requests a minute "
            f"(bursts of {limit.burst}); retry in {decision.retry_after_s} s",
            headers={"Retry-After": str(decision.retry_after_s)},
        )
    return await handler(request)


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = request.get(HEADERS_KEY)
    if headers:
        for name, value in headers.items():
            response.headers.setdefault(name, value)


def setup(app: web.Application) -> None:
    """Creates the limiter unless limits are off; `rate_limit` must be in the chain."""
    settings = app[SETTINGS]
    if not settings.rate_limits:
        return
    app[RATE_LIMITER] = RateLimiter({
        "read": Limit(*settings.rate_limit_read),
        "write": Limit(*settings.rate_limit_write),
        "process": Limit(*settings.rate_limit_process),
    })
    app.on_response_prepare.append(_add_headers)
