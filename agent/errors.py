"""The daemon's one error model.

Domain code raises an `AgentError` subclass; the middleware in `agent.app` renders it as
the spec's `Error` JSON (`{"code", "message", "details"}`). Nothing else builds error
responses, so every failure looks the same to clients.
"""

from __future__ import annotations

from typing import Any, Self


class AgentError(Exception):
    """Base of every error the daemon reports to a client."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}
        # Fields merged into the JSON body beside code/message (e.g. curl's net error).
        self.extra = extra or {}
        if code is not None:
            self.code = code
        if status is not None:  # e.g. the router's 404/405, or a wrapped error's own
            self.status = status

    @classmethod
    def for_field(cls, field: str, problem: str, message: str | None = None, *,
                  detail_code: str = "invalid_field", **kwargs: Any) -> Self:
        """The error of one bad field: its one detail names the field and the problem;
        the message is "<field> <problem>" unless given."""
        return cls(message or f"{field} {problem}",
                   details=[field_error(field, problem, detail_code)], **kwargs)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        body.update(self.extra)
        return body


class BadRequest(AgentError):
    status = 400
    code = "bad_request"


class Unauthorized(AgentError):
    status = 401
    code = "unauthorized"


class Forbidden(AgentError):
    status = 403
    code = "forbidden"


class NotFound(AgentError):
    status = 404
    code = "not_found"


class MethodNotAllowed(AgentError):
    status = 405
    code = "method_not_allowed"


class Conflict(AgentError):
    status = 409
    code = "conflict"


class PayloadTooLarge(AgentError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(AgentError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(AgentError):
    status = 429
    code = "too_many_requests"


class RateLimited(TooManyRequests):
    code = "rate_limited"


class InternalError(AgentError):
    status = 500
    code = "internal_error"


class BadGateway(AgentError):
    status = 502
    code = "bad_gateway"


class Unavailable(AgentError):
    status = 503
    code = "unavailable"


class GatewayTimeout(AgentError):
    status = 504
    code = "gateway_timeout"


class ShuttingDown(Unavailable):
    """New work refused because the daemon is stopping (every slice says it this way)."""

    code = "shutting_down"


class DisplayUnavailable(Unavailable):
    code = "display_unavailable"


class BrowserUnavailable(Unavailable):
    code = "browser_unavailable"


class DocsUnavailable(Unavailable):
    """The /docs page's files are not in this installation."""

    code = "docs_unavailable"


def field_error(field: str, message: str, code: str = "invalid_field") -> dict[str, Any]:
    """One `ErrorDetail` naming a bad field (used in 400 details)."""
    return {"code": code, "field": field, "message": f"{field}: {message}"}
