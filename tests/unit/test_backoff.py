"""Backoff schedules and server-stated waits, as tables of inputs and expected outputs."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from healing.backoff import (
    MAX_WAIT_S,
    backoff_delay,
    backoff_schedule,
    parse_retry_after,
)
from healing.config import BackoffPolicy
from healing.ratelimit import reset_delay

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)
SPEC = BackoffPolicy()  # initial 1 s, x2, cap 30 s, jitter +-20%, 3 retries


def expected_schedule(policy: BackoffPolicy, seed: int) -> list[float]:
    """The formula, written out independently of the module under test."""
    rng = random.Random(seed)
    delays = []
    for n in range(policy.max_retries):
        base = min(policy.max_s, policy.initial_s * policy.multiplier**n)
        delays.append(min(policy.max_s, base * (1 + rng.uniform(-policy.jitter, policy.jitter))))
    return delays


def test_spec_schedule_literal_for_seed_42() -> None:
    delays = backoff_schedule(SPEC, random.Random(42))
    assert [round(d, 3) for d in delays] == [1.056, 1.62, 3.64]


def test_long_schedule_literal_reaches_the_cap() -> None:
    delays = backoff_schedule(SPEC.model_copy(update={"max_retries": 8}), random.Random(7))
    assert [round(d, 3) for d in delays] == [0.93, 1.721, 4.241, 6.632, 16.23, 28.388, 24.696, 30.0]


@pytest.mark.parametrize("seed", [0, 1, 2, 42, 1234, 99999])
@pytest.mark.parametrize(
    "policy",
    [
        SPEC,
        BackoffPolicy(initial_s=0.5, multiplier=3, max_s=10, jitter=0.1, max_retries=6),
        BackoffPolicy(initial_s=2, multiplier=1, max_s=5, jitter=0, max_retries=4),
        BackoffPolicy(initial_s=1, multiplier=2, max_s=30, jitter=0.2, max_retries=12),
    ],
)
def test_schedule_matches_formula(policy: BackoffPolicy, seed: int) -> None:
    assert backoff_schedule(policy, random.Random(seed)) == pytest.approx(
        expected_schedule(policy, seed)
    )


def test_without_jitter_schedule_is_plain_exponential() -> None:
    policy = BackoffPolicy(jitter=0, max_retries=7)
    assert backoff_schedule(policy, random.Random(1)) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_zero_retries_is_empty() -> None:
    assert backoff_schedule(SPEC.model_copy(update={"max_retries": 0}), random.Random(1)) == []


@pytest.mark.parametrize("seed", range(50))
def test_jitter_stays_within_twenty_percent(seed: int) -> None:
    rng = random.Random(seed)
    for retry, base in zip(range(1, 5), [1.0, 2.0, 4.0, 8.0], strict=True):
        delay = backoff_delay(retry, SPEC, rng)
        assert base * 0.8 <= delay <= base * 1.2


def test_jitter_actually_varies() -> None:
    rng = random.Random(3)
    delays = {round(backoff_delay(2, SPEC, rng), 6) for _ in range(20)}
    assert len(delays) > 10


@pytest.mark.parametrize("retry", range(10, 51))
def test_cap_respected_for_late_retries(retry: int) -> None:
    rng = random.Random(retry)
    for _ in range(20):
        delay = backoff_delay(retry, SPEC, rng)
        assert SPEC.max_s * 0.8 <= delay <= SPEC.max_s


def test_cap_is_hard_even_with_large_jitter() -> None:
    policy = BackoffPolicy(initial_s=10, multiplier=2, max_s=12, jitter=0.9, max_retries=3)
    rng = random.Random(5)
    assert max(backoff_delay(5, policy, rng) for _ in range(500)) == 12.0


@pytest.mark.parametrize("retry", [1000, 10**6, 10**9])
def test_absurd_retry_numbers_do_not_overflow(retry: int) -> None:
    assert 24.0 <= backoff_delay(retry, SPEC, random.Random(1)) <= 30.0


@pytest.mark.parametrize("retry", [0, -5])
def test_retry_below_one_counts_as_first(retry: int) -> None:
    assert backoff_delay(retry, SPEC, random.Random(9)) == backoff_delay(1, SPEC, random.Random(9))


def test_one_draw_per_delay_keeps_the_rng_in_step() -> None:
    rng, twin = random.Random(11), random.Random(11)
    backoff_delay(40, SPEC, rng)  # clamped
    twin.random()
    assert rng.random() == twin.random()


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


RETRY_AFTER_TABLE = [
    ("30", None, 30.0),
    (" 41 ", None, 41.0),
    ("1.5", None, 1.5),
    ("0", None, 0.0),
    ("-5", None, 0.0),
    ("-0.5", None, 0.0),
    (http_date(NOW + timedelta(seconds=90)), None, 90.0),
    (http_date(NOW + timedelta(hours=2)), None, 7200.0),
    ("Fri, 14 Mar 2025 12:01:00 GMT", None, 60.0),
    ("Friday, 14-Mar-25 12:00:30 GMT", None, 30.0),  # RFC 850, obsolete but allowed
    ("Fri Mar 14 12:00:10 2025", None, 10.0),  # asctime
    (http_date(NOW - timedelta(minutes=5)), None, 0.0),
    ("Thu, 01 Jan 1970 00:00:00 GMT", None, 0.0),
    ("315", 120.0, 120.0),
    # Epoch timestamps some vendors put in Retry-After: a wait from now, not 55 years.
    (str(int(NOW.timestamp()) + 60), None, 60.0),
    (str((int(NOW.timestamp()) + 60) * 1000), None, 60.0),
    (str(int(NOW.timestamp()) - 60), None, 0.0),
    ("99999999999", 300.0, 300.0),
    ("9" * 400, 60.0, 60.0),
    ("9" * 400, None, MAX_WAIT_S),
    (http_date(NOW + timedelta(days=3)), 120.0, 120.0),
    ("Fri, 31 Dec 9999 23:59:59 GMT", 120.0, 120.0),
    (None, None, None),
    ("", None, None),
    ("   ", None, None),
    ("soon", None, None),
    ("NaN", None, None),
    ("inf", None, None),
    ("-inf", None, None),
    ("1e3", None, None),
    ("30s", None, None),
    ("0x1E", None, None),
    ("Fri, 32 Mar 2025 25:61:00 GMT", None, None),
    ("Mon, 01 Jan 99999 00:00:00 GMT", None, None),
    ("\x00\x01", None, None),
]


@pytest.mark.parametrize(("value", "cap", "expected"), RETRY_AFTER_TABLE)
def test_parse_retry_after(value: str | None, cap: float | None, expected: float | None) -> None:
    result = parse_retry_after(value, now=NOW, cap_s=cap)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_retry_after_date_is_relative_to_injected_now() -> None:
    value = "Fri, 14 Mar 2025 12:10:00 GMT"
    assert parse_retry_after(value, now=NOW) == 600.0
    assert parse_retry_after(value, now=NOW + timedelta(minutes=9)) == 60.0
    eastern = NOW.astimezone(timezone(timedelta(hours=-5)))
    assert parse_retry_after(value, now=eastern) == 600.0


def test_retry_after_with_naive_now_is_taken_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Fri, 14 Mar 2025 12:00:20 GMT", now=naive) == 20.0


def test_retry_after_non_string_is_none() -> None:
    assert parse_retry_after(30, now=NOW) is None  # type: ignore[arg-type]


EPOCH = int(NOW.timestamp())
RESET_TABLE = [
    ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(EPOCH + 300)}, None, 300.0),
    ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(EPOCH - 10)}, None, 0.0),
    ({"x-ratelimit-remaining": "12", "x-ratelimit-reset": str(EPOCH + 300)}, None, None),
    ({"x-ratelimit-reset": "20"}, None, 20.0),
    ({"X-RateLimit-Reset": "20"}, None, 20.0),
    ({"ratelimit-remaining": "0", "ratelimit-reset": "7"}, None, 7.0),
    ({"ratelimit-reset": str((EPOCH + 45) * 1000)}, None, 45.0),
    ({"x-rate-limit-remaining": "0", "x-rate-limit-reset": "3"}, None, 3.0),
    ({"x-ratelimit-reset": http_date(NOW + timedelta(seconds=75))}, None, 75.0),
    ({"ratelimit": '"default";r=0;t=' + str(EPOCH + 40)}, None, 40.0),
    ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(EPOCH + 7200)}, 600.0, 600.0),
    (
        {
            "x-hubspot-ratelimit-interval-milliseconds": "10000",
            "x-hubspot-ratelimit-max": "100",
            "x-hubspot-ratelimit-remaining": "0",
        },
        None,
        10.0,
    ),
    (
        {
            "x-hubspot-ratelimit-interval-milliseconds": "10000",
            "x-hubspot-ratelimit-remaining": "3",
        },
        None,
        None,
    ),
    ({"x-hubspot-ratelimit-secondly-remaining": "0"}, None, 1.0),
    ({"ratelimit": '"default";r=0;t=30'}, None, 30.0),
    ({"ratelimit": "limit=100, remaining=0, reset=12"}, None, 12.0),
    ({"ratelimit": "limit=100, remaining=5, reset=12"}, None, None),
    ({}, None, None),
    ({"retry-after": "30"}, None, None),
    ({"x-ratelimit-remaining": "0"}, None, None),
    ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "soon"}, None, None),
    ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "nan"}, None, None),
    (
        {"x-hubspot-ratelimit-remaining": "0", "x-hubspot-ratelimit-interval-milliseconds": "-1"},
        None,
        None,
    ),
]


@pytest.mark.parametrize(("headers", "cap", "expected"), RESET_TABLE)
def test_reset_delay(headers: dict[str, str], cap: float | None, expected: float | None) -> None:
    result = reset_delay(headers, now=NOW, cap_s=cap)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_reset_delay_survives_odd_header_objects() -> None:
    assert reset_delay(None, now=NOW) is None  # type: ignore[arg-type]
    assert reset_delay({"x-ratelimit-reset": None}, now=NOW) is None  # type: ignore[dict-item]
