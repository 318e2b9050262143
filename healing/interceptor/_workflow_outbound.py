"""Workflow side: the per-call loop that carries out ``healing.policy.next_step`` (refresh,
adapt, reroute or escalate) for a call the activity side handed over.

Runs in workflow context but outside the sandbox: only ``workflow.now()``, ``workflow.uuid4()``
and durable timers; no module-level mutable state (a module is shared by all workflows).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import (
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowOutboundInterceptor,
)

from healing import metrics
from healing.classify import fingerprint
from healing.credentials import DEFAULT_CONNECTION, check_connection
from healing.drift import DriftReview, review_of
from healing.errors import DecisionError
from healing.escalation import apply_patch, build_escalation, format_duration
from healing.integration import CallHints, encode_hints, read_hints
from healing.interceptor._journal import Journal, learned_hint
from healing.interceptor._notice import NOTIFY_PATCH, log_notice, start_notifier
from healing.interceptor._state import WorkflowHealing
from healing.learning import pattern_of
from healing.names import (
    ABORTED_TYPE,
    ACTIVITY_PREFIX,
    ADAPT_ACTIVITY,
    CALL_INTEGRATION_ACTIVITY,
    CREDENTIAL_ERROR_TYPE,
    DRIFT_REVIEW_KEY,
    GRANT_REVOKED_TYPE,
    HINTS_HEADER,
    REFRESH_ACTIVITY,
    REPORT_KEY,
    TOKEN_ENDPOINT_TYPE,
)
from healing.policy import StepSituation, final_state, next_step, wait_after_decision
from healing.types import (
    Classification,
    ErrorType,
    Escalation,
    EscalationDecision,
    FailureReport,
    HealingAttempt,
    HealingStrategy,
)

_SKIP = object()
_DRIFT_PATCH = "healing-schema-drift"
_STORE_PATCH = "healing-store"
_LEARN_PATCH = "healing-learning"
_OUTAGE_RULE_PATCH = "healing-outage-rule"
_HEALING_RETRIES = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_attempts=5,
    non_retryable_error_types=[GRANT_REVOKED_TYPE],
)
_BUDGET_RETRIES = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=[GRANT_REVOKED_TYPE, CREDENTIAL_ERROR_TYPE],
)
_TOKEN_ENDPOINT_PATCH = "healing-token-endpoint-outage"
_QUOTA_PARK_PATCH = "healing-quota-park"
AnyStart = StartActivityInput | StartLocalActivityInput


def _connection_of(inp: AnyStart) -> str | None:
    """The ``connection`` of a ``call_integration`` request, when it names a valid one (other
    activities' ``connection`` fields, e.g. a DSN, are not credentials)."""
    if inp.activity != CALL_INTEGRATION_ACTIVITY:
        return None
    arg = inp.args[0] if inp.args else None
    value = arg.get("connection") if isinstance(arg, dict) else getattr(arg, "connection", None)
    if not isinstance(value, str) or value == DEFAULT_CONNECTION:
        return None
    try:
        return check_connection(value)
    except ValueError:
        return None


@dataclasses.dataclass
class _Call:
    started: datetime
    journal: Journal
    connector: str | None = None
    operation: str | None = None
    attempts: list[HealingAttempt] = dataclasses.field(default_factory=list)
    refreshes: int = 0
    adapts: int = 0
    rerouted: list[str] = dataclasses.field(default_factory=list)
    decisions: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    fingerprint: str | None = None
    alternatives: list[str] = dataclasses.field(default_factory=list)
    report: FailureReport | None = None
    """The latest failure report; an escalation re-opened after a bad edit reuses it."""
    healing_since: datetime | None = None
    """When this round's first failure happened: the budget counts from it, not from the
    schedule (a long first attempt or a queue backlog is not healing time)."""
    human: bool = False
    """A person decided (a timeout's default is not one): the call ends ``resolved``."""
    review: tuple[dict[str, Any], DriftReview] | None = None
    """A drifted response held for a human (the result and its review), for accept_mapping."""
    parks: int = 0
    """Times this call waited for a spent quota's reset."""

    @property
    def first_failure(self) -> datetime:
        return self.attempts[0].at if self.attempts else self.started


@dataclasses.dataclass(frozen=True)
class _Done:
    """A call finished by a decision, with no new attempt (accept_mapping)."""

    result: Any


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
    return read_hints(inp.headers)


def _with_hints(inp: AnyStart, **changes: Any) -> AnyStart:
    hints = _hints(inp).model_copy(update=changes)
    return dataclasses.replace(inp, headers={**inp.headers, HINTS_HEADER: encode_hints(hints)})


class HealingOutbound(WorkflowOutboundInterceptor):
    def __init__(self, next: WorkflowOutboundInterceptor, state: WorkflowHealing) -> None:
        super().__init__(next)
        self.state = state
        self.side = state.side
        self.notices: set[asyncio.Task[None]] = set()
        """Running notifier tasks (``_notice``), held so they are not collected."""

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        if input.activity.startswith(ACTIVITY_PREFIX):
            return self.next.start_activity(input)
        return asyncio.create_task(self._heal(input, self.next.start_activity))  # type: ignore[return-value]

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle[Any]:
        if input.activity.startswith(ACTIVITY_PREFIX):
            return self.next.start_local_activity(input)
        return asyncio.create_task(self._heal(input, self.next.start_local_activity))  # type: ignore[return-value]

    async def _heal(self, input: Any, start: Callable[[Any], Awaitable[Any]]) -> Any:
        state, store = self.state, self.side.has_store
        # Decided only when a call first needs healing: the happy path adds nothing to history.
        journal = Journal(lambda: state.feature(_STORE_PATCH, store))
        call = _Call(started=workflow.now(), journal=journal)
        current = input
        if state.features.get(_DRIFT_PATCH, True):  # not decided against for this run
            # A header only (replay compares no headers): no marker on the happy path.
            current = _with_hints(current, drift_reviews=True)
        while True:
            try:
                result = await start(current)
            except (ActivityError, ApplicationError) as err:
                report = _report_of(err)
                if report is None:
                    raise
                self._decide_upfront()
                current = await self._recover(current, call, report)
                if current is _SKIP:
                    return None
                if isinstance(current, _Done):
                    return await self._succeeded(call, current.result)
                continue
            review = review_of(result)
            if review is not None:
                self._decide_upfront()
            if review is not None and self.state.feature(_DRIFT_PATCH, True):
                # The response is held: a human approves its mapping; nothing is re-sent.
                current = await self._review(current, call, result, review)
                if current is _SKIP:
                    return None
                if isinstance(current, _Done):
                    return await self._succeeded(call, current.result)
                continue
            self._drift_seen(call, result)
            return await self._succeeded(call, result)

    def _decide_upfront(self) -> None:
        """Every patch this run may meet, decided before healing runs a local activity."""
        cfg = self.side.config
        self.state.decide_upfront(
            {
                _STORE_PATCH: self.side.has_store,
                _LEARN_PATCH: self.side.has_store and cfg.learning.enabled,
                _OUTAGE_RULE_PATCH: True,
                _TOKEN_ENDPOINT_PATCH: True,
                _DRIFT_PATCH: True,
                _QUOTA_PARK_PATCH: True,
                NOTIFY_PATCH: cfg.notify_webhook is not None,
            }
        )

    def _drift_seen(self, call: _Call, result: Any) -> None:
        """Drift the activity met (shown in healing_status) and an adaptation it made."""
        healing = result.get("healing") if isinstance(result, dict) else None
        if not isinstance(healing, dict) or not (healing.get("drift") or healing.get("schema")):
            return
        self._decide_upfront()  # before _succeeded's journal flush runs a local activity
        if not self.state.feature(_DRIFT_PATCH, True):
            return
        self.state.note_drift([str(d) for d in healing.get("drift") or []])
        schema = healing.get("schema")
        if not (isinstance(schema, dict) and schema.get("adapted")):
            return
        evidence = "; ".join(str(e) for e in schema.get("evidence") or [])
        detail = f"{schema.get('mapping')} ({evidence or 'see the mapping'})"
        renames = schema.get("renames")
        short = [f"{k}->{v}" for k, v in sorted((renames or {}).items())]
        if schema.get("envelope"):
            short.insert(0, f"unwrap {schema['envelope']}")
        connector = str(result.get("connector") or call.connector or "") or None
        operation = str(schema.get("operation") or call.operation or "") or None
        self._adapted(call, connector, operation, detail, ", ".join(short) or detail)

    def _adapted(
        self,
        call: _Call,
        connector: str | None,
        operation: str | None,
        detail: str,
        outcome: str,
    ) -> None:
        cls = self._drift_classification(connector, operation, detail)
        call.connector, call.operation = call.connector or connector, call.operation or operation
        call.errors.append(cls.error_type.value)
        call.fingerprint = call.fingerprint or cls.fingerprint
        journal = call.journal
        journal.connector, journal.operation = call.connector, call.operation
        journal.tried(pattern_of(cls, call.connector, call.operation), HealingStrategy.SCHEMA_ADAPT)
        self._note(call, cls.error_type, HealingStrategy.SCHEMA_ADAPT, "healed", detail)
        journal.event(
            "adapted",
            error_type=cls.error_type,
            fingerprint=cls.fingerprint,
            strategy=HealingStrategy.SCHEMA_ADAPT,
            outcome=outcome,
        )
        metrics.workflow_schema_adapted(connector, operation, "ok")

    def _drift_classification(
        self, connector: str | None, operation: str | None, message: str
    ) -> Classification:
        row = self.side.config.row(ErrorType.SCHEMA_MISMATCH)
        return Classification(
            error_type=ErrorType.SCHEMA_MISMATCH,
            transient=row.transient,
            retryable=row.retryable,
            strategy=row.strategy,
            max_attempts=row.max_attempts,
            message=message,
            fingerprint=fingerprint(
                connector, operation, ErrorType.SCHEMA_MISMATCH, None, None, "schema drift"
            ),
            rule="schema_drift",
        )

    async def _review(
        self, current: Any, call: _Call, result: dict[str, Any], review: DriftReview
    ) -> Any:
        """Escalate a held response with its proposed mapping (``accept_mapping``)."""
        mapping = review.mapping
        call.review = (result, review)
        call.connector = call.connector or mapping.connector
        call.operation = call.operation or mapping.operation
        if call.healing_since is None:
            call.healing_since = workflow.now()
        self.state.note_drift(review.drift)
        cls = self._drift_classification(mapping.connector, mapping.operation, review.explanation)
        call.errors.append(cls.error_type.value)
        call.fingerprint = cls.fingerprint
        call.journal.connector, call.journal.operation = call.connector, call.operation
        detail = f"proposed {mapping.describe()} (mapping {mapping.mapping_id})"
        self._note(call, cls.error_type, HealingStrategy.SCHEMA_ADAPT, "failed", detail)
        self.state.set("healing", cls.error_type.value)
        report = FailureReport(
            classification=cls,
            connector=mapping.connector,
            operation=mapping.operation,
            reason=f"the proposed mapping {mapping.mapping_id} needs a human's approval "
            "(accept_mapping reads the response already received with it)",
        )
        call.report = report
        return await self._escalate(
            current, call, report, proposal=review.proposal, resend_safe=review.resend_safe
        )

    async def _accept(
        self, current: Any, call: _Call, esc: Escalation, decision: EscalationDecision
    ) -> Any:
        """accept_mapping: read the held response with the mapping; the call is not re-sent."""
        assert call.review is not None  # accept_mapping is offered only with a held review
        held, review = call.review
        mapping = review.mapping
        where = f"{mapping.connector}.{mapping.operation}"
        try:
            out = await workflow.execute_activity(
                ADAPT_ACTIVITY,
                {
                    "connector": mapping.connector,
                    "operation": mapping.operation,
                    "review": review.model_dump(mode="json"),
                    "mapping_id": decision.mapping_id,
                    "decided_by": decision.decided_by,
                },
                start_to_close_timeout=timedelta(
                    seconds=self.side.config.healing_activity_timeout_s
                ),
                retry_policy=_HEALING_RETRIES,
                summary=f"apply the accepted schema mapping of {where}",
            )
        except ActivityError as err:
            cause = err.cause
            problem = cause.message if isinstance(cause, ApplicationError) else str(err)
            self._note(call, esc.error_type, HealingStrategy.SCHEMA_ADAPT, "failed", problem)
            assert call.report is not None
            report = call.report.model_copy(update={"reason": problem})
            return await self._escalate(
                current, call, report, proposal=review.proposal, resend_safe=review.resend_safe
            )
        call.review = None
        merged = {k: v for k, v in held.items() if k != DRIFT_REVIEW_KEY}
        merged["result"], merged["extra"] = out.get("result"), out.get("extra", {})
        merged["healing"] = {**(held.get("healing") or {}), **(out.get("healing") or {})}
        schema = (out.get("healing") or {}).get("schema") or {}
        detail = f"mapping {schema.get('mapping_id')} accepted: {schema.get('mapping')}"
        self._note(call, esc.error_type, HealingStrategy.SCHEMA_ADAPT, "healed", detail)
        call.journal.event(
            "adapted",
            error_type=esc.error_type,
            fingerprint=esc.classification.fingerprint,
            strategy=HealingStrategy.SCHEMA_ADAPT,
            outcome=detail,
        )
        metrics.workflow_schema_adapted(mapping.connector, mapping.operation, "ok")
        return _Done(merged)

    async def _succeeded(self, call: _Call, result: Any) -> Any:
        healing = result.get("healing") if isinstance(result, dict) else None
        if isinstance(healing, dict):
            healing.update(
                workflow_rounds=len(call.errors),
                refreshes=call.refreshes,
                rerouted_to=call.rerouted,
                decisions=call.decisions,
                escalated=bool(call.decisions),
            )
        if call.errors:
            human = call.human
            self._note(call, None, "decision" if human else HealingStrategy.RETRY, "healed")
            self.state.set(final_state(decided_by_human=human))
            heal_s = (workflow.now() - call.first_failure).total_seconds()
            first = call.attempts[0]
            strategy = metrics.heal_strategy([a.strategy for a in call.attempts], human=human)
            metrics.workflow_healed(strategy, first.error_type, heal_s, human=human)
            call.journal.event(
                "healed",
                error_type=first.error_type,
                fingerprint=call.fingerprint,
                strategy=call.journal.last_strategy,
                outcome="resolved" if human else "healed",
                duration_s=heal_s,
            )
            call.journal.settle(healed=True, heal_s=heal_s)
            await call.journal.flush()
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
        call.report = report
        if call.healing_since is None:
            call.healing_since = workflow.now() - timedelta(seconds=report.elapsed_s)
        cls = report.classification
        etype = cls.error_type
        call.connector = call.connector or report.connector
        call.operation = call.operation or report.operation
        call.errors.append(etype.value)
        call.fingerprint = cls.fingerprint
        call.alternatives = call.alternatives or list(report.alternatives)
        if current.activity_id is None and report.activity_id:
            # Restarts keep the first schedule's id, so its idempotency key stays the same.
            current = dataclasses.replace(current, activity_id=report.activity_id)
        journal = call.journal
        journal.connector, journal.operation = call.connector, call.operation
        self.state.count(report.counts_by_type)
        tried = ", ".join(f"{k} x{n}" for k, n in sorted(report.counts_by_type.items()))
        spent = format_duration(report.elapsed_s)
        detail = f"{report.attempts} call(s) in {spent} ({tried}); {report.reason}"
        learning = journal.enabled and self.state.feature(
            _LEARN_PATCH, self.side.config.learning.enabled
        )
        hint = await learned_hint(learning, cls.fingerprint, etype.value)
        if hint is not None and not report.learned:
            detail += f"; learned: {hint['reason']}"
        self._note(call, etype, cls.strategy, "failed", detail)
        pattern = pattern_of(cls, call.connector, call.operation)
        self.state.set("healing", etype.value)
        hints = _hints(current)
        connector = hints.connector or call.connector

        verdict = next_step(
            StepSituation(
                classification=cls,
                refreshes=call.refreshes,
                adapts=call.adapts,
                untried_alternatives=tuple(self._untried(call, connector)) if connector else (),
                has_connector=bool(connector),
                # Workflows started before the outage rule replay by the old reroute set.
                legacy=not self.state.feature(_OUTAGE_RULE_PATCH, True),
                parks=call.parks,
                park_s=report.park_s if self.state.feature(_QUOTA_PARK_PATCH, True) else None,
            )
        )
        if verdict.action == "refresh" and connector:
            call.refreshes += 1
            journal.tried(pattern, HealingStrategy.REFRESH_TOKEN)
            ask: dict[str, Any] = {
                "connector": connector,
                "reason": report.reason,
                "seen_version": report.token_version,
            }
            connection = _connection_of(current)
            if connection is not None:  # absent: "default", and old histories stay alike
                ask["connection"] = connection
            problem = await self._run_healing_activity(
                REFRESH_ACTIVITY,
                ask,
                f"refresh credentials for {connector} after {etype.value}",
                budget_s=self._budget(call),
            )
            metrics.workflow_token_refresh(connector, metrics.refresh_outcome(problem))
            metrics.workflow_attempt(
                HealingStrategy.REFRESH_TOKEN, "refreshed" if problem is None else "failed", etype
            )
            if problem is None:
                self._note(call, etype, HealingStrategy.REFRESH_TOKEN, "healed", "token refreshed")
                journal.event(
                    "refreshed",
                    error_type=etype,
                    fingerprint=cls.fingerprint,
                    strategy=HealingStrategy.REFRESH_TOKEN,
                    outcome="ok",
                )
                return _with_hints(current, round=hints.round + 1, budget_s=self._budget(call))
            message, kind = problem
            update: dict[str, Any] = {"reason": f"refreshing the credentials failed: {message}"}
            if kind == GRANT_REVOKED_TYPE:
                # Only a dead grant needs a human to reauthorize; a flaky token endpoint
                # stays AUTH_EXPIRED (retry or wait).
                update["classification"] = cls.model_copy(
                    update={"error_type": ErrorType.AUTH_INVALID, "retryable": False}
                )
            elif kind == TOKEN_ENDPOINT_TYPE and self.state.feature(_TOKEN_ENDPOINT_PATCH, True):
                # The healing budget went on a token endpoint outage: an outage for the human
                # (wait or retry), never "reauthorize".
                update["reason"] = f"the token endpoint stayed unavailable: {message}"
                update["classification"] = cls.model_copy(
                    update={"error_type": ErrorType.SERVICE_DOWN, "retryable": True}
                )
            report = report.model_copy(update=update)
        elif verdict.action == "adapt":
            call.adapts += 1
            journal.tried(pattern, HealingStrategy.SCHEMA_ADAPT)
            mapping = {**hints.schema_mapping, **cls.schema_mapping}
            problem = await self._run_healing_activity(
                ADAPT_ACTIVITY,
                {"connector": connector, "operation": call.operation, "mapping": mapping},
                f"adapt schema of {connector}.{call.operation} after {etype.value}",
            )
            metrics.workflow_schema_adapted(
                connector, call.operation, "ok" if problem is None else "failed"
            )
            metrics.workflow_attempt(
                HealingStrategy.SCHEMA_ADAPT, "adapted" if problem is None else "failed", etype
            )
            if problem is not None:
                reason = f"adapting the schema failed: {problem[0]}"
                report = report.model_copy(update={"reason": reason})
            else:
                detail = ", ".join(f"{k}->{v}" for k, v in sorted(mapping.items()))
                self._note(call, etype, HealingStrategy.SCHEMA_ADAPT, "healed", detail)
                journal.event(
                    "adapted",
                    error_type=etype,
                    fingerprint=cls.fingerprint,
                    strategy=HealingStrategy.SCHEMA_ADAPT,
                    outcome=detail,
                )
                return _with_hints(
                    current,
                    schema_mapping=mapping,
                    round=hints.round + 1,
                    budget_s=self._budget(call),
                )
        elif verdict.action == "reroute" and verdict.target:
            target = verdict.target
            call.rerouted.append(target)
            journal.tried(pattern, HealingStrategy.REROUTE)
            journal.event(
                "rerouted",
                error_type=etype,
                fingerprint=cls.fingerprint,
                strategy=HealingStrategy.REROUTE,
                outcome=target,
            )
            self._note(call, etype, HealingStrategy.REROUTE, "failed", f"reroute to {target}")
            metrics.workflow_attempt(HealingStrategy.REROUTE, "rerouted", etype)
            return _with_hints(
                current,
                connector=target,
                rerouted=list(call.rerouted),
                round=hints.round + 1,
                budget_s=self._budget(call),
            )
        elif verdict.action == "park" and verdict.delay_s is not None:
            return await self._park(current, call, report, verdict.delay_s)
        if verdict.action == "escalate" and verdict.reason.endswith("did not help"):
            report = report.model_copy(update={"reason": f"{report.reason}; {verdict.reason}"})
        return await self._escalate(current, call, report)

    async def _park(self, current: Any, call: _Call, report: FailureReport, delay: float) -> Any:
        """Wait, durably and with no human, for a spent quota's reset; then call again.

        A workflow timer: a worker restart or a deploy meanwhile changes nothing, and
        ``healing_status``, Current Details and the timer's summary say when it resumes."""
        cls = report.classification
        delay = max(delay, 1.0)
        until = workflow.now() + timedelta(seconds=delay)
        what = f"{call.connector or '?'}.{call.operation or '?'}"
        n = 1
        while what in self.state.parked:  # parallel calls of one operation park side by side
            n += 1
            what = f"{call.connector or '?'}.{call.operation or '?'} #{n}"
        call.parks += 1
        detail = f"quota spent: parked until {until:%Y-%m-%d %H:%M:%S} UTC, resumes by itself"
        self._note(
            call, cls.error_type, HealingStrategy.WAIT_RETRY_AFTER, "waiting", detail, delay_s=delay
        )
        call.journal.event(
            "attempt",
            error_type=cls.error_type,
            fingerprint=cls.fingerprint,
            strategy=HealingStrategy.WAIT_RETRY_AFTER,
            outcome=f"parked {format_duration(delay)} until the quota resets",
        )
        await call.journal.flush()
        metrics.workflow_attempt("quota", "held", cls.error_type)
        self.state.parked[what] = until
        self.state.set("healing", cls.error_type.value)
        try:
            await workflow.sleep(
                delay, summary=f"quota of {call.connector} spent: parked until the reset"
            )
        except asyncio.CancelledError:
            self.state.parked.pop(what, None)
            self.state.set("failed", cls.error_type.value)
            raise
        self.state.parked.pop(what, None)
        self.state.set("healing", cls.error_type.value)  # Current Details drop the resume time
        # A fresh budget from now: the hours parked are not healing time.
        call.started = workflow.now()
        call.healing_since = None
        hints = _hints(current)
        return _with_hints(current, round=hints.round + 1, budget_s=None)

    def _untried(self, call: _Call, connector: str) -> list[str]:
        return [a for a in call.alternatives if a not in call.rerouted and a != connector]

    def _budget(self, call: _Call) -> float:
        spent = (workflow.now() - (call.healing_since or call.started)).total_seconds()
        return max(self.side.config.healing_budget_s - spent, 0.0)

    async def _run_healing_activity(
        self, name: str, arg: dict[str, Any], summary: str, *, budget_s: float | None = None
    ) -> tuple[str, str | None] | None:
        """Run a healing activity; None when it worked, else (what went wrong, error type).

        With ``budget_s`` (the refresh), retries go on until the call's healing budget is
        spent, so a token endpoint outage heals inside the budget."""
        retry, deadline = _HEALING_RETRIES, None
        if budget_s is not None and budget_s > 0:
            retry = _BUDGET_RETRIES
            deadline = timedelta(seconds=max(budget_s, self.side.config.healing_activity_timeout_s))
        try:
            await workflow.execute_activity(
                name,
                arg,
                start_to_close_timeout=timedelta(
                    seconds=self.side.config.healing_activity_timeout_s
                ),
                schedule_to_close_timeout=deadline,
                retry_policy=retry,
                summary=summary,
            )
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):
                return cause.message, cause.type
            return str(err), None
        return None

    async def _escalate(
        self,
        current: Any,
        call: _Call,
        report: FailureReport,
        *,
        proposal: dict[str, Any] | None = None,
        resend_safe: bool = True,
    ) -> Any:
        cfg = self.side.config
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
            wait_s=wait_after_decision(
                asked_s=None,
                retry_after_s=cls.retry_after_s,
                default_s=cfg.default_wait_s,
                max_s=cfg.max_wait_s,
            ),
            proposal=proposal,
            resend_safe=resend_safe,
        )
        connection = _connection_of(current)
        if connection is not None:  # so `credentials authorize` finds who waits on it
            esc = esc.model_copy(update={"connection": connection})
        self._note(call, cls.error_type, HealingStrategy.ESCALATE, "escalated", report.reason)
        call.journal.settle(healed=False)
        call.journal.event(
            "escalated",
            error_type=cls.error_type,
            fingerprint=cls.fingerprint,
            strategy=HealingStrategy.ESCALATE,
            outcome=report.reason,
        )
        await call.journal.flush()
        self.state.open[esc.escalation_id] = esc
        self.state.args[esc.escalation_id] = list(current.args)
        self.state.set("awaiting_decision", cls.error_type.value)
        metrics.workflow_attempt(HealingStrategy.ESCALATE, "escalated", cls.error_type)
        metrics.workflow_escalation_opened(cls.error_type, call.connector)
        if self.state.feature(NOTIFY_PATCH, cfg.notify_webhook is not None):
            start_notifier(esc, cfg, self.notices)  # beside the wait, never in its way
        else:
            log_notice(esc, cfg)  # no webhook: a log line, nothing in history
        try:
            await workflow.wait_condition(
                lambda: esc.escalation_id in self.state.decisions,
                timeout=timedelta(seconds=esc.timeout_s),
                timeout_summary=f"escalation {esc.escalation_id} default",
            )
            decision = self.state.decisions.pop(esc.escalation_id)
        except TimeoutError:
            # A decision landing with the timer still wins: the human was told "accepted".
            late = self.state.decisions.pop(esc.escalation_id, None)
            decision = late or EscalationDecision(
                option=esc.default_option,
                escalation_id=esc.escalation_id,
                decided_by="timeout",
                note=f"no decision within {format_duration(esc.timeout_s)}",
            )
        except asyncio.CancelledError:
            metrics.workflow_escalation_closed(cls.error_type, call.connector, "cancelled")
            self.state.open.pop(esc.escalation_id, None)  # before set(): clears the memo too
            self.state.set("failed", cls.error_type.value)
            raise
        finally:
            self.state.open.pop(esc.escalation_id, None)
        return await self._apply(current, call, esc, decision)

    async def _apply(
        self, current: Any, call: _Call, esc: Escalation, decision: EscalationDecision
    ) -> Any:
        call.decisions.append(decision.option)
        call.human = call.human or decision.decided_by != "timeout"
        metrics.workflow_escalation_closed(esc.error_type, esc.connector, decision.option)
        self._note(
            call,
            esc.error_type,
            "decision",
            "decided",
            f"{decision.option} by {decision.decided_by}",
        )
        call.journal.event(
            "decided",
            error_type=esc.error_type,
            fingerprint=esc.classification.fingerprint,
            outcome=f"{decision.option} by {decision.decided_by}",
        )
        if decision.option == "abort":
            self.state.set("failed", esc.error_type.value)
            call.journal.event("gave_up", error_type=esc.error_type, outcome="aborted")
            await call.journal.flush()
            raise ApplicationError(esc.explanation, type=ABORTED_TYPE, non_retryable=True)
        self.state.set("healing", esc.error_type.value)
        if decision.option == "skip":
            self._note(call, esc.error_type, "decision", "skipped")
            self.state.set(final_state(decided_by_human=call.human))
            await call.journal.flush()
            return _SKIP
        if decision.option == "accept_mapping" and call.review is not None:
            return await self._accept(current, call, esc, decision)
        call.review = None  # any other option runs the call again
        # Every other option runs the call again with a fresh budget.
        call.started = workflow.now()
        call.healing_since = None
        call.refreshes = call.adapts = 0
        hints = _hints(current)
        changes: dict[str, Any] = {"round": hints.round + 1, "budget_s": None}
        if decision.option == "wait":
            asked = esc.classification.retry_after_s
            if asked is not None:  # the service's wait counts from the failure, not from now
                waited = (workflow.now() - esc.opened_at).total_seconds()
                asked = max(asked - waited, 1.0)
            delay = wait_after_decision(
                asked_s=decision.wait_s,
                retry_after_s=asked,
                default_s=self.side.config.default_wait_s,
                max_s=self.side.config.max_wait_s,
            )
            until = workflow.now() + timedelta(seconds=delay)
            self._note(
                call,
                esc.error_type,
                "decision",
                "waiting",
                f"waiting {format_duration(delay)}, resumes at {until:%Y-%m-%d %H:%M:%S} UTC",
                delay_s=delay,
            )
            await workflow.sleep(
                delay,
                summary=f"wait {format_duration(delay)} before retrying ({esc.error_type.value})",
            )
        elif decision.option == "reroute":
            target = decision.alternative or esc.alternatives[0]
            call.rerouted.append(target)
            changes["connector"] = target
            changes["rerouted"] = list(call.rerouted)
        elif decision.option == "edit_and_retry":
            try:
                args = apply_patch(current.args, decision.input_patch or {})
            except DecisionError as exc:  # validated before; a default cannot carry a patch
                self._note(call, esc.error_type, "decision", "failed", str(exc))
                assert call.report is not None  # a decision follows a failure
                return await self._escalate(current, call, call.report)
            current = dataclasses.replace(current, args=args)
            changes["edits"] = hints.edits + 1
        return _with_hints(current, **changes)
