"""SelfHealingInterceptor: the one public interceptor; private per-hook classes do the work.

Activity side (``_ActivityInbound``): runs an integration call, classifies its failure and
re-raises it as an ``ApplicationError`` whose ``next_retry_delay`` paces the server's retry
(the server waits, not the worker) or, when the matrix says stop, as non-retryable with a
``FailureReport`` for the workflow side.

Workflow side (``healing.healer``): refreshes, adapts, reroutes or escalates to a human.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import temporalio.converter
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from healing.backoff import backoff_delay
from healing.breaker import BreakerBoard, BreakerTransition
from healing.classify import Failure, classify_error, detect_error, load_rules
from healing.config import HealingConfig
from healing.integration import (
    HINTS_HEADER,
    CallContext,
    CallHints,
    _reset_current,
    _set_current,
    integration_spec,
)
from healing.types import REPORT_KEY, Classification, ErrorType, FailureReport, HealingStrategy

logger = logging.getLogger("healing")

HEALING_ACTIVITY_PREFIX = "healing_"
_LEDGER_KEY = "healing_ledger"
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
    """

    def __init__(
        self,
        config: HealingConfig | None = None,
        *,
        alternatives: Mapping[str, list[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or HealingConfig()
        self.alternatives = {k: list(v) for k, v in (alternatives or {}).items()}
        self.clock = clock
        self.breakers = BreakerBoard(self.config.breaker)
        self.search_attributes_enabled = self.config.search_attributes
        self.rules = load_rules(self.config)  # validated once: a bad rule fails at start-up

    def classify(self, failure: Failure) -> Classification:
        return classify_error(failure, config=self.config, now=datetime.now(UTC), rules=self.rules)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next, self)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        from healing.handlers import make_workflow_inbound

        return make_workflow_inbound(self)


def read_hints(headers: Mapping[str, Payload]) -> CallHints:
    payload = headers.get(HINTS_HEADER)
    if payload is None:
        return CallHints()
    try:
        return CallHints.model_validate(_CONVERTER.from_payloads([payload])[0])
    except Exception:  # a foreign or corrupt header must not break the call
        logger.warning("ignoring unreadable %s header", HINTS_HEADER)
        return CallHints()


def encode_hints(hints: CallHints) -> Payload:
    return _CONVERTER.to_payloads([hints.model_dump(mode="json")])[0]


def _ledger(details: Any) -> dict[str, int]:
    for item in details or ():
        if isinstance(item, dict) and isinstance(item.get(_LEDGER_KEY), dict):
            return {str(k): int(v) for k, v in item[_LEDGER_KEY].items()}
    return {}


def _log_transition(change: BreakerTransition | None) -> None:
    # Waits behind an open circuit are BENIGN and quiet: say when the circuit changes.
    if change is not None:
        logger.warning(
            "circuit for %s: %s -> %s", change.connector, change.from_state, change.to_state
        )


def _arg_field(args: Any, name: str) -> str | None:
    """``connector``/``operation`` of a call's first argument (a model or a dict), if any."""
    first = args[0] if args else None
    value = first.get(name) if isinstance(first, dict) else getattr(first, name, None)
    return value if isinstance(value, str) else None


class _ActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: SelfHealingInterceptor) -> None:
        super().__init__(next)
        self.root = root

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        spec = integration_spec(input.fn)
        info = activity.info()
        if info.activity_type.startswith(HEALING_ACTIVITY_PREFIX) or (
            spec is None and not self.root.config.heal_all_activities
        ):
            return await self.next.execute_activity(input)
        hints = read_hints(input.headers)
        connector = (
            hints.connector or (spec and spec.connector) or _arg_field(input.args, "connector")
        )
        operation = (spec and spec.operation) or _arg_field(input.args, "operation")
        counts = _ledger(info.heartbeat_details)
        started = self.root.clock()
        breaker = self.root.breakers.get(connector or info.activity_type)

        wait = breaker.before_call(started)
        if wait is not None:
            failure = Failure(
                status_code=None,
                headers={},
                body=None,
                exception="healing.CircuitOpen",
                message=f"circuit for {connector} is open",
                connector=connector,
                operation=operation,
            )
            cls = self.root.classify(failure).model_copy(update={"retry_after_s": wait})
            raise self._verdict(cls, counts, connector, operation, started, hints)

        ctx = CallContext(connector, operation, hints, info.attempt, counts)
        token = _set_current(ctx)
        try:
            result = await self.next.execute_activity(input)
        except ApplicationError:
            raise  # the activity chose its own verdict
        except Exception as exc:
            found = detect_error(exc, connector=connector, operation=operation)
            if found is None:
                raise
            failure = found
        else:
            detected = detect_error(result, connector=connector, operation=operation)
            if detected is None:
                _log_transition(breaker.record_success(self.root.clock()))
                return result
            failure = detected
        finally:
            _reset_current(token)

        cls = self.root.classify(failure)
        if cls.error_type in _BREAKER_TYPES:
            _log_transition(breaker.record_failure(self.root.clock()))
        raise self._verdict(cls, counts, connector, operation, started, hints)

    def _verdict(
        self,
        cls: Classification,
        counts: dict[str, int],
        connector: str | None,
        operation: str | None,
        started: float,
        hints: CallHints,
    ) -> ApplicationError:
        """Turn a classification into the error the server acts on."""
        cfg = self.root.config
        info = activity.info()
        key = cls.error_type.value
        if not counts and info.attempt > 1:
            # Ledger lost (local activity, or a server that drops heartbeat details on
            # failure): count every earlier attempt against this type, the safe side.
            counts = {key: info.attempt - 1}
        counts = {**counts, key: counts.get(key, 0) + 1}
        used = counts[key]
        # Server-side times, so time skipping and worker clock skew do not distort the budget.
        # started_time, not current_attempt_scheduled_time: the test server sets the latter to
        # the previous failure's time, which would hide the wait just served.
        elapsed = (info.started_time - info.scheduled_time).total_seconds()
        elapsed += self.root.clock() - started
        budget = cfg.healing_budget_s if hints.budget_s is None else hints.budget_s
        delay = self._delay(cls, used, info)

        reason = ""
        if not cls.retryable:
            reason = f"{key} is not retryable"
        elif cls.escalate_now:
            reason = f"{key} cannot heal by waiting now ({cls.rule})"
        elif cls.strategy in _WORKFLOW_STRATEGIES:
            # Retrying with the same token or schema cannot work: hand over at once.
            reason = f"{key} needs {_WORKFLOW_STRATEGIES[cls.strategy]}"
        elif used > cls.max_attempts:
            reason = f"the retry budget for {key} is spent ({cls.max_attempts} retries)"
        elif cls.retry_after_s is not None and cls.retry_after_s > cfg.max_retry_after_s:
            reason = f"the service asks to wait {cls.retry_after_s:.0f}s, past the limit"
        elif elapsed + delay > budget:
            reason = f"the healing budget of {budget:.0f}s would be exceeded"

        if not info.is_local:
            # Survives to the next attempt: per-type budgets hold across server retries.
            activity.heartbeat({_LEDGER_KEY: counts})
        message = cls.message or key
        report = {
            REPORT_KEY: FailureReport(
                classification=cls,
                connector=connector,
                operation=operation,
                attempts=info.attempt,
                counts_by_type=counts,
                elapsed_s=round(elapsed, 3),
                reason=reason or "the activity's retry policy stopped retrying",
            ).model_dump(mode="json")
        }
        if reason:
            return ApplicationError(f"{message} ({reason})", report, type=key, non_retryable=True)
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

    def _delay(self, cls: Classification, used: int, info: activity.Info) -> float:
        """Retry-After when the service gives one, else jittered exponential backoff."""
        if cls.retry_after_s is not None:
            return max(cls.retry_after_s, 0.0)
        # Seeded per call and attempt: reproducible, yet callers do not retry in lockstep.
        rng = random.Random(f"{info.workflow_id}:{info.activity_id}:{info.attempt}")
        return backoff_delay(used, self.root.config.backoff, rng)
