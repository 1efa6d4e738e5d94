"""Validation at the edge against the daemon's OpenAPI document (`openapi`).

Request bodies and query parameters are checked against the very schemas `/spec.json`
publishes, so the contract and the code cannot drift. A bad field becomes a 400 whose
`details` name it.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, cast

from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from agent.appkeys import SETTINGS
from agent.errors import (
    AgentError,
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    field_error,
)
from agent.openapi import Operation, fill_defaults, operations, resolve, spec_document

ALIAS_PREFIX = "/browsers/{browser_id}"
MAX_JSON_DEPTH = 64  # nesting of arrays and objects in a request body


def _parse_float(text: str) -> float | int:
    """JSON Schema counts 3.0 as an integer, so the handlers get it as the int 3."""
    value = float(text)
    return int(value) if value.is_integer() else value
def canonical_path(template: str) -> str:
    """The spec path of a route template, with the /browsers/{id} alias prefix removed."""
    if template.startswith(ALIAS_PREFIX + "/"):
        return template[len(ALIAS_PREFIX):]
    return template


def operation_for(request: web.Request) -> Operation | None:
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return None
    method = request.method.lower()
    if method == "head":
        method = "get"
    return operations().get((method, canonical_path(resource.canonical)))


@functools.cache
def _validator_for(op_key: tuple[str, str], kind: str, name: str = "") -> Any:
    op = operations()[op_key].raw
    if kind == "body":
        schema = op["requestBody"]["content"]["application/json"]["schema"]
    else:
        schema = next(p["schema"] for p in op.get("parameters", []) if p.get("name") == name)
    root = {**copy.deepcopy(dict(schema)), "components": spec_document().get("components", {})}
    return Draft202012Validator(root)


def _error_details(errors: Iterator[ValidationError], prefix: str = "") -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = []
    for err in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path)
        base = prefix + where if where else prefix.rstrip(".")
        if err.validator == "required" and isinstance(err.instance, dict):
            for name in cast(list[str], err.validator_value):
                if name not in err.instance:
                    field = f"{base}.{name}" if base else name
                    details.append(field_error(field, "is required", "missing_field"))
        elif err.validator == "additionalProperties" and isinstance(err.instance, dict):
            schema = cast(Mapping[str, Any], err.schema)
            allowed = set(schema.get("properties", {}))
            for name in err.instance:
                if name not in allowed:
                    field = f"{base}.{name}" if base else name
                    details.append(field_error(field, "is not a known field", "unknown_field"))
        else:
            details.append(field_error(base or "body", err.message))
    return details


def validate_body(op: Operation, body: Any) -> dict[str, Any]:
    key = (op.method, op.path)
    errors = list(_validator_for(key, "body").iter_errors(body))
    if errors:
        details = _error_details(iter(errors))
        raise BadRequest(details[0]["message"] if len(details) == 1 else
                         f"{len(details)} invalid fields: " +
                         ", ".join(d["field"] for d in details), details=details)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    schema = op.raw["requestBody"]["content"]["application/json"]["schema"]
    return fill_defaults(schema, body)


async def request_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON body, validated against its operation's schema, defaults filled."""
    op = operation_for(request)
    if op is None or "requestBody" not in op.raw:
        raise RuntimeError(f"no request body schema for {request.method} {request.path}")
    required = bool(op.raw["requestBody"].get("required", False))
    content_type = request.headers.get("Content-Type")
    if request.body_exists and request.content_type != "application/json":
        # Also what keeps a web page's "simple" request (text/plain, a form) out.
        raise UnsupportedMediaType(
            f"the request body must be JSON sent with Content-Type: application/json (got "
            f"{(content_type or 'none')[:100]!r}); with curl, use --json '{{...}}'")
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise body_timeout(request) from None
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        raise PayloadTooLarge(f"request body larger than the {limit}-byte limit") from None
    if not raw.strip():
        if required:
            raise BadRequest.for_field(
                "body", "is required", "a JSON request body is required",
                detail_code="missing_field")
        return validate_body(op, {})
    if _nesting(raw) > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON body nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(raw, parse_float=_parse_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None
    return validate_body(op, body)


_BRACKETS = re.compile(rb'[\[\]{}]|"(?:[^"\\]|\\.)*"')


def _nesting(raw: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (strings skipped), before parsing:
    the parser and the validator recurse, so depth is bounded first."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0
    depth = deepest = 0
    for match in _BRACKETS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


class RequestTimeout(AgentError):
    status = 408
    code = "body_timeout"


def body_timeout(request: web.Request) -> RequestTimeout:
    seconds = request.app[SETTINGS].body_timeout_s
    return RequestTimeout(f"the request body stalled: no data for {seconds:g} s "
                          "(AGENT_BODY_TIMEOUT)", headers={"Connection": "close"})


def _coerce(name: str, raw: str, schema: Mapping[str, Any]) -> Any:
    kind = resolve(schema).get("type")
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            raise BadRequest.for_field(name, "must be an integer") from None
    if kind == "number":
        try:
            return float(raw)
        except ValueError:
            raise BadRequest.for_field(name, "must be a number") from None
    if kind == "boolean":
        lowered = raw.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise BadRequest.for_field(name, "must be true or false")
    return raw


def request_query(request: web.Request) -> dict[str, Any]:
    """Query parameters of the operation, checked and coerced per the spec; defaults filled."""
    op = operation_for(request)
    if op is None:
        raise RuntimeError(f"no operation for {request.method} {request.path}")
    values: dict[str, Any] = {}
    for param in op.raw.get("parameters", []):
        if param.get("in") != "query":
            continue
        name = param["name"]
        schema = param.get("schema", {})
        if resolve(schema).get("type") == "array":
            # style=form, explode=true: repeated parameters (comma-separated values too)
            items = [part for raw in request.query.getall(name, []) for part in raw.split(",")
                     if part]
            if not items:
                continue
            item_schema = resolve(schema).get("items", {})
            value = [_coerce(name, item, item_schema) for item in items]
        else:
            raw = request.query.get(name)
            if raw is None:
                if param.get("required"):
                    raise BadRequest.for_field(
                        name, "is required", f"query parameter {name} is required",
                        detail_code="missing_field")
                if "default" in resolve(schema):
                    values[name] = copy.deepcopy(resolve(schema)["default"])
                continue
            value = _coerce(name, raw, schema)
        errors = list(_validator_for((op.method, op.path), "param", name).iter_errors(value))
        if errors:
            details = _error_details(iter(errors), prefix=name)
            raise BadRequest(details[0]["message"], details=details)
        values[name] = value
    return values
