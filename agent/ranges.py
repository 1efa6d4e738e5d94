"""HTTP byte ranges of a file (RFC 9110): which bytes a `Range` header selects, for every
endpoint that serves files (`/fs/read_file`, replay downloads). No aiohttp: the routes
pass the header values in and shape the answer."""

from __future__ import annotations

from agent.errors import AgentError


class RangeNotSatisfiable(AgentError):
    status = 416
    code = "range_not_satisfiable"


def byte_range(header: str | None, size: int, if_range: str | None, etag: str,
               last_modified: str) -> tuple[int, int] | None:
    """The (start, end-exclusive) a `Range` header selects, or None for the whole file.

    One `bytes=` range is honoured; a malformed header or several ranges are ignored
    (the whole file is sent, as RFC 9110 allows); a range past the end is a 416. An
    `If-Range` that no longer matches the file's ETag or Last-Modified means the file
    changed since the client's partial download, so the whole file is sent."""
    if not header:
        return None
    if if_range is not None and if_range.strip() not in (etag, last_modified):
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    try:
        if first == "":
            if not last.isdigit():
                return None
            suffix = int(last)
            if suffix == 0:
                raise _unsatisfiable(size)
            return max(size - suffix, 0), size
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if end <= start and last:
        return None  # e.g. bytes=5-2: syntactically invalid, ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size)


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"requested range is beyond the end of the file ({size} bytes)",
                               headers={"Content-Range": f"bytes */{size}"})
