"""Properties of detection, classification, waits and redaction, on generated input.

Two kinds: *totality* (nothing raises, every verdict is well-formed, on any input) and
*correctness* (the HTTP status decides the error type whatever the body, a stated wait is the
wait, fingerprints ignore ids, secrets never survive). A totality property also holds for a
classifier that always falls back, so every correctness property is run once more against a
broken build at the end of this file and must fail there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

import healing.classify as classify_module
import healing.redact as redaction
from healing.backoff import parse_retry_after
from healing.classify import Failure, Rule, classify_error, detect_error, message_template
from healing.errors import IntegrationFailure, SchemaMismatch
from healing.ratelimit import reset_delay
from healing.redact import REDACTED, redact
from healing.types import Classification, ErrorType

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)
REQUEST = httpx.Request("POST", "https://api.example.com/v1/things")
FAST = settings(
    deadline=None, max_examples=200, database=None, suppress_health_check=[HealthCheck.too_slow]
)
# Against a broken build we only need to see it fail: no shrinking, the first failure raised.
BROKEN_RUN = settings(FAST, phases=[Phase.generate], report_multiple_bugs=False)
_PROPERTIES: dict[str, tuple[Callable[..., None], dict[str, Any]]] = {}


def prop(**strategies: SearchStrategy[Any]) -> Callable[[Callable[..., None]], Callable[[], None]]:
    """``@FAST @given(...)``, keeping the strategies so a broken build can run it again."""

    def wrap(fn: Callable[..., None]) -> Callable[[], None]:
        test: Callable[[], None] = FAST(given(**strategies)(fn))
        _PROPERTIES[fn.__name__] = (fn, strategies)
        return test

    return wrap


def run_broken(test: Callable[[], None]) -> None:
    fn, strategies = _PROPERTIES[test.__name__]
    BROKEN_RUN(given(**strategies)(fn))()


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


@prop(
    prefix=st.text(max_size=80),
    suffix=st.text(max_size=80),
    secret=st.from_regex(r"[A-Za-z]{4,10}[0-9][A-Za-z0-9_-]{8,30}", fullmatch=True),
)
def test_planted_secrets_never_survive(prefix: str, suffix: str, secret: str) -> None:
    assume(secret not in prefix and secret not in suffix)
    for planted in planted_texts(prefix, secret, suffix):
        result = redaction.redact(planted)  # through the module: the broken build patches it
        assert secret not in result, planted
        assert REDACTED in result


def planted_texts(prefix: str, secret: str, suffix: str) -> Iterator[str]:
    yield f"{prefix}\nAuthorization: Bearer {secret}\n{suffix}"
    yield f"{prefix} Bearer {secret} {suffix}"
    yield f"{prefix}?access_token={secret}&{suffix}"
    yield f'{prefix}{{"refresh_token": "{secret}"}}{suffix}'


# --- correctness: the status decides, whatever the body -----------------------------------

E = ErrorType
# Written out from DESIGN s4 and the vendor rules, not read from the code under test. A set
# where a vendor shape legitimately refines the status (a 403 that is GitHub's rate limit).
STATUS_TYPES: dict[int, set[ErrorType]] = {
    400: {E.BAD_REQUEST, E.AUTH_INVALID},  # OAuth invalid_grant
    401: {E.AUTH_EXPIRED, E.AUTH_INVALID},
    403: {E.PERMISSION_DENIED, E.RATE_LIMITED, E.QUOTA_EXHAUSTED},
    404: {E.NOT_FOUND},
    407: {E.AUTH_INVALID},
    408: {E.TIMEOUT},
    409: {E.CONFLICT},
    410: {E.NOT_FOUND},
    412: {E.CONFLICT},
    418: {E.BAD_REQUEST},
    422: {E.BAD_REQUEST},
    429: {E.RATE_LIMITED, E.QUOTA_EXHAUSTED},
    500: {E.INTERNAL_ERROR},
    502: {E.SERVICE_DOWN},
    503: {E.SERVICE_DOWN, E.RATE_LIMITED},  # Graph's throttled 503
    504: {E.TIMEOUT},
    507: {E.INTERNAL_ERROR},
    599: {E.INTERNAL_ERROR},
}
RETRYABLE_TYPES = {E.INTERNAL_ERROR, E.SERVICE_DOWN, E.TIMEOUT, E.RATE_LIMITED}


def _not_slack(body: Any) -> bool:
    # Slack's ok:false envelope is classified by its error code whatever the status.
    return not (isinstance(body, dict) and body.get("ok") is False)


class Nested(bytes):
    """A deeply nested JSON body, shown by its size (a failure report would print 200 kB)."""

    def __repr__(self) -> str:
        return f"Nested({self[:12]!r}... {len(self)} bytes)"


depths = st.integers(1, 3000) | st.just(100_000)  # the recursion limit is about 1000
hostile_bodies = st.one_of(
    vendor_bodies.filter(_not_slack).map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=300),  # non-UTF-8, truncated JSON
    st.text(max_size=200).map(str.encode),
    depths.map(lambda d: Nested(b"[" * d + b"]" * d)),  # nested past any parser
    depths.map(lambda d: Nested(b'{"error":' * d + b"1" + b"}" * d)),
    st.just(b'{"message": "caf\xe9 \xff\xfe", "code": "\xc3\x28"}'),
)
plain_headers = st.dictionaries(header_names, header_values, max_size=4)
carriers = st.sampled_from(["response", "status_error", "integration_failure", "envelope"])


def outcome_of(carrier: str, status: int, hdrs: dict[str, str], content: bytes) -> object:
    """One failed call as each path delivers it: a response, raised, wrapped, or a dict."""
    if carrier == "envelope":
        return {"status_code": status, "headers": hdrs, "body": content.decode("latin-1")}
    if carrier == "integration_failure":
        return IntegrationFailure(
            f"crm answered {status}", status_code=status, headers=hdrs, body=content
        )
    try:
        response = httpx.Response(status, headers=hdrs, content=content, request=REQUEST)
    except Exception:  # httpx rejects some header names/values itself
        assume(False)
        raise
    if carrier == "status_error":
        return httpx.HTTPStatusError("boom", request=REQUEST, response=response)
    return response


def verdict_of(outcome: object, *, now: datetime = NOW) -> Classification:
    failure = detect_error(outcome, connector="crm", operation="get_contact")
    assert failure is not None, "a failed call went undetected"
    return classify_error(failure, now=now)


@prop(
    status=st.sampled_from(sorted(STATUS_TYPES)),
    carrier=carriers,
    hdrs=plain_headers,
    content=hostile_bodies,
)
def test_status_decides_the_error_type(
    status: int, carrier: str, hdrs: dict[str, str], content: bytes
) -> None:
    verdict = verdict_of(outcome_of(carrier, status, hdrs, content))
    check(verdict)
    assert (verdict.status_code, verdict.error_type in STATUS_TYPES[status]) == (status, True), (
        f"HTTP {status} classified {verdict.error_type} by {verdict.rule}"
    )
    if status >= 500:
        assert verdict.error_type in RETRYABLE_TYPES and verdict.retryable, verdict


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


# Epoch seconds from 1e9 (2001) up to 1e11 (year 5138), beyond which numbers read as ms.
whole_seconds = st.datetimes(
    min_value=datetime(2002, 1, 1), max_value=datetime(5000, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=0))


@prop(
    seconds=st.integers(0, 3600),
    shape=st.sampled_from(["delta", "date", "epoch", "epoch_ms"]),
    status=st.sampled_from([429, 503]),
    content=hostile_bodies,
    now=whole_seconds,
)
def test_stated_wait_is_the_wait(
    seconds: int, shape: str, status: int, content: bytes, now: datetime
) -> None:
    epoch = int(now.timestamp()) + seconds
    value = {
        "delta": str(seconds),
        "date": http_date(now + timedelta(seconds=seconds)),
        "epoch": str(epoch),
        "epoch_ms": str(epoch * 1000),
    }[shape]
    response = httpx.Response(
        status, headers={"Retry-After": value}, content=content, request=REQUEST
    )
    verdict = verdict_of(response, now=now)
    assert verdict.error_type in STATUS_TYPES[status] and verdict.retryable, verdict
    assert verdict.retry_after_s == pytest.approx(seconds), (shape, value, verdict)


def _mixed(text: str) -> bool:
    return any(c.isdigit() for c in text) and any(c.isalpha() for c in text)


# Ids of one kind each: a number and a uuid are different shapes of message, on purpose.
id_kinds = st.sampled_from(
    [
        st.integers(0, 10**12).map(str),
        st.uuids().map(str),
        st.from_regex(r"[A-Za-z]{3,6}[0-9]{3,10}", fullmatch=True),
        st.from_regex(r"[0-9a-f]{8,24}", fullmatch=True).filter(_mixed),  # ObjectId-like
    ]
)


@prop(
    ids=id_kinds.flatmap(lambda kind: st.tuples(kind, kind)),
    status=st.sampled_from([404, 409, 422, 500]),
)
def test_fingerprints_ignore_ids_but_not_the_error(ids: tuple[str, str], status: int) -> None:
    def fingerprint(ident: str, code: int) -> str:
        body = {"message": f"Contact {ident} not found at https://api.example.com/c/{ident}"}
        return verdict_of(httpx.Response(code, json=body, request=REQUEST)).fingerprint

    first, second = ids
    assert fingerprint(first, status) == fingerprint(second, status), ids
    other = 410 if status == 404 else 404
    assert fingerprint(first, status) != fingerprint(first, other), "fingerprint ignores status"


@prop(short=st.integers(0, 9_999_999), long=st.integers(10**7, 10**12))
def test_fingerprints_ignore_the_length_of_numeric_ids(short: int, long: int) -> None:
    assert message_template(f"contact {short} not found") == message_template(
        f"contact {long} not found"
    )


secrets = st.from_regex(r"[A-Za-z]{4,10}[0-9][A-Za-z0-9_-]{8,30}", fullmatch=True)


@prop(
    prefix=st.text(max_size=60),
    suffix=st.text(max_size=60),
    secret=secrets,
    status=st.sampled_from([400, 401, 403, 500]),
)
def test_no_secret_reaches_a_verdict(prefix: str, suffix: str, secret: str, status: int) -> None:
    assume(secret not in prefix and secret not in suffix)
    for planted in planted_texts(prefix, secret, suffix):
        body = {"error": {"message": planted, "code": f"access_token={secret}"}}
        exc = IntegrationFailure(planted, status_code=status, body=json.dumps(body))
        verdict = verdict_of(exc)
        assert secret not in verdict.model_dump_json(), planted


# --- the correctness properties fail against a broken build --------------------------------


def _raise(*args: object, **kwargs: object) -> Any:
    raise RuntimeError("broken build")


def _identity(text: Any) -> Any:
    return text


BROKEN: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    # classify_error's own safety net catches this: every verdict is its INTERNAL_ERROR default.
    "always_falls_back": lambda mp: mp.setattr(classify_module, "_classify", _raise),
    "everything_internal_error": lambda mp: mp.setattr(
        classify_module, "DEFAULT_RULES", (Rule(name="everything", error_type=E.INTERNAL_ERROR),)
    ),
    "template_keeps_ids": lambda mp: mp.setattr(classify_module, "message_template", _identity),
    "classify_redacts_nothing": lambda mp: mp.setattr(classify_module, "redact", _identity),
    "redactor_does_nothing": lambda mp: mp.setattr(redaction, "redact", _identity),
}


@pytest.mark.parametrize(
    ("prop", "broken"),
    [
        (test_status_decides_the_error_type, "always_falls_back"),
        (test_status_decides_the_error_type, "everything_internal_error"),
        (test_stated_wait_is_the_wait, "always_falls_back"),
        (test_stated_wait_is_the_wait, "everything_internal_error"),
        (test_fingerprints_ignore_ids_but_not_the_error, "always_falls_back"),
        (test_fingerprints_ignore_ids_but_not_the_error, "template_keeps_ids"),
        (test_no_secret_reaches_a_verdict, "classify_redacts_nothing"),
        (test_planted_secrets_never_survive, "redactor_does_nothing"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.__name__.removeprefix("test_"),
)
def test_property_fails_against_a_broken_build(
    prop: Callable[[], None], broken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    BROKEN[broken](monkeypatch)
    # An AssertionError of the property itself; a crash of the test would not match.
    with pytest.raises(AssertionError):
        run_broken(prop)


def test_totality_alone_cannot_tell_a_broken_build() -> None:
    # Why the properties above exist: the old ones pass even when classification is broken.
    with pytest.MonkeyPatch.context() as mp:
        BROKEN["always_falls_back"](mp)
        test_any_response_classifies()
        test_any_failure_classifies()
