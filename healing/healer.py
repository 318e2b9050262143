"""Workflow side of healing: per-workflow state, handlers, and the per-call healing loop.

Runs in workflow context but outside the sandbox: only ``workflow.now()``, ``workflow.uuid4()``
and durable timers; no module-level mutable state (a module is shared by all workflows).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import (
    ExecuteWorkflowInput,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowOutboundInterceptor,
)

from healing.errors import DecisionError, validation_problems
from healing.escalation import build_escalation, check_decision, to_markdown
from healing.integration import HINTS_HEADER, CallHints
from healing.types import (
    REPORT_KEY,
    ErrorType,
    Escalation,
    EscalationDecision,
    FailureReport,
    HealingAttempt,
    HealingState,
    HealingStatus,
    HealingStrategy,
)

if TYPE_CHECKING:
    from healing.interceptor import SelfHealingInterceptor

STATUS_KEY = SearchAttributeKey.for_keyword("HealingStatus")
ERROR_TYPE_KEY = SearchAttributeKey.for_keyword("HealingErrorType")
QUERY, SIGNAL, UPDATE = "healing_status", "escalation_decision", "decide_escalation"
REFRESH_ACTIVITY = "healing_refresh_credentials"
ADAPT_ACTIVITY = "healing_adapt_schema"
ABORTED_TYPE = "HealingAborted"
_HISTORY = 50
_REROUTABLE = {ErrorType.SERVICE_DOWN, ErrorType.CIRCUIT_OPEN}
_SKIP = object()
_SA_PATCH = "healing-search-attributes"
AnyStart = StartActivityInput | StartLocalActivityInput


class _State:
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
        self.upserts: bool | None = None

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
        if changed and self._upserts():
            updates = [STATUS_KEY.value_set(state)]
            if self.error_type:
                updates.append(ERROR_TYPE_KEY.value_set(self.error_type))
            workflow.upsert_search_attributes(updates)

    def _upserts(self) -> bool:
        """Whether this run writes search attributes, decided once and recorded in history,
        so a replay on a worker whose start-up check came out otherwise stays deterministic."""
        if self.upserts is None:
            if self.root.search_attributes_enabled or workflow.unsafe.is_replaying():
                self.upserts = workflow.patched(_SA_PATCH)
            else:
                self.upserts = False
        return self.upserts

    def decide(self, esc: Escalation, decision: EscalationDecision) -> None:
        self.open.pop(esc.escalation_id, None)
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
        self.state = _State(self.root)
        self._register()
        super().init(_Outbound(outbound, self.state))

    def _register(self) -> None:
        state = self.state

        def status() -> dict[str, Any]:
            return state.snapshot().model_dump(mode="json")

        def on_signal(raw: Any = None) -> None:
            try:
                decision = _parse_decision(raw)
                state.decide(check_decision(decision, list(state.open.values())), decision)
            except DecisionError as exc:
                workflow.logger.warning("ignoring %s signal: %s", SIGNAL, exc)

        def validate(raw: Any = None) -> None:
            try:
                check_decision(_parse_decision(raw), list(state.open.values()))
            except DecisionError as exc:
                raise ValueError(str(exc)) from None

        def on_update(raw: Any = None) -> dict[str, Any]:
            decision = _parse_decision(raw)
            esc = check_decision(decision, list(state.open.values()))
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
            self.state.set("healed")
        return result


def make_workflow_inbound(root: SelfHealingInterceptor) -> type[WorkflowInboundInterceptor]:
    cls = type("HealingWorkflowInbound", (_WorkflowInbound,), {"root": root})
    return cls


@dataclasses.dataclass
class _Call:
    started: datetime
    connector: str | None = None
    operation: str | None = None
    attempts: list[HealingAttempt] = dataclasses.field(default_factory=list)
    refreshes: int = 0
    adapts: int = 0
    rerouted: list[str] = dataclasses.field(default_factory=list)
    decisions: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


def _report_of(err: BaseException) -> FailureReport | None:
    cause = err.cause if isinstance(err, ActivityError) else err
    if not isinstance(cause, ApplicationError):
        return None
    for detail in cause.details:
        if isinstance(detail, dict) and isinstance(detail.get(REPORT_KEY), dict):
            try:
                return FailureReport.model_validate(detail[REPORT_KEY])
            except ValidationError:
                return None
    return None


def _hints(inp: AnyStart) -> CallHints:
    from healing.interceptor import read_hints

    return read_hints(inp.headers)


def _with_hints(inp: AnyStart, **changes: Any) -> AnyStart:
    from healing.interceptor import encode_hints

    hints = _hints(inp).model_copy(update=changes)
    return dataclasses.replace(inp, headers={**inp.headers, HINTS_HEADER: encode_hints(hints)})


def _deep_merge(base: Any, patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _patch_args(args: Any, patch: dict[str, Any]) -> list[Any]:
    """Merge a human's input_patch into the call's first argument (a dict or a model)."""
    items = list(args)
    if not items:
        return items
    first = items[0]
    if isinstance(first, BaseModel):
        items[0] = type(first).model_validate(_deep_merge(first.model_dump(), patch))
    elif isinstance(first, dict):
        items[0] = _deep_merge(first, patch)
    else:
        raise ApplicationError("edit_and_retry needs a dict or pydantic first argument")
    return items


class _Outbound(WorkflowOutboundInterceptor):
    def __init__(self, next: WorkflowOutboundInterceptor, state: _State) -> None:
        super().__init__(next)
        self.state = state
        self.root = state.root

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        if input.activity.startswith("healing_"):
            return self.next.start_activity(input)
        return asyncio.create_task(self._heal(input, self.next.start_activity))  # type: ignore[return-value]

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle[Any]:
        if input.activity.startswith("healing_"):
            return self.next.start_local_activity(input)
        return asyncio.create_task(self._heal(input, self.next.start_local_activity))  # type: ignore[return-value]

    async def _heal(self, input: Any, start: Callable[[Any], Awaitable[Any]]) -> Any:
        call = _Call(started=workflow.now())
        current = input
        while True:
            try:
                result = await start(current)
            except (ActivityError, ApplicationError) as err:
                report = _report_of(err)
                if report is None:
                    raise
                current = await self._recover(current, call, report)
                if current is _SKIP:
                    return None
                continue
            return self._succeeded(call, result)

    def _succeeded(self, call: _Call, result: Any) -> Any:
        healing = result.get("healing") if isinstance(result, dict) else None
        if isinstance(healing, dict):
            counts = healing.get("counts_by_type")
            if isinstance(counts, dict):
                self.state.count({str(k): int(v) for k, v in counts.items()})
            healing.update(
                workflow_rounds=len(call.errors),
                refreshes=call.refreshes,
                rerouted_to=call.rerouted,
                decisions=call.decisions,
                escalated=bool(call.decisions),
            )
        if call.errors:
            self._note(
                call, None, "decision" if call.decisions else HealingStrategy.RETRY, "healed"
            )
            self.state.set("healed")
        return result

    def _note(
        self,
        call: _Call,
        error_type: ErrorType | None,
        strategy: HealingStrategy | str,
        outcome: str,
        detail: str = "",
        delay_s: float | None = None,
    ) -> None:
        attempt = HealingAttempt.model_validate(
            {
                "at": workflow.now(),
                "error_type": error_type,
                "strategy": strategy,
                "outcome": outcome,
                "detail": detail,
                "delay_s": delay_s,
            }
        )
        call.attempts.append(attempt)
        self.state.record(attempt)

    async def _recover(self, current: Any, call: _Call, report: FailureReport) -> Any:
        cls = report.classification
        etype = cls.error_type
        call.connector = call.connector or report.connector
        call.operation = call.operation or report.operation
        call.errors.append(etype.value)
        self.state.count(report.counts_by_type)
        tried = ", ".join(f"{k} x{n}" for k, n in sorted(report.counts_by_type.items()))
        self._note(
            call,
            etype,
            cls.strategy,
            "failed",
            f"{report.attempts} call(s) in {report.elapsed_s:.0f}s ({tried}); {report.reason}",
        )
        self.state.set("healing", etype.value)
        row = self.root.config.row(etype)
        hints = _hints(current)
        connector = hints.connector or call.connector

        if etype is ErrorType.AUTH_EXPIRED and connector and call.refreshes < row.max_attempts:
            call.refreshes += 1
            problem = await self._run_healing_activity(
                REFRESH_ACTIVITY,
                {"connector": connector, "reason": report.reason},
                f"refresh credentials for {connector} after {etype.value}",
            )
            if problem is None:
                self._note(call, etype, HealingStrategy.REFRESH_TOKEN, "healed", "token refreshed")
                return _with_hints(current, round=hints.round + 1, budget_s=self._budget(call))
            report = report.model_copy(
                update={
                    "classification": cls.model_copy(
                        update={"error_type": ErrorType.AUTH_INVALID, "retryable": False}
                    ),
                    "reason": f"refreshing the credentials failed: {problem}",
                }
            )
        elif (
            etype is ErrorType.SCHEMA_MISMATCH
            and cls.schema_mapping
            and call.adapts < row.max_attempts
        ):
            call.adapts += 1
            mapping = {**hints.schema_mapping, **cls.schema_mapping}
            problem = await self._run_healing_activity(
                ADAPT_ACTIVITY,
                {"connector": connector, "operation": call.operation, "mapping": mapping},
                f"adapt schema of {connector}.{call.operation} after {etype.value}",
            )
            if problem is None:
                detail = ", ".join(f"{k}->{v}" for k, v in sorted(mapping.items()))
                self._note(call, etype, HealingStrategy.SCHEMA_ADAPT, "healed", detail)
                return _with_hints(
                    current,
                    schema_mapping=mapping,
                    round=hints.round + 1,
                    budget_s=self._budget(call),
                )
        elif etype in _REROUTABLE and connector:
            untried = self._untried(call, connector)
            if untried:
                call.rerouted.append(untried[0])
                self._note(
                    call,
                    etype,
                    HealingStrategy.RETRY_THEN_REROUTE,
                    "failed",
                    f"reroute to {untried[0]}",
                )
                return _with_hints(
                    current,
                    connector=untried[0],
                    round=hints.round + 1,
                    budget_s=self._budget(call),
                )
        return await self._escalate(current, call, report)

    def _untried(self, call: _Call, connector: str) -> list[str]:
        base = call.connector or connector
        return [
            a
            for a in self.root.alternatives.get(base, [])
            if a not in call.rerouted and a != connector
        ]

    def _budget(self, call: _Call) -> float:
        spent = (workflow.now() - call.started).total_seconds()
        return max(self.root.config.healing_budget_s - spent, 0.0)

    async def _run_healing_activity(
        self, name: str, arg: dict[str, Any], summary: str
    ) -> str | None:
        """Run a healing activity; None when it worked, else what went wrong (for the human)."""
        try:
            await workflow.execute_activity(
                name,
                arg,
                start_to_close_timeout=timedelta(
                    seconds=self.root.config.healing_activity_timeout_s
                ),
                retry_policy=RetryPolicy(
                    maximum_attempts=3, non_retryable_error_types=["GrantRevoked"]
                ),
                summary=summary,
            )
        except ActivityError as err:
            cause = err.cause
            return str(cause.message if isinstance(cause, ApplicationError) else err)
        return None

    async def _escalate(self, current: Any, call: _Call, report: FailureReport) -> Any:
        cfg = self.root.config
        cls = report.classification
        esc = build_escalation(
            escalation_id=str(workflow.uuid4()),
            workflow_id=workflow.info().workflow_id,
            activity=current.activity,
            connector=call.connector,
            operation=call.operation,
            classification=cls,
            attempts=call.attempts,
            reason=f"Stopped because {report.reason}." if report.reason else "",
            alternatives=self._untried(call, call.connector) if call.connector else [],
            opened_at=workflow.now(),
            timeout_s=cfg.escalation_timeout_s,
            default_option=cfg.escalation_default,
        )
        self.state.open[esc.escalation_id] = esc
        self._note(call, cls.error_type, HealingStrategy.ESCALATE, "escalated", report.reason)
        self.state.set("awaiting_decision", cls.error_type.value)
        try:
            await workflow.wait_condition(
                lambda: esc.escalation_id in self.state.decisions,
                timeout=timedelta(seconds=esc.timeout_s),
                timeout_summary=f"escalation {esc.escalation_id} default",
            )
            decision = self.state.decisions.pop(esc.escalation_id)
        except TimeoutError:
            self.state.open.pop(esc.escalation_id, None)
            decision = EscalationDecision(
                option=esc.default_option,
                escalation_id=esc.escalation_id,
                decided_by="timeout",
                note=f"no decision within {esc.timeout_s:.0f}s",
            )
        except asyncio.CancelledError:
            self.state.open.pop(esc.escalation_id, None)
            raise
        return await self._apply(current, call, esc, decision)

    async def _apply(
        self, current: Any, call: _Call, esc: Escalation, decision: EscalationDecision
    ) -> Any:
        call.decisions.append(decision.option)
        self._note(
            call,
            esc.error_type,
            "decision",
            "decided",
            f"{decision.option} by {decision.decided_by}",
        )
        if decision.option == "abort":
            self.state.set("failed", esc.error_type.value)
            raise ApplicationError(esc.explanation, type=ABORTED_TYPE, non_retryable=True)
        self.state.set("healing", esc.error_type.value)
        if decision.option == "skip":
            self._note(call, esc.error_type, "decision", "skipped")
            self.state.set("healed")
            return _SKIP
        # Every other option runs the call again with a fresh budget.
        call.started = workflow.now()
        call.refreshes = call.adapts = 0
        hints = _hints(current)
        changes: dict[str, Any] = {"round": hints.round + 1, "budget_s": None}
        if decision.option == "wait":
            delay = decision.wait_s or esc.classification.retry_after_s or 60.0
            await workflow.sleep(
                delay, summary=f"wait {delay:.0f}s before retrying ({esc.error_type.value})"
            )
        elif decision.option == "reroute":
            target = decision.alternative or esc.alternatives[0]
            call.rerouted.append(target)
            changes["connector"] = target
        elif decision.option == "edit_and_retry":
            current = dataclasses.replace(
                current, args=_patch_args(current.args, decision.input_patch or {})
            )
            changes["edits"] = hints.edits + 1
        return _with_hints(current, **changes)
