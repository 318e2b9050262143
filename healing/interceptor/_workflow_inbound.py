"""The handlers every workflow on a healing worker gets: query ``healing_status``, signal
``escalation_decision`` (and ``healing_healed_by_retries`` from the activity side), update
``decide_escalation``; and the final HealingStatus when the workflow ends.

Runs in workflow context outside the sandbox: no module-level mutable state.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.worker import (
    ExecuteWorkflowInput,
    WorkflowInboundInterceptor,
    WorkflowOutboundInterceptor,
)

from healing.errors import DecisionError, validation_problems
from healing.interceptor._state import WorkflowHealing, WorkflowSide
from healing.interceptor._workflow_outbound import HealingOutbound
from healing.names import DECISION_SIGNAL, DECISION_UPDATE, HEALED_SIGNAL, STATUS_QUERY
from healing.policy import final_state
from healing.types import EscalationDecision


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


def _sender(raw: Any) -> str | None:
    """Who sent a decision, as far as a body that may not parse tells."""
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    who = raw.get("decided_by") if isinstance(raw, dict) else None
    return who if isinstance(who, str) and who else None


class _WorkflowInbound(WorkflowInboundInterceptor):
    side: WorkflowSide

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        self.state = WorkflowHealing(self.side)
        self._register()
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
                workflow.logger.warning("ignoring %s signal: %s", DECISION_SIGNAL, exc)
                # A signal has no answer: Current Details say why it changed nothing.
                state.reject(str(exc), _sender(raw))

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

        if workflow.get_query_handler(STATUS_QUERY) is None:
            workflow.set_query_handler(STATUS_QUERY, status)
        else:
            workflow.logger.warning(
                "workflow defines its own %s query; not replacing it", STATUS_QUERY
            )
        if workflow.get_signal_handler(DECISION_SIGNAL) is None:
            workflow.set_signal_handler(DECISION_SIGNAL, on_signal)
        else:
            workflow.logger.warning(
                "workflow defines its own %s signal; not replacing it", DECISION_SIGNAL
            )
        if workflow.get_signal_handler(HEALED_SIGNAL) is None:
            workflow.set_signal_handler(HEALED_SIGNAL, state.healed_by_retries)
        if workflow.get_update_handler(DECISION_UPDATE) is None:
            workflow.set_update_handler(DECISION_UPDATE, on_update, validator=validate)
        else:
            workflow.logger.warning(
                "workflow defines its own %s update; not replacing it", DECISION_UPDATE
            )

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


def make_workflow_inbound(side: WorkflowSide) -> type[WorkflowInboundInterceptor]:
    return type("HealingWorkflowInbound", (_WorkflowInbound,), {"side": side})
