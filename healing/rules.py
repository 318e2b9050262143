"""Classification rules as data: what a failure looks like, and which error type it is.

Rules (:class:`Rule`) are tried in order: the user's (``HealingConfig.rules``), then
:data:`DEFAULT_RULES` (vendor shapes), then defaults by exception class, then by status.
Exceptions match by the qualified names of their whole class hierarchy, so a rule for
``TimeoutException`` also matches ``httpx.ReadTimeout``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from healing.config import HealingConfig
from healing.errors import ConfigError
from healing.types import ErrorType, HealingStrategy

_MAX_BODY_TEXT = 65536  # body_contains looks at this much of a body
ROW_FIELDS = frozenset({"transient", "retryable", "strategy", "max_attempts"})


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
    _rule("github_primary_rate_limit", E.RATE_LIMITED, status=[403, 429],
          header={"x-ratelimit-remaining": r"^\s*0\s*$"}),
    _rule("google_invalid_token", E.AUTH_EXPIRED, status=[401],
          header={"www-authenticate": r"error=\"?invalid_token"}),
    _rule("google_rate_limit", E.RATE_LIMITED, status=[403, 429],
          body_field={"error.errors.*.reason": "rateLimitExceeded|userRateLimitExceeded"}),
    _rule("google_quota_exhausted", E.QUOTA_EXHAUSTED, status=[403, 429], escalate_now=True,
          body_field={"error.errors.*.reason": "dailyLimitExceeded|quotaExceeded"}),
    # After the vendor shapes: a body naming a spent daily quota says more than the header.
    _rule("forbidden_with_retry_after", E.RATE_LIMITED, status=[403],
          header={"retry-after": "*"}),
    _rule("oauth_invalid_grant", E.AUTH_INVALID, status=[400, 401],
          body_field={"error": "invalid_grant|invalid_client|unauthorized_client"}),
    _rule("stripe_idempotency_in_use", E.CONFLICT, status=[409],
          body_field={"error.code": "idempotency_key_in_use"}),
    _rule("stripe_idempotency_error", E.BAD_REQUEST, status=[400],
          body_field={"error.type": "idempotency_error"}),
    _rule("graph_throttled", E.RATE_LIMITED, status=[429, 503],
          body_field={"error.code": "activityLimitReached|TooManyRequests|.*[Tt]hrottled.*"}),
)  # fmt: skip

STATUS_DEFAULTS: Mapping[int, ErrorType] = MappingProxyType({
    401: E.AUTH_EXPIRED, 403: E.PERMISSION_DENIED, 404: E.NOT_FOUND, 410: E.NOT_FOUND,
    400: E.BAD_REQUEST, 422: E.BAD_REQUEST, 408: E.TIMEOUT, 504: E.TIMEOUT, 429: E.RATE_LIMITED,
    502: E.SERVICE_DOWN, 503: E.SERVICE_DOWN, 409: E.CONFLICT, 412: E.CONFLICT, 423: E.CONFLICT,
    425: E.CONFLICT, 407: E.AUTH_INVALID,
})  # fmt: skip
# Ordered: the first suffix found in the exception's hierarchy wins.
EXCEPTION_DEFAULTS: tuple[tuple[str, ErrorType], ...] = (
    ("CircuitOpen", E.CIRCUIT_OPEN),  # the interceptor's Failure(exception="healing.CircuitOpen")
    ("healing.errors.SchemaMismatch", E.SCHEMA_MISMATCH),
    ("healing.errors.ResponseTooLarge", E.RESPONSE_TOO_LARGE),
    ("healing.errors.RequestRefused", E.BAD_REQUEST),
    ("pydantic_core.ValidationError", E.SCHEMA_MISMATCH),
    # Token endpoint trouble is an outage of the vendor's auth server, not a bad credential.
    ("healing.errors.TokenEndpointUnavailable", E.SERVICE_DOWN),
    # A wrong HEALING_SECRET_KEY is a setup error: reauthorizing cannot fix it.
    ("healing.errors.SecretKeyMismatch", E.INTERNAL_ERROR),
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


def suffix_match(names: Sequence[str], suffix: str) -> bool:
    return any(n == suffix or n.endswith("." + suffix) for n in names)


def field_values(node: Any, path: list[str]) -> list[Any]:
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
    return [value for child in children for value in field_values(child, rest)]


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
    except Exception:  # circular, exotic or deeply nested bodies
        pass
    try:
        return str(body)[:_MAX_BODY_TEXT]
    except Exception:  # str() of a deeply nested body recurses too: match no body text
        return ""


def matches(rule: Rule, failure: Failure) -> bool:
    if rule.connector is not None and not fnmatch.fnmatchcase(
        failure.connector or "", rule.connector
    ):
        return False
    if rule.status is not None and failure.status_code not in rule.status:
        return False
    if rule.exception is not None and not any(
        suffix_match(failure.exception_mro or (failure.exception or "",), s) for s in rule.exception
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
        values = field_values(failure.body, path.split("."))
        if not any(_value_matches(v, expected) for v in values):
            return False
    return rule.message_regex is None or re.search(rule.message_regex, failure.message) is not None
