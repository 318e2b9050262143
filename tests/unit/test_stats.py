"""Wilson bounds: known values, the defining equation, and the rejected inputs."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from healing.stats import wilson_bounds, wilson_interval, wilson_lower, wilson_upper


@pytest.mark.parametrize(
    ("successes", "trials", "confidence", "lower", "upper"),
    [
        (5, 5, 0.9, 0.753, 1.0),  # the breaker: five of five failures open it
        (5, 10, 0.9, 0.312, 0.688),
        (8, 10, 0.9, 0.602, 0.914),
        (10, 15, 0.9, 0.501, 0.800),  # test_breaker's "confidently over half"
        (5, 10, 0.5, 0.5, 0.5),  # z = 0: the plain ratio
        (0, 32, 0.9, 0.0, 0.0488),  # learning's default skip rule: 32 tries, no heal
        (0, 0, 0.9, 0.0, 1.0),
    ],
)
def test_one_sided_bounds_match_known_values(
    successes: int, trials: int, confidence: float, lower: float, upper: float
) -> None:
    assert wilson_bounds(successes, trials, confidence) == pytest.approx((lower, upper), abs=1e-3)
    assert wilson_lower(successes, trials, confidence) == pytest.approx(lower, abs=1e-3)
    assert wilson_upper(successes, trials, confidence) == pytest.approx(upper, abs=1e-3)


@pytest.mark.parametrize(
    ("successes", "trials", "confidence", "low", "high"),
    [
        (0, 25, 0.95, 0.0, 0.1332),
        (0, 10, 0.95, 0.0, 0.2775),
        (5, 10, 0.95, 0.2366, 0.7634),
        (10, 10, 0.95, 0.7225, 1.0),
        (81, 263, 0.95, 0.2553, 0.3662),
        (0, 0, 0.95, 0.0, 1.0),
        (0, 32, 0.8, 0.0, 0.0488),  # two-sided 80% = one-sided 90%
    ],
)
def test_two_sided_interval_matches_known_values(
    successes: int, trials: int, confidence: float, low: float, high: float
) -> None:
    assert wilson_interval(successes, trials, confidence) == pytest.approx((low, high), abs=5e-4)


@pytest.mark.parametrize(("successes", "trials"), [(1, 3), (7, 9), (50, 51), (3, 1000)])
@pytest.mark.parametrize("confidence", [0.6, 0.9, 0.99])
def test_bounds_solve_the_wilson_equation(successes: int, trials: int, confidence: float) -> None:
    # Independent of the closed form: each bound p solves (rate - p)^2 = z^2 p (1 - p) / n.
    z = NormalDist().inv_cdf(confidence)
    rate = successes / trials
    lower, upper = wilson_bounds(successes, trials, confidence)
    assert lower < rate < upper
    for p in (lower, upper):
        assert math.isclose((rate - p) ** 2, z * z * p * (1 - p) / trials, rel_tol=1e-9)


@pytest.mark.parametrize(
    ("successes", "trials", "confidence"),
    [(3, 2, 0.9), (-1, 2, 0.9), (1, 2, 1.0), (1, 2, 0.4)],
)
def test_one_sided_bounds_reject_impossible_input(
    successes: int, trials: int, confidence: float
) -> None:
    with pytest.raises(ValueError):
        wilson_bounds(successes, trials, confidence)


@pytest.mark.parametrize(
    ("successes", "trials", "confidence"), [(3, 2, 0.9), (-1, 2, 0.9), (1, 2, 1), (1, 2, 0)]
)
def test_two_sided_interval_rejects_impossible_input(
    successes: int, trials: int, confidence: float
) -> None:
    with pytest.raises(ValueError):
        wilson_interval(successes, trials, confidence)
