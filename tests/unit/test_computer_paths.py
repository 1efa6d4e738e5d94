"""Pointer path generation: ends exactly on target, stays on screen, curves, takes its time."""

from __future__ import annotations

import math
import random

import pytest

from agent.computer.paths import auto_duration_ms, curve, ease, linear, smooth_path

BOUNDS = (1920, 1080)


def off_line(p: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> float:
    (x, y), (x1, y1), (x2, y2) = p, a, b
    return abs((x2 - x1) * (y1 - y) - (x1 - x) * (y2 - y1)) / math.hypot(x2 - x1, y2 - y1)


@pytest.mark.parametrize("seed", range(20))
def test_curve_ends_exactly_on_target_within_bounds(seed: int) -> None:
    rng = random.Random(seed)
    start = (rng.randrange(1920), rng.randrange(1080))
    end = (rng.randrange(1920), rng.randrange(1080))
    steps = curve(start, end, 400, BOUNDS, rng)
    assert (steps[-1].x, steps[-1].y) == end
    assert steps[-1].at_ms == pytest.approx(400)
    assert all(0 <= s.x < 1920 and 0 <= s.y < 1080 for s in steps)
    times = [s.at_ms for s in steps]
    assert times == sorted(times)


def test_curve_near_the_edge_stays_on_screen() -> None:
    for seed in range(50):
        steps = curve((0, 0), (1919, 0), 300, BOUNDS, random.Random(seed))
        assert all(0 <= s.x < 1920 and 0 <= s.y < 1080 for s in steps)


def test_long_moves_bend_away_from_the_straight_line() -> None:
    bends = []
    for seed in range(20):
        steps = curve((100, 500), (1500, 500), 500, BOUNDS, random.Random(seed))
        bends.append(max(off_line((s.x, s.y), (100, 500), (1500, 500)) for s in steps))
    assert min(bends) > 3  # every path is visibly curved
    assert len({round(b) for b in bends}) > 5  # and not always the same curve


def test_easing_starts_and_ends_slowly() -> None:
    assert ease(0) == 0 and ease(1) == pytest.approx(1)
    assert ease(0.1) < 0.1 and ease(0.9) > 0.9
    steps = curve((0, 500), (1000, 500), 800, BOUNDS, random.Random(1))
    first, middle = steps[1].x - steps[0].x, steps[len(steps) // 2].x - steps[len(steps) // 2 - 1].x
    assert middle > 3 * max(first, 1)


def test_step_rate_follows_duration() -> None:
    short = curve((0, 0), (800, 600), 100, BOUNDS, random.Random(2))
    long = curve((0, 0), (800, 600), 1000, BOUNDS, random.Random(2))
    assert len(long) > 5 * len(short)
    assert long[-1].at_ms == pytest.approx(1000)


def test_zero_length_move_is_one_step() -> None:
    steps = curve((10, 10), (10, 10), 300, BOUNDS, random.Random(0))
    assert [(s.x, s.y) for s in steps] == [(10, 10)]


def test_auto_duration_grows_with_distance_and_is_bounded() -> None:
    assert auto_duration_ms(0) == 0
    values = [auto_duration_ms(d) for d in (5, 50, 200, 800, 3000, 100000)]
    assert values == sorted(values)
    assert 80 <= values[0] and values[-1] <= 1200


def test_linear_segments_end_on_the_point() -> None:
    assert linear((0, 0), (10, 20), 5) == [(2, 4), (4, 8), (6, 12), (8, 16), (10, 20)]
    assert linear((3, 3), (4, 4), 1) == [(4, 4)]


def test_smooth_path_passes_every_waypoint_and_splits_time() -> None:
    points = [(100, 100), (600, 100), (600, 700), (200, 300)]
    steps = smooth_path(points, 1200, BOUNDS, random.Random(3))
    coords = [(s.x, s.y) for s in steps]
    for waypoint in points[1:]:
        assert waypoint in coords
    assert steps[-1].at_ms == pytest.approx(1200)
    assert coords[-1] == points[-1]
    # the first segment is 500 px of 500+600+~566 px: about 30% of the time
    at_first = next(s.at_ms for s in steps if (s.x, s.y) == (600, 100))
    assert 300 < at_first < 420


def test_smooth_path_auto_duration() -> None:
    steps = smooth_path([(0, 0), (300, 400)], None, BOUNDS, random.Random(4))
    assert steps[-1].at_ms == pytest.approx(auto_duration_ms(500))
