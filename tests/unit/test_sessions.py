"""Single-use links and the sessions they open (agent/sessions.py), on a fake clock."""

from __future__ import annotations

import pytest

from agent.errors import BadRequest, NotFound
from agent.sessions import MAX_LINKS, MAX_SESSIONS, SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_link_opens_one_session_once() -> None:
    store = SessionStore(Clock())
    link = store.mint("read", "/live", 60, 3600)
    session, target = store.redeem(link.code)
    assert target == "/live" and session.scope == "read" and session.ttl_s == 3600
    assert store.lookup(session.id) == session
    with pytest.raises(NotFound) as refused:
        store.redeem(link.code)
    assert refused.value.code == "link_invalid"


def test_expired_links_and_sessions_are_refused() -> None:
    clock = Clock()
    store = SessionStore(clock)
    link = store.mint("write", "/live", 5, 60)
    clock.now += 5
    with pytest.raises(NotFound):
        store.redeem(link.code)
    session, _ = store.redeem(store.mint("write", "/live", 5, 60).code)
    clock.now += 59.9
    assert store.lookup(session.id) is not None
    clock.now += 0.1
    assert store.lookup(session.id) is None
    assert store.counts() == {"links": 0, "sessions": 0}


def test_tables_are_bounded() -> None:
    store = SessionStore(Clock())
    links = [store.mint("read", "/live", 60, 60) for _ in range(MAX_LINKS + 5)]
    assert store.counts()["links"] == MAX_LINKS
    with pytest.raises(NotFound):  # the oldest went first
        store.redeem(links[0].code)
    for link in links[5:]:
        store.redeem(link.code)
    for _ in range(10):
        store.redeem(store.mint("read", "/live", 60, 60).code)
    assert store.counts()["sessions"] == MAX_SESSIONS


@pytest.mark.parametrize("path", ["live", "//evil.example/x", "/\\\\evil", "http://x/",
                                  "/a b", "/" + "a" * 1100])
def test_targets_stay_on_the_daemon(path: str) -> None:
    with pytest.raises(BadRequest):
        SessionStore(Clock()).mint("read", path, 60, 60)


def test_links_never_carry_admin() -> None:
    with pytest.raises(BadRequest):
        SessionStore(Clock()).mint("admin", "/live", 60, 60)
