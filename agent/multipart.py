"""Multipart form fields that number their items: `<group>[i][key]`, `<group>[i].key`,
`<group>.i.key`, and what the Kernel SDKs send, `<group>[][key]` (the n-th such part of a
key belongs to item n). One parser for every slice that takes such forms (uploads,
extensions), so they accept the same spellings and refuse the rest with the same error."""

from __future__ import annotations

import re
from collections.abc import Iterable

from agent.errors import BadRequest


class IndexedFields:
    """Field names of one form: `parse(name)` gives (item index, key)."""

    def __init__(self, group: str, keys: Iterable[str], max_items: int,
                 singles: Iterable[str] = ()) -> None:
        self.group = group
        self.keys = tuple(keys)
        self.max_items = max_items
        self.singles = frozenset(singles)  # bare keys naming item 0 (a one-item form)
        self._pattern = re.compile(
            rf"^{re.escape(group)}(?:\[(\d*)\]|\.(\d+))(?:\[(\w+)\]|\.(\w+))$")
        self._positions: dict[str, int] = {}

    def parse(self, name: str | None) -> tuple[int, str]:
        if name is not None and name in self.singles:
            return 0, name
        match = self._pattern.match(name or "")
        key = (match.group(3) or match.group(4)) if match else None
        if match is None or key not in self.keys:
            expected = " and ".join(f"{self.group}[N][{k}]" for k in self.keys)
            raise BadRequest.for_field(
                name or "(unnamed)", "is not a known field",
                f"unknown form field {name!r}: expected {expected}", detail_code="unknown_field")
        assert key is not None
        digits = match.group(1) if match.group(1) is not None else match.group(2)
        if digits:
            index = int(digits)
        else:  # `group[][key]`: the n-th part of this key
            index = self._positions.get(key, 0)
            self._positions[key] = index + 1
        if index >= self.max_items:
            raise BadRequest.for_field(
                f"{self.group}[{index}]", "index too large",
                f"at most {self.max_items} {self.group} per request")
        return index, key
