"""`make bench`: every benchmark in turn, then one summary table of their figures with
target and PASS/FAIL, written to bench/results.json (not committed) to compare runs.

Each bench is `bench/<name>.py`, run as its own process; it reports its figures through
`bench/results.py` (`record(...)`). A bench that exits non-zero, or reports nothing, gets
a row saying so. Exit status: 0 when every target was met and every bench ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from results import RESULTS_ENV

HERE = Path(__file__).resolve().parent
NOT_BENCHES = {"results", "run_all", "launcher"}  # modules the benches share


def benches(only: list[str]) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if p.stem not in NOT_BENCHES)
    return [p for p in found if not only or p.stem in only]


def run(script: Path, records_file: str) -> tuple[int, float]:
    print(f"\n=== bench/{script.name} ===", flush=True)
    started = time.monotonic()
    env = {**os.environ, RESULTS_ENV: records_file}
    code = subprocess.run([sys.executable, str(script)], env=env, check=False).returncode
    return code, time.monotonic() - started


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def table(records: list[dict[str, Any]]) -> str:
    rows = [("bench", "figure", "value", "baseline", "ratio", "target", "result")]
    for r in records:
        verdict = "-" if r["ok"] is None else ("PASS" if r["ok"] else "FAIL")
        rows.append((r["bench"], r["name"], f"{fmt(r['value'])} {r['unit']}",
                     fmt(r["baseline"]), "-" if r["ratio"] is None else f"{r['ratio']:.1f}x",
                     r["target"] or "-", verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="bench names (default: all)")
    args = parser.parse_args()
    records: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for script in benches(args.only):
            records_file = os.path.join(tmp, f"{script.stem}.jsonl")
            code, seconds = run(script, records_file)
            mine: list[dict[str, Any]] = []
            if os.path.exists(records_file):
                with open(records_file, encoding="utf-8") as f:
                    mine = [json.loads(line) for line in f if line.strip()]
            if code != 0 and not any(r["ok"] is False for r in mine):
                mine.append({"bench": script.stem, "name": f"exit status {code}",
                             "value": seconds, "unit": "s", "baseline": None, "ratio": None,
                             "target": "exit 0", "ok": False})
            elif not mine:
                mine.append({"bench": script.stem, "name": "ran (no figures recorded)",
                             "value": seconds, "unit": "s", "baseline": None, "ratio": None,
                             "target": None, "ok": None})
            records += mine
            runs.append({"bench": script.stem, "exit": code, "seconds": round(seconds, 1)})
    print("\n=== summary ===")
    print(table(records))
    failed = [r for r in records if r["ok"] is False]
    print(f"\n{sum(1 for r in records if r['ok'])} PASS, {len(failed)} FAIL, "
          f"{sum(1 for r in records if r['ok'] is None)} without a target")
    out = HERE / "results.json"
    out.write_text(json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                 "python": platform.python_version()},
        "runs": runs, "records": records}, indent=2) + "\n")
    print(f"written to {out.relative_to(HERE.parent)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
