"""Backoff delays and server-stated waits (Retry-After, rate-limit reset headers).

Pure functions: the random generator and the current time are passed in, so schedules are
asserted as plain lists in tests and replay deterministically inside workflows
(``workflow.random()``, ``workflow.now()``).

Decisions:

* ``backoff_delay`` jitters around the exponential base and then clamps into
  ``[0, policy.max_s]``: the cap is a hard cap, so once the base reaches it the jitter can only
  shorten the wait. One ``rng.uniform`` draw is consumed per call, clamped or not, so a
  schedule depends on the seed only.
* Server-stated waits never raise and never return NaN or infinity: garbage is ``None``,
  negative or past is ``0.0``, and anything larger than ``cap_s`` (or, without a cap,
  ``MAX_WAIT_S``) is cut down to it.
* One parser reads every stated reset time (:func:`parse_retry_after`): Retry-After here, the
  reset headers of :mod:`healing.ratelimit` (which owns every rate-limit header shape, and
  ``reset_delay``). Vendors mix the shapes
  (delta seconds, HTTP-dates, Unix seconds, Unix milliseconds), so every header accepts all.
"""

from __future__ import annotations

import math
import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from healing.config import BackoffPolicy

__all__ = [
    "MAX_WAIT_S",
    "backoff_delay",
    "backoff_schedule",
    "parse_retry_after",
]

MAX_WAIT_S = 366 * 24 * 3600.0
"""Ceiling of any server-stated wait when the caller gives no ``cap_s`` (one year)."""

_DELTA = re.compile(r"[+-]?\d+(?:\.\d+)?")
_EPOCH_THRESHOLD = 1e9  # below: delta seconds; above: a Unix timestamp (2001-09-09 onwards)
_EPOCH_MS_THRESHOLD = 1e11  # above: a Unix timestamp in milliseconds


def backoff_delay(retry: int, policy: BackoffPolicy, rng: random.Random) -> float:
    """The delay before retry number ``retry`` (1-based: 1 is the first retry).

    ``base = min(max_s, initial_s * multiplier ** (retry - 1))``, then
    ``base * (1 + uniform(-jitter, +jitter))`` clamped into ``[0, max_s]``.

    Args:
        retry: Which retry this is; values below 1 are treated as 1.
        policy: Initial delay, multiplier, cap and jitter.
        rng: Source of the jitter (``random.Random(seed)`` in tests, ``workflow.random()``
            in workflows).

    Returns:
        Seconds to wait, never above ``policy.max_s``.
    """
    exponent = max(retry, 1) - 1
    try:
        raw = policy.initial_s * policy.multiplier**exponent
    except OverflowError:  # float power overflows long before retry counts get absurd
        raw = math.inf
    base = min(policy.max_s, raw)
    jittered = base * (1.0 + rng.uniform(-policy.jitter, policy.jitter))
    return min(policy.max_s, max(0.0, jittered))


def backoff_schedule(policy: BackoffPolicy, rng: random.Random) -> list[float]:
    """The delays of all ``policy.max_retries`` retries, in order.

    Args:
        policy: The backoff policy.
        rng: Source of the jitter; ``policy.max_retries`` values are drawn from it.

    Returns:
        One delay per retry, e.g. about ``[1.0, 2.0, 4.0]`` for the defaults.
    """
    return [backoff_delay(retry, policy, rng) for retry in range(1, policy.max_retries + 1)]


def parse_retry_after(
    value: str | None, *, now: datetime, cap_s: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` (RFC 9110, section 10.2.3) or reset header value.

    Accepts delta-seconds (``"30"``, and tolerates ``"1.5"``), HTTP-dates, and the epoch
    timestamps some vendors send: numbers from 1e9 are Unix seconds (2001-09-09 onwards), above
    1e11 Unix milliseconds. Dates and timestamps are read relative to ``now``.

    Args:
        value: The header value, or None when the header is absent.
        now: The current time (timezone-aware; a naive value is taken as UTC).
        cap_s: Longest wait to return; longer waits are cut down to it.

    Returns:
        The wait in seconds, ``0.0`` for negative values and past dates, or None when the
        value is missing or unreadable. Never raises.
    """
    try:
        if not isinstance(value, str):
            return None
        text = value.strip()
        if not text:
            return None
        if _DELTA.fullmatch(text):
            return _bounded(_reset_seconds(float(text), now), cap_s)
        when = parsedate_to_datetime(text)
        return _bounded((_aware(when) - _aware(now)).total_seconds(), cap_s)
    except Exception:  # garbage, out-of-range dates, overflow: all mean "no usable wait"
        return None


def _reset_seconds(reset: float, now: datetime) -> float:
    if reset < _EPOCH_THRESHOLD:
        return reset
    epoch = reset / 1000.0 if reset > _EPOCH_MS_THRESHOLD else reset
    return epoch - _aware(now).timestamp()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _bounded(seconds: float, cap_s: float | None) -> float | None:
    if math.isnan(seconds):
        return None
    ceiling = MAX_WAIT_S if cap_s is None or math.isnan(cap_s) else max(0.0, cap_s)
    return min(max(0.0, seconds), ceiling)
