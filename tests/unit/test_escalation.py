from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ConfigDict

from healing.errors import DecisionError
from healing.escalation import (
    apply_patch,
    build_escalation,
    check_decision,
    options_for,
    to_markdown,
)
from healing.types import (
    Classification,
    ErrorType,
    Escalation,
    EscalationDecision,
    HealingStrategy,
)


def names(error_type: ErrorType, alternatives: list[str]) -> list[str]:
    return [o.option for o in options_for(error_type, alternatives)]


@pytest.mark.parametrize(
    ("error_type", "alternatives", "expected"),
    [
        (ErrorType.NOT_FOUND, ["crm_eu"], ["retry", "edit_and_retry", "skip", "abort"]),
        (ErrorType.BAD_REQUEST, [], ["retry", "edit_and_retry", "skip", "abort"]),
        (
            ErrorType.SERVICE_DOWN,
            ["crm_eu"],
            ["wait", "reroute", "retry", "edit_and_retry", "skip", "abort"],
        ),
        (ErrorType.AUTH_INVALID, [], ["reauthorized", "retry", "edit_and_retry", "skip", "abort"]),
        (
            ErrorType.RATE_LIMITED,
            ["crm_eu"],
            ["wait", "reroute", "retry", "edit_and_retry", "skip", "abort"],
        ),
    ],
)
def test_options_fit_the_error(
    error_type: ErrorType, alternatives: list[str], expected: list[str]
) -> None:
    assert names(error_type, alternatives) == expected


def escalation(
    error_type: ErrorType = ErrorType.SERVICE_DOWN,
    esc_id: str = "e1",
    alts: list[str] | None = None,
):
    cls = Classification(
        error_type=error_type,
        transient=True,
        retryable=True,
        strategy=HealingStrategy.RETRY_THEN_REROUTE,
        max_attempts=3,
        status_code=503,
        vendor_code="SERVER_UNAVAILABLE",
        message="crm answered 503",
    )
    return build_escalation(
        escalation_id=esc_id,
        workflow_id="wf-1",
        activity="call_integration",
        connector="crm",
        operation="get_contact",
        classification=cls,
        attempts=[],
        reason="Stopped because the retry budget is spent.",
        alternatives=alts if alts is not None else ["crm_eu"],
        opened_at=datetime(2026, 1, 1, tzinfo=UTC),
        timeout_s=3600,
        default_option="skip",
    )


def test_explanation_names_call_status_vendor_code_and_reason() -> None:
    esc = escalation()
    assert "`crm.get_contact`" in esc.explanation
    assert "HTTP 503" in esc.explanation and "SERVER_UNAVAILABLE" in esc.explanation
    assert "retry budget is spent" in esc.explanation
    md = to_markdown([esc])
    assert "healing decide wf-1" in md and "**skip** applies" in md


def test_default_option_falls_back_to_abort_when_not_offered() -> None:
    base = escalation(ErrorType.NOT_FOUND, alts=[])
    esc = build_escalation(
        escalation_id="e9",
        workflow_id="wf-1",
        activity="call_integration",
        connector="crm",
        operation="get_contact",
        classification=base.classification,
        attempts=[],
        reason="",
        alternatives=[],
        opened_at=base.opened_at,
        timeout_s=60,
        default_option="reroute",
    )
    assert esc.default_option == "abort"
    assert escalation(alts=["crm_eu"]).default_option == "skip"


@pytest.mark.parametrize(
    ("decision", "message"),
    [
        (EscalationDecision(option="reauthorized"), "not offered"),
        (EscalationDecision(option="edit_and_retry"), "input_patch"),
        (EscalationDecision(option="reroute", alternative="crm_us"), "crm_us"),
        (EscalationDecision(option="retry", escalation_id="nope"), "nope"),
    ],
)
def test_invalid_decisions_name_the_problem(decision: EscalationDecision, message: str) -> None:
    with pytest.raises(DecisionError, match=message):
        check_decision(decision, [escalation()])


def test_decision_needs_an_id_when_several_are_open() -> None:
    with pytest.raises(DecisionError, match="e1, e2"):
        check_decision(
            EscalationDecision(option="skip"), [escalation(esc_id="e1"), escalation(esc_id="e2")]
        )
    assert (
        check_decision(
            EscalationDecision(option="skip", escalation_id="e2"),
            [escalation(esc_id="e1"), escalation(esc_id="e2")],
        ).escalation_id
        == "e2"
    )


def test_no_open_escalation() -> None:
    with pytest.raises(DecisionError, match="no escalation is open"):
        check_decision(EscalationDecision(option="retry"), [])


class Req(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connector: str
    params: dict[str, str] = {}


def test_apply_patch_deep_merges_dicts_and_models() -> None:
    assert apply_patch([{"params": {"id": "1", "x": "y"}}], {"params": {"id": "2"}}) == [
        {"params": {"id": "2", "x": "y"}}
    ]
    [req] = apply_patch([Req(connector="crm", params={"id": "1"})], {"params": {"id": "2"}})
    assert req == Req(connector="crm", params={"id": "2"})


@pytest.mark.parametrize(
    ("args", "patch", "message"),
    [
        ([Req(connector="crm")], {"id": "43"}, "id: Extra inputs"),
        ([Req(connector="crm")], {"params": "x"}, "params: Input should be"),
        (["just text"], {"id": "1"}, "not str"),
        ([], {"id": "1"}, "argument to patch"),
    ],
)
def test_apply_patch_names_what_does_not_fit(
    args: list[object], patch: dict[str, object], message: str
) -> None:
    with pytest.raises(DecisionError, match=message):
        apply_patch(args, patch)


def _drift_escalation(default: str, *, resend_safe: bool) -> Escalation:
    cls = Classification(
        error_type=ErrorType.SCHEMA_MISMATCH, transient=False, retryable=False,
        strategy=HealingStrategy.ESCALATE, max_attempts=0, message="drift",
    )  # fmt: skip
    return build_escalation(
        escalation_id="e1", workflow_id="w", activity="call_integration", connector="crm",
        operation="create_contact", classification=cls, attempts=[], reason="r",
        alternatives=[], opened_at=datetime(2026, 1, 1, tzinfo=UTC), timeout_s=60,
        default_option=default,  # type: ignore[arg-type]
        proposal={"mapping_id": "m-0123456789"}, resend_safe=resend_safe,
    )  # fmt: skip


def test_a_held_write_review_never_offers_to_send_the_request_again() -> None:
    write = _drift_escalation("retry", resend_safe=False)
    assert [o.option for o in write.options] == ["accept_mapping", "skip", "abort"]
    assert write.default_option == "abort"
    read = _drift_escalation("retry", resend_safe=True)
    assert "retry" in [o.option for o in read.options]
    assert read.default_option == "retry"


def test_accept_mapping_is_never_the_timeout_default_of_a_review() -> None:
    for resend_safe in (True, False):
        esc = _drift_escalation("accept_mapping", resend_safe=resend_safe)
        assert esc.default_option == "abort"
        assert "accept_mapping" in [o.option for o in esc.options]
