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

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx

from healing.backoff import parse_retry_after
from healing.config import HealingConfig
from healing.errors import IntegrationFailure, SchemaMismatch
from healing.matrix import DEFAULT_MATRIX
from healing.ratelimit import reset_delay
from healing.redact import redact
from healing.rules import (
    DEFAULT_RULES,
    EXCEPTION_DEFAULTS,
    ROW_FIELDS,
    STATUS_DEFAULTS,
    Failure,
    Rule,
    field_values,
    load_rules,
    matches,
    suffix_match,
)
from healing.types import Classification, ErrorType

_MAX_MESSAGE = 500
_MAX_RAW_BODY = 4096  # an unparseable body is kept as this much text

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


# --- detection --------------------------------------------------------------------------------


def _qualname(cls: type) -> str:
    module = ".".join(p for p in cls.__module__.split(".") if not p.startswith("_"))
    return cls.__qualname__ if module in ("", "builtins") else f"{module}.{cls.__qualname__}"


def _parse_body(raw: Any) -> Any:
    """JSON when it parses, else the text (cut short); never raises, so the status survives."""
    try:
        if isinstance(raw, bytes | bytearray):
            raw = bytes(raw).decode("utf-8", errors="replace")
        if isinstance(raw, str) and raw.lstrip()[:1] in ("{", "["):
            try:
                return json.loads(raw)
            except Exception:  # ValueError, RecursionError (deep nesting), MemoryError...
                return raw[:_MAX_RAW_BODY]
        return raw
    except Exception:  # an odd object that cannot even be decoded
        return None


def _response_body(response: httpx.Response) -> Any:
    try:
        return _parse_body(response.content) if response.content else None
    except Exception:  # a streamed response that was never read
        return None


def _body_message(body: Any) -> str | None:
    for path in ("message", "error.message", "0.message", "error_description", "error"):
        for value in field_values(body, path.split(".")):
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
    return 2 if any(suffix_match(names, s) for s, _ in EXCEPTION_DEFAULTS) else 0


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
        return Failure(
            status_code=_status_of(outcome),
            exception=name,
            message=message,
            connector=connector,
            operation=operation,
        )


def _status_of(outcome: object) -> int | None:
    """The HTTP status somewhere in a failure, for when nothing else about it can be read."""
    try:
        links = _chain(outcome) if isinstance(outcome, BaseException) else [outcome]
        for link in links:
            response = getattr(link, "response", None) if isinstance(link, Exception) else link
            for holder in (link, response):
                status = getattr(holder, "status_code", None)
                if isinstance(status, int) and not isinstance(status, bool):
                    return status
    except Exception:  # truly unreadable: no status
        pass
    return None


# --- classification ---------------------------------------------------------------------------

_TEMPLATE = (
    (re.compile(r"https?://[^\s\"'<>]+"), "<url>"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"\"[^\"]*\"|'[^'\s][^']*'"), "<str>"),
    (re.compile(r"\b(?=[A-Za-z_-]*\d)(?=\w*[A-Za-z])[\w-]{6,}\b"), "<id>"),
    # Hex needs a letter: an 8+ digit number (HubSpot ids have 11) is a number like any other.
    (re.compile(r"\b0x[0-9a-fA-F]+\b|\b(?=\d*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
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
        for value in field_values(body, path.split(".")):
            if isinstance(value, str) and value:
                return redact(value)[:100]
    return None


def _default_type(failure: Failure) -> tuple[ErrorType, str]:
    names = failure.exception_mro or ((failure.exception,) if failure.exception else ())
    for suffix, error_type in EXCEPTION_DEFAULTS:
        if suffix_match(names, suffix):
            return error_type, f"exception:{suffix.rsplit('.', 1)[-1]}"
    status = failure.status_code
    if isinstance(status, int) and status >= 400:
        default = ErrorType.INTERNAL_ERROR if status >= 500 else ErrorType.BAD_REQUEST
        return STATUS_DEFAULTS.get(status, default), f"status:{status}"
    return ErrorType.INTERNAL_ERROR, "default"


def _classify(
    failure: Failure, config: HealingConfig | None, now: datetime, rules: Sequence[Rule]
) -> Classification:
    headers = {str(k).lower(): str(v) for k, v in (failure.headers or {}).items()}
    failure = replace(failure, headers=headers, message=str(failure.message or ""))
    rule = next((r for r in (*rules, *DEFAULT_RULES) if matches(r, failure)), None)
    error_type, rule_name = (rule.error_type, rule.name) if rule else _default_type(failure)
    row = (config.matrix if config is not None else DEFAULT_MATRIX)[error_type]
    overrides = rule.model_dump(include=set(ROW_FIELDS), exclude_none=True) if rule else {}
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
    except Exception:  # a body or user regex gone wrong: the status and exception still tell
        pass
    try:
        bare = replace(failure, body=None, headers={}, message=str(failure.message or "")[:2000])
        return _classify(bare, config, moment, ())
    except Exception as exc:  # a broken Failure: still a verdict
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
