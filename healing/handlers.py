"""Per-workflow healing state and the handlers every workflow on a healing worker gets:
query ``healing_status``, signal ``escalation_decision``, update ``decide_escalation``.

Runs in workflow context outside the sandbox: no module-level mutable state.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.worker import (
    ExecuteWorkflowInput,
    WorkflowInboundInterceptor,
    WorkflowOutboundInterceptor,
)

from healing.errors import DecisionError, validation_problems
from healing.escalation import apply_patch, check_decision, to_markdown
from healing.policy import final_state
from healing.types import (
    Escalation,
    EscalationDecision,
    HealingAttempt,
    HealingState,
    HealingStatus,
    RetriesHealed,
)

if TYPE_CHECKING:
    from healing.interceptor import SelfHealingInterceptor

SEARCH_ATTRIBUTES = {"HealingStatus": "Keyword", "HealingErrorType": "Keyword"}
STATUS_KEY = SearchAttributeKey.for_keyword("HealingStatus")
ERROR_TYPE_KEY = SearchAttributeKey.for_keyword("HealingErrorType")
QUERY, SIGNAL, UPDATE = "healing_status", "escalation_decision", "decide_escalation"
HEALED_SIGNAL = "healing_healed_by_retries"
"""Sent by the activity side when server retries healed a call: the workflow cannot see
those retries otherwise, and the signal records them in history."""
_HISTORY = 50
_SA_PATCH = "healing-search-attributes"


class WorkflowHealing:
    """Everything the handlers report and the healing loop changes, for one workflow run."""

    def __init__(self, root: SelfHealingInterceptor) -> None:
        self.root = root
        self.state: HealingState = "idle"
        self.error_type: str | None = None
        self.attempts = 0
        self.counts: dict[str, int] = {}
        self.history: list[HealingAttempt] = []
        self.open: dict[str, Escalation] = {}
        self.decisions: dict[str, EscalationDecision] = {}
        self.touched = False
        self.features: dict[str, bool] = {}
        self.args: dict[str, list[Any]] = {}
        """Each open escalation's call arguments, to check an edit before accepting it."""
        self.human = False
        """A human decided at least once in this run: it ends ``resolved``, not ``healed``."""

    def snapshot(self) -> HealingStatus:
        return HealingStatus(
            state=self.state,
            attempts=self.attempts,
            counts_by_error_type=dict(self.counts),
            open_escalations=list(self.open.values()),
            history=list(self.history),
        )

    def record(self, attempt: HealingAttempt) -> None:
        self.history = [*self.history, attempt][-_HISTORY:]

    def count(self, counts: dict[str, int]) -> None:
        for key, n in counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
            self.attempts += n
        self.touched = self.touched or bool(counts)

    def set(self, state: HealingState, error_type: str | None = None) -> None:
        if self.open and state != "failed":
            state = "awaiting_decision"  # another call may still wait for a human
        changed = state != self.state or (error_type is not None and error_type != self.error_type)
        self.state = state
        self.error_type = error_type or self.error_type
        self.touched = True
        if self.open:
            workflow.set_current_details(to_markdown(list(self.open.values())))
        else:
            workflow.set_current_details(f"Healing: {state}")
        if changed and self.feature(_SA_PATCH, self.root.search_attributes_enabled):
            updates = [STATUS_KEY.value_set(state)]
            if self.error_type:
                updates.append(ERROR_TYPE_KEY.value_set(self.error_type))
            workflow.upsert_search_attributes(updates)

    def feature(self, patch_id: str, enabled: bool) -> bool:
        """Whether this run uses an optional feature (search attributes, the store), decided
        once and recorded in history, so a replay on a worker configured otherwise stays
        deterministic."""
        if patch_id not in self.features:
            if enabled or workflow.unsafe.is_replaying():
                self.features[patch_id] = workflow.patched(patch_id)
            else:
                self.features[patch_id] = False
        return self.features[patch_id]

    def check(self, decision: EscalationDecision) -> Escalation:
        """The escalation a decision answers; DecisionError says why it cannot be applied."""
        esc = check_decision(decision, list(self.open.values()))
        if decision.option == "edit_and_retry":
            apply_patch(self.args.get(esc.escalation_id, []), decision.input_patch or {})
        return esc

    def healed_by_retries(self, raw: Any) -> None:
        """Record a heal done by server retries alone (``HEALED_SIGNAL``)."""
        try:
            report = RetriesHealed.model_validate(raw)
        except ValidationError as exc:
            workflow.logger.warning("ignoring %s signal: %s", HEALED_SIGNAL, exc)
            return
        self.count(report.counts_by_type)
        tried = ", ".join(f"{k} x{n}" for k, n in sorted(report.counts_by_type.items()))
        self.record(
            HealingAttempt(
                at=workflow.now(),
                error_type=report.error_type,
                strategy=report.strategy,
                outcome="healed",
                detail=f"{report.activity} healed by server retries in {report.heal_s:.1f}s "
                f"({tried})",
            )
        )
        if self.state in ("idle", "healing", "healed"):
            self.set("healed")

    def decide(self, esc: Escalation, decision: EscalationDecision) -> None:
        self.human = True
        self.open.pop(esc.escalation_id, None)
        self.args.pop(esc.escalation_id, None)
        self.decisions[esc.escalation_id] = decision


