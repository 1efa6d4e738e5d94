"""What a benchmark reports to the summary of `make bench` (bench/run_all.py).

A bench script calls `record(...)` once per figure it measured. Under `make bench` the
records go, one JSON object a line, to the file named by BENCH_RESULTS_FILE, and the
summary prints them as one table and writes them all to bench/results.json. Run alone, a
bench just prints its own report and `record` writes nothing.

A record: {"bench": "computer", "name": "full PNG (whole screen changing)", "value": 12.3,
"unit": "ms", "baseline": 190.0, "ratio": 15.4, "target": ">= 15x", "ok": true}; `ratio`,
`baseline`, `target` and `ok` may be null (a figure shown without a target).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

RESULTS_ENV = "BENCH_RESULTS_FILE"


def bench_name() -> str:
    return Path(sys.argv[0]).stem


def record(name: str, value: float, unit: str, *, baseline: float | None = None,
           ratio: float | None = None, target: str | None = None, ok: bool | None = None,
           bench: str | None = None) -> None:
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    entry: dict[str, Any] = {"bench": bench or bench_name(), "name": name,
                             "value": round(value, 3), "unit": unit,
                             "baseline": None if baseline is None else round(baseline, 3),
                             "ratio": None if ratio is None else round(ratio, 2),
                             "target": target, "ok": ok}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")
