"""Detect failures in exceptions and results, and classify them into the matrix.

Two steps, both pure and total (they never raise on what an upstream sends):

* :func:`detect_error` turns an exception or a call result into a :class:`Failure`
  (status, headers, body, exception class, message), or None for a success.
* :func:`classify_error` returns a :class:`~healing.types.Classification`. Rules are data
  (:class:`Rule`), tried in order: the user's (``HealingConfig.rules``), then
  :data:`DEFAULT_RULES` (vendor shapes), then defaults by exception class, then by status.

Exceptions are matched by the qualified names of their whole class hierarchy
(``Failure.exception_mro``), so a rule for ``TimeoutException`` also matches
``httpx.ReadTimeout``. Connection refused is SERVICE_DOWN (nobody listening: retry, then
reroute); resets, protocol/read/write errors and truncated JSON are NETWORK_ERROR.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from healing.backoff import parse_retry_after, reset_delay
from healing.config import HealingConfig
from healing.errors import ConfigError, IntegrationFailure, SchemaMismatch
from healing.matrix import DEFAULT_MATRIX
from healing.redact import redact
from healing.types import Classification, ErrorType, HealingStrategy

__all__ = [
    "DEFAULT_RULES",
    "Failure",
    "Rule",
    "classify_error",
    "detect_error",
    "fingerprint",
    "load_rules",
    "message_template",
]

_MAX_MESSAGE = 500
_MAX_BODY_TEXT = 65536  # body_contains looks at this much of a body
_ROW_FIELDS = frozenset({"transient", "retryable", "strategy", "max_attempts"})


@dataclass(frozen=True, kw_only=True)
class Failure:
    """What is known about one failed call, before classification."""

    status_code: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    """Response headers, keys lower-cased."""
    body: Any = None
    """Parsed JSON when possible, else text, else None."""
    exception: str | None = None
    """Qualified class name, e.g. ``httpx.ReadTimeout`` (builtins unprefixed)."""
    message: str = ""
    connector: str | None = None
    operation: str | None = None
    schema_mapping: Mapping[str, str] = field(default_factory=dict)
    exception_mro: tuple[str, ...] = ()
    """Qualified names of the exception's classes, most derived first."""


# --- rules ------------------------------------------------------------------------------------


