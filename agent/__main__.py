"""`browser-agent` / `python -m agent`: CLI → Settings → run. Nothing else reads the
environment."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from agent.app import create_app
from agent.config import ConfigError, check_identity, load_settings

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
    # handler_cancellation: a handler whose client went away is cancelled at once, so an
    # idle stream (a quiet watch, a silent process) does not outlive its reader.
    web.run_app(app, host=settings.listen_host, port=settings.port, access_log=None,
                print=None, shutdown_timeout=3.0, handler_cancellation=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
