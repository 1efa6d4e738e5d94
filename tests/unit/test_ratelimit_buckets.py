"""The token bucket's arithmetic, the classes operations fall into, and the settings."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, load_settings, parse_rate
from agent.openapi import operations
from agent.ratelimit import CLASSES, EXEMPT, Limit, RateLimiter, rate_class


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, max_buckets: int = 100) -> RateLimiter:
    limits = {name: Limit(per_minute=600, burst=5) for name in CLASSES}  # 10 a second
    return RateLimiter(limits, max_buckets=max_buckets, clock=clock)


def test_a_bucket_refills_at_the_sustained_rate_up_to_the_burst() -> None:
    clock = Clock()
    rl = limiter(clock)
    assert [rl.take("read", "a").allowed for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.25  # 2.5 requests' worth
    decisions = [rl.take("read", "a") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[-1].retry_after_s == 1 and decisions[-1].remaining == 0
    clock.now += 100
    decision = rl.take("read", "a")
    assert (decision.remaining, decision.reset_s) == (4, 1)


def test_callers_and_classes_are_separate() -> None:
    clock = Clock()
    rl = limiter(clock)
    for _ in range(5):
        rl.take("read", "a")
    assert not rl.take("read", "a").allowed
    assert rl.take("read", "b").allowed
    assert rl.take("write", "a").allowed


def test_tokens_are_kept_as_keyed_digests() -> None:
    one, two = limiter(Clock()), limiter(Clock())
    assert one.caller("secret", "127.0.0.1") == one.caller("secret", None)
    assert "secret" not in one.caller("secret", None)
    assert one.caller("secret", None) != two.caller("secret", None)  # per-process key
    assert one.caller(None, "10.0.0.2") == "address:10.0.0.2"


def test_buckets_are_bounded_and_the_least_recently_used_goes_first() -> None:
    clock = Clock()
    rl = limiter(clock, max_buckets=3)
    for caller in "abc":
        rl.take("read", caller)
    rl.take("read", "a")
    rl.take("read", "d")
    assert len(rl) == 3
    assert rl.take("read", "a").remaining == 2  # kept: its third request
    assert rl.take("read", "b").remaining == 4  # forgotten, so full again


def test_classes_come_from_the_scope_unless_the_spec_names_one() -> None:
    assert rate_class("read") == "read"
    assert rate_class("none") == "read"
    assert rate_class("write") == "write"
    assert rate_class("admin") == "write"
    assert rate_class("write", "process") == "process"
    assert rate_class("none", EXEMPT) is None
    declared = {op.raw["x-rate-class"] for op in operations().values()
                if "x-rate-class" in op.raw}
    assert declared <= {*CLASSES, EXEMPT}
    assert operations()[("get", "/health")].raw["x-rate-class"] == EXEMPT
    assert operations()[("post", "/process/spawn")].raw["x-rate-class"] == "process"


def test_settings() -> None:
    assert parse_rate("6000:1000") == (6000, 1000)
    for bad in ("6000", "a:b", "0:5", "5:0", ""):
        with pytest.raises(ConfigError):
            parse_rate(bad)
    settings = load_settings(["--rate-limit-write", "120:10", "--rate-limits", "off"], {})
    assert settings.rate_limit_write == (120, 10) and not settings.rate_limits
    defaults = load_settings([], {})
    assert defaults.rate_limits
    assert (defaults.rate_limit_read, defaults.rate_limit_write,
            defaults.rate_limit_process) == ((6000, 1000), (3000, 500), (600, 100))