def _parse_decision(raw: Any) -> EscalationDecision:
    if isinstance(raw, EscalationDecision):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    try:
        return EscalationDecision.model_validate(raw)
    except ValidationError as exc:
        raise DecisionError(
            f"invalid escalation decision ({validation_problems(exc, root='decision')})"
        ) from None


class _WorkflowInbound(WorkflowInboundInterceptor):
    root: SelfHealingInterceptor

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        self.state = WorkflowHealing(self.root)
        self._register()
        from healing.healer import HealingOutbound

        super().init(HealingOutbound(outbound, self.state))

    def _register(self) -> None:
        state = self.state

        def status() -> dict[str, Any]:
            return state.snapshot().model_dump(mode="json")

        def on_signal(raw: Any = None) -> None:
            try:
                decision = _parse_decision(raw)
                state.decide(state.check(decision), decision)
            except DecisionError as exc:
                workflow.logger.warning("ignoring %s signal: %s", SIGNAL, exc)

        def validate(raw: Any = None) -> None:
            try:
                state.check(_parse_decision(raw))
            except DecisionError as exc:
                raise ValueError(str(exc)) from None

        def on_update(raw: Any = None) -> dict[str, Any]:
            decision = _parse_decision(raw)
            esc = state.check(decision)
            state.decide(esc, decision)
            return {"accepted": True, "escalation_id": esc.escalation_id, "option": decision.option}

        if workflow.get_query_handler(QUERY) is None:
            workflow.set_query_handler(QUERY, status)
        else:
            workflow.logger.warning("workflow defines its own %s query; not replacing it", QUERY)
        if workflow.get_signal_handler(SIGNAL) is None:
            workflow.set_signal_handler(SIGNAL, on_signal)
        else:
            workflow.logger.warning("workflow defines its own %s signal; not replacing it", SIGNAL)
        if workflow.get_signal_handler(HEALED_SIGNAL) is None:
            workflow.set_signal_handler(HEALED_SIGNAL, state.healed_by_retries)
        if workflow.get_update_handler(UPDATE) is None:
            workflow.set_update_handler(UPDATE, on_update, validator=validate)
        else:
            workflow.logger.warning("workflow defines its own %s update; not replacing it", UPDATE)

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        try:
            result = await super().execute_workflow(input)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self.state.touched:
                self.state.set("failed")
            raise
        if self.state.touched and self.state.state != "failed":
            self.state.set(final_state(decided_by_human=self.state.human))
        return result


def make_workflow_inbound(root: SelfHealingInterceptor) -> type[WorkflowInboundInterceptor]:
    cls = type("HealingWorkflowInbound", (_WorkflowInbound,), {"root": root})
    return cls
