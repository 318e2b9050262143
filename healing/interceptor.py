"""SelfHealingInterceptor: the one public interceptor; private per-hook classes do the work.

Activity side (``_ActivityInbound``): runs an integration call, classifies its failure and
re-raises it as an ``ApplicationError`` whose ``next_retry_delay`` paces the server's retry
(the server waits, not the worker) or, when the matrix says stop, as non-retryable with a
``FailureReport`` for the workflow side.

Workflow side (``healing.healer``): refreshes, adapts, reroutes or escalates to a human.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import temporalio.converter
from temporalio import activity
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from healing.attempt import USER_HEARTBEAT, Attempt, HeartbeatKeeper, inner_timeout
from healing.backoff import backoff_delay
from healing.breaker import BreakerBoard, BreakerTransition
from healing.classify import Failure, classify_error, detect_error, load_rules
from healing.config import HealingConfig
from healing.eventlog import EventLog
from healing.handlers import SEARCH_ATTRIBUTES
from healing.integration import (
    CallContext,
    _reset_current,
    _set_current,
    integration_spec,
)
from healing.learning import RETRY_STRATEGIES, StrategyHint, learned_delay
from healing.ledger import Ledger, pattern_of, user_details
from healing.patterns import PatternCache
from healing.store.base import Store
from healing.types import (
    REPORT_KEY,
    Classification,
    ErrorType,
    FailureReport,
    HealingStrategy,
)

logger = logging.getLogger("healing")

HEALING_ACTIVITY_PREFIX = "healing_"
# Failures that say the upstream itself is unwell; 4xx verdicts do not trip the breaker.
_BREAKER_TYPES = {
    ErrorType.TIMEOUT,
    ErrorType.SERVICE_DOWN,
    ErrorType.NETWORK_ERROR,
    ErrorType.INTERNAL_ERROR,
}
_CONVERTER = temporalio.converter.PayloadConverter.default
# Strategies only the workflow side can carry out (it runs the healing activities).
_WORKFLOW_STRATEGIES = {
    HealingStrategy.REFRESH_TOKEN: "a credential refresh",
    HealingStrategy.SCHEMA_ADAPT: "a schema adaptation",
}


class SelfHealingInterceptor(Interceptor):
    """Makes every integration activity heal; register once on a worker.

    Args:
        config: All knobs; defaults follow the spec's matrix.
        alternatives: Reroute targets per connector (from the connector catalog).
        clock: Monotonic clock for the circuit breakers (injected in tests).
        store: Where events and learned error patterns go; None heals from the matrix alone.
    """

    def __init__(
        self,
        config: HealingConfig | None = None,
        *,
        alternatives: Mapping[str, list[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: Store | None = None,
    ) -> None:
        self.config = config or HealingConfig()
        self.alternatives = {k: list(v) for k, v in (alternatives or {}).items()}
        self.clock = clock
        self.breakers = BreakerBoard(self.config.breaker)
        # Off until check_search_attributes has seen them registered: an upsert of an unknown
        # attribute would fail every workflow task.
        self.search_attributes_enabled = False
        self.rules = load_rules(self.config)  # validated once: a bad rule fails at start-up
        self.attach_store(store)

    def attach_store(self, store: Store | None) -> None:
        """Use ``store`` for the event log and learned patterns (None: matrix only)."""
        self.store = store
        self.events = EventLog(store, clock=self.clock)
        self.patterns = PatternCache(store, self.config.learning, clock=self.clock)

    @property
    def learning(self) -> bool:
        return self.store is not None and self.config.learning.enabled

    async def check_search_attributes(self, client: Client) -> bool:
        """Enable HealingStatus/HealingErrorType upserts if the namespace has them."""
        if not self.config.search_attributes:
            self.search_attributes_enabled = False
            return False
        try:
            resp = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=client.namespace)
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.UNIMPLEMENTED:
                # The time-skipping test server cannot list; its users register up front.
                logger.info("server cannot list search attributes; assuming they are registered")
                self.search_attributes_enabled = True
                return True
            logger.warning("cannot list search attributes (%s); HealingStatus upserts off", exc)
            self.search_attributes_enabled = False
            return False
        missing = sorted(set(SEARCH_ATTRIBUTES) - set(resp.custom_attributes))
        if missing:
            logger.warning(
                "search attributes %s are not registered in namespace %s; upserts off "
                "(run `healing setup` to register them)",
                ", ".join(missing),
                client.namespace,
            )
        self.search_attributes_enabled = not missing
        return not missing

    def classify(self, failure: Failure) -> Classification:
        return classify_error(failure, config=self.config, now=datetime.now(UTC), rules=self.rules)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next, self)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        from healing.handlers import make_workflow_inbound

        return make_workflow_inbound(self)


def _log_transition(change: BreakerTransition | None) -> None:
    # Waits behind an open circuit are BENIGN and quiet: say when the circuit changes.
    if change is not None:
        logger.warning(
            "circuit for %s: %s -> %s", change.connector, change.from_state, change.to_state
        )


class _ActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: SelfHealingInterceptor) -> None:
        super().__init__(next)
        self.root = root

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        super().init(HeartbeatKeeper(outbound))

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        spec = integration_spec(input.fn)
        if info.activity_type.startswith(HEALING_ACTIVITY_PREFIX) or (
            spec is None and not self.root.config.heal_all_activities
        ):
            return await self.next.execute_activity(input)
        call = Attempt(self.root, input, spec)
        USER_HEARTBEAT.set(user_details(info.heartbeat_details))
        breaker = self.root.breakers.get(call.connector or info.activity_type)

        wait = breaker.before_call(call.started)
        if wait is not None:
            failure = Failure(
                exception="healing.CircuitOpen",
                message=f"circuit for {call.connector} is open",
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
                if counts_for_breaker:
                    _log_transition(breaker.record_success(self.root.clock()))
                if call.ledger.pattern is not None:
                    self._healed(call)
                return result
            failure = detected
        finally:
            _reset_current(token)

        cls = self.root.classify(failure)
        if counts_for_breaker and cls.error_type in _BREAKER_TYPES:
            _log_transition(breaker.record_failure(self.root.clock()))
        elif breaker.state == "half_open":
            # A probe answered with a 4xx: the service is up, whatever it thinks of the call.
            _log_transition(breaker.record_success(self.root.clock()))
        raise await self._verdict(cls, call)

    def _healed(self, call: Attempt) -> None:
        """A success after failures: the retries healed the pattern (learning evidence)."""
        pattern, strategy = call.ledger.pattern, call.ledger.strategy or "retry"
        assert pattern is not None
        heal_s = round(call.elapsed(), 3)
        call.root.events.start()
        call.root.events.record_outcome(pattern, strategy, healed=True, heal_s=heal_s)
        call.event("healed", pattern, strategy=strategy, outcome="healed", duration_s=heal_s)

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
        """Turn a classification into the error the server acts on."""
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
        elapsed = call.elapsed()
        budget = cfg.healing_budget_s if call.hints.budget_s is None else call.hints.budget_s
        hint = await self._hint(cls, call, budget)
        delay = learned_delay(hint, self._backoff(used, info), retry_after=cls.retry_after_s)
        if cls.retry_after_s is not None:
            # Never sooner than asked, but spread: callers throttled together do not return
            # together.
            delay *= 1 + random.Random(f"ra:{info.workflow_id}:{info.activity_id}").uniform(0, 0.1)

        reason = ""
        if not cls.retryable:
            reason = f"{key} is not retryable"
        elif cls.escalate_now:
            reason = f"{key} cannot heal by waiting now ({cls.rule})"
        elif cls.strategy in _WORKFLOW_STRATEGIES:
            # Retrying with the same token or schema cannot work: hand over at once.
            reason = f"{key} needs {_WORKFLOW_STRATEGIES[cls.strategy]}"
        elif hint is not None and hint.skip_retries:
            reason = f"learned: {hint.reason}"
        elif used > cls.max_attempts and cls.error_type is not ErrorType.CIRCUIT_OPEN:
            # Waiting behind an open circuit sends nothing upstream: the budget bounds it.
            circuit_wait = self._circuit_wait(cls, call)
            if circuit_wait is not None and elapsed + circuit_wait <= budget:
                delay = circuit_wait  # the connector is down for everyone: wait it out
            else:
                reason = f"the retry budget for {key} is spent ({cls.max_attempts} retries)"
        elif cls.retry_after_s is not None and cls.retry_after_s > cfg.max_retry_after_s:
            reason = f"the service asks to wait {cls.retry_after_s:.0f}s, past the limit"
        elif elapsed + delay > budget:
            reason = f"the healing budget of {budget:.0f}s would be exceeded"

        pattern = pattern_of(cls, call.connector, call.operation)
        strategy = cls.strategy.value
        ledger = Ledger(counts=counts, pattern=pattern, strategy=strategy)
        if not info.is_local:
            # Survives to the next attempt: per-type budgets hold across server retries.
            holder = USER_HEARTBEAT.get()
            own = holder if holder is not None else user_details(info.heartbeat_details)
            activity.heartbeat(*own, ledger.to_detail())
        call.event("classified", cls, strategy=strategy, outcome=cls.rule)
        if reason and used > 1 and strategy in RETRY_STRATEGIES:
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
        if reason:
            call.event("gave_up", cls, strategy=strategy, outcome=reason, duration_s=elapsed)
            return ApplicationError(f"{message} ({reason})", report, type=key, non_retryable=True)
        call.event("attempt", cls, strategy=strategy, outcome=f"retry in {delay:.2f}s")
        category = (
            ApplicationErrorCategory.BENIGN
            if cls.benign or cls.error_type in (ErrorType.RATE_LIMITED, ErrorType.CIRCUIT_OPEN)
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
