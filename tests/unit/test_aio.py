"""run_to_end: a cancelled caller still lets the work finish, and is still cancelled."""

from __future__ import annotations

import asyncio

import pytest

from agent.aio import run_to_end


async def test_work_finishes_when_the_caller_is_cancelled() -> None:
    steps: list[str] = []
    release = asyncio.Event()

    async def work() -> str:
        steps.append("started")
        await release.wait()
        steps.append("finished")
        return "done"

    caller = asyncio.create_task(run_to_end(work()))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert steps == ["started"]
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done()  # still waiting for the work
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert steps == ["started", "finished"]


async def test_result_and_errors_pass_through() -> None:
    async def ok() -> int:
        return 7

    async def fails() -> None:
        raise ValueError("boom")

    assert await run_to_end(ok()) == 7
    with pytest.raises(ValueError, match="boom"):
        await run_to_end(fails())
