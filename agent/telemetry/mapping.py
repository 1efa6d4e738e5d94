"""CDP events → the spec's telemetry events (`TelemetryEvent` variants), as plain dicts.

Pure functions: no I/O, no state beyond their arguments. `Context` is what the capture
knows about the target and navigation an event happened in (BrowserEventContext).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from agent.config import TELEMETRY_CATEGORIES

Event = dict[str, Any]

CATEGORIES = TELEMETRY_CATEGORIES

# Text response bodies are kept up to these sizes (the spec's BrowserTelemetryCategoriesConfig).
STRUCTURED_BODY_BYTES = 8 * 1024
TEXT_BODY_BYTES = 4 * 1024
MAX_ARG_CHARS = 64 * 1024  # one console argument; the envelope cap (1 MB) is the hard limit
MAX_ARGS = 64

_TARGET_TYPES = {"page": "page", "background_page": "background_page",
                 "service_worker": "service_worker", "shared_worker": "shared_worker"}
_STRUCTURED = ("json", "xml", "x-www-form-urlencoded", "form-data")


def category_of(event_type: str) -> str:
    """The category an event type belongs to (the SDK's `category` field)."""
    if event_type == "monitor_screenshot":
        return "screenshot"
    return event_type.split("_", 1)[0]


def now_us() -> int:
    return time.time_ns() // 1000


def target_type(cdp_type: str) -> str:
    return _TARGET_TYPES.get(cdp_type, "other")


@dataclass
class Context:
    """BrowserEventContext of one attached target."""

    session_id: str
    target_id: str
    target_type: str
    frame_id: str = ""
    loader_id: str = ""
    url: str = ""
    nav_seq: int = 0

    def fields(self, *, url: str | None = None, frame_id: str | None = None,
               loader_id: str | None = None) -> Event:
        data: Event = {"session_id": self.session_id, "target_id": self.target_id,
                       "target_type": self.target_type}
        for name, value in (("frame_id", frame_id if frame_id is not None else self.frame_id),
                            ("loader_id", loader_id if loader_id is not None
                             else self.loader_id),
                            ("url", url if url is not None else self.url)):
            if value:
                data[name] = value
        if self.nav_seq:
            data["nav_seq"] = self.nav_seq
        return data


def event(event_type: str, cdp_event: str | None, data: Event | None,
          kind: str = "cdp", metadata: dict[str, str] | None = None) -> Event:
    """One telemetry event; `ts` is when the daemon saw it, in Unix microseconds."""
    source: Event = {"kind": kind}
    if cdp_event:
        source["event"] = cdp_event
    if metadata:
        source["metadata"] = metadata
    out: Event = {"ts": now_us(), "type": event_type, "category": category_of(event_type),
                  "source": source}
    if data is not None:
        out["data"] = data
    return out


# ------------------------------------------------------------------ console

def remote_object_text(obj: Any) -> str:
    """A Runtime.RemoteObject as the string the console shows for it."""
    if not isinstance(obj, dict):
        return ""
    if "unserializableValue" in obj:
        text = str(obj["unserializableValue"])
    elif "value" in obj:
        value = obj["value"]
        if isinstance(value, str):
            text = value
        elif value is None:
            text = "null"
        else:
            text = json.dumps(value, ensure_ascii=False)
    elif obj.get("type") == "undefined":
        text = "undefined"
    else:
        text = str(obj.get("description") or obj.get("className") or obj.get("type", ""))
    return text[:MAX_ARG_CHARS]


_FRAME_KEYS = frozenset({"functionName", "scriptId", "url", "lineNumber", "columnNumber"})


def stack_trace(raw: Any, depth: int = 0) -> Event | None:
    """A Runtime.StackTrace in the spec's BrowserCallStack shape (CDP field names)."""
    if not isinstance(raw, dict) or depth > 8:
        return None
    calls = raw.get("callFrames")
    if (depth == 0 and isinstance(calls, list) and len(calls) <= 8 and raw.keys() == {"callFrames"}
            and all(isinstance(f, dict) and f.keys() == _FRAME_KEYS for f in calls)):
        return raw  # the common case, already in shape (Chromium's own fields)
    frames = []
    for frame in raw.get("callFrames", [])[:64]:
        if not isinstance(frame, dict):
            continue
        frames.append({"functionName": str(frame.get("functionName", "")),
                       "scriptId": str(frame.get("scriptId", "")),
                       "url": str(frame.get("url", "")),
                       "lineNumber": int(frame.get("lineNumber", 0)),
                       "columnNumber": int(frame.get("columnNumber", 0))})
    out: Event = {"callFrames": frames}
    if raw.get("description"):
        out["description"] = str(raw["description"])
    parent = stack_trace(raw.get("parent"), depth + 1)
    if parent is not None:
        out["parent"] = parent
    return out


def console_api(params: Event, ctx: Context) -> Event:
    """Runtime.consoleAPICalled → console_log, or console_error for console.error."""
    level = str(params.get("type", "log"))
    args = [remote_object_text(arg) for arg in params.get("args", [])[:MAX_ARGS]]
    data = ctx.fields()
    data.update(level=level, text=args[0] if args else "", args=args)
    trace = stack_trace(params.get("stackTrace"))
    if trace is not None:
        data["stack_trace"] = trace
    kind = "console_error" if level == "error" else "console_log"
    return event(kind, "Runtime.consoleAPICalled", data)


def exception_thrown(params: Event, ctx: Context) -> Event:
    """Runtime.exceptionThrown → console_error with line, column and source_url."""
    details = params.get("exceptionDetails") or {}
    exception = details.get("exception") or {}
    text = str(exception.get("description") or details.get("text") or "Uncaught exception")
    data = ctx.fields()
    data.update(text=text[:MAX_ARG_CHARS], line=int(details.get("lineNumber", 0)),
                column=int(details.get("columnNumber", 0)))
    if details.get("url"):
        data["source_url"] = str(details["url"])
    trace = stack_trace(details.get("stackTrace"))
    if trace is not None:
        data["stack_trace"] = trace
    return event("console_error", "Runtime.exceptionThrown", data)


# ------------------------------------------------------------------ network

def request_sent(params: Event, ctx: Context, redirected_from: str | None) -> Event:
    """Network.requestWillBeSent → network_request."""
    request = params.get("request") or {}
    data = ctx.fields(url=str(request.get("url", "")), frame_id=params.get("frameId"),
                      loader_id=params.get("loaderId"))
    data.update(request_id=str(params.get("requestId", "")),
                method=str(request.get("method", "")),
                headers=request.get("headers") or {},
                is_redirect=redirected_from is not None)
    if params.get("documentURL"):
        data["document_url"] = str(params["documentURL"])
    if params.get("type"):
        data["resource_type"] = str(params["type"])
    initiator = params.get("initiator") or {}
    if initiator.get("type"):
        data["initiator_type"] = str(initiator["type"])
    if isinstance(request.get("postData"), str):
        data["post_data"] = request["postData"]
    if redirected_from is not None:
        data["redirect_url"] = redirected_from
    return event("network_request", "Network.requestWillBeSent", data)


def body_limit(mime_type: str) -> int | None:
    """How much of a response body of this type is kept; None: not a text type."""
    mime = mime_type.lower()
    if any(kind in mime for kind in _STRUCTURED):
        return STRUCTURED_BODY_BYTES
    if mime.startswith("text/") or mime in ("application/javascript", "image/svg+xml") or \
            mime.endswith("+json") or mime.endswith("+xml") or "javascript" in mime:
        return TEXT_BODY_BYTES
    return None


def cut_body(text: str, limit: int) -> tuple[str, bool]:
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode("utf-8", errors="ignore"), True


def response_done(request: Event, response: Event, ctx: Context, body: str | None,
                  cut: bool) -> Event:
    """Network.responseReceived (+ the body after loadingFinished) → network_response."""
    data = ctx.fields(url=str(response.get("url") or request.get("url", "")),
                      frame_id=request.get("frame_id"), loader_id=request.get("loader_id"))
    data.update(request_id=str(request.get("request_id", "")),
                method=str(request.get("method", "")),
                status=int(response.get("status", 0)),
                status_text=str(response.get("statusText", "")),
                headers=response.get("headers") or {},
                mime_type=str(response.get("mimeType", "")))
    if request.get("resource_type"):
        data["resource_type"] = request["resource_type"]
    if body is not None:
        data["body"] = body
    if isinstance(response.get("timing"), dict):
        data["timing"] = response["timing"]
    started, finished = request.get("started"), request.get("finished")
    if isinstance(started, int | float) and isinstance(finished, int | float):
        data["duration_ms"] = round((finished - started) * 1000.0, 3)
    if isinstance(request.get("encoded_data_length"), int | float):
        data["encoded_data_length"] = int(request["encoded_data_length"])
    out = event("network_response", "Network.loadingFinished", data)
    if cut:
        out["truncated"] = True
    return out


def loading_failed(params: Event, request: Event | None, ctx: Context) -> Event:
    """Network.loadingFailed → network_loading_failed (no url/frame when the request was
    already in flight before capture attached)."""
    if request is not None:
        data = ctx.fields(url=request.get("url", ""), frame_id=request.get("frame_id"),
                          loader_id=request.get("loader_id"))
    else:
        data = ctx.fields(url="", frame_id="", loader_id="")
    data.update(request_id=str(params.get("requestId", "")),
                error_text=str(params.get("errorText", "")),
                canceled=bool(params.get("canceled", False)))
    resource_type = params.get("type") or (request or {}).get("resource_type")
    if resource_type:
        data["resource_type"] = str(resource_type)
    return event("network_loading_failed", "Network.loadingFailed", data)


# ------------------------------------------------------------------ page

def navigation(frame: Event, ctx: Context) -> Event:
    """Page.frameNavigated → page_navigation (no nav_seq: this event starts an epoch)."""
    data: Event = {"url": str(frame.get("url", "")) + str(frame.get("urlFragment", "")),
                   "frame_id": str(frame.get("id", "")),
                   "loader_id": str(frame.get("loaderId", "")),
                   "session_id": ctx.session_id, "target_id": ctx.target_id,
                   "target_type": ctx.target_type}
    if frame.get("parentId"):
        data["parent_frame_id"] = str(frame["parentId"])
    return event("page_navigation", "Page.frameNavigated", data)


def lifecycle(kind: str, cdp_event: str, params: Event, ctx: Context) -> Event:
    data = ctx.fields()
    if isinstance(params.get("timestamp"), int | float):
        data["cdp_timestamp"] = float(params["timestamp"])
    return event(kind, cdp_event, data)


def computed(kind: str, ctx: Context) -> Event:
    """network_idle, page_layout_settled, page_navigation_settled: computed by the daemon."""
    return event(kind, None, ctx.fields())


def timeline(entry: Event, ctx: Context) -> Event | None:
    """PerformanceTimeline.timelineEventAdded → page_layout_shift or page_lcp."""
    kind = entry.get("type")
    data = ctx.fields()
    if entry.get("frameId"):
        data["source_frame_id"] = str(entry["frameId"])
    if isinstance(entry.get("time"), int | float):
        data["time"] = float(entry["time"]) * 1000.0  # CDP gives seconds
    if kind == "layout-shift":
        data["duration"] = float(entry.get("duration", 0)) * 1000.0
        details = entry.get("layoutShiftDetails") or {}
        data["layout_shift_details"] = {"value": float(details.get("value", 0)),
                                        "had_recent_input": bool(details.get("hadRecentInput",
                                                                             False))}
        return event("page_layout_shift", "PerformanceTimeline.timelineEventAdded", data)
    if kind == "largest-contentful-paint":
        details = entry.get("lcpDetails") or {}
        lcp: Event = {"render_time": float(details.get("renderTime", 0)) * 1000.0,
                      "load_time": float(details.get("loadTime", 0)) * 1000.0,
                      "size": float(details.get("size", 0))}
        if details.get("elementId"):
            lcp["element_id"] = str(details["elementId"])
        if details.get("url"):
            lcp["url"] = str(details["url"])
        if isinstance(details.get("nodeId"), int):
            lcp["node_id"] = details["nodeId"]
        data["lcp_details"] = lcp
        return event("page_lcp", "PerformanceTimeline.timelineEventAdded", data)
    return None


def tab_opened(info: Event) -> Event:
    """Target.targetCreated of a page → page_tab_opened."""
    data: Event = {"target_id": str(info.get("targetId", "")),
                   "target_type": target_type(str(info.get("type", ""))),
                   "url": str(info.get("url", "")), "title": str(info.get("title", ""))}
    if info.get("openerId"):
        data["opener_id"] = str(info["openerId"])
    return event("page_tab_opened", "Target.targetCreated", data)


# ------------------------------------------------------------------ interaction

MAX_PAYLOAD_CHARS = 4096


def _short(value: Any, limit: int = 512) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and abs(value) < 1e9 else 0


def interaction(payload: str, ctx: Context, frame_id: str) -> Event | None:
    """A report of the injected script (Runtime.bindingCalled) → an interaction event;
    None when the payload is not one of its well-formed reports."""
    if len(payload) > MAX_PAYLOAD_CHARS:
        return None
    try:
        report = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(report, dict):
        return None
    data = ctx.fields(frame_id=frame_id or None)
    kind = report.get("kind")
    if kind == "click":
        data.update(x=_int(report.get("x")), y=_int(report.get("y")),
                    selector=_short(report.get("selector")),
                    tag=_short(report.get("tag"), 64).upper(),
                    text=_short(report.get("text"), 200))
        return event("interaction_click", "Runtime.bindingCalled", data)
    if kind == "key":
        data.update(key=_short(report.get("key"), 32), selector=_short(report.get("selector")),
                    tag=_short(report.get("tag"), 64).upper())
        return event("interaction_key", "Runtime.bindingCalled", data)
    if kind == "scroll":
        data.update(from_x=_int(report.get("from_x")), from_y=_int(report.get("from_y")),
                    to_x=_int(report.get("to_x")), to_y=_int(report.get("to_y")),
                    target_selector=_short(report.get("target_selector")))
        return event("interaction_scroll_settled", "Runtime.bindingCalled", data)
    return None


# ------------------------------------------------------------------ monitor

def monitor(kind: str, data: Event) -> Event:
    """The capture's own state (the daemon is the producer, not Chromium)."""
    return event(kind, None, data, kind="local_process")
