"""The capture: one DevTools connection to Chromium, attached (flat sessions) to every
page, iframe and worker, turning CDP events into telemetry events.

Targets are found with `Target.setDiscoverTargets` (a `page_tab_opened` per page) and
attached with `Target.setAutoAttach` at the browser level and again in every page session
(out-of-process iframes, dedicated workers); new targets wait for the debugger until their
domains are enabled and the interaction script is installed, so their first events are
seen. Targets already open when capture starts are attached the same way and get the
script through an isolated world created in each of their frames.

Per target the capture computes `network_idle` (500 ms without in-flight requests, counted
by request id so a redirect chain counts once), `page_layout_settled` (1 s after load
without a layout shift) and `page_navigation_settled`.

Chromium restarts: the connection (a `CdpManager`) reconnects by itself; the capture says
`monitor_disconnected`, then `monitor_reconnected` with the time it took, and attaches to
the new browser. After `GIVE_UP_S` without Chromium it says `monitor_reconnect_failed`
once, and keeps trying.

With every category off the capture holds no connection at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from agent.browser.cdp import CdpManager, DevtoolsError
from agent.errors import AgentError
from agent.telemetry import interaction, mapping
from agent.telemetry.mapping import Context, Event

log = logging.getLogger(__name__)

IDLE_S = 0.5
SETTLE_S = 1.0
GIVE_UP_S = 30.0
FOREVER_S = 10.0 * 365 * 86400
MAX_REQUESTS = 4096  # requests remembered per target (in flight or awaiting a response)
COMMAND_TIMEOUT_S = 10.0
PAGE_TYPES = ("page", "iframe")
WORKER_TYPES = ("worker", "service_worker", "shared_worker")
TIMELINE_TYPES = ["layout-shift", "largest-contentful-paint"]


@dataclass(eq=False)
class Session:
    """One attached target and what the capture tracks in it."""

    ctx: Context
    cdp_type: str
    enabled: set[str] = field(default_factory=set)
    script_installed: bool = False
    contexts: dict[int, str] = field(default_factory=dict)  # execution context → frame
    requests: dict[str, Event] = field(default_factory=dict)
    inflight: set[str] = field(default_factory=set)
    busy: bool = True  # activity since the last network_idle
    idle_timer: asyncio.TimerHandle | None = None
    loaded: bool = False
    dcl: bool = False
    settle_timer: asyncio.TimerHandle | None = None
    ready: bool = False  # its domains are enabled: events are being captured
    gone: bool = False

    @property
    def is_page(self) -> bool:
        return self.cdp_type in PAGE_TYPES

    def cancel_timers(self) -> None:
        for timer in (self.idle_timer, self.settle_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.settle_timer = None


class TelemetryCapture:
    def __init__(self, address: str, publish: Callable[[Event], None]) -> None:
        self.address = address
        self._publish = publish
        self.categories: frozenset[str] = frozenset()
        self._cdp: CdpManager | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._sessions: dict[str, Session] = {}
        self._seen_tabs: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.state = "off"  # off | connecting | capturing | disconnected | failed

    # ---------------------------------------------------------------- configuration

    async def configure(self, categories: frozenset[str]) -> None:
        """Capture these categories from now on; none at all closes the connection."""
        before = self.categories
        self.categories = categories
        if not categories:
            await self._stop()
            return
        if self._cdp is None:
            self._start()
        elif categories != before:
            for session in list(self._sessions.values()):
                self._spawn(self._apply(session, waiting=False))

    def _start(self) -> None:
        cdp = CdpManager(self.address)
        cdp.on_event = self._on_event
        self._cdp = cdp
        self.state = "connecting"
        self._supervisor = asyncio.create_task(self._supervise(cdp), name="telemetry-capture")

    async def _stop(self) -> None:
        cdp, self._cdp = self._cdp, None
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reset()
        if cdp is not None:
            cdp.on_event = None
            await cdp.close()
        self.state = "off"

    async def close(self) -> None:
        self.categories = frozenset()
        await self._stop()

    def snapshot(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state, "categories": sorted(self.categories),
                                "targets": sum(s.ready for s in self._sessions.values())}
        if self._cdp is not None and self._cdp.error and self.state != "capturing":
            body["error"] = self._cdp.error
        return body

    # ---------------------------------------------------------------- connection

    async def _supervise(self, cdp: CdpManager) -> None:
        """Follow the connection: attach after every (re)connection, report restarts."""
        await cdp.start(first_attempt_s=0.0)
        handled = 0
        lost_at: float | None = None
        gave_up = False
        while True:
            timeout = GIVE_UP_S if lost_at is not None and not gave_up else FOREVER_S

            def newer(h: int = handled) -> bool:
                return cdp.state == "connected" and cdp.generation > h

            up = await cdp.wait_for(newer, timeout)
            if not up:
                if lost_at is not None and not gave_up:
                    gave_up = True
                    self.state = "failed"
                    self._emit(mapping.monitor("monitor_reconnect_failed",
                                               {"reason": "reconnect_exhausted"}))
                continue
            generation = cdp.generation
            if lost_at is not None:
                took = round((time.monotonic() - lost_at) * 1000)
                self._emit(mapping.monitor("monitor_reconnected",
                                           {"reconnect_duration_ms": took}))
            handled, lost_at, gave_up = generation, None, False
            self.state = "capturing"
            self._spawn(self._attach_browser(cdp, generation))

            def lost(g: int = generation) -> bool:
                return cdp.state != "connected" or cdp.generation != g

            await cdp.wait_for(lost, FOREVER_S)
            if cdp.state == "closed":
                return
            lost_at = time.monotonic()
            self.state = "disconnected"
            self._reset()
            self._emit(mapping.monitor("monitor_disconnected", {"reason": "chrome_restarted"}))

    async def _attach_browser(self, cdp: CdpManager, generation: int) -> None:
        step = "Target.setDiscoverTargets"
        try:
            await cdp.send(step, {"discover": True})
            step = "Target.setAutoAttach"
            await cdp.send(step, {"autoAttach": True, "waitForDebuggerOnStart": True,
                                  "flatten": True})
        except AgentError as exc:
            if cdp.generation == generation and cdp.state == "connected":
                log.warning("telemetry capture could not start (%s): %s", step, exc)
                self._emit(mapping.monitor("monitor_init_failed", {"step": step}))

    def _reset(self) -> None:
        for session in self._sessions.values():
            session.gone = True
            session.cancel_timers()
        self._sessions.clear()
        self._seen_tabs.clear()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, AgentError):
                log.warning("telemetry capture task failed: %r", exc)

    async def _send(self, session: Session, method: str, params: Event | None = None
                    ) -> Event:
        cdp = self._cdp
        if cdp is None or session.gone:
            return {}
        return await cdp.send(method, params, session_id=session.ctx.session_id,
                              timeout=COMMAND_TIMEOUT_S)

    # ---------------------------------------------------------------- events

    def _emit(self, event: Event) -> None:
        category = event["category"]
        if category == "monitor" or category in self.categories:
            self._publish(event)

    def _on_event(self, message: Event) -> None:
        method = message.get("method")
        params = message.get("params")
        if not isinstance(method, str) or not isinstance(params, dict):
            return
        session_id = message.get("sessionId")
        try:
            if method == "Target.attachedToTarget":
                self._attached(params)
            elif method == "Target.detachedFromTarget":
                gone = self._sessions.pop(str(params.get("sessionId")), None)
                if gone is not None:
                    gone.gone = True
                    gone.cancel_timers()
            elif method == "Target.targetCreated":
                self._target_created(params.get("targetInfo") or {})
            elif method == "Target.targetDestroyed":
                self._seen_tabs.discard(str(params.get("targetId", "")))
            elif session_id is not None:
                session = self._sessions.get(session_id)
                if session is not None:
                    self._session_event(session, method, params)
        except (KeyError, TypeError, ValueError) as exc:
            log.debug("telemetry: unexpected %s: %r", method, exc)

    def _target_created(self, info: Event) -> None:
        target_id = str(info.get("targetId", ""))
        if info.get("type") == "page" and target_id not in self._seen_tabs:
            self._seen_tabs.add(target_id)
            self._emit(mapping.tab_opened(info))

    def _attached(self, params: Event) -> None:
        info = params.get("targetInfo") or {}
        session_id = str(params["sessionId"])
        cdp_type = str(info.get("type", ""))
        waiting = bool(params.get("waitingForDebugger"))
        if cdp_type not in PAGE_TYPES + WORKER_TYPES:
            if waiting:
                self._spawn(self._resume(session_id))
            return
        ctx = Context(session_id=session_id, target_id=str(info.get("targetId", "")),
                      target_type=mapping.target_type(cdp_type), url=str(info.get("url", "")))
        session = Session(ctx=ctx, cdp_type=cdp_type)
        self._sessions[session_id] = session
        self._spawn(self._apply(session, waiting))

    async def _resume(self, session_id: str) -> None:
        if self._cdp is not None:
            with contextlib.suppress(AgentError):
                await self._cdp.send("Runtime.runIfWaitingForDebugger", session_id=session_id)

    async def _apply(self, session: Session, waiting: bool) -> None:
        """Enable what the categories need in this target (and turn off what they no
        longer need); install the interaction script; then let a waiting target run."""
        try:
            wanted = {"Runtime"} if self.categories & {"console", "interaction"} else set()
            if session.is_page:
                wanted.add("Page")
                if "page" in self.categories:
                    wanted.add("PerformanceTimeline")
            if "network" in self.categories:
                wanted.add("Network")
            commands: list[Coroutine[Any, Any, Event]] = []
            for domain in sorted(wanted - session.enabled):
                params: Event = {}
                if domain == "PerformanceTimeline":
                    params = {"eventTypes": TIMELINE_TYPES}
                elif domain == "Network":
                    params = {"maxPostDataSize": 64 * 1024}
                commands.append(self._send(session, f"{domain}.enable", params))
            for domain in sorted(session.enabled - wanted):
                commands.append(self._send(session, f"{domain}.disable"))
            first_time = not session.enabled and not session.script_installed
            if session.is_page and first_time:
                commands.append(self._send(session, "Target.setAutoAttach", {
                    "autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True}))
            install = (session.is_page and "interaction" in self.categories
                       and not session.script_installed)
            if install:
                session.script_installed = True
                commands.append(self._send(session, "Runtime.addBinding", {
                    "name": interaction.BINDING, "executionContextName": interaction.WORLD}))
                commands.append(self._send(session, "Page.addScriptToEvaluateOnNewDocument", {
                    "source": interaction.source(), "worldName": interaction.WORLD}))
            session.enabled = set(wanted)
            results = await asyncio.gather(*commands, return_exceptions=True)
            for result in results:
                if isinstance(result, DevtoolsError):
                    log.debug("telemetry: %s in %s", result.message, session.ctx.target_id)
            if session.is_page and not waiting:
                await self._adopt_existing(session, install)
        except AgentError as exc:
            log.debug("telemetry: setting up %s failed: %s", session.ctx.target_id, exc)
        finally:
            session.ready = True
            if waiting:
                await self._resume(session.ctx.session_id)

    async def _adopt_existing(self, session: Session, install: bool) -> None:
        """A target that was open before capture: its current document as context, and
        the interaction script in each of its frames."""
        tree = (await self._send(session, "Page.getFrameTree")).get("frameTree") or {}
        main = tree.get("frame") or {}
        if main and not session.ctx.frame_id:
            session.ctx.frame_id = str(main.get("id", ""))
            session.ctx.loader_id = str(main.get("loaderId", ""))
            session.ctx.url = str(main.get("url", session.ctx.url))
            session.ctx.nav_seq = max(session.ctx.nav_seq, 1)
        if not install:
            return
        stack = [tree]
        while stack:
            node = stack.pop()
            stack.extend(node.get("childFrames") or [])
            frame_id = (node.get("frame") or {}).get("id")
            if not frame_id:
                continue
            with contextlib.suppress(AgentError):
                world = await self._send(session, "Page.createIsolatedWorld", {
                    "frameId": frame_id, "worldName": interaction.WORLD})
                if "executionContextId" in world:
                    await self._send(session, "Runtime.evaluate", {
                        "expression": interaction.source(),
                        "contextId": world["executionContextId"]})

    # ---------------------------------------------------------------- per target

    def _session_event(self, session: Session, method: str, params: Event) -> None:
        ctx = session.ctx
        if method == "Runtime.consoleAPICalled":
            self._emit(mapping.console_api(params, ctx))
        elif method == "Runtime.exceptionThrown":
            self._emit(mapping.exception_thrown(params, ctx))
        elif method == "Runtime.bindingCalled":
            if params.get("name") == interaction.BINDING:
                frame = session.contexts.get(int(params.get("executionContextId", 0)), "")
                found = mapping.interaction(str(params.get("payload", "")), ctx, frame)
                if found is not None:
                    self._emit(found)
        elif method == "Runtime.executionContextCreated":
            context = params.get("context") or {}
            frame_id = (context.get("auxData") or {}).get("frameId")
            if frame_id and len(session.contexts) < 4096:
                session.contexts[int(context["id"])] = str(frame_id)
        elif method == "Runtime.executionContextDestroyed":
            session.contexts.pop(int(params.get("executionContextId", 0)), None)
        elif method == "Runtime.executionContextsCleared":
            session.contexts.clear()
        elif method.startswith("Network."):
            self._network(session, method, params)
        elif method == "Page.frameNavigated":
            self._navigated(session, params.get("frame") or {})
        elif method == "Page.domContentEventFired":
            session.dcl = True
            self._emit(mapping.lifecycle("page_dom_content_loaded", method, params, ctx))
        elif method == "Page.loadEventFired":
            session.loaded = True
            self._emit(mapping.lifecycle("page_load", method, params, ctx))
            self._arm_settle(session)
        elif method == "PerformanceTimeline.timelineEventAdded":
            found = mapping.timeline(params.get("event") or {}, ctx)
            if found is not None:
                self._emit(found)
                if found["type"] == "page_layout_shift" and session.settle_timer is not None:
                    self._arm_settle(session)

    def _navigated(self, session: Session, frame: Event) -> None:
        self._emit(mapping.navigation(frame, session.ctx))
        if frame.get("parentId") and frame.get("id") != session.ctx.target_id:
            return  # a subframe (an out-of-process iframe's own frame has its target's id)
        ctx = session.ctx
        ctx.frame_id = str(frame.get("id", ""))
        ctx.loader_id = str(frame.get("loaderId", ""))
        ctx.url = str(frame.get("url", "")) + str(frame.get("urlFragment", ""))
        ctx.nav_seq += 1
        session.loaded = session.dcl = False
        if session.settle_timer is not None:
            session.settle_timer.cancel()
            session.settle_timer = None
        session.busy = True
        if not session.inflight:
            self._arm_idle(session)

    # ---------------------------------------------------------------- network

    def _network(self, session: Session, method: str, params: Event) -> None:
        request_id = str(params.get("requestId", ""))
        if method == "Network.requestWillBeSent":
            request = params.get("request") or {}
            known = session.requests.get(request_id)
            redirected_from = None
            if params.get("redirectResponse") is not None and known is not None:
                redirected_from = str(known.get("url", ""))
            self._emit(mapping.request_sent(params, session.ctx, redirected_from))
            if len(session.requests) >= MAX_REQUESTS:
                oldest = next(iter(session.requests))
                session.requests.pop(oldest)
                session.inflight.discard(oldest)
            session.requests[request_id] = {
                "request_id": request_id, "url": str(request.get("url", "")),
                "method": str(request.get("method", "")),
                "frame_id": str(params.get("frameId", "")),
                "loader_id": str(params.get("loaderId", "")),
                "resource_type": str(params.get("type", "")), "response": None,
                "started": params.get("timestamp")}
            session.inflight.add(request_id)
            session.busy = True
            if session.idle_timer is not None:
                session.idle_timer.cancel()
                session.idle_timer = None
        elif method == "Network.responseReceived":
            known = session.requests.get(request_id)
            if known is not None:
                known["response"] = params.get("response") or {}
                if params.get("type"):
                    known["resource_type"] = str(params["type"])
        elif method == "Network.loadingFinished":
            known = session.requests.pop(request_id, None)
            self._finished(session, request_id)
            if known is not None and known.get("response") is not None \
                    and "network" in self.categories:
                known["finished"] = params.get("timestamp")
                known["encoded_data_length"] = params.get("encodedDataLength")
                self._spawn(self._respond(session, known))
        elif method == "Network.loadingFailed":
            known = session.requests.pop(request_id, None)
            self._emit(mapping.loading_failed(params, known, session.ctx))
            self._finished(session, request_id)

    def _finished(self, session: Session, request_id: str) -> None:
        session.inflight.discard(request_id)
        if not session.inflight:
            self._arm_idle(session)

    async def _respond(self, session: Session, request: Event) -> None:
        response = request["response"]
        limit = mapping.body_limit(str(response.get("mimeType", "")))
        body: str | None = None
        cut = False
        if limit is not None:
            try:
                got = await self._send(session, "Network.getResponseBody",
                                       {"requestId": request["request_id"]})
            except AgentError:
                got = {}
            if isinstance(got.get("body"), str):
                text = got["body"]
                if got.get("base64Encoded"):
                    try:
                        text = base64.b64decode(text).decode("utf-8", errors="replace")
                    except ValueError:
                        text = ""
                body, cut = mapping.cut_body(text, limit)
        if not session.gone:
            self._emit(mapping.response_done(request, response, session.ctx, body, cut))

    def _arm_idle(self, session: Session) -> None:
        if session.idle_timer is not None:
            session.idle_timer.cancel()
        session.idle_timer = asyncio.get_running_loop().call_later(
            IDLE_S, self._idle, session)

    def _idle(self, session: Session) -> None:
        session.idle_timer = None
        if session.gone or session.inflight or not session.busy or not session.is_page:
            return
        session.busy = False
        self._emit(mapping.computed("network_idle", session.ctx))

    # ---------------------------------------------------------------- layout

    def _arm_settle(self, session: Session) -> None:
        if session.settle_timer is not None:
            session.settle_timer.cancel()
        session.settle_timer = asyncio.get_running_loop().call_later(
            SETTLE_S, self._settled, session)

    def _settled(self, session: Session) -> None:
        session.settle_timer = None
        if session.gone or not session.loaded:
            return
        self._emit(mapping.computed("page_layout_settled", session.ctx))
        if session.dcl:
            self._emit(mapping.computed("page_navigation_settled", session.ctx))
