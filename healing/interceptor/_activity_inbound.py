"""Activity side: run one attempt of an integration call, classify its failure, and raise
the verdict of ``healing.policy.next_attempt`` as the ``ApplicationError`` the server acts on
(``next_retry_delay`` paces the retry, so the server waits, not the worker; a hand-over is
non-retryable and carries a ``FailureReport`` for the workflow side).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
)

from healing import metrics
from healing.backoff import backoff_delay
from healing.breaker import BreakerBoard, BreakerTransition
from healing.classify import Failure, detect_error
from healing.config import HealingConfig
from healing.eventlog import EventLog
from healing.integration import (
    CallContext,
    _reset_current,
    _set_current,
    integration_spec,
)
from healing.interceptor._attempt import USER_HEARTBEAT, Attempt, HeartbeatKeeper, inner_timeout
from healing.interceptor._ledger import Ledger, user_details
from healing.learning import RETRY_STRATEGIES, StrategyHint, pattern_of
from healing.names import ACTIVITY_PREFIX, HEALED_SIGNAL, REPORT_KEY
from healing.patterns import PatternCache
from healing.policy import TRANSIENT_TYPES, AttemptSituation, next_attempt
from healing.types import (
    Classification,
    ErrorType,
    FailureReport,
    HealingStrategy,
    RetriesHealed,
)

logger = logging.getLogger("healing")

# Failures that say the upstream itself is unwell; 4xx verdicts do not trip the breaker.
_BREAKER_TYPES = {
    ErrorType.TIMEOUT,
    ErrorType.SERVICE_DOWN,
    ErrorType.NETWORK_ERROR,
    ErrorType.INTERNAL_ERROR,
}
_SIGNAL_TIMEOUT_S = 5.0


class ActivitySide(Protocol):
    """What the activity side needs of the worker's healing state (``SelfHealingInterceptor``)."""

    config: HealingConfig
    alternatives: dict[str, list[str]]
    clock: Callable[[], float]
    wall_clock: Callable[[], datetime]
    breakers: BreakerBoard
    events: EventLog
    patterns: PatternCache
    outages: dict[str, tuple[str, Classification]]

    @property
    def learning(self) -> bool: ...

    def classify(self, failure: Failure) -> Classification: ...

    def note_outage(self, connector: str, cls: Classification) -> None: ...


def _outage_note(since: str, cls: Classification) -> str:
    """Since when the upstream fails and what it last answered, for the escalation."""
    answer = f"HTTP {cls.status_code}" if cls.status_code else cls.error_type.value
    if cls.vendor_code:
        answer += f" (code {cls.vendor_code})"
    return f"; failing since {since.replace('T', ' ')}, last answer {answer}"


def _healing_time(call: Attempt) -> float:
    """Seconds since the call's first failure (its whole time when the ledger was lost)."""
    first = call.ledger.failed_at_s
    return max(call.elapsed() - (first or 0.0), 0.0)


def _strategy(value: str) -> HealingStrategy:
    try:
        return HealingStrategy(value)
    except ValueError:
        return HealingStrategy.RETRY


def _log_transition(change: BreakerTransition | None) -> None:
    # Waits behind an open circuit are BENIGN and quiet: say when the circuit changes.
    if change is not None:
        metrics.breaker_changed(change)
        logger.warning(
            "circuit for %s: %s -> %s", change.connector, change.from_state, change.to_state
        )


class ActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: ActivitySide) -> None:
        super().__init__(next)
        self.root = root

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        super().init(HeartbeatKeeper(outbound))

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        spec = integration_spec(input.fn)
        if info.activity_type.startswith(ACTIVITY_PREFIX) or (
            spec is None and not self.root.config.heal_all_activities
        ):
            return await self.next.execute_activity(input)
        call = Attempt(input, spec, clock=self.root.clock, events=self.root.events)
        USER_HEARTBEAT.set(user_details(info.heartbeat_details))
        breaker = self.root.breakers.get(call.connector or info.activity_type)

        wait = breaker.before_call(call.started)
        if wait is not None:
            outage = self.root.outages.get(breaker.connector)
            note = _outage_note(*outage) if outage else ""
            failure = Failure(
                exception="healing.CircuitOpen",
                message=f"circuit for {breaker.connector} is open{note}",
                connector=call.connector,
                operation=call.operation,
            )
            cls = self.root.classify(failure).model_copy(update={"retry_after_s": wait})
            raise await self._verdict(cls, call)

        # The breaker judges calls, not attempts: a call's own retries would let a few unlucky
        # calls look like an outage. Outcomes while it is not closed are probes: they count.
        counts_for_breaker = info.attempt == 1 or breaker.state != "closed"
        ctx = call.context = CallContext(
            call.connector, call.operation, call.hints, info.attempt, call.ledger.counts
        )
        token = _set_current(ctx)
        try:
            # asyncio.timeout, not wait_for: no extra task per call on the happy path.
            async with asyncio.timeout(inner_timeout(info)):
                result = await self.next.execute_activity(input)
        except ApplicationError:
            if breaker.state == "half_open":
                _log_transition(breaker.record_success(self.root.clock()))  # it answered
            raise  # the activity chose its own verdict
        except Exception as exc:
            found = detect_error(exc, connector=call.connector, operation=call.operation)
            if found is None:
                raise
            failure = found
        else:
            detected = detect_error(result, connector=call.connector, operation=call.operation)
            if detected is None:
                self.root.outages.pop(breaker.connector, None)
                if counts_for_breaker:
                    _log_transition(breaker.record_success(self.root.clock()))
                if call.ledger.pattern is not None:
                    await self._healed(call)
                return result
            failure = detected
        finally:
            _reset_current(token)

        cls = self.root.classify(failure)
        if cls.error_type in _BREAKER_TYPES:
            self.root.note_outage(breaker.connector, cls)
            if counts_for_breaker:  # always so while half-open
                _log_transition(breaker.record_failure(self.root.clock()))
        elif breaker.state == "half_open" and cls.status_code is not None:
            # A probe answered with a 4xx: the service is up, whatever it thinks of the call.
            _log_transition(breaker.record_success(self.root.clock()))
        raise await self._verdict(cls, call)

    async def _healed(self, call: Attempt) -> None:
        """A success after failures: the retries healed the pattern (learning evidence), and
        the workflow is told, since it cannot see server retries (``HEALED_SIGNAL``)."""
        pattern, strategy = call.ledger.pattern, call.ledger.strategy or "retry"
        assert pattern is not None
        heal_s = round(_healing_time(call), 3)
        # A wait the healer imposed (behind the circuit, at the probe cadence) measures our
        # pacing, not the upstream's recovery: it heals, but teaches no recovery time.
        learned_s = None if call.ledger.waited else heal_s
        self.root.events.start()
        self.root.events.record_outcome(pattern, strategy, healed=True, heal_s=learned_s)
        # Median heal times come from "healed" events of the strategy: file imposed waits apart.
        shown = HealingStrategy.WAIT_CIRCUIT.value if call.ledger.waited else strategy
        call.event("healed", pattern, strategy=shown, outcome="healed", duration_s=heal_s)
        metrics.activity_healed(shown, pattern.error_type, heal_s)
        info = call.info
        if info.is_local or not info.workflow_id:
            return
        report = RetriesHealed(
            activity=info.activity_type,
            activity_id=info.activity_id,
            attempts=info.attempt,
            counts_by_type=dict(call.ledger.counts),
            error_type=pattern.error_type,
            strategy=_strategy(strategy),
            heal_s=heal_s,
        )
        try:
            handle = activity.client().get_workflow_handle(
                info.workflow_id, run_id=info.workflow_run_id
            )
            # Never at the result's expense: stay well inside this attempt's deadline.
            left = inner_timeout(info)
            budget = _SIGNAL_TIMEOUT_S if left is None else min(_SIGNAL_TIMEOUT_S, left / 4)
            async with asyncio.timeout(budget):
                await handle.signal(HEALED_SIGNAL, report.model_dump(mode="json"))
        except Exception as exc:  # the result matters more than the report of its heal
            logger.warning("could not report the heal of %s: %s", info.activity_id, exc)

    async def _hint(self, cls: Classification, call: Attempt, budget: float) -> StrategyHint | None:
        if not self.root.learning or not cls.retryable:
            return None
        hint = await self.root.patterns.hint(
            cls.fingerprint,
            self.root.config.row(cls.error_type),
            backoff=self.root.config.backoff,
            budget_s=budget,
        )
        if hint is not None and hint.skip_retries and self._explores(call):
            return None
        return hint

    def _explores(self, call: Attempt) -> bool:
        # A few calls still retry a pattern learned as hopeless, so the evidence can change.
        rate = self.root.config.learning.explore_rate
        seed = f"explore:{call.info.workflow_id}:{call.info.activity_id}"
        return rate > 0 and random.Random(seed).random() < rate

    async def _verdict(self, cls: Classification, call: Attempt) -> ApplicationError:
        """Turn a classification into the error the server acts on (``policy.next_attempt``)."""
        cfg = self.root.config
        info = call.info
        key = cls.error_type.value
        counts = dict(call.ledger.counts)
        if not counts and info.attempt > 1:
            # Ledger lost (local activity, or a server that drops heartbeat details on
            # failure): count every earlier attempt against this type, the safe side.
            counts = {key: info.attempt - 1}
        counts[key] = counts.get(key, 0) + 1
        used = counts[key]
        total = call.elapsed()
        # The budget counts from the first failure: a long first attempt or a queue backlog
        # is not healing time. A lost ledger on a retry counts everything, the safe side.
        if call.ledger.failed_at_s is not None:
            first_failure = call.ledger.failed_at_s
        else:
            first_failure = 0.0 if info.attempt > 1 else total
        elapsed = max(total - first_failure, 0.0)
        budget = cfg.healing_budget_s if call.hints.budget_s is None else call.hints.budget_s
        hint = await self._hint(cls, call, budget)
        spread = random.Random(f"ra:{info.workflow_id}:{info.activity_id}:{used}").uniform(0, 0.1)
        verdict = next_attempt(
            AttemptSituation(
                classification=cls,
                used=used,
                elapsed_s=elapsed,
                budget_s=budget,
                backoff_s=self._backoff(used, info),
                probe_interval_s=cfg.breaker.open_s,
                max_retry_after_s=cfg.max_retry_after_s,
                hint=hint,
                circuit_wait_s=self._circuit_wait(cls, call),
                has_alternative=bool(self._untried(call)),
                spread=spread,
            )
        )
        since = call.ledger.failing_since or self.root.wall_clock().isoformat(timespec="seconds")
        pattern = pattern_of(cls, call.connector, call.operation)
        strategy = cls.strategy.value
        if cls.error_type is ErrorType.CIRCUIT_OPEN and call.ledger.pattern is not None:
            # Held back by the circuit: a later heal still heals the upstream's own failure.
            pattern, strategy = call.ledger.pattern, call.ledger.strategy or strategy
        ledger = Ledger(
            counts=counts,
            pattern=pattern,
            strategy=strategy,
            failing_since=since,
            waited=call.ledger.waited or verdict.action == "wait_recovery",
            failed_at_s=first_failure,
        )
        if not info.is_local:
            # Survives to the next attempt: per-type budgets hold across server retries.
            holder = USER_HEARTBEAT.get()
            own = holder if holder is not None else user_details(info.heartbeat_details)
            activity.heartbeat(*own, ledger.to_detail())
        call.event("classified", cls, strategy=strategy, outcome=cls.rule)
        metrics.activity_failure(cls.error_type, call.connector, call.operation)
        give_up = verdict.action == "hand_over"
        reason = verdict.reason if give_up else ""
        if give_up and cls.error_type in TRANSIENT_TYPES:
            reason += _outage_note(since, cls)
        if give_up and used > 1 and strategy in RETRY_STRATEGIES:
            # Retries were tried on this pattern and did not heal it: learning evidence.
            self.root.events.record_outcome(pattern, strategy, healed=False)
        report = {
            REPORT_KEY: FailureReport(
                classification=cls,
                connector=call.connector,
                operation=call.operation,
                attempts=info.attempt,
                counts_by_type=counts,
                elapsed_s=round(elapsed, 3),
                reason=reason or "the activity's retry policy stopped retrying",
                learned=hint.reason if hint is not None else None,
                activity_id=info.activity_id,
                token_version=call.context.token_version if call.context else None,
                alternatives=self.root.alternatives.get(call.base_connector or "", []),
            ).model_dump(mode="json")
        }
        message = cls.message or key
        if give_up:
            call.event("gave_up", cls, strategy=strategy, outcome=reason, duration_s=elapsed)
            metrics.activity_attempt(strategy, "gave_up", cls.error_type)
            return ApplicationError(f"{message} ({reason})", report, type=key, non_retryable=True)
        delay = verdict.delay_s or 0.0
        call.event("attempt", cls, strategy=strategy, outcome=f"{verdict.reason} in {delay:.2f}s")
        metrics.activity_attempt(strategy, "retry", cls.error_type)
        waiting = verdict.action == "wait_recovery"
        category = (
            ApplicationErrorCategory.BENIGN
            if waiting
            or cls.benign
            or cls.error_type in (ErrorType.RATE_LIMITED, ErrorType.CIRCUIT_OPEN)
            else ApplicationErrorCategory.UNSPECIFIED
        )
        return ApplicationError(
            message,
            report,
            type=key,
            non_retryable=False,
            next_retry_delay=timedelta(seconds=delay),
            category=category,
        )

    def _untried(self, call: Attempt) -> list[str]:
        """Alternatives of the call's connector it has not been sent to yet."""
        tried = {call.connector, *call.hints.rerouted}
        known = self.root.alternatives.get(call.base_connector or "", [])
        return [a for a in known if a not in tried]

    def _circuit_wait(self, cls: Classification, call: Attempt) -> float | None:
        """Seconds until the connector's open circuit lets a probe through, if it is open."""
        if cls.error_type not in _BREAKER_TYPES:
            return None
        breaker = self.root.breakers.get(call.connector or call.info.activity_type)
        if breaker.state == "closed":
            return None
        snap = breaker.snapshot(self.root.clock())
        if snap.retry_at is None:
            return None
        return max(snap.retry_at - self.root.clock(), 0.0) + self._backoff(1, call.info)

    def _backoff(self, used: int, info: activity.Info) -> float:
        # Seeded per call and attempt: reproducible, yet callers do not retry in lockstep.
        rng = random.Random(f"{info.workflow_id}:{info.activity_id}:{info.attempt}")
        return backoff_delay(used, self.root.config.backoff, rng)