class Rule(BaseModel):
    """One classification rule. Every match field is optional; those given must all match.

    Match fields: ``connector`` (fnmatch glob), ``status`` (any of; None stands for "no HTTP
    status", e.g. a dict result), ``exception`` (class-name
    suffixes on a dot boundary, checked against the whole class hierarchy), ``header`` (name ->
    regex searched case-insensitively; ``"*"`` means present), ``body_contains`` (substring of
    the JSON-dumped or text body, case-insensitive), ``body_field`` (dotted path -> expected
    value, or for strings a regex that must match the whole value; numbers index lists and
    ``*`` means any element), ``message_regex`` (searched in the message).
    Outcome fields: ``error_type``, ``escalate_now``, ``benign`` (None: RATE_LIMITED that does not
    escalate), ``retry_after_header`` (header holding the wait), and overrides of the matrix row.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    connector: str | None = None
    status: tuple[int | None, ...] | None = None
    exception: tuple[str, ...] | None = None
    header: dict[str, str] | None = None
    body_contains: str | None = None
    body_field: dict[str, Any] | None = None
    message_regex: str | None = None
    error_type: ErrorType
    escalate_now: bool = False
    benign: bool | None = None
    retry_after_header: str | None = None
    transient: bool | None = None
    retryable: bool | None = None
    strategy: HealingStrategy | None = None
    max_attempts: int | None = Field(default=None, ge=0, le=100)

    @field_validator("error_type", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("header", mode="after")
    @classmethod
    def _lower_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else {k.lower(): v for k, v in value.items()}

    @model_validator(mode="after")
    def _regexes_compile(self) -> Rule:
        patterns = [self.message_regex, *(self.header or {}).values()]
        patterns += [v for v in (self.body_field or {}).values() if isinstance(v, str)]
        for pattern in patterns:
            try:
                if pattern is not None and pattern != "*":
                    re.compile(pattern)
            except re.error as exc:  # pydantic reports ValueErrors only
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
        return self


def _rule(name: str, error_type: ErrorType, **fields: Any) -> Rule:
    return Rule(name=name, error_type=error_type, **fields)


E = ErrorType
_SLACK_AUTH_INVALID = "invalid_auth|token_revoked|account_inactive|not_authed|no_such_app"
DEFAULT_RULES: tuple[Rule, ...] = (
    _rule("salesforce_invalid_session", E.AUTH_EXPIRED, status=[401],
          body_field={"*.errorCode": "INVALID_SESSION_ID"}),
    _rule("salesforce_request_limit", E.QUOTA_EXHAUSTED, status=[403], escalate_now=True,
          body_field={"*.errorCode": "REQUEST_LIMIT_EXCEEDED"}),
    _rule("salesforce_server_unavailable", E.SERVICE_DOWN, status=[503],
          body_field={"*.errorCode": "SERVER_UNAVAILABLE"}),
    _rule("hubspot_daily_limit", E.RATE_LIMITED, status=[429], escalate_now=True,
          body_field={"policyName": "DAILY"}),
    _rule("hubspot_rolling_limit", E.RATE_LIMITED, status=[429],
          body_field={"policyName": "(TEN_)?SECONDLY(_ROLLING)?"}),
    _rule("slack_ratelimited", E.RATE_LIMITED, body_field={"ok": False, "error": "ratelimited"}),
    _rule("slack_token_expired", E.AUTH_EXPIRED,
          body_field={"ok": False, "error": "token_expired"}),
    _rule("slack_auth_invalid", E.AUTH_INVALID,
          body_field={"ok": False, "error": _SLACK_AUTH_INVALID}),
    _rule("slack_permission", E.PERMISSION_DENIED,
          body_field={"ok": False, "error": "missing_scope|not_allowed_token_type|no_permission"}),
    _rule("slack_not_found", E.NOT_FOUND, body_field={"ok": False, "error": ".*_not_found"}),
    _rule("slack_server_error", E.INTERNAL_ERROR,
          body_field={"ok": False, "error": "internal_error|fatal_error|service_unavailable"}),
    _rule("slack_request_timeout", E.TIMEOUT,
          body_field={"ok": False, "error": "request_timeout"}),
    _rule("slack_error", E.BAD_REQUEST, status=[200, None], body_field={"ok": False}),
    _rule("github_secondary_rate_limit", E.RATE_LIMITED, status=[403, 429],
          body_contains="secondary rate limit"),
    _rule("secondary_rate_limit_message", E.RATE_LIMITED, status=[403, 429],
          message_regex="(?i)secondary rate limit"),
    _rule("forbidden_with_retry_after", E.RATE_LIMITED, status=[403],
          header={"retry-after": "*"}),
    _rule("github_primary_rate_limit", E.RATE_LIMITED, status=[403, 429],
          header={"x-ratelimit-remaining": r"^\s*0\s*$"}),
    _rule("google_invalid_token", E.AUTH_EXPIRED, status=[401],
          header={"www-authenticate": r"error=\"?invalid_token"}),
    _rule("google_rate_limit", E.RATE_LIMITED, status=[403, 429],
          body_field={"error.errors.*.reason": "rateLimitExceeded|userRateLimitExceeded"}),
    _rule("google_quota_exhausted", E.QUOTA_EXHAUSTED, status=[403, 429], escalate_now=True,
          body_field={"error.errors.*.reason": "dailyLimitExceeded|quotaExceeded"}),
    _rule("oauth_invalid_grant", E.AUTH_INVALID, status=[400, 401],
          body_field={"error": "invalid_grant|invalid_client|unauthorized_client"}),
    _rule("stripe_idempotency_in_use", E.CONFLICT, status=[409],
          body_field={"error.code": "idempotency_key_in_use"}),
    _rule("stripe_idempotency_error", E.BAD_REQUEST, status=[400],
          body_field={"error.type": "idempotency_error"}),
    _rule("graph_throttled", E.RATE_LIMITED, status=[429, 503],
          body_field={"error.code": "activityLimitReached|TooManyRequests|.*[Tt]hrottled.*"}),
)  # fmt: skip

_STATUS_DEFAULTS: Mapping[int, ErrorType] = MappingProxyType({
    401: E.AUTH_EXPIRED, 403: E.PERMISSION_DENIED, 404: E.NOT_FOUND, 410: E.NOT_FOUND,
    400: E.BAD_REQUEST, 422: E.BAD_REQUEST, 408: E.TIMEOUT, 504: E.TIMEOUT, 429: E.RATE_LIMITED,
    502: E.SERVICE_DOWN, 503: E.SERVICE_DOWN, 409: E.CONFLICT, 412: E.CONFLICT, 423: E.CONFLICT,
    425: E.CONFLICT, 407: E.AUTH_INVALID,
})  # fmt: skip
# Ordered: the first suffix found in the exception's hierarchy wins.
_EXCEPTION_DEFAULTS: tuple[tuple[str, ErrorType], ...] = (
    ("CircuitOpen", E.CIRCUIT_OPEN),  # the interceptor's Failure(exception="healing.CircuitOpen")
    ("healing.errors.SchemaMismatch", E.SCHEMA_MISMATCH),
    ("pydantic_core.ValidationError", E.SCHEMA_MISMATCH),
    ("healing.errors.CredentialError", E.AUTH_INVALID),
    ("httpx.TimeoutException", E.TIMEOUT), ("TimeoutError", E.TIMEOUT),
    ("httpx.ConnectError", E.SERVICE_DOWN), ("ConnectionRefusedError", E.SERVICE_DOWN),
    ("httpx.UnsupportedProtocol", E.BAD_REQUEST), ("httpx.InvalidURL", E.BAD_REQUEST),
    ("httpx.TransportError", E.NETWORK_ERROR), ("httpx.DecodingError", E.NETWORK_ERROR),
    ("json.decoder.JSONDecodeError", E.NETWORK_ERROR),
    ("http.client.IncompleteRead", E.NETWORK_ERROR),
    ("ConnectionError", E.NETWORK_ERROR), ("FileNotFoundError", E.INTERNAL_ERROR),
    ("PermissionError", E.INTERNAL_ERROR), ("OSError", E.NETWORK_ERROR),
)  # fmt: skip
del E


def load_rules(config: HealingConfig | None) -> tuple[Rule, ...]:
    """Validate the user's rules (``config.rules``) into :class:`Rule` objects.

    Args:
        config: The healing config; None means no user rules.

    Returns:
        The rules, in the config's order.

    Raises:
        ConfigError: A rule is invalid; the message names it (or its index) and the problem.
    """
    rules: list[Rule] = []
    for index, raw in enumerate(config.rules if config is not None else []):
        name = raw.get("name") if isinstance(raw, Mapping) else None
        label = f"rule {name!r}" if name else f"rule #{index}"
        try:
            rules.append(Rule.model_validate(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'rule'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid classification {label} ({problems})") from None
    return tuple(rules)


_INDEX = re.compile(r"-?[0-9]{1,9}")


def _suffix_match(names: Sequence[str], suffix: str) -> bool:
    return any(n == suffix or n.endswith("." + suffix) for n in names)


def _field_values(node: Any, path: list[str]) -> list[Any]:
    if not path:
        return [node]
    head, rest = path[0], path[1:]
    if isinstance(node, Mapping):
        children = list(node.values()) if head == "*" else [node[head]] if head in node else []
    elif isinstance(node, list):
        if head == "*":
            children = node
        else:
            index = int(head) if _INDEX.fullmatch(head) else len(node)
            children = [node[index]] if -len(node) <= index < len(node) else []
    else:
        return []
    return [value for child in children for value in _field_values(child, rest)]


def _value_matches(actual: Any, expected: Any) -> bool:
    if isinstance(expected, str):
        if isinstance(actual, bool) or not isinstance(actual, str | int | float):
            return False
        text = str(actual)
        return text == expected or re.fullmatch(expected, text) is not None
    # bool is an int: False must not match 0.
    return isinstance(actual, bool) == isinstance(expected, bool) and actual == expected


def _body_text(body: Any) -> str:
    if body is None:
        return ""
    if isinstance(body, str):
        return body[:_MAX_BODY_TEXT]
    try:
        return json.dumps(body, default=str, ensure_ascii=False)[:_MAX_BODY_TEXT]
    except Exception:  # circular or exotic bodies
        return str(body)[:_MAX_BODY_TEXT]


def _matches(rule: Rule, failure: Failure) -> bool:
    if rule.connector is not None and not fnmatch.fnmatchcase(
        failure.connector or "", rule.connector
    ):
        return False
    if rule.status is not None and failure.status_code not in rule.status:
        return False
    if rule.exception is not None and not any(
        _suffix_match(failure.exception_mro or (failure.exception or "",), s)
        for s in rule.exception
    ):
        return False
    for name, pattern in (rule.header or {}).items():
        value = failure.headers.get(name)
        if value is None or (pattern != "*" and not re.search(pattern, value, re.IGNORECASE)):
            return False
    if rule.body_contains is not None and (
        rule.body_contains.lower() not in _body_text(failure.body).lower()
    ):
        return False
    for path, expected in (rule.body_field or {}).items():
        values = _field_values(failure.body, path.split("."))
        if not any(_value_matches(v, expected) for v in values):
            return False
    return rule.message_regex is None or re.search(rule.message_regex, failure.message) is not None


# --- detection --------------------------------------------------------------------------------


def _qualname(cls: type) -> str:
    module = ".".join(p for p in cls.__module__.split(".") if not p.startswith("_"))
    return cls.__qualname__ if module in ("", "builtins") else f"{module}.{cls.__qualname__}"


def _parse_body(raw: Any) -> Any:
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw).decode("utf-8", errors="replace")
    if isinstance(raw, str) and raw.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _response_body(response: httpx.Response) -> Any:
    try:
        return _parse_body(response.content) if response.content else None
    except Exception:  # a streamed response that was never read
        return None


def _body_message(body: Any) -> str | None:
    for path in ("message", "error.message", "0.message", "error_description", "error"):
        for value in _field_values(body, path.split(".")):
            if isinstance(value, str) and value:
                return value
    return None


def _from_response(response: httpx.Response) -> Failure:
    body = _response_body(response)
    reason = response.reason_phrase or ""
    detail = _body_message(body)
    message = f"HTTP {response.status_code} {reason}".strip() + (f": {detail}" if detail else "")
    headers = {k.lower(): v for k, v in response.headers.items()}
    return Failure(status_code=response.status_code, headers=headers, body=body, message=message)


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 16 and all(current is not c for c in chain):
        chain.append(current)
        implicit = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or implicit
    return chain


def _telling(exc: BaseException) -> int:
    """How much an exception says about the failure: status > known class > our wrapper."""
    if isinstance(exc, SchemaMismatch | httpx.HTTPStatusError):
        return 3
    if isinstance(exc, IntegrationFailure):
        return 3 if exc.status_code is not None else 1
    names = [_qualname(c) for c in type(exc).__mro__]
    return 2 if any(_suffix_match(names, s) for s, _ in _EXCEPTION_DEFAULTS) else 0


def _from_exception(exc: BaseException, connector: str | None, operation: str | None) -> Failure:
    chain = _chain(exc)
    chosen = max(chain, key=_telling)  # max keeps the outermost of equals
    for link in chain:
        if isinstance(link, IntegrationFailure):
            connector = connector or link.connector
            operation = operation or link.operation
    mro = tuple(_qualname(c) for c in type(chosen).__mro__ if c is not object)
    message = f"{mro[0]}: {str(chosen) or str(exc) or 'no message'}"
    common: dict[str, Any] = {
        "exception": mro[0],
        "exception_mro": mro,
        "connector": connector,
        "operation": operation,
    }
    if isinstance(chosen, httpx.HTTPStatusError):
        return replace(_from_response(chosen.response), **common)
    if isinstance(chosen, IntegrationFailure):
        return Failure(
            status_code=chosen.status_code,
            headers=dict(chosen.headers),
            body=_parse_body(chosen.body),
            message=str(chosen) or message,
            schema_mapping=dict(chosen.mapping) if isinstance(chosen, SchemaMismatch) else {},
            **common,
        )
    return Failure(message=message, **common)


def _from_result(result: Any, connector: str | None, operation: str | None) -> Failure | None:
    if isinstance(result, httpx.Response):
        failure = replace(_from_response(result), connector=connector, operation=operation)
        slack_error = isinstance(failure.body, Mapping) and failure.body.get("ok") is False
        return failure if result.status_code >= 400 or slack_error else None
    if not isinstance(result, Mapping):
        return None
    if result.get("ok") is False and "error" in result:
        message = f"call returned ok=false: {result.get('error')}"
        return Failure(body=dict(result), message=message, connector=connector, operation=operation)
    status = result.get("status_code", result.get("status"))
    envelope = "headers" in result or "body" in result
    if isinstance(status, int) and not isinstance(status, bool) and status >= 400 and envelope:
        raw_headers = result.get("headers")
        headers = raw_headers if isinstance(raw_headers, Mapping) else {}
        body = _parse_body(result.get("body"))
        detail = _body_message(body)
        return Failure(
            status_code=status,
            headers={str(k).lower(): str(v) for k, v in headers.items()},
            body=body,
            message=f"HTTP {status}" + (f": {detail}" if detail else ""),
            connector=connector,
            operation=operation,
        )
    return None


def detect_error(
    outcome: object, *, connector: str | None = None, operation: str | None = None
) -> Failure | None:
    """Find a failure in an exception or a call result.

    Args:
        outcome: An exception (the most telling one in its ``__cause__``/``__context__`` chain is
            used), an ``httpx.Response``, a dict result (Slack's ``{"ok": false, ...}`` or an
            HTTP envelope with ``status_code``/``status`` >= 400 and ``headers``/``body``), or a
            :class:`Failure` (returned as is).
        connector: Connector name, when the caller knows it better than the exception.
        operation: Operation name, likewise.

    Returns:
        The failure, or None for a successful result and for ``BaseException`` s that are not
        errors (cancellation, ``KeyboardInterrupt``). Never raises.
    """
    try:
        if isinstance(outcome, Failure):
            return outcome
        if isinstance(outcome, Exception):
            return _from_exception(outcome, connector, operation)
        if isinstance(outcome, BaseException):
            return None
        return _from_result(outcome, connector, operation)
    except Exception as exc:  # detection must never hide the original failure
        name = _qualname(type(outcome)) if isinstance(outcome, BaseException) else None
        message = f"undetectable failure ({type(exc).__name__})"
        return Failure(exception=name, message=message, connector=connector, operation=operation)


# --- classification ---------------------------------------------------------------------------

_TEMPLATE = (
    (re.compile(r"https?://[^\s\"'<>]+"), "<url>"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"\"[^\"]*\"|'[^'\s][^']*'"), "<str>"),
    (re.compile(r"\b(?=[A-Za-z_-]*\d)(?=\w*[A-Za-z])[\w-]{6,}\b"), "<id>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"-?\d+(?:[.,:]\d+)*"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def message_template(message: str) -> str:
    """The shape of a message: urls, emails, UUIDs, quoted strings, ids and numbers as
    placeholders, so one error pattern gives one template whatever record it hit."""
    text = str(message)[:2000]
    for pattern, placeholder in _TEMPLATE:
        text = pattern.sub(placeholder, text)
    return text.strip()[:300]


def fingerprint(
    connector: str | None,
    operation: str | None,
    error_type: ErrorType | str,
    status: int | None,
    vendor_code: str | None,
    message: str,
) -> str:
    """A stable 16-hex-digit key for an error pattern (learning and escalation dedup)."""
    template = message_template(message)
    status_text = "" if status is None else str(status)
    parts = (
        connector or "",
        operation or "",
        str(error_type),
        status_text,
        vendor_code or "",
        template,
    )
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


_VENDOR_CODE_PATHS = ("0.errorCode", "policyName", "error.status", "error.code", "error.type",
                      "error", "errorCode", "code", "category")  # fmt: skip


def _vendor_code(body: Any) -> str | None:
    # Salesforce, HubSpot, Google, Stripe/Graph, Stripe type, Slack/OAuth, HubSpot category.
    for path in _VENDOR_CODE_PATHS:
        for value in _field_values(body, path.split(".")):
            if isinstance(value, str) and value:
                return redact(value)[:100]
    return None


def _default_type(failure: Failure) -> tuple[ErrorType, str]:
    names = failure.exception_mro or ((failure.exception,) if failure.exception else ())
    for suffix, error_type in _EXCEPTION_DEFAULTS:
        if _suffix_match(names, suffix):
            return error_type, f"exception:{suffix.rsplit('.', 1)[-1]}"
    status = failure.status_code
    if isinstance(status, int) and status >= 400:
        default = ErrorType.INTERNAL_ERROR if status >= 500 else ErrorType.BAD_REQUEST
        return _STATUS_DEFAULTS.get(status, default), f"status:{status}"
    return ErrorType.INTERNAL_ERROR, "default"


def _classify(
    failure: Failure, config: HealingConfig | None, now: datetime, rules: Sequence[Rule]
) -> Classification:
    headers = {str(k).lower(): str(v) for k, v in (failure.headers or {}).items()}
    failure = replace(failure, headers=headers, message=str(failure.message or ""))
    rule = next((r for r in (*rules, *DEFAULT_RULES) if _matches(r, failure)), None)
    error_type, rule_name = (rule.error_type, rule.name) if rule else _default_type(failure)
    row = (config.matrix if config is not None else DEFAULT_MATRIX)[error_type]
    overrides = rule.model_dump(include=set(_ROW_FIELDS), exclude_none=True) if rule else {}
    row = row.model_copy(update=overrides)
    header = rule.retry_after_header.lower() if rule and rule.retry_after_header else "retry-after"
    retry_after = parse_retry_after(headers.get(header), now=now)
    escalate_now = rule.escalate_now if rule else False
    # A daily quota's headers describe the short window, not when the quota comes back.
    if retry_after is None and error_type is ErrorType.RATE_LIMITED and not escalate_now:
        retry_after = reset_delay(headers, now=now)
    vendor_code = _vendor_code(failure.body)
    message = redact(failure.message).strip()
    if not message:
        message = f"{error_type} ({failure.status_code or failure.exception or 'no detail'})"
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    benign = rule.benign if rule else None
    if benign is None:  # expected throttling should not count as a failure in metrics
        benign = error_type is ErrorType.RATE_LIMITED and not escalate_now
    return Classification(
        error_type=error_type,
        transient=row.transient,
        retryable=row.retryable,
        strategy=row.strategy,
        max_attempts=row.max_attempts,
        status_code=failure.status_code,
        vendor_code=vendor_code,
        retry_after_s=retry_after,
        message=message,
        fingerprint=fingerprint(
            failure.connector,
            failure.operation,
            error_type,
            failure.status_code,
            vendor_code,
            message,
        ),
        rule=rule_name,
        benign=benign,
        escalate_now=escalate_now,
        schema_mapping={str(k): str(v) for k, v in failure.schema_mapping.items()},
    )


def classify_error(
    failure: Failure,
    *,
    config: HealingConfig | None = None,
    now: datetime | None = None,
    rules: Sequence[Rule] | None = None,
) -> Classification:
    """Classify a failure: error type, matrix row, wait, vendor code, message, fingerprint.

    Args:
        failure: What :func:`detect_error` found.
        config: Supplies the matrix and the user's rules (``config.rules``); None uses defaults.
        now: The current time, for HTTP-date Retry-After and epoch reset headers; pass it
            (``workflow.now()``, an injected clock). Defaults to the wall clock.
        rules: User rules to use instead of ``load_rules(config)`` (e.g. validated once at
            start-up); :data:`DEFAULT_RULES` always follow them.

    Returns:
        The classification. ``retry_after_s`` comes from the rule's header or Retry-After,
        else (rate limits only) from reset headers, capped at ten times
        ``config.max_retry_after_s``; deciding whether to wait that long is the caller's job.

    Raises:
        ConfigError: Only when ``config.rules`` holds an invalid rule (see :func:`load_rules`).
    """
    user_rules = tuple(rules) if rules is not None else load_rules(config)
    moment = now if now is not None else datetime.now(UTC)
    try:
        return _classify(failure, config, moment, user_rules)
    except Exception as exc:  # a broken Failure or a user regex gone wrong: still a verdict
        row = DEFAULT_MATRIX[ErrorType.INTERNAL_ERROR]
        message = redact(f"unclassifiable failure: {exc!r}")[:_MAX_MESSAGE]
        return Classification(
            error_type=ErrorType.INTERNAL_ERROR,
            transient=row.transient,
            retryable=row.retryable,
            strategy=row.strategy,
            max_attempts=row.max_attempts,
            message=message,
            fingerprint=fingerprint(None, None, ErrorType.INTERNAL_ERROR, None, None, message),
            rule="fallback",
        )
