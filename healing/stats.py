"""Wilson score bounds of a rate: the one formula the breaker and learning both judge by.

Pure functions, no state. A one-sided bound at confidence ``c`` is the matching end of the
two-sided interval at ``2c - 1`` (one-sided 90% uses z = 1.28, like two-sided 80%); at
``c = 0.5`` z is 0 and both bounds are the plain ratio. Wilson rather than the normal
approximation because it stays inside ``[0, 1]`` and is honest at small counts (0 of 5 is
not "certainly 0%").
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["wilson_bounds", "wilson_interval", "wilson_lower", "wilson_upper"]


def wilson_bounds(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """One-sided Wilson lower and upper bounds of ``successes / trials``.

    Args:
        successes: Events counted, ``0 <= successes <= trials``.
        trials: Trials observed; 0 gives the uninformative ``(0.0, 1.0)``.
        confidence: One-sided level of each bound, ``0.5 <= confidence < 1``.

    Returns:
        ``(lower, upper)`` within ``[0, 1]``: we are ``confidence`` sure the true rate is at
        least ``lower``, and (separately) at most ``upper``. E.g. 5 of 5 at 0.9 gives
        ``(0.753, 1.0)``.

    Raises:
        ValueError: The counts or the confidence level are out of range.
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if not 0.5 <= confidence < 1:
        raise ValueError(f"one-sided confidence must be in [0.5, 1), got {confidence}")
    if trials == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(confidence)
    rate = successes / trials
    z2n = z * z / trials
    centre = (rate + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(rate * (1 - rate) / trials + z2n / (4 * trials)) / (1 + z2n)
    # The ends are exact at 0 and at all successes; rounding must not make them 1e-17 off.
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == trials else min(1.0, centre + half)
    return lower, upper


def wilson_lower(successes: int, trials: int, confidence: float) -> float:
    """One-sided Wilson lower bound (see :func:`wilson_bounds`)."""
    return wilson_bounds(successes, trials, confidence)[0]


def wilson_upper(successes: int, trials: int, confidence: float) -> float:
    """One-sided Wilson upper bound (see :func:`wilson_bounds`)."""
    return wilson_bounds(successes, trials, confidence)[1]


def wilson_interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Two-sided Wilson score interval at ``confidence`` (0.95 gives z = 1.96).

    Args:
        successes: Events counted, ``0 <= successes <= trials``.
        trials: Trials observed.
        confidence: Two-sided level, strictly between 0 and 1.

    Returns:
        ``(low, high)``, e.g. 0 of 25 at 0.95 gives ``(0.0, 0.133)``.

    Raises:
        ValueError: The counts or the confidence level are out of range.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return wilson_bounds(successes, trials, (1 + confidence) / 2)
