"""Pointer paths: pure geometry and timing, no X involved (so it is unit-testable).

A human-like move follows a cubic Bezier curve whose control points sit off the straight
line, with minimum-jerk easing (slow start, fast middle, slow stop), sampled at a steady
rate and ending exactly on the target.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

Point = tuple[int, int]

STEP_MS = 8.0  # ~120 pointer updates per second


@dataclass(frozen=True)
class Step:
    at_ms: float  # offset from the start of the movement
    x: int
    y: int


def distance(a: Point, b: Point) -> float:
    return math.hypot(b[0] - a[0], b[1] - a[1])


def auto_duration_ms(dist: float) -> int:
    """How long a person takes for a move of `dist` pixels (Fitts-like, 80..1200 ms)."""
    if dist <= 0:
        return 0
    return int(min(1200.0, max(80.0, 100.0 + 90.0 * math.log2(1.0 + dist / 30.0))))


def ease(t: float) -> float:
    """Minimum-jerk profile: 0 → 1 with zero velocity and acceleration at both ends."""
    return t * t * t * (10.0 + t * (-15.0 + 6.0 * t))


def _bezier(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float],
            p3: tuple[float, float], t: float) -> tuple[float, float]:
    u = 1.0 - t
    a, b, c, d = u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t
    return (a * p0[0] + b * p1[0] + c * p2[0] + d * p3[0],
            a * p0[1] + b * p1[1] + c * p2[1] + d * p3[1])


def _clamp(value: float, low: int, high: int) -> int:
    return int(min(max(round(value), low), high))


def curve(start: Point, end: Point, duration_ms: float, bounds: tuple[int, int],
          rng: random.Random, step_ms: float = STEP_MS) -> list[Step]:
    """Timed points from `start` (excluded) to `end` (included, exactly), inside `bounds`
    (width, height). The last step is at `duration_ms`."""
    dist = distance(start, end)
    if dist == 0 or duration_ms <= 0:
        return [Step(max(duration_ms, 0.0), end[0], end[1])]
    dx, dy = (end[0] - start[0]) / dist, (end[1] - start[1]) / dist
    nx, ny = -dy, dx  # unit normal
    # Control points a third and two thirds along, pushed sideways: an arc when both go
    # the same way, a gentle S when they differ. Short moves bend less.
    bend = min(dist * 0.25, 120.0)
    off1 = rng.uniform(0.05, 1.0) * bend * rng.choice((-1.0, 1.0))
    off2 = off1 * rng.uniform(0.3, 1.0) if rng.random() < 0.8 else -off1 * rng.uniform(0.2, 0.6)
    p0 = (float(start[0]), float(start[1]))
    p3 = (float(end[0]), float(end[1]))
    along1, along2 = rng.uniform(0.2, 0.4), rng.uniform(0.6, 0.8)
    p1 = (p0[0] + dx * dist * along1 + nx * off1, p0[1] + dy * dist * along1 + ny * off1)
    p2 = (p0[0] + dx * dist * along2 + nx * off2, p0[1] + dy * dist * along2 + ny * off2)
    width, height = bounds
    count = max(2, round(duration_ms / step_ms))
    steps: list[Step] = []
    for i in range(1, count + 1):
        t = i / count
        if i == count:
            x, y = end
        else:
            fx, fy = _bezier(p0, p1, p2, p3, ease(t))
            x, y = _clamp(fx, 0, width - 1), _clamp(fy, 0, height - 1)
        steps.append(Step(duration_ms * t, x, y))
    return steps


def linear(start: Point, end: Point, count: int) -> list[Point]:
    """`count` evenly spaced points from `start` (excluded) to `end` (included, exactly)."""
    count = max(1, count)
    points: list[Point] = []
    for i in range(1, count + 1):
        t = i / count
        points.append((round(start[0] + (end[0] - start[0]) * t),
                       round(start[1] + (end[1] - start[1]) * t)))
    return points


def smooth_path(points: Sequence[Point], duration_ms: float | None, bounds: tuple[int, int],
                rng: random.Random) -> list[Step]:
    """Curves through every waypoint; the total time is split by segment length. Each
    waypoint is passed exactly."""
    lengths = [distance(a, b) for a, b in itertools.pairwise(points)]
    total_len = sum(lengths)
    if duration_ms is None:
        duration_ms = float(auto_duration_ms(total_len)) if total_len else 0.0
    steps: list[Step] = []
    elapsed = 0.0
    for (a, b), length in zip(itertools.pairwise(points), lengths, strict=True):
        share = duration_ms * (length / total_len) if total_len else 0.0
        for step in curve(a, b, share, bounds, rng):
            steps.append(Step(elapsed + step.at_ms, step.x, step.y))
        elapsed += share
    return steps
