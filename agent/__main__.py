"""`browser-agent` / `python -m agent`: CLI → Settings → run. Nothing else reads the
environment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from agent.app import create_app, limit_connections, server_options
from agent.config import ConfigError, Settings, check_identity, load_settings
from agent.osutil import single_malloc_arena

SECRET_VARIABLES = ("AGENT_API_TOKEN", "AGENT_API_TOKENS")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
        check_identity(settings)
    except ConfigError as exc:
        print(f"browser-agent: {exc}", file=sys.stderr)
        return 2
    for name in SECRET_VARIABLES:  # read once; nothing later in this process needs them
        os.environ.pop(name, None)
    single_malloc_arena()  # before any thread: freed memory can go back (osutil)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").disabled = True
    app = create_app(settings)
    logging.getLogger("agent").info(
        "listening on %s:%d (auth %s, display %s)",
        settings.listen_host, settings.port,
        "required" if settings.auth_required else "off", settings.display,
    )
    serve(app, settings)
    return 0


def serve(app: web.Application, settings: Settings) -> None:
    """What `web.run_app` does (SIGTERM/SIGINT end it gracefully), with the server's
    connection limit installed before the first connection."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main_task = loop.create_task(_serve(app, settings))
    try:
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main_task.done():
            main_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, web.GracefulExit):
                loop.run_until_complete(main_task)
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(app: web.Application, settings: Settings) -> None:
    # handler_cancellation: a handler whose client went away is cancelled at once, so an
    # idle stream (a quiet watch, a silent process) does not outlive its reader.
    runner = web.AppRunner(app, handle_signals=True, access_log=None, shutdown_timeout=3.0,
                           **server_options(settings))
    await runner.setup()
    assert runner.server is not None
    limit_connections(runner.server, settings.max_connections)
    try:
        await web.TCPSite(runner, settings.listen_host, settings.port).start()
        await asyncio.Event().wait()  # until a signal ends the loop (GracefulExit)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
