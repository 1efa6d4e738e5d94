"""The contract between a slice and the app: what its long-lived parts need at start, at the
beginning of shutdown and at the end, and what /health asks it. Every slice's `setup(app)`
adds its routes and app keys and returns a `Lifecycle`; `agent.app` wires them all, once:

- `start`, in slice order, when the server starts (a slice may use what earlier ones
  started: playwright and live use the browser's and the computer's parts);
- `begin_shutdown`, in slice order, when shutdown begins and before aiohttp waits for the
  open handlers: streams end, new work is refused, so nothing holds the shutdown up;
- `close`, in reverse order, at cleanup; every close runs even when one fails;
- `probes`, the slice's parts of /health, by name.

If a start fails, the slices already started are closed (in reverse) and the failure ends
the server's start.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from inspect import isawaitable

from aiohttp import web

from agent.appkeys import HEALTH_PROBES, HealthProbe

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[None] | None]


@dataclass
class Lifecycle:
    name: str
    start: Step | None = None
    begin_shutdown: Step | None = None
    close: Step | None = None
    probes: dict[str, HealthProbe] = field(default_factory=dict)


async def _run(step: Step) -> None:
    outcome = step()
    if isawaitable(outcome):
        await outcome


def wire(app: web.Application, lifecycles: Sequence[Lifecycle]) -> None:
    """Hand every slice's lifecycle to the app (see the module's docstring)."""
    for lifecycle in lifecycles:
        app[HEALTH_PROBES].update(lifecycle.probes)

    async def running(app: web.Application) -> AsyncIterator[None]:
        started: list[Lifecycle] = []
        try:
            for lifecycle in lifecycles:
                if lifecycle.start is not None:
                    await _run(lifecycle.start)
                started.append(lifecycle)
        except BaseException:
            await _close(started)
            raise
        yield
        await _close(started)

    async def shutting_down(app: web.Application) -> None:
        for lifecycle in lifecycles:
            if lifecycle.begin_shutdown is not None:
                await _run(lifecycle.begin_shutdown)

    app.on_shutdown.append(shutting_down)
    app.cleanup_ctx.append(running)


async def _close(started: list[Lifecycle]) -> None:
    failures: list[BaseException] = []
    for lifecycle in reversed(started):
        if lifecycle.close is None:
            continue
        try:
            await _run(lifecycle.close)
        except Exception as exc:  # the other slices still close
            log.exception("closing the %s slice failed", lifecycle.name)
            failures.append(exc)
    if failures:
        raise failures[0]
