"""The slice contract: starts in order, shutdown begins in order, closes in reverse, and a
failure in one step does not leave the others' resources open."""

from __future__ import annotations

import pytest
from aiohttp import web

from agent.appkeys import HEALTH_PROBES
from agent.slices import Lifecycle, Step, wire


def recorded(names: list[str], seen: list[str],
             fail: frozenset[str] = frozenset()) -> list[Lifecycle]:
    """Lifecycles that note each step in `seen`; the steps named in `fail` raise."""
    def step(what: str, name: str) -> Step:
        async def run() -> None:
            seen.append(f"{what} {name}")
            if f"{what} {name}" in fail:
                raise RuntimeError(f"{what} {name} failed")

        return run

    def begin(name: str) -> Step:
        return lambda: seen.append(f"begin {name}")

    return [Lifecycle(name, start=step("start", name), begin_shutdown=begin(name),
                      close=step("close", name)) for name in names]


def app_with(lifecycles: list[Lifecycle]) -> web.Application:
    app = web.Application()
    app[HEALTH_PROBES] = {}
    wire(app, lifecycles)
    return app


async def test_order_of_start_shutdown_and_close() -> None:
    seen: list[str] = []
    runner = web.AppRunner(app_with(recorded(["a", "b", "c"], seen)))
    await runner.setup()
    assert seen == ["start a", "start b", "start c"]
    await runner.cleanup()
    assert seen[3:] == ["begin a", "begin b", "begin c", "close c", "close b", "close a"]


async def test_a_failed_start_closes_what_had_started() -> None:
    seen: list[str] = []
    runner = web.AppRunner(app_with(recorded(["a", "b", "c"], seen, frozenset({"start b"}))))
    with pytest.raises(RuntimeError, match="start b failed"):
        await runner.setup()
    assert seen == ["start a", "start b", "close a"]


async def test_every_close_runs_when_one_fails() -> None:
    seen: list[str] = []
    runner = web.AppRunner(app_with(recorded(["a", "b", "c"], seen, frozenset({"close b"}))))
    await runner.setup()
    with pytest.raises(Exception, match="close b failed"):
        await runner.cleanup()
    assert seen[-3:] == ["close c", "close b", "close a"]


def test_probes_are_gathered_by_name() -> None:
    async def probe() -> dict[str, object]:
        return {"ok": True}

    app = app_with([Lifecycle("one", probes={"x": probe}), Lifecycle("two"),
                    Lifecycle("three", probes={"y": probe})])
    assert list(app[HEALTH_PROBES]) == ["x", "y"]
