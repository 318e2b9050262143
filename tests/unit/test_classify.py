"""Classification as a table: real responses and real exceptions in, matrix verdicts out."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pydantic
import pytest

from healing.classify import (
    DEFAULT_RULES,
    Failure,
    Rule,
    classify_error,
    detect_error,
    fingerprint,
    load_rules,
    message_template,
)
from healing.config import HealingConfig
from healing.errors import (
    ConfigError,
    CredentialError,
    GrantRevoked,
    IntegrationFailure,
    RequestRefused,
    ResponseTooLarge,
    SchemaMismatch,
)
from healing.matrix import MatrixRow
from healing.types import ErrorType, HealingStrategy

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)
EPOCH = int(NOW.timestamp())
REQUEST = httpx.Request("GET", "https://api.example.com/v1/contacts/42")
T = ErrorType


def response(
    status: int, body: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    if body is None:
        content = b""
    else:
        content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return httpx.Response(status, headers=headers or {}, content=content, request=REQUEST)


def status_error(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Exception:
    try:
        response(status, body, headers).raise_for_status()
    except httpx.HTTPStatusError as exc:
        return exc
    raise AssertionError("raise_for_status did not raise")


def raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """Raise for real so the exception carries a traceback and chaining as in production."""
    try:
        if cause is None:
            raise exc
        raise exc from cause
    except BaseException as caught:
        return caught


def validation_error() -> Exception:
    class Contact(pydantic.BaseModel):
        email: str

    try:
        Contact.model_validate({"email_address": "a@b.com"})
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("no validation error")


SF_SESSION = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
SF_LIMIT = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
SF_DOWN = [{"message": "Server Unavailable", "errorCode": "SERVER_UNAVAILABLE"}]
GOOGLE_401 = {
    "error": {
        "code": 401,
        "message": "Request had invalid authentication credentials.",
        "status": "UNAUTHENTICATED",
    }
}
GOOGLE_WWW = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
HUBSPOT_HEADERS = {
    "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
    "X-HubSpot-RateLimit-Max": "100",
    "X-HubSpot-RateLimit-Remaining": "0",
}


def hubspot(policy: str) -> dict[str, str]:
    return {
        "status": "error",
        "message": f"You have reached your {policy.lower()} limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": "5f8b8c3e-1a2b-4c3d-9e8f-0a1b2c3d4e5f",
        "policyName": policy,
        "requestId": "7c2b1a7e",
    }


GH_SECONDARY = {
    "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you "
    "try again.",
    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
}
GRAPH_429 = {
    "error": {
        "code": "activityLimitReached",
        "message": "The request has been throttled",
        "innerError": {"code": "throttledRequest"},
    }
}
STRIPE_IN_USE = {
    "error": {
        "code": "idempotency_key_in_use",
        "type": "invalid_request_error",
        "message": "There is currently another in-progress request using this Idempotent Key.",
    }
}
STRIPE_IDEM = {
    "error": {
        "type": "idempotency_error",
        "message": "Keys for idempotent requests can only be used with the same parameters.",
    }
}


def p(
    outcome: object,
    error_type: ErrorType,
    retryable: bool,
    retry_after: float | None,
    id: str,
    **extra: Any,
) -> Any:
    return pytest.param(outcome, error_type, retryable, retry_after, extra, id=id)


TABLE = [
    # --- VENDOR-FAULTS.md, row by row ---
    p(response(401, SF_SESSION), T.AUTH_EXPIRED, True, None, "1-salesforce-session",
      rule="salesforce_invalid_session", vendor_code="INVALID_SESSION_ID"),
    p(response(400, {"error": "invalid_grant", "error_description": "expired refresh token"}),
      T.AUTH_INVALID, False, None, "1b-refresh-fails", rule="oauth_invalid_grant"),
    p(response(401, GOOGLE_401, {"WWW-Authenticate": GOOGLE_WWW}), T.AUTH_EXPIRED, True, None,
      "2-google-invalid-token", rule="google_invalid_token", vendor_code="UNAUTHENTICATED"),
    p(response(400, {"error": "invalid_grant", "error_description": "Token has been revoked."}),
      T.AUTH_INVALID, False, None, "2b-google-revoked", vendor_code="invalid_grant"),
    p(status_error(401, GOOGLE_401, {"WWW-Authenticate": GOOGLE_WWW}), T.AUTH_EXPIRED, True, None,
      "2c-clock-skew-401-via-raise-for-status"),
    p(response(400, {"error": "invalid_grant"}), T.AUTH_INVALID, False, None, "3-rotation-race"),
    p(response(429, hubspot("TEN_SECONDLY_ROLLING"), HUBSPOT_HEADERS), T.RATE_LIMITED, True, 10.0,
      "4-hubspot-burst", rule="hubspot_rolling_limit", benign=True, escalate_now=False),
    p(response(429, hubspot("DAILY"), HUBSPOT_HEADERS), T.RATE_LIMITED, True, None,
      "4b-hubspot-daily", rule="hubspot_daily_limit", escalate_now=True, benign=False),
    p(response(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "30"}), T.RATE_LIMITED,
      True, 30.0, "5-slack-429", rule="slack_ratelimited", vendor_code="ratelimited"),
    p(response(200, {"ok": False, "error": "token_expired"}), T.AUTH_EXPIRED, True, None,
      "5b-slack-token-expired", rule="slack_token_expired"),
    p(response(200, {"ok": False, "error": "invalid_auth"}), T.AUTH_INVALID, False, None,
      "5b-slack-invalid-auth"),
    p(response(200, {"ok": False, "error": "token_revoked"}), T.AUTH_INVALID, False, None,
      "5b-slack-token-revoked"),
    p({"ok": False, "error": "account_inactive"}, T.AUTH_INVALID, False, None,
      "5b-slack-sdk-dict-account-inactive"),
    p({"ok": False, "error": "token_expired", "warning": "x"}, T.AUTH_EXPIRED, True, None,
      "5b-slack-sdk-dict-token-expired"),
    p(response(200, {"ok": False, "error": "channel_not_found"}), T.NOT_FOUND, False, None,
      "slack-channel-not-found"),
    p(response(200, {"ok": False, "error": "invalid_arguments"}), T.BAD_REQUEST, False, None,
      "slack-other-error", rule="slack_error"),
    p(response(403, GH_SECONDARY, {"retry-after": "60"}), T.RATE_LIMITED, True, 60.0,
      "6-github-secondary-403", rule="github_secondary_rate_limit"),
    p(response(429, GH_SECONDARY), T.RATE_LIMITED, True, None, "6-github-secondary-429-no-header"),
    p(response(403, {"message": "slow down"}, {"Retry-After": "17"}), T.RATE_LIMITED, True, 17.0,
      "403-with-retry-after", rule="forbidden_with_retry_after"),
    p(response(403, {"message": "API rate limit exceeded"},
               {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(EPOCH + 120)}),
      T.RATE_LIMITED, True, 120.0, "6b-github-primary-403", rule="github_primary_rate_limit"),
    p(response(429, None, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(EPOCH + 5)}),
      T.RATE_LIMITED, True, 5.0, "6b-github-primary-429"),
    p(response(403, {"message": "Resource not accessible by integration"},
               {"x-ratelimit-remaining": "4999", "x-ratelimit-reset": str(EPOCH + 120)}),
      T.PERMISSION_DENIED, False, None, "6c-github-real-403", rule="status:403"),
    p(response(409, STRIPE_IN_USE), T.CONFLICT, True, None, "7b-stripe-key-in-use",
      rule="stripe_idempotency_in_use", vendor_code="idempotency_key_in_use"),
    p(response(400, STRIPE_IDEM), T.BAD_REQUEST, False, None, "7c-stripe-idempotency-error",
      rule="stripe_idempotency_error", vendor_code="idempotency_error"),
    p(response(403, SF_LIMIT, {"Sforce-Limit-Info": "api-usage=15000/15000"}), T.QUOTA_EXHAUSTED,
      False, None, "8-salesforce-quota", escalate_now=True, vendor_code="REQUEST_LIMIT_EXCEEDED"),
    p(response(503, SF_DOWN), T.SERVICE_DOWN, True, None, "9-salesforce-outage",
      rule="salesforce_server_unavailable"),
    p(response(429, GRAPH_429, {"Retry-After": "41"}), T.RATE_LIMITED, True, 41.0,
      "9b-graph-41", rule="graph_throttled", vendor_code="activityLimitReached"),
    p(response(429, GRAPH_429, {"Retry-After": "315"}), T.RATE_LIMITED, True, 315.0,
      "9b-graph-315"),
    p(raised(SchemaMismatch("contact does not fit Contact", missing=["email"],
                            mapping={"email_address": "email"}, connector="crm")),
      T.SCHEMA_MISMATCH, True, None, "10-schema-rename", schema_mapping={"email_address": "email"}),
    p(raised(ResponseTooLarge("crm.list answered 200 with a body over max_response_bytes",
                              limit=1024, status_code=200, connector="crm")),
      T.RESPONSE_TOO_LARGE, False, None, "response-over-max-response-bytes", status_code=200),
    p(raised(RequestRefused("crm.get needs params id"), ConfigError("x")), T.BAD_REQUEST, False,
      None, "request-refused-by-the-activity"),
    p(response(403, {"error": {"code": 403, "errors": [{"reason": "rateLimitExceeded"}]}}),
      T.RATE_LIMITED, True, None, "google-403-rate-limit", rule="google_rate_limit"),
    p(response(403, {"error": {"code": 403, "errors": [{"reason": "dailyLimitExceeded"}]}}),
      T.QUOTA_EXHAUSTED, False, None, "google-403-daily", escalate_now=True),
    # --- generic statuses ---
    p(response(400, "bad"), T.BAD_REQUEST, False, None, "400"),
    p(response(401), T.AUTH_EXPIRED, True, None, "401-refresh-once", rule="status:401"),
    p(response(403, "Forbidden"), T.PERMISSION_DENIED, False, None, "403"),
    p(response(404, {"message": "contact 42 not found"}), T.NOT_FOUND, False, None, "404"),
    p(response(405), T.BAD_REQUEST, False, None, "405-other-4xx"),
    p(response(408), T.TIMEOUT, True, None, "408"),
    p(response(409, {"message": "version conflict"}), T.CONFLICT, True, None, "409"),
    p(response(410), T.NOT_FOUND, False, None, "410"),
    p(response(422, {"errors": ["email is invalid"]}), T.BAD_REQUEST, False, None, "422"),
    p(response(429), T.RATE_LIMITED, True, None, "429-bare", benign=True),
    p(response(429, None, {"Retry-After": format_datetime(NOW + timedelta(seconds=90))}),
      T.RATE_LIMITED, True, 90.0, "429-http-date"),
    p(response(429, None, {"Retry-After": "soon"}), T.RATE_LIMITED, True, None, "429-garbage"),
    p(response(500, "<html>oops</html>"), T.INTERNAL_ERROR, True, None, "500", rule="status:500"),
    p(response(501), T.INTERNAL_ERROR, True, None, "501"),
    p(response(502), T.SERVICE_DOWN, True, None, "502"),
    p(response(503, None, {"Retry-After": "120"}), T.SERVICE_DOWN, True, 120.0, "503-retry-after"),
    p(response(504), T.TIMEOUT, True, None, "504"),
    p(response(599), T.INTERNAL_ERROR, True, None, "599"),
    p(status_error(502, "Bad Gateway"), T.SERVICE_DOWN, True, None, "raise-for-status-502",
      exception="httpx.HTTPStatusError"),
    p({"status_code": 503, "headers": {"Retry-After": "7"}, "body": "{}"}, T.SERVICE_DOWN, True,
      7.0, "dict-envelope-503"),
    # --- exceptions ---
    p(raised(httpx.ReadTimeout("timed out", request=REQUEST)), T.TIMEOUT, True, None,
      "read-timeout", exception="httpx.ReadTimeout", rule="exception:TimeoutException"),
    p(raised(httpx.ConnectTimeout("connect timed out")), T.TIMEOUT, True, None, "connect-timeout"),
    p(raised(httpx.PoolTimeout("pool")), T.TIMEOUT, True, None, "pool-timeout"),
    p(raised(httpx.WriteTimeout("write")), T.TIMEOUT, True, None, "write-timeout"),
    p(raised(TimeoutError()), T.TIMEOUT, True, None, "builtin-timeout", exception="TimeoutError"),
    p(raised(httpx.ProxyError("proxy went away")), T.NETWORK_ERROR, True, None, "proxy-error"),
    p(raised(http.client.IncompleteRead(b"{\"id\": 4")), T.NETWORK_ERROR, True, None,
      "incomplete-read"),
    p(raised(httpx.ConnectError("[Errno 111] Connection refused")), T.SERVICE_DOWN, True, None,
      "connect-error", rule="exception:ConnectError"),
    p(raised(ConnectionRefusedError(111, "Connection refused")), T.SERVICE_DOWN, True, None,
      "connection-refused"),
    p(raised(httpx.RemoteProtocolError("Server disconnected without sending a response.")),
      T.NETWORK_ERROR, True, None, "remote-protocol-error"),
    p(raised(httpx.ReadError("[Errno 104] Connection reset by peer")), T.NETWORK_ERROR, True, None,
      "read-error"),
    p(raised(httpx.WriteError("broken pipe")), T.NETWORK_ERROR, True, None, "write-error"),
    p(raised(ConnectionResetError(104, "Connection reset by peer")), T.NETWORK_ERROR, True, None,
      "connection-reset"),
    p(raised(BrokenPipeError(32, "Broken pipe")), T.NETWORK_ERROR, True, None, "broken-pipe"),
    p(raised(socket.gaierror(-2, "Name or service not known")), T.NETWORK_ERROR, True, None,
      "dns-failure"),
    p(raised(OSError(5, "I/O error")), T.NETWORK_ERROR, True, None, "oserror"),
    p(raised(json.JSONDecodeError("Unterminated string", '{"id": "12', 7)), T.NETWORK_ERROR, True,
      None, "truncated-json"),
    p(raised(httpx.UnsupportedProtocol("Request URL is missing a scheme")), T.BAD_REQUEST, False,
      None, "unsupported-protocol"),
    p(validation_error(), T.SCHEMA_MISMATCH, True, None, "pydantic-validation",
      exception="pydantic_core.ValidationError"),
    p(raised(GrantRevoked("refresh grant dead", connector="crm")), T.AUTH_INVALID, False, None,
      "grant-revoked"),
    p(raised(CredentialError("no credential for crm")), T.AUTH_INVALID, False, None,
      "credential-missing"),
    p(raised(IntegrationFailure("upstream said 502", status_code=502, connector="crm")),
      T.SERVICE_DOWN, True, None, "integration-failure-502"),
    p(raised(IntegrationFailure("crm call failed", connector="crm"), httpx.ReadTimeout("slow")),
      T.TIMEOUT, True, None, "wrapped-timeout-cause", exception="httpx.ReadTimeout"),
    p(raised(RuntimeError("crm call failed"), status_error(503, SF_DOWN)), T.SERVICE_DOWN, True,
      None, "wrapped-status-error-cause", rule="salesforce_server_unavailable"),
    p(raised(ValueError("unexpected value")), T.INTERNAL_ERROR, True, None, "generic-valueerror",
      rule="default"),
    p(raised(KeyError("id")), T.INTERNAL_ERROR, True, None, "generic-keyerror"),
    p(raised(FileNotFoundError(2, "No such file")), T.INTERNAL_ERROR, True, None, "file-not-found"),
]  # fmt: skip


@pytest.mark.parametrize(("outcome", "error_type", "retryable", "retry_after", "extra"), TABLE)
def test_classification_table(
    outcome: object,
    error_type: ErrorType,
    retryable: bool,
    retry_after: float | None,
    extra: dict[str, Any],
) -> None:
    failure = detect_error(outcome, connector="crm", operation="get_contact")
    assert failure is not None
    verdict = classify_error(failure, now=NOW)
    assert verdict.error_type is error_type
    assert verdict.retryable is retryable
    if retry_after is None:
        assert verdict.retry_after_s is None
    else:
        assert verdict.retry_after_s == pytest.approx(retry_after)
    for key, value in extra.items():
        actual = getattr(failure, key) if key == "exception" else getattr(verdict, key)
        assert actual == value, key
    assert verdict.message and len(verdict.message) <= 500
    assert len(verdict.fingerprint) == 16


def test_table_is_big_enough_and_covers_every_type_it_claims() -> None:
    assert len(TABLE) >= 45
    covered = {row.values[1] for row in TABLE}
    assert covered >= set(ErrorType) - {ErrorType.CIRCUIT_OPEN}  # tested on its own below


# --- detect_error on results ---


@pytest.mark.parametrize(
    "result",
    [
        response(200, {"id": "42"}),
        response(201, {"ok": True}),
        response(204),
        response(302, None, {"Location": "/elsewhere"}),
        {"ok": True, "channel": "C1"},
        {"status": "error", "message": "HubSpot-like text without an HTTP status"},
        {"status_code": 503},  # no headers/body: not clearly an HTTP envelope
        {"status_code": 200, "headers": {}, "body": "fine"},
        {"status": True, "body": "x"},
        None,
        "ok",
        [1, 2, 3],
        42,
    ],
)
def test_successful_results_are_not_failures(result: object) -> None:
    assert detect_error(result) is None


def test_cancellation_is_not_a_failure() -> None:
    assert detect_error(asyncio.CancelledError()) is None
    assert detect_error(KeyboardInterrupt()) is None


def test_response_failure_fields() -> None:
    failure = detect_error(
        response(429, hubspot("DAILY"), HUBSPOT_HEADERS), connector="hubspot", operation="search"
    )
    assert failure is not None
    assert failure.status_code == 429
    assert failure.headers["x-hubspot-ratelimit-remaining"] == "0"
    assert all(k == k.lower() for k in failure.headers)
    assert failure.body["policyName"] == "DAILY"
    assert failure.exception is None
    assert (failure.connector, failure.operation) == ("hubspot", "search")
    assert failure.message == "HTTP 429 Too Many Requests: You have reached your daily limit."


def test_text_and_truncated_bodies_stay_text() -> None:
    html = detect_error(response(502, "<html>Bad gateway</html>"))
    truncated = detect_error(response(500, '{"error": {"message": "tru'))
    assert html is not None and html.body == "<html>Bad gateway</html>"
    assert truncated is not None and truncated.body == '{"error": {"message": "tru'


def test_unread_streamed_response_still_detected() -> None:
    streamed = httpx.Response(503, stream=httpx.ByteStream(b"{}"), request=REQUEST)
    failure = detect_error(streamed)
    assert failure is not None
    assert failure.status_code == 503 and failure.body is None


def test_dict_envelope_is_normalised() -> None:
    failure = detect_error(
        {"status": 429, "headers": {"Retry-After": "3"}, "body": b'{"message": "slow down"}'}
    )
    assert failure is not None
    assert failure.headers == {"retry-after": "3"}
    assert failure.body == {"message": "slow down"}
    assert failure.message == "HTTP 429: slow down"


def test_detect_error_passes_failures_through() -> None:
    failure = Failure(status_code=500, message="boom")
    assert detect_error(failure) is failure


# --- detect_error on exceptions ---


def test_integration_failure_fields_are_used() -> None:
    exc = IntegrationFailure(
        "crm said no",
        status_code=401,
        headers={"WWW-Authenticate": GOOGLE_WWW},
        body=json.dumps(GOOGLE_401).encode(),
        connector="google",
        operation="list_events",
    )
    failure = detect_error(raised(exc))
    assert failure is not None
    assert failure.status_code == 401
    assert failure.headers == {"www-authenticate": GOOGLE_WWW}
    assert failure.body == GOOGLE_401
    assert (failure.connector, failure.operation) == ("google", "list_events")
    assert failure.exception == "healing.errors.IntegrationFailure"
    assert failure.message == "crm said no"


def test_explicit_connector_wins_over_the_exception() -> None:
    exc = IntegrationFailure("x", status_code=500, connector="inner")
    failure = detect_error(exc, connector="outer")
    assert failure is not None and failure.connector == "outer"


def test_connector_found_on_an_outer_wrapper_of_a_telling_cause() -> None:
    exc = raised(
        IntegrationFailure("call failed", connector="crm", operation="get"),
        httpx.ConnectError("refused"),
    )
    failure = detect_error(exc)
    assert failure is not None
    assert failure.exception == "httpx.ConnectError"
    assert (failure.connector, failure.operation) == ("crm", "get")
    assert "httpx.TransportError" in failure.exception_mro


def test_implicit_context_is_walked_too() -> None:
    try:
        try:
            raise httpx.ReadTimeout("slow")
        except httpx.ReadTimeout:
            raise RuntimeError("while calling crm") from None
    except RuntimeError as suppressed:
        hidden = suppressed
    try:
        try:
            raise httpx.ReadTimeout("slow")
        except httpx.ReadTimeout:
            raise RuntimeError("while calling crm")  # noqa: B904
    except RuntimeError as chained:
        implicit = chained
    assert classify_error(detect_error(hidden), now=NOW).error_type is T.INTERNAL_ERROR  # type: ignore[arg-type]
    assert classify_error(detect_error(implicit), now=NOW).error_type is T.TIMEOUT  # type: ignore[arg-type]


def test_cause_cycles_terminate() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    failure = detect_error(a)
    assert failure is not None and failure.exception == "ValueError"


def test_exception_with_broken_str_is_still_detected() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    failure = detect_error(Weird())
    assert failure is not None
    assert classify_error(failure, now=NOW).error_type is T.INTERNAL_ERROR


# --- rules as data ---


def test_user_rules_extend_the_matrix_per_connector() -> None:
    config = HealingConfig(
        rules=[
            {
                "name": "crm_404_is_replication_lag",
                "connector": "crm*",
                "status": [404],
                "error_type": "service_down",
                "max_attempts": 5,
                "strategy": "retry_backoff",
            },
        ]
    )
    crm = classify_error(Failure(status_code=404, connector="crm_eu"), config=config, now=NOW)
    other = classify_error(Failure(status_code=404, connector="billing"), config=config, now=NOW)
    assert (crm.error_type, crm.rule, crm.max_attempts) == (
        T.SERVICE_DOWN,
        "crm_404_is_replication_lag",
        5,
    )
    assert crm.strategy is HealingStrategy.RETRY_BACKOFF and crm.retryable
    assert (other.error_type, other.rule, other.retryable) == (T.NOT_FOUND, "status:404", False)


def test_user_rules_come_before_vendor_rules() -> None:
    config = HealingConfig(
        rules=[
            {
                "name": "our_sf_sessions_never_refresh",
                "status": [401],
                "body_field": {"0.errorCode": "INVALID_SESSION_ID"},
                "error_type": "AUTH_INVALID",
            }
        ]
    )
    verdict = classify_error(Failure(status_code=401, body=SF_SESSION), config=config, now=NOW)
    assert (verdict.error_type, verdict.rule) == (T.AUTH_INVALID, "our_sf_sessions_never_refresh")


def test_rule_matching_by_exception_hierarchy_header_and_regex_fields() -> None:
    rules = load_rules(
        HealingConfig(
            rules=[
                {
                    "name": "slow_vendor",
                    "exception": ["TimeoutException"],
                    "connector": "slow",
                    "error_type": "SERVICE_DOWN",
                },
                {
                    "name": "maintenance",
                    "header": {"X-Maintenance": "*"},
                    "error_type": "SERVICE_DOWN",
                    "retry_after_header": "X-Maintenance-Ends-In",
                },
                {
                    "name": "nested",
                    "body_field": {"data.items.1.code": "E[0-9]+", "data.final": True},
                    "message_regex": "(?i)batch",
                    "error_type": "BAD_REQUEST",
                },
            ]
        )
    )
    assert all(isinstance(r, Rule) for r in rules)
    slow = detect_error(httpx.ReadTimeout("slow"), connector="slow")
    fast = detect_error(httpx.ReadTimeout("slow"), connector="fast")
    assert classify_error(slow, rules=rules, now=NOW).rule == "slow_vendor"  # type: ignore[arg-type]
    assert classify_error(fast, rules=rules, now=NOW).error_type is T.TIMEOUT  # type: ignore[arg-type]
    maint = Failure(status_code=500, headers={"x-maintenance": "1", "x-maintenance-ends-in": "45"})
    verdict = classify_error(maint, rules=rules, now=NOW)
    assert (verdict.rule, verdict.retry_after_s) == ("maintenance", 45.0)

    def rule_for(body: Any, message: str) -> str:
        return classify_error(Failure(body=body, message=message), rules=rules, now=NOW).rule

    body = {"data": {"items": [{"code": "ok"}, {"code": "E42"}], "final": True}}
    assert rule_for(body, "Batch failed") == "nested"
    assert rule_for(body, "single call failed") == "default"
    assert rule_for({"data": {"items": [{}, {"code": "E42"}], "final": 1}}, "batch") == "default"
    assert rule_for({"data": {"items": [{"code": "E42"}], "final": True}}, "batch") == "default"


def test_circuit_open_failure_gets_its_matrix_row() -> None:
    failure = Failure(exception="healing.CircuitOpen", message="circuit for crm is open")
    verdict = classify_error(failure, now=NOW)
    assert verdict.error_type is T.CIRCUIT_OPEN
    assert verdict.strategy is HealingStrategy.WAIT_CIRCUIT and verdict.retryable


def test_config_matrix_overrides_are_used() -> None:
    row = MatrixRow(
        transient=True, retryable=True, strategy=HealingStrategy.RETRY_BACKOFF, max_attempts=7
    )
    config = HealingConfig(matrix={T.TIMEOUT: row})
    verdict = classify_error(detect_error(TimeoutError()), config=config, now=NOW)  # type: ignore[arg-type]
    assert verdict.max_attempts == 7


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"name": "typo", "stauts": [429], "error_type": "RATE_LIMITED"}, "'typo'"),
        ({"name": "bad_type", "status": [500], "error_type": "EXPLODED"}, "'bad_type'"),
        ({"name": "bad_regex", "message_regex": "([x", "error_type": "TIMEOUT"}, "'bad_regex'"),
        ({"name": "bad_header", "header": {"x": "(("}, "error_type": "TIMEOUT"}, "'bad_header'"),
        (
            {"name": "bad_field", "body_field": {"a": "[z-a]"}, "error_type": "TIMEOUT"},
            "'bad_field'",
        ),
        ({"status": [500], "error_type": "TIMEOUT"}, "rule #0"),
        ({"name": "no_type", "status": [500]}, "'no_type'"),
        ({"name": "neg", "error_type": "TIMEOUT", "max_attempts": -1}, "'neg'"),
    ],
)
def test_bad_rule_is_a_config_error_naming_it(raw: dict[str, Any], needle: str) -> None:
    config = HealingConfig(rules=[raw])
    with pytest.raises(ConfigError, match="invalid classification rule") as info:
        load_rules(config)
    assert needle in str(info.value)
    with pytest.raises(ConfigError):
        classify_error(Failure(status_code=500), config=config, now=NOW)


def test_default_rules_are_well_formed() -> None:
    names = [rule.name for rule in DEFAULT_RULES]
    assert len(names) == len(set(names))
    assert load_rules(None) == ()
    for rule in DEFAULT_RULES:
        assert Rule.model_validate(rule.model_dump()) == rule


# --- messages and fingerprints ---


def test_classification_message_is_redacted_and_short() -> None:
    token = "ya29.a0AfH6SMBxYzAbCdEfGh1234567890"
    text = f"call failed with Authorization: Bearer {token}\n" + "x" * 2000
    failure = detect_error(IntegrationFailure(text, status_code=500))
    verdict = classify_error(failure, now=NOW)  # type: ignore[arg-type]
    assert token not in verdict.message
    assert "[REDACTED]" in verdict.message
    assert len(verdict.message) <= 500


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Contact 123 not found", "Contact 98765 not found"),
        ("user a@b.com is inactive", "user jane.doe+x@corp.example.org is inactive"),
        (
            "5f8b8c3e-1a2b-4c3d-9e8f-0a1b2c3d4e5f failed",
            "7c2b1a7e-9f3d-4a6b-8c1d-2e3f4a5b6c7d failed",
        ),
        ("No such column 'Foo__c' on entity", "No such column 'Bar__c' on entity"),
        ("record 0035g00000ABCdeF locked", "record 0035g00000XYZabC locked"),
        ("hash deadbeefcafe0123 mismatch", "hash 0123456789abcdef mismatch"),
        ("GET https://a.example.com/x/1 failed", "GET https://a.example.com/y/2?q=3 failed"),
        ("took 1.5s,  retry", "took 22.75s, retry"),
    ],
)
def test_fingerprint_stable_across_ids(first: str, second: str) -> None:
    assert message_template(first) == message_template(second)
    args = ("crm", "get_contact", T.NOT_FOUND, 404, None)
    assert fingerprint(*args, first) == fingerprint(*args, second)


def test_fingerprint_differs_across_types_and_context() -> None:
    base = fingerprint("crm", "get", T.TIMEOUT, None, None, "timed out")
    variants = {
        fingerprint("crm", "get", T.NETWORK_ERROR, None, None, "timed out"),
        fingerprint("erp", "get", T.TIMEOUT, None, None, "timed out"),
        fingerprint("crm", "put", T.TIMEOUT, None, None, "timed out"),
        fingerprint("crm", "get", T.TIMEOUT, 504, None, "timed out"),
        fingerprint("crm", "get", T.TIMEOUT, None, "X", "timed out"),
        fingerprint("crm", "get", T.TIMEOUT, None, None, "connection reset"),
    }
    assert base not in variants and len(variants) == 6
    assert len(base) == 16 and int(base, 16) >= 0


def test_classified_fingerprints_group_records_not_errors() -> None:
    def verdict(status: int, message: str) -> str:
        failure = detect_error(response(status, {"message": message}), connector="crm")
        return classify_error(failure, now=NOW).fingerprint  # type: ignore[arg-type]

    assert verdict(404, "contact 1 not found") == verdict(404, "contact 2 not found")
    assert verdict(404, "contact 1 not found") != verdict(410, "contact 1 not found")


@pytest.mark.parametrize(
    ("message", "template"),
    [
        ("contact 42 not found", "contact <n> not found"),
        ("a@b.com bounced", "<email> bounced"),
        ("id 5f8b8c3e-1a2b-4c3d-9e8f-0a1b2c3d4e5f", "id <uuid>"),
        ("field 'email' missing", "field <str> missing"),
        ('field "email" missing', "field <str> missing"),
        ("see https://x.io/a?b=1", "see <url>"),
        ("ref abc123def", "ref <id>"),
        ("  lots   of\nspace ", "lots of space"),
        ("Session expired or invalid", "Session expired or invalid"),
    ],
)
def test_message_template(message: str, template: str) -> None:
    assert message_template(message) == template


def test_now_only_matters_for_dates() -> None:
    failure = Failure(status_code=429, headers={"retry-after": "Fri, 14 Mar 2025 12:05:00 GMT"})
    assert classify_error(failure, now=NOW).retry_after_s == 300.0
    assert classify_error(failure, now=NOW + timedelta(minutes=4)).retry_after_s == 60.0


# --- hostile bodies: the status always wins (issue 6, item 5) ----------------------------------

DEEP_TEXT = "[" * 100_000 + "]" * 100_000


def _deep_list(depth: int) -> list[Any]:
    """Nested deeper than json.dumps or str() can go (built without recursion)."""
    root: list[Any] = []
    node = root
    for _ in range(depth):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


@pytest.mark.parametrize(
    "body",
    [
        DEEP_TEXT,
        DEEP_TEXT.encode(),
        b'{"message": "caf\xe9 \xff\xfe"}',
        b"\xff\xfe\x00{" * 1000,
        "{" * 50_000,
        '{"n": ' + "1" * 5000 + "}",  # past Python's int digit limit
        _deep_list(50_000),
    ],
    ids=["deep-text", "deep-bytes", "latin-1", "garbage", "unclosed", "huge-int", "deep-object"],
)
def test_a_404_with_an_unreadable_body_is_still_not_found(body: Any) -> None:
    exc = IntegrationFailure("crm.get_contact answered 404", status_code=404, body=body)
    failure = detect_error(exc)
    assert failure is not None and failure.status_code == 404
    cls = classify_error(failure, now=NOW)
    assert (cls.error_type, cls.status_code, cls.retryable) == (ErrorType.NOT_FOUND, 404, False)


def test_an_unparseable_body_is_kept_as_text_cut_short() -> None:
    failure = detect_error(IntegrationFailure("x", status_code=404, body=DEEP_TEXT))
    assert failure is not None
    assert isinstance(failure.body, str) and failure.body == DEEP_TEXT[:4096]


@pytest.mark.parametrize("body", [DEEP_TEXT.encode(), b"\xff\xfe{\x00\x01"])
def test_an_httpx_response_with_an_unreadable_body_keeps_its_status(body: bytes) -> None:
    response = httpx.Response(404, content=body, request=REQUEST)
    for outcome in (response, httpx.HTTPStatusError("404", request=REQUEST, response=response)):
        failure = detect_error(outcome)
        assert failure is not None
        assert classify_error(failure, now=NOW).error_type is ErrorType.NOT_FOUND


def test_a_dict_envelope_with_an_unreadable_body_keeps_its_status() -> None:
    failure = detect_error({"status_code": 404, "headers": {}, "body": DEEP_TEXT})
    assert failure is not None
    assert classify_error(failure, now=NOW).error_type is ErrorType.NOT_FOUND


def test_a_body_that_breaks_the_rules_still_classifies_by_status() -> None:
    # Past the parsers: a body no rule can even look at (json.dumps and str() both recurse).
    failure = Failure(status_code=404, body=_deep_list(50_000), message="HTTP 404")
    rule = Rule(name="crm_body", error_type=ErrorType.CONFLICT, body_contains="conflict")
    cls = classify_error(failure, now=NOW, rules=[rule])
    assert (cls.error_type, cls.status_code) == (ErrorType.NOT_FOUND, 404)


class _Unprintable(IntegrationFailure):
    def __str__(self) -> str:
        raise RecursionError("hostile")


def test_an_undetectable_failure_keeps_its_status() -> None:
    failure = detect_error(_Unprintable("x", status_code=404))
    assert failure is not None
    assert failure.status_code == 404
    assert "undetectable" in failure.message
    assert classify_error(failure, now=NOW).error_type is ErrorType.NOT_FOUND


# --- refused requests and oversized answers (issue 6, items 2 and 4) ---------------------------


def test_a_refused_request_is_a_permanent_bad_request() -> None:
    exc = RequestRefused("crm.get_contact needs params id", connector="crm", operation="get")
    failure = detect_error(exc)
    assert failure is not None
    cls = classify_error(failure, now=NOW)
    assert (cls.error_type, cls.retryable, cls.max_attempts) == (ErrorType.BAD_REQUEST, False, 0)
    assert cls.strategy is HealingStrategy.ESCALATE
    assert "needs params id" in cls.message


def test_a_response_too_large_is_permanent_and_beats_its_200() -> None:
    exc = ResponseTooLarge("crm.list answered 200 with a body over", limit=10, status_code=200)
    failure = detect_error(exc)
    assert failure is not None
    cls = classify_error(failure, now=NOW)
    assert (cls.error_type, cls.retryable, cls.status_code) == (
        ErrorType.RESPONSE_TOO_LARGE,
        False,
        200,
    )
    assert cls.strategy is HealingStrategy.ESCALATE


def test_response_too_large_escalates_without_a_reroute_and_says_what_to_do() -> None:
    from healing.escalation import _WHAT_FAILED, options_for

    names = [o.option for o in options_for(ErrorType.RESPONSE_TOO_LARGE, ["crm_eu"])]
    assert "edit_and_retry" in names and "reroute" not in names
    assert "max_response_bytes" in _WHAT_FAILED[ErrorType.RESPONSE_TOO_LARGE]
