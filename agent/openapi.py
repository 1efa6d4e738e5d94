"""The daemon's OpenAPI document (`openapi.yaml`, served as /spec.json): its operations
and its schemas, with their defaults. No HTTP here: the edge validates requests against
it (`spec`), and domain code takes defaults and bounds from it, so that the contract is
the one place they are written.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@dataclass(frozen=True)
class Operation:
    method: str  # lower case
    path: str  # spec path template, e.g. /process/{process_id}/status
    scope: str  # read | write | admin | none
    raw: Mapping[str, Any]


@functools.cache
def spec_text() -> str:
    return resources.files("agent").joinpath("openapi.yaml").read_text(encoding="utf-8")


@functools.cache
def spec_document() -> dict[str, Any]:
    doc = yaml.safe_load(spec_text())
    if not isinstance(doc, dict):
        raise RuntimeError("agent/openapi.yaml is not a mapping")
    return doc


@functools.cache
def spec_json() -> str:
    return json.dumps(spec_document(), ensure_ascii=False)


@functools.cache
def operations() -> dict[tuple[str, str], Operation]:
    ops: dict[tuple[str, str], Operation] = {}
    for path, item in spec_document().get("paths", {}).items():
        for method in HTTP_METHODS:
            op = item.get(method)
            if op is None:
                continue
            scope = str(op.get("x-scope", "admin"))
            ops[(method, path)] = Operation(method, path, scope, op)
    return ops


@functools.cache
def is_stream(method: str, path: str) -> bool:
    """An operation that holds its connection open: a WebSocket (`x-websocket`) or an
    event stream (a 200 of `text/event-stream`)."""
    op = operations().get((method, path))
    if op is None:
        return False
    if op.raw.get("x-websocket"):
        return True
    ok = op.raw.get("responses", {}).get("200", {})
    return "text/event-stream" in (ok.get("content") or {})


def resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local `$ref` (one level is all our request bodies use)."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = spec_document()
    for part in ref[2:].split("/"):
        node = node[part]
    return resolve(node)


def fill_defaults(schema: Mapping[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    for name, prop in resolve(schema).get("properties", {}).items():
        if name not in body and isinstance(prop, Mapping) and "default" in prop:
            body[name] = copy.deepcopy(prop["default"])
    return body


def with_defaults(schema_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` (checked against the component schema `schema_name` already, e.g. as a
    batch item) with the defaults of that schema's properties filled in."""
    return fill_defaults(_component(schema_name), dict(params))


@functools.cache
def _component(schema_name: str) -> Mapping[str, Any]:
    """A component schema, its `$ref` followed once (every input action asks)."""
    return resolve({"$ref": f"#/components/schemas/{schema_name}"})
