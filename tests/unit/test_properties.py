"""Properties: detection, classification, waits and redaction never raise on any input."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from healing.backoff import parse_retry_after, reset_delay
from healing.classify import Failure, classify_error, detect_error, message_template
from healing.errors import IntegrationFailure, SchemaMismatch
from healing.redact import REDACTED, redact
from healing.types import Classification, ErrorType

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)
REQUEST = httpx.Request("POST", "https://api.example.com/v1/things")
FAST = settings(
    deadline=None, max_examples=200, database=None, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=15), children, max_size=5)
    ),
    max_leaves=30,
)
# Bodies that look like the vendor shapes the rules inspect, with random values in them.
vendor_keys = st.sampled_from(
    [
        "ok",
        "error",
        "errorCode",
        "policyName",
        "message",
        "status",
        "code",
        "type",
        "errors",
        "reason",
        "0",
        "error_description",
        "status_code",
        "headers",
        "body",
    ]
)
vendor_bodies = st.recursive(
    json_values,
    lambda children: (
        st.dictionaries(vendor_keys, children, max_size=5)
        | st.lists(st.dictionaries(vendor_keys, children, max_size=3), max_size=3)
    ),
    max_leaves=20,
)
header_names = st.sampled_from(
    [
        "retry-after",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit-reset",
        "ratelimit",
        "x-hubspot-ratelimit-remaining",
        "x-hubspot-ratelimit-interval-milliseconds",
        "x-hubspot-ratelimit-secondly-remaining",
        "www-authenticate",
        "x-rate-limit-reset",
    ]
) | st.text(max_size=20)
header_values = st.sampled_from(
    [
        "0",
        "-1",
        "30",
        "1.5",
        "nan",
        "inf",
        "1e309",
        "9" * 400,
        str(int(NOW.timestamp()) + 60),
        "Fri, 14 Mar 2025 12:01:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "r=0;t=5",
        "",
    ]
) | st.text(max_size=40)
headers = st.dictionaries(header_names, header_values, max_size=6)
nows = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(9998, 1, 1), timezones=st.just(UTC)
)


def check(verdict: Classification) -> None:
    assert isinstance(verdict.error_type, ErrorType)
    assert len(verdict.message) <= 500
    assert len(verdict.fingerprint) == 16
    if verdict.retry_after_s is not None:
        assert math.isfinite(verdict.retry_after_s) and verdict.retry_after_s >= 0


@FAST
@given(status=st.integers(100, 599), hdrs=headers, body=st.binary(max_size=200) | st.just(b""))
def test_any_response_classifies(status: int, hdrs: dict[str, str], body: bytes) -> None:
    try:
        resp = httpx.Response(status, headers=hdrs, content=body, request=REQUEST)
    except Exception:  # httpx rejects some header names/values itself
        assume(False)
        raise
    failure = detect_error(resp, connector="crm")
    if status >= 400:
        assert failure is not None and failure.status_code == status
    if failure is not None:
        check(classify_error(failure, now=NOW))


@FAST
@given(status=st.integers(100, 599), hdrs=headers, body=vendor_bodies)
def test_any_json_response_classifies(status: int, hdrs: dict[str, str], body: Any) -> None:
    content = json.dumps(body).encode()
    try:
        resp = httpx.Response(status, headers=hdrs, content=content, request=REQUEST)
    except Exception:
        assume(False)
        raise
    failure = detect_error(resp)
    if failure is not None:
        check(classify_error(failure, now=NOW))


@FAST
@given(result=vendor_bodies | st.dictionaries(vendor_keys, vendor_bodies, max_size=6))
def test_any_result_classifies(result: Any) -> None:
    failure = detect_error(result)
    if failure is not None:
        check(classify_error(failure, now=NOW))


exceptions = st.one_of(
    st.builds(ValueError, st.text(max_size=60)),
    st.builds(httpx.ReadTimeout, st.text(max_size=60)),
    st.builds(httpx.ConnectError, st.text(max_size=60)),
    st.builds(ConnectionResetError, st.integers(), st.text(max_size=30)),
    st.builds(OSError, st.text(max_size=30)),
    st.builds(
        lambda m, s, h, b: IntegrationFailure(m, status_code=s, headers=h, body=b),
        st.text(max_size=60),
        st.none() | st.integers(-5, 1000),
        headers,
        vendor_bodies | st.binary(max_size=80) | st.text(max_size=80),
    ),
    st.builds(
        lambda m, mp: SchemaMismatch(m, mapping=mp),
        st.text(max_size=60),
        st.dictionaries(st.text(max_size=10), st.text(max_size=10)),
    ),
)


@FAST
@given(outer=exceptions, inner=st.none() | exceptions, now=nows)
def test_any_exception_classifies(outer: Exception, inner: Exception | None, now: datetime) -> None:
    outer.__cause__ = inner
    failure = detect_error(outer)
    assert failure is not None
    check(classify_error(failure, now=now))


@FAST
@given(
    status=st.none() | st.integers(-1000, 10**6),
    hdrs=headers,
    body=vendor_bodies,
    message=st.text(max_size=300),
    exception=st.none() | st.text(max_size=30),
    connector=st.none() | st.text(max_size=10),
    now=nows,
)
def test_any_failure_classifies(
    status: int | None,
    hdrs: dict[str, str],
    body: Any,
    message: str,
    exception: str | None,
    connector: str | None,
    now: datetime,
) -> None:
    failure = Failure(
        status_code=status,
        headers=hdrs,
        body=body,
        message=message,
        exception=exception,
        connector=connector,
    )
    check(classify_error(failure, now=now))


@FAST
@given(value=st.none() | st.text() | header_values, now=nows, cap=st.none() | st.floats(0, 1e6))
def test_parse_retry_after_total(value: str | None, now: datetime, cap: float | None) -> None:
    result = parse_retry_after(value, now=now, cap_s=cap)
    if result is not None:
        assert math.isfinite(result) and result >= 0
        if cap is not None:
            assert result <= cap


@FAST
@given(raw=st.binary(max_size=60), now=nows)
def test_parse_retry_after_on_decoded_bytes(raw: bytes, now: datetime) -> None:
    parse_retry_after(raw.decode("latin-1"), now=now)


@FAST
@given(hdrs=headers, now=nows, cap=st.none() | st.floats(0, 1e6))
def test_reset_delay_total(hdrs: dict[str, str], now: datetime, cap: float | None) -> None:
    result = reset_delay(hdrs, now=now, cap_s=cap)
    if result is not None:
        assert math.isfinite(result) and result >= 0


@FAST
@given(seconds=st.integers(0, 10**6))
def test_retry_after_delta_round_trips(seconds: int) -> None:
    assert parse_retry_after(str(seconds), now=NOW) == float(seconds)
    date = (NOW + timedelta(seconds=seconds)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(date, now=NOW) == float(seconds)


@FAST
@given(text=st.text() | st.binary().map(lambda b: b.decode("utf-8", errors="replace")))
def test_redact_total_and_idempotent(text: str) -> None:
    once = redact(text)
    assert isinstance(once, str)
    assert redact(once) == once
    message_template(text)


@FAST
@given(
    prefix=st.text(max_size=80),
    suffix=st.text(max_size=80),
    secret=st.from_regex(r"[A-Za-z]{4,10}[0-9][A-Za-z0-9_-]{8,30}", fullmatch=True),
)
def test_planted_secrets_never_survive(prefix: str, suffix: str, secret: str) -> None:
    assume(secret not in prefix and secret not in suffix)
    for planted in (
        f"{prefix}\nAuthorization: Bearer {secret}\n{suffix}",
        f"{prefix} Bearer {secret} {suffix}",
        f"{prefix}?access_token={secret}&{suffix}",
        f'{prefix}{{"refresh_token": "{secret}"}}{suffix}',
    ):
        result = redact(planted)
        assert secret not in result, planted
        assert REDACTED in result
