"""Benchmark of POST /playwright/execute against the per-call approach it replaces:

- through the daemon: `return 1 + 1` and `return await page.title()` as HTTP calls on a
  kept-alive connection (the executor's Node worker is warm and connected);
- per call: a fresh `node` process that loads playwright-core, connects over CDP, finds the
  page and runs the same code (what a first version of a hosted execute did, ~750 ms there).

Real parts: Xvfb, Chromium and the daemon (`python -m agent`) as processes; the same
playwright-core both ways (agent/playwright/runtime, `make playwright-deps`). Run with
`make bench` or `.venv/bin/python bench/playwright.py [--rounds N] [--fresh-rounds N]`.
The targets: `return 1 + 1` median ≤ 15 ms and `page.title()` ≤ 25 ms through HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import running_chromium, running_xvfb
from launcher import AUTH, running_daemon
from playwright_support import runtime_dir_for
from process_helpers import ensure_user
from results import record

REPO = Path(__file__).resolve().parent.parent

RUNTIME = REPO / "agent" / "playwright" / "runtime"

# One fresh process per call: load, connect, pick the page, run, disconnect.
FRESH = """
const { chromium } = require(%s);
(async () => {
  const browser = await chromium.connectOverCDP(%s);
  const page = browser.contexts()[0].pages()[0] ?? await browser.contexts()[0].newPage();
  const fn = new (Object.getPrototypeOf(async () => {}).constructor)('page', %s);
  const result = await fn(page);
  process.stdout.write(JSON.stringify({ result }));
  await browser.close();
})().catch((error) => { console.error(error); process.exit(1); });
"""


async def timed(action: Callable[[], Awaitable[Any]], rounds: int, warmup: int = 3
                ) -> list[float]:
    for _ in range(warmup):
        await action()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p90 = ordered[max(int(len(ordered) * 0.9) - 1, 0)]
    return statistics.median(samples), p90


def row(name: str, samples: list[float]) -> str:
    median, p90 = summary(samples)
    return f"{name:<54} {median:9.2f} ms   p90 {p90:9.2f} ms   (n={len(samples)})"


async def through_daemon(session: aiohttp.ClientSession, base: str, code: str,
                         expected: Any) -> None:
    async with session.post(f"{base}/playwright/execute", json={"code": code}) as resp:
        body = await resp.json()
    if resp.status != 200 or not body.get("success") or body.get("result") != expected:
        raise RuntimeError(f"unexpected answer: {resp.status} {body}")


async def fresh_node(cdp: str, code: str, expected: Any) -> None:
    script = FRESH % (json.dumps(str(RUNTIME / "node_modules" / "playwright-core")),
                      json.dumps(f"http://{cdp}"), json.dumps(code))
    proc = await asyncio.create_subprocess_exec(
        "node", "-e", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0 or json.loads(out).get("result") != expected:
        raise RuntimeError(f"fresh node failed ({proc.returncode}): {err.decode()[-500:]}")


async def bench(base: str, cdp: str, rounds: int, fresh_rounds: int) -> None:
    # (code, its answer, target median in ms)
    cases = [("return 1 + 1", 2, 15.0), ("return await page.title()", "bench page", 25.0)]
    results: list[tuple[str, list[float], list[float]]] = []
    async with aiohttp.ClientSession(headers=AUTH) as session:
        await through_daemon(session, base, "await page.goto('data:text/html,"
                             "<title>bench page</title>'); return 1", 1)
        for code, expected, _ in cases:
            ours = await timed(lambda c=code, e=expected: through_daemon(session, base, c, e),
                               rounds)
            theirs = await timed(lambda c=code, e=expected: fresh_node(cdp, c, e),
                                 fresh_rounds, warmup=1)
            results.append((code, ours, theirs))
    print(f"\nPOST /playwright/execute, {rounds} calls per case through the daemon, "
          f"{fresh_rounds} fresh node processes per case")
    for (code, ours, theirs), (_, _, limit) in zip(results, cases, strict=True):
        median, baseline = summary(ours)[0], summary(theirs)[0]
        ok = median <= limit
        print(f"\n  {code}")
        print("  " + row("through the daemon (warm worker, HTTP)", ours))
        print("  " + row("fresh node + connectOverCDP per call", theirs))
        print(f"  {'per-call cost / daemon (median)':<54} {baseline / median:9.1f}x")
        print(f"  {'OK  ' if ok else 'MISS'} median <= {limit:g} ms")
        record(f"execute `{code}` (median)", median, "ms", baseline=baseline,
               ratio=baseline / median, target=f"<= {limit:g} ms", ok=ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--fresh-rounds", type=int, default=15)
    args = parser.parse_args()
    if not (RUNTIME / "node_modules" / "playwright-core").is_dir():
        sys.exit("playwright-core is not installed: make playwright-deps")
    user = ensure_user().pw_name if os.geteuid() == 0 else None
    with running_xvfb(1280, 800) as xvfb, running_chromium(xvfb.name, 1280, 800) as chromium:
        daemon_args = ["--display", xvfb.name, "--cdp-address", chromium.address,
                 "--playwright-prewarm", "1"]
        if user:
            daemon_args += ["--default-user", user, "--playwright-dir", runtime_dir_for(user)]
        with running_daemon(*daemon_args, cwd=REPO) as daemon:
            asyncio.run(bench(daemon.base, chromium.address, args.rounds, args.fresh_rounds))


if __name__ == "__main__":
    main()
