"""Small asyncio helpers shared by the slices."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def run_to_end(work: Awaitable[T]) -> T:
    """Await `work`, letting it finish even if the caller is cancelled (handlers are
    cancelled when their client goes away): for steps that change things and must not
    stop half-way, such as placing uploads or swapping extensions and restarting."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
