"""Chromium control: restart the supervisord program that runs it, and know when it is
back (its DevTools answer again on a new connection)."""

from __future__ import annotations

import asyncio

from agent.browser.cdp import CdpManager
from agent.errors import AgentError, NotFound, Unavailable
from agent.supervisor import SupervisorClient


def _check_program(socket_path: str, program: str) -> None:
    try:
        SupervisorClient(socket_path).process_info(program)
    except NotFound:
        raise Unavailable(f"supervisord has no program {program!r} to restart Chromium "
                          "with") from None
    except AgentError as exc:
        raise Unavailable(f"cannot restart Chromium: {exc.message}") from None


def _restart_program(socket_path: str, program: str) -> None:
    try:
        SupervisorClient(socket_path).restart(program)
    except AgentError as exc:
        raise Unavailable(f"supervisord could not restart {program!r}: {exc.message}") from None


async def check_restartable(socket_path: str, program: str) -> None:
    """503 unless supervisord answers and runs `program` (checked before changing files)."""
    await asyncio.to_thread(_check_program, socket_path, program)


async def restart(cdp: CdpManager, socket_path: str, program: str,
                  timeout: float = 60.0) -> None:
    """Restart Chromium through supervisord; returns once DevTools answers again."""
    before = cdp.generation
    await asyncio.to_thread(_restart_program, socket_path, program)
    await cdp.wait_connected(timeout, newer_than=before)
