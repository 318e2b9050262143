"""Rate-limit headers of real vendors, and token-bucket pacing as plain lists of waits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from healing.backoff import parse_retry_after
from healing.ratelimit import RateLimiter, RateLimitInfo, parse_rate_limit_headers

NOW_EPOCH = 1_700_000_000.0
NOW = datetime.fromtimestamp(NOW_EPOCH, UTC)  # 2023-11-14 22:13:20 UTC


def parse(headers: dict[str, str]) -> RateLimitInfo | None:
    return parse_rate_limit_headers(headers, now_epoch=NOW_EPOCH)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {
                "x-hubspot-ratelimit-max": "100",
                "x-hubspot-ratelimit-remaining": "0",
                "x-hubspot-ratelimit-interval-milliseconds": "10000",
            },
            RateLimitInfo(100, 0, 10.0, 10.0, "hubspot", rolling=True),
            id="hubspot-burst",
        ),
        pytest.param(
            {
                "x-hubspot-ratelimit-max": "100",
                "x-hubspot-ratelimit-remaining": "42",
                "x-hubspot-ratelimit-interval-milliseconds": "10000",
                "x-hubspot-ratelimit-daily": "250000",
                "x-hubspot-ratelimit-daily-remaining": "0",
            },
            RateLimitInfo(250000, 0, None, 86400.0, "hubspot"),
            id="hubspot-daily-binding",
        ),
        pytest.param(
            {
                "x-ratelimit-limit": "5000",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": str(int(NOW_EPOCH) + 120),
            },
            RateLimitInfo(5000, 0, 120.0, None, "x-ratelimit"),
            id="github-epoch-reset",
        ),
        pytest.param(
            {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "7", "x-ratelimit-reset": "15"},
            RateLimitInfo(60, 7, 15.0, None, "x-ratelimit"),
            id="x-ratelimit-delta-reset",
        ),
        pytest.param(
            {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW_EPOCH + 90) * 1000)},
            RateLimitInfo(None, 0, 90.0, None, "x-ratelimit"),
            id="epoch-milliseconds-reset",
        ),
        pytest.param(
            {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "Tue, 14 Nov 2023 22:14:20 GMT"},
            RateLimitInfo(None, 0, 60.0, None, "x-ratelimit"),
            id="http-date-reset",
        ),
        pytest.param(
            {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "nan"},
            RateLimitInfo(None, 0, None, None, "x-ratelimit"),
            id="unreadable-reset-is-unknown",
        ),
        pytest.param(
            {"x-ratelimit-remaining": "3", "x-ratelimit-reset": str(int(NOW_EPOCH) - 5)},
            RateLimitInfo(None, 3, 0.0, None, "x-ratelimit"),
            id="reset-in-the-past-is-now",
        ),
        pytest.param(
            {
                "ratelimit-limit": "100",
                "ratelimit-remaining": "1",
                "ratelimit-reset": "30",
                "ratelimit-policy": "100;w=60",
            },
            RateLimitInfo(100, 1, 30.0, 60.0, "ietf"),
            id="ietf-draft",
        ),
        pytest.param(
            {"ratelimit-limit": "10, 10;w=1, 1000;w=3600", "ratelimit-remaining": "9"},
            RateLimitInfo(10, 9, None, 1.0, "ietf"),
            id="ietf-multi-policy",
        ),
        pytest.param(
            {"ratelimit": '"default";r=0;t=12', "ratelimit-policy": '"default";q=50;w=60'},
            RateLimitInfo(50, 0, 12.0, 60.0, "ietf"),
            id="ietf-structured",
        ),
        # The IETF drafts' own shapes (draft-ietf-httpapi-ratelimit-headers -03 to -10).
        pytest.param(
            {"ratelimit-limit": "10", "ratelimit-remaining": "1", "ratelimit-reset": "7"},
            RateLimitInfo(10, 1, 7.0, None, "ietf"),
            id="ietf-03-three-fields",
        ),
        pytest.param(
            {
                "ratelimit-limit": "10",
                "ratelimit-remaining": "0",
                "ratelimit-reset": "7",
                "ratelimit-policy": "10;w=1, 50;w=60",
            },
            RateLimitInfo(10, 0, 7.0, 1.0, "ietf"),
            id="ietf-05-policy-field",
        ),
        pytest.param(
            {"ratelimit": "limit=10, remaining=1, reset=7", "ratelimit-policy": "10;w=1"},
            RateLimitInfo(10, 1, 7.0, 1.0, "ietf"),
            id="ietf-07-dictionary",
        ),
        pytest.param(
            {"ratelimit": "limit=100, remaining=0, reset=5"},
            RateLimitInfo(100, 0, 5.0, None, "ietf"),
            id="ietf-07-dictionary-alone",
        ),
        pytest.param(
            {
                "ratelimit-policy": '"burst";q=100;w=60, "daily";q=1000;w=86400',
                "ratelimit": '"daily";r=3;t=3600',
            },
            RateLimitInfo(1000, 3, 3600.0, 86400.0, "ietf"),
            id="ietf-10-named-policy-not-the-first",
        ),
        pytest.param(
            {
                "ratelimit-policy": '"burst";q=100;w=60, "daily";q=1000;w=86400',
                "ratelimit": '"burst";r=40;t=20, "daily";r=2;t=5000',
            },
            RateLimitInfo(1000, 2, 5000.0, 86400.0, "ietf"),
            id="ietf-10-several-items-the-binding-one",
        ),
        pytest.param(
            {"ratelimit-policy": '"burst";q=100;w=60, "slow";q=5;w=5'},
            RateLimitInfo(5, None, None, 5.0, "ietf"),
            id="ietf-lone-policy-most-restrictive",
        ),
        pytest.param(
            {"sforce-limit-info": "api-usage=14990/15000"},
            RateLimitInfo(15000, 10, None, 86400.0, "salesforce"),
            id="salesforce",
        ),
        pytest.param(
            {"sforce-limit-info": "api-usage=15003/15000"},
            RateLimitInfo(15000, 0, None, 86400.0, "salesforce"),
            id="salesforce-over",
        ),
    ],
)
def test_vendor_header_shapes(headers: dict[str, str], expected: RateLimitInfo) -> None:
    assert parse(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"retry-after": "30", "content-type": "application/json"},
        {"x-ratelimit-limit": "lots", "x-ratelimit-remaining": "some"},
        {"sforce-limit-info": "per-app-api-usage"},
    ],
)
def test_no_or_unreadable_headers_give_none(headers: dict[str, str]) -> None:
    assert parse(headers) is None


@pytest.mark.parametrize(
    "value",
    ["0", "15", "2.5", "-3", str(int(NOW_EPOCH) + 120), str(int(NOW_EPOCH + 45) * 1000),
     "Tue, 14 Nov 2023 22:15:00 GMT", "soon", "inf", "9" * 40],
)  # fmt: skip
def test_reset_headers_read_like_retry_after(value: str) -> None:
    # One parser: pacing and classification never disagree on when a quota comes back.
    for family in ("x-ratelimit", "ratelimit"):
        info = parse({f"{family}-remaining": "0", f"{family}-reset": value})
        assert info is not None
        assert info.reset_after_s == parse_retry_after(value, now=NOW), (family, value)


def test_exhausted_flag() -> None:
    assert RateLimitInfo(100, 0, 10.0, 10.0).exhausted
    assert not RateLimitInfo(100, 1, 10.0, 10.0).exhausted
    assert not RateLimitInfo(None, None, None, None).exhausted


def test_bucket_bursts_then_paces_callers_one_slot_each() -> None:
    limiter = RateLimiter(requests=2, per_s=1.0)
    assert [limiter.reserve(0.0) for _ in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.5]


def test_bucket_refills_with_time_up_to_capacity() -> None:
    limiter = RateLimiter(requests=10, per_s=10.0)  # one token per second
    assert [limiter.reserve(0.0) for _ in range(10)] == [0.0] * 10
    assert limiter.reserve(0.0) == pytest.approx(1.0)  # queued for t=1
    assert limiter.reserve(3.0) == 0.0  # tokens at t=3: -1 + 3 = 2, take one
    assert limiter.reserve(1000.0) == 0.0
    assert limiter.available(1000.0) == pytest.approx(9.0)  # capped at capacity, one taken


def test_max_wait_reserves_nothing_when_exceeded() -> None:
    limiter = RateLimiter(requests=1, per_s=10.0)
    assert limiter.reserve(0.0) == 0.0
    assert limiter.reserve(0.0, max_wait_s=5.0) == pytest.approx(10.0)
    assert limiter.reserve(0.0) == pytest.approx(10.0)  # the refused call took no slot


def test_remaining_zero_blocks_until_reset_then_paces() -> None:
    limiter = RateLimiter(requests=10, per_s=1.0)
    limiter.observe(RateLimitInfo(100, 0, 5.0, 10.0), now=0.0)
    waits = [limiter.reserve(0.0) for _ in range(3)]
    assert waits == pytest.approx([5.0, 5.1, 5.2])
    assert limiter.available(2.0) <= 0


def test_remaining_zero_without_reset_waits_one_window() -> None:
    limiter = RateLimiter(requests=10, per_s=1.0)
    limiter.observe(RateLimitInfo(15000, 0, None, 86400.0), now=0.0)
    assert limiter.reserve(0.0) == pytest.approx(86400.0)


def test_remaining_caps_tokens_but_never_raises_them() -> None:
    limiter = RateLimiter(requests=10, per_s=10.0)
    limiter.observe(RateLimitInfo(100, 2, 10.0, 10.0), now=0.0)
    assert [limiter.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    limiter.observe(RateLimitInfo(100, 99, 10.0, 10.0), now=0.0)
    assert limiter.available(0.0) == pytest.approx(-1.0)


def test_observe_without_remaining_changes_nothing() -> None:
    limiter = RateLimiter(requests=3, per_s=3.0)
    limiter.observe(RateLimitInfo(3, None, None, 3.0), now=0.0)
    assert [limiter.reserve(0.0) for _ in range(4)] == [0.0, 0.0, 0.0, 1.0]


def test_limiter_from_vendor_info() -> None:
    limiter = RateLimiter.from_info(RateLimitInfo(100, 0, 10.0, 10.0), now=0.0)
    assert limiter is not None
    assert limiter.rate == pytest.approx(10.0)
    assert limiter.reserve(0.0) == pytest.approx(10.0)
    assert RateLimiter.from_info(RateLimitInfo(None, 0, 10.0, None)) is None


@pytest.mark.parametrize(("requests", "per_s"), [(0, 1.0), (1, 0.0), (5, -1.0)])
def test_rejects_impossible_limits(requests: int, per_s: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(requests, per_s)
