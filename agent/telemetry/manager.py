"""The telemetry slice's manager: the hub (numbering, live buffer), the history on disk,
the capture and its category configuration, started and closed together."""

from __future__ import annotations

import logging
from typing import Any

from agent.config import Settings
from agent.errors import BadRequest
from agent.telemetry.capture import TelemetryCapture
from agent.telemetry.history import History
from agent.telemetry.mapping import CATEGORIES
from agent.telemetry.stream import TelemetryHub

log = logging.getLogger(__name__)


def parse_categories(text: str) -> frozenset[str]:
    """`console,network` / `all` / `none` / '' → the set of categories."""
    value = text.strip().lower()
    if value == "all":
        return frozenset(CATEGORIES)
    if value in ("", "none", "off"):
        return frozenset()
    found = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = found - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown telemetry categories: {', '.join(sorted(unknown))}")
    return found


class Telemetry:
    def __init__(self, settings: Settings) -> None:
        self.history = History(settings.telemetry_dir, settings.telemetry_history_bytes,
                               settings.telemetry_history_bytes // 8)
        self.history.open(create=False)  # created once capture first runs
        self.hub = TelemetryHub(settings.telemetry_buffer, settings.telemetry_buffer_bytes,
                                first_seq=self.history.last_seq + 1)
        self.hub.sinks.append(self.history.append)
        self.capture = TelemetryCapture(settings.cdp_address, self._publish)
        self._initial = parse_categories(settings.telemetry_categories)

    def _publish(self, event: dict[str, Any]) -> None:
        self.hub.publish(event)

    async def start(self) -> None:
        await self._configure(self._initial)

    async def _configure(self, categories: frozenset[str]) -> None:
        if categories and self.history.error is None:
            self.history.open(create=True)
        await self.capture.configure(categories)

    async def close(self) -> None:
        """Capture stops, open streams end, the history is flushed and closed."""
        await self.capture.close()
        self.hub.close()
        self.history.flush()
        self.history.close()

    def end_streams(self) -> None:
        self.hub.close()

    # ---------------------------------------------------------------- configuration

    def config(self) -> dict[str, Any]:
        """The BrowserTelemetryConfig in effect."""
        return {"browser": {name: {"enabled": name in self.capture.categories}
                            for name in CATEGORIES}}

    async def update(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply a BrowserTelemetryConfig: `{}` changes nothing; `{"browser": {...}}` sets
        every category, those omitted (or without `enabled`) on."""
        browser = body.get("browser")
        if browser is None:
            return self.config()
        if not isinstance(browser, dict):
            raise BadRequest("browser must be an object")
        wanted = set()
        for name in CATEGORIES:
            entry = browser.get(name) or {}
            if entry.get("enabled", True):
                wanted.add(name)
        await self._configure(frozenset(wanted))
        log.info("telemetry categories: %s", ", ".join(sorted(wanted)) or "none")
        return self.config()

    def snapshot(self) -> dict[str, Any]:
        return {"ok": True, **self.capture.snapshot(), "last_seq": self.hub.last_seq,
                "buffered_from": self.hub.first_seq, "history": self.history.snapshot()}
