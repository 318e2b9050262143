"""Escalations: explaining a failed call to a human, offering options, checking the answer.

Pure functions: the workflow side passes in ids and times, so they replay deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from healing.drift import MAPPING_ID
from healing.errors import DecisionError, validation_problems
from healing.types import (
    Classification,
    DecisionOptionName,
    ErrorType,
    Escalation,
    EscalationBrief,
    EscalationDecision,
    EscalationOption,
    HealingAttempt,
)

_WHAT_FAILED: dict[ErrorType, str] = {
    ErrorType.TIMEOUT: "kept timing out",
    ErrorType.RATE_LIMITED: "is being rate limited by the service",
    ErrorType.SERVICE_DOWN: "could not reach a working service (outage)",
    ErrorType.AUTH_EXPIRED: "was refused because its credentials expired",
    ErrorType.AUTH_INVALID: "was refused because its credentials are invalid or revoked",
    ErrorType.SCHEMA_MISMATCH: "got a response that no longer fits the expected schema",
    ErrorType.NETWORK_ERROR: "kept failing at the network level (resets, cut responses)",
    ErrorType.PERMISSION_DENIED: "was refused: the credentials lack permission",
    ErrorType.NOT_FOUND: "asked for something the service says does not exist",
    ErrorType.INTERNAL_ERROR: "kept failing with a server error",
    ErrorType.BAD_REQUEST: "was rejected as an invalid request",
    ErrorType.CIRCUIT_OPEN: "was held back: the connector's circuit breaker is open",
    ErrorType.QUOTA_EXHAUSTED: "hit the service's request quota",
    ErrorType.CONFLICT: "kept conflicting with another in-flight request",
    ErrorType.RESPONSE_TOO_LARGE: (
        "got a response larger than the connector's max_response_bytes: raise "
        "max_response_bytes for the connector, or narrow or paginate the request "
        "(edit_and_retry)"
    ),
}

_EFFECTS: dict[DecisionOptionName, tuple[str, str]] = {
    "retry": ("Retry", "run the call again with a fresh healing budget"),
    "skip": ("Skip", "continue the workflow without this call's result (the step is skipped)"),
    "abort": ("Abort", "fail the workflow with this explanation"),
    "reroute": ("Reroute", "send the call to an alternative connector"),
    "edit_and_retry": ("Edit and retry", "merge `input_patch` into the call's input, then retry"),
    "reauthorized": ("Reauthorized", "a human renewed the credentials: retry the call"),
    "wait": ("Wait, then retry", "wait `wait_s` seconds (default: the service's hint), then retry"),
    "accept_mapping": (
        "Accept the mapping",
        "read the response already received with the proposed mapping (or `mapping_id`); "
        "later calls use it too (nothing is sent again)",
    ),
}

# Answers about the request itself: another region of the same API would say the same.
_PERMANENT_HERE = {ErrorType.NOT_FOUND, ErrorType.BAD_REQUEST, ErrorType.RESPONSE_TOO_LARGE}
_AUTH = {ErrorType.AUTH_INVALID, ErrorType.AUTH_EXPIRED, ErrorType.PERMISSION_DENIED}
_WAITABLE = {
    ErrorType.RATE_LIMITED,
    ErrorType.QUOTA_EXHAUSTED,
    ErrorType.SERVICE_DOWN,
    ErrorType.CIRCUIT_OPEN,
    ErrorType.TIMEOUT,
    ErrorType.INTERNAL_ERROR,
}


def format_duration(seconds: float) -> str:
    """Seconds in human units: ``45s``, ``2m 30s``, ``3h 5m``, ``7d``."""
    total = max(round(seconds), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def options_for(
    error_type: ErrorType,
    alternatives: Sequence[str],
    *,
    wait_s: float | None = None,
    opened_at: datetime | None = None,
    proposal: bool = False,
    resend_safe: bool = True,
) -> list[EscalationOption]:
    """The options that make sense for this error, most useful first.

    ``wait_s`` is how long ``wait`` waits without a ``wait_s`` of its own (already bounded by
    ``HealingConfig.max_wait_s``); the option then says when the call would resume.
    ``resend_safe=False``: the call's request has had its effect (a write's response held
    for review) and must not be sent again, so nothing that re-runs it is offered.
    """
    names: list[DecisionOptionName] = []
    if proposal and error_type is ErrorType.SCHEMA_MISMATCH:
        names.append("accept_mapping")
    if error_type in _AUTH:
        names.append("reauthorized")
    if error_type in _WAITABLE:
        names.append("wait")
    if alternatives and error_type not in _PERMANENT_HERE:
        names.append("reroute")
    names += ["retry", "edit_and_retry"] if resend_safe else []
    names += ["skip", "abort"]
    options = [
        EscalationOption(option=n, label=_EFFECTS[n][0], effect=_EFFECTS[n][1]) for n in names
    ]
    if wait_s is not None and "wait" in names:
        resume = ""
        if opened_at is not None:
            at = opened_at + timedelta(seconds=wait_s)
            resume = f"; decided now, it resumes at {at:%Y-%m-%d %H:%M} UTC"
        effect = f"wait {format_duration(wait_s)} (or `wait_s`), then retry{resume}"
        options = [
            o.model_copy(update={"effect": effect}) if o.option == "wait" else o for o in options
        ]
    return options


def format_delay(seconds: float) -> str:
    """A short delay to a tenth of a second (``1.5s``); longer ones in human units."""
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(seconds)


def tried_item(attempt: HealingAttempt) -> str:
    """One thing tried, as a markdown list item: time, error, strategy, outcome: detail."""
    fields = [attempt.at.strftime("%H:%M:%S UTC")]
    if attempt.error_type:
        fields.append(attempt.error_type.value)
    fields += [str(attempt.strategy).replace("_", " "), f"**{attempt.outcome}**"]
    delay = f" after {format_delay(attempt.delay_s)}" if attempt.delay_s else ""
    detail = f": {attempt.detail}" if attempt.detail else ""
    return f"- {' · '.join(fields)}{delay}{detail}"


def explain(
    *,
    activity: str,
    connector: str | None,
    operation: str | None,
    classification: Classification,
    attempts: Sequence[HealingAttempt],
    reason: str,
) -> str:
    """A plain-language account: which call, what failed, what was tried, why it stopped.

    Markdown (the Web UI renders it; a terminal reads it as is): the first line says what
    failed, the second why healing stopped; "Tried" is a list, one item per line.
    """
    target = f"`{connector}.{operation}`" if connector and operation else f"`{activity}`"
    what = _WHAT_FAILED.get(classification.error_type, "failed")
    status = f" (HTTP {classification.status_code})" if classification.status_code else ""
    vendor = f", code `{classification.vendor_code}`" if classification.vendor_code else ""
    lines = [
        f"The call {target} {what}{status}{vendor}.",
        f"Error type: {classification.error_type.value}. {reason}".rstrip(),
    ]
    if classification.message:
        lines += ["", f"Last message: {classification.message}"]
    if attempts:
        lines += ["", "Tried:", ""]  # a blank line first, or markdown runs the list into the text
        lines += [tried_item(a) for a in attempts[-8:]]
    return "\n".join(lines)


def build_escalation(
    *,
    escalation_id: str,
    workflow_id: str,
    activity: str,
    connector: str | None,
    operation: str | None,
    classification: Classification,
    attempts: Sequence[HealingAttempt],
    reason: str,
    alternatives: Sequence[str],
    opened_at: datetime,
    timeout_s: float,
    default_option: DecisionOptionName,
    wait_s: float | None = None,
    proposal: dict[str, Any] | None = None,
    resend_safe: bool = True,
) -> Escalation:
    options = options_for(
        classification.error_type,
        alternatives,
        wait_s=wait_s,
        opened_at=opened_at,
        proposal=proposal is not None,
        resend_safe=resend_safe,
    )
    offered = {o.option for o in options}
    if proposal is not None and default_option == "accept_mapping":
        offered.discard("accept_mapping")  # a guess is applied fleet-wide only by a human
    return Escalation(
        escalation_id=escalation_id,
        workflow_id=workflow_id,
        activity=activity,
        connector=connector,
        operation=operation,
        error_type=classification.error_type,
        classification=classification,
        explanation=explain(
            activity=activity,
            connector=connector,
            operation=operation,
            classification=classification,
            attempts=attempts,
            reason=reason,
        ),
        options=options,
        attempts=list(attempts),
        opened_at=opened_at,
        timeout_s=timeout_s,
        default_option=default_option if default_option in offered else "abort",
        alternatives=list(alternatives),
        proposal=proposal,
    )


def brief(escalations: Sequence[Escalation]) -> EscalationBrief:
    """The first open escalation in brief (the ``healing`` memo)."""
    esc = escalations[0]
    return EscalationBrief(
        escalation_id=esc.escalation_id,
        workflow_id=esc.workflow_id,
        error_type=esc.error_type,
        connector=esc.connector,
        operation=esc.operation,
        connection=esc.connection,
        opened_at=esc.opened_at,
        timeout_at=esc.timeout_at,
        options=[o.option for o in esc.options],
        default_option=esc.default_option,
        explanation=esc.explanation.splitlines()[0] if esc.explanation else "",
        open_escalations=len(escalations),
        mapping_id=_proposed_id(esc),
    )


def _proposed_id(esc: Escalation) -> str | None:
    proposed = (esc.proposal or {}).get("mapping_id")
    return proposed if isinstance(proposed, str) else None


def to_markdown(escalations: Sequence[Escalation], *, rejected: str | None = None) -> str:
    """Current Details text for the Web UI while the workflow waits for a human.

    ``rejected``: why the last decision was refused (shown on top until a valid one arrives).
    """
    parts: list[str] = []
    for esc in escalations:
        opts = "\n".join(f"- **{o.option}**: {o.effect}" for o in esc.options)
        parts.append(
            f"## Needs a decision: {esc.error_type.value}\n\n"
            f"{esc.explanation}\n\n### Options\n\n{opts}\n\n"
            f"Escalation `{esc.escalation_id}`; without a decision in "
            f"{format_duration(esc.timeout_s)}, "
            f"**{esc.default_option}** applies.\n\n"
            f"Decide: `healing decide {esc.workflow_id} <option>` or signal "
            f'`escalation_decision` with `{{"option": "retry"}}`.'
        )
    text = "\n\n---\n\n".join(parts)
    if rejected:
        text = f"**Last decision rejected:** {rejected}\n\n{text}".rstrip()
    return text


def check_decision(
    decision: EscalationDecision, open_escalations: Sequence[Escalation]
) -> Escalation:
    """The escalation a decision answers; DecisionError names what is wrong with it."""
    if not open_escalations:
        raise DecisionError("no escalation is open on this workflow")
    if decision.escalation_id is None:
        if len(open_escalations) > 1:
            ids = ", ".join(e.escalation_id for e in open_escalations)
            raise DecisionError(f"several escalations are open ({ids}); give escalation_id")
        esc = open_escalations[0]
    else:
        found = [e for e in open_escalations if e.escalation_id == decision.escalation_id]
        if not found:
            raise DecisionError(f"no open escalation has id {decision.escalation_id!r}")
        esc = found[0]
    offered = [o.option for o in esc.options]
    if decision.option not in offered:
        raise DecisionError(
            f"option {decision.option!r} is not offered for {esc.error_type.value}; "
            f"choose one of {', '.join(offered)}"
        )
    if decision.option == "edit_and_retry" and not decision.input_patch:
        raise DecisionError("edit_and_retry needs a non-empty input_patch")
    if decision.mapping_id is not None and not MAPPING_ID.fullmatch(decision.mapping_id):
        raise DecisionError(
            f"mapping_id {decision.mapping_id!r} is not a schema mapping id (m- and 10 hex "
            "digits, see `healing drift`)"
        )
    if decision.option == "reroute" and decision.alternative not in (None, *esc.alternatives):
        raise DecisionError(
            f"alternative {decision.alternative!r} is not one of {', '.join(esc.alternatives)}"
        )
    return esc


def _deep_merge(base: Any, patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_patch(args: Sequence[Any], patch: dict[str, Any]) -> list[Any]:
    """A call's arguments with a human's ``input_patch`` deep-merged into the first one.

    Raises:
        DecisionError: the first argument is neither a dict nor a model, or the patched
            argument no longer validates (the message names the fields).
    """
    items = list(args)
    if not items:
        raise DecisionError("edit_and_retry needs a call with an argument to patch")
    first = items[0]
    if isinstance(first, BaseModel):
        try:
            items[0] = type(first).model_validate(_deep_merge(first.model_dump(), patch))
        except ValidationError as exc:
            problems = validation_problems(exc, root="input")
            raise DecisionError(f"input_patch does not fit the call's input ({problems})") from None
    elif isinstance(first, dict):
        items[0] = _deep_merge(first, patch)
    else:
        raise DecisionError(
            f"edit_and_retry needs a dict or pydantic first argument, not {type(first).__name__}"
        )
    return items
