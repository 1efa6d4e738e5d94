"""Pages of lists that can grow: `limit` and an opaque `cursor`, and the next page's link.

Keyset paging: a list is in a stable order of unique string keys (a file name, an id), and
a cursor stands for "after this key". A page is the next `limit` items after the cursor;
its `next_cursor` is the key of the last item it considered, or None at the end. So
paging through a list that changes meanwhile still yields every item present throughout
exactly once, never one twice. Cursors are opaque to clients (base64 of the key) and
are checked only for being well formed: any cursor just names a position.

    page = paginate(sorted_names, key=lambda name: name, limit=100, cursor=cursor)
    page.items, page.next_cursor   # → the handler answers with next_link(...) when set
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from yarl import URL

from agent.errors import BadRequest

T = TypeVar("T")

_PREFIX = "k:"  # a version of the cursor format


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None  # None: this is the last page


def encode_cursor(key: str) -> str:
    raw = (_PREFIX + key).encode("utf-8", "surrogateescape")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, field: str = "cursor") -> str:
    """The key a cursor stands for; 400 naming `field` when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        text = raw.decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        text = ""
    if not cursor.isascii() or not text.startswith(_PREFIX):
        raise BadRequest.for_field(
            field, "not a cursor from a previous page",
            f"{field}: not a cursor from a previous page")
    return text[len(_PREFIX):]


def paginate(items: Sequence[T], key: Callable[[T], str], limit: int | None,
             cursor: str | None) -> Page[T]:
    """The page of `items` (sorted by `key`, keys unique) after `cursor`; all of them
    from there when `limit` is None."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    start = 0
    if cursor is not None:
        after = decode_cursor(cursor)
        start = bisect.bisect_right(items, after, key=key)
    end = len(items) if limit is None else min(len(items), start + limit)
    chosen = list(items[start:end])
    next_cursor = encode_cursor(key(items[end - 1])) if end < len(items) else None
    return Page(chosen, next_cursor)


def next_link(url: URL, cursor: str) -> str:
    """A `Link` header value for the next page: this request's URL with `cursor` set
    (relative, so it stays right behind proxies and under the /browsers/{id} prefix)."""
    return f'<{url.update_query(cursor=cursor)}>; rel="next"'
