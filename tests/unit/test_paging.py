"""The shared paging helper: keyset pages, opaque cursors, the next link."""

from __future__ import annotations

import pytest
from yarl import URL

from agent.errors import BadRequest
from agent.paging import decode_cursor, encode_cursor, next_link, paginate


def test_pages_follow_each_other_to_the_end() -> None:
    items = [{"id": f"{i:03d}"} for i in range(10)]
    seen, cursor, pages = [], None, 0
    while True:
        page = paginate(items, key=lambda item: item["id"], limit=4, cursor=cursor)
        seen += page.items
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == items and pages == 3
    assert paginate(items, key=lambda item: item["id"], limit=None, cursor=None).items == items
    whole = paginate(items, key=lambda item: item["id"], limit=10, cursor=None)
    assert whole.next_cursor is None


def test_cursors_round_trip_any_key_and_reject_strangers() -> None:
    for key in ("", "plain", "日本 🙂", "bad-\udcff-byte", "x" * 255):
        cursor = encode_cursor(key)
        assert cursor.isascii() and "=" not in cursor
        assert decode_cursor(cursor) == key
    for bad in ("", "%%%", "Zm9v", "ü"):
        with pytest.raises(BadRequest) as caught:
            decode_cursor(bad)
        assert caught.value.details and caught.value.details[0]["field"] == "cursor"
    with pytest.raises(ValueError):
        paginate(["a"], key=str, limit=0, cursor=None)


def test_next_link_is_the_request_with_the_cursor_set() -> None:
    url = URL("/browsers/b/fs/list_files?path=/tmp&limit=5&cursor=old")
    link = next_link(url, "new")
    assert link == '</browsers/b/fs/list_files?path=/tmp&limit=5&cursor=new>; rel="next"'
