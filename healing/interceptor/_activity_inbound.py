"""Activity side: run one attempt of an integration call, classify its failure, and raise
the verdict of ``healing.policy.next_attempt`` as the ``ApplicationError`` the server acts on
(``next_retry_delay`` paces the retry, so the server waits, not the worker; a hand-over is
non-retryable and carries a ``FailureReport`` for the workflow side).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
from healing.breaker import Admission, BreakerTransition, FleetBreakers
from healing.classify import Failure, detect_error
from healing.config import HealingConfig
from healing.drift import fit_result
from healing.errors import PacingWait
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
from healing.names import ACTIVITY_PREFIX, HEALED_SIGNAL, HELD_TYPE, REPORT_KEY
from healing.patterns import PatternCache
from healing.policy import MIN_DELAY_S, TRANSIENT_TYPES, AttemptSituation, next_attempt
from healing.ratelimit import FleetPacer, parse_rate_limit_headers, reset_delay
from healing.retrybudget import RetryBudget
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
# Spent quotas: the fleet's pacer blocks the connector until the reset.
_QUOTA_TYPES = {ErrorType.QUOTA_EXHAUSTED, ErrorType.RATE_LIMITED}


class ActivitySide(Protocol):
    """What the activity side needs of the worker's healing state (``SelfHealingInterceptor``)."""

    config: HealingConfig
    alternatives: dict[str, list[str]]
    clock: Callable[[], float]
    wall_clock: Callable[[], datetime]
    breakers: FleetBreakers
    pacer: FleetPacer
    retry_budget: RetryBudget
    events: EventLog
    patterns: PatternCache
    outages: dict[str, tuple[str, Classification]]

    @property
    def learning(self) -> bool: ...

    def classify(self, failure: Failure) -> Classification: ...

    def note_outage(self, connector: str, cls: Classification) -> None: ...


def _answer(cls: Classification) -> str:
    answer = f"HTTP {cls.status_code}" if cls.status_code else cls.error_type.value
    if cls.vendor_code:
        answer += f" (code {cls.vendor_code})"
    return answer


def _outage_note(since: str, cls: Classification | None, last: str = "") -> str:
    """Since when the upstream fails and what it last answered, for the escalation."""
    answer = _answer(cls) if cls is not None else last
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


def _first_send(call: Attempt) -> bool:
    """The call has not failed upstream yet: its first attempt, or one after waits that sent
    nothing (a rate-limit slot, an open circuit). The breaker and the retry budget judge
    calls, not attempts."""
    return not any(k != ErrorType.CIRCUIT_OPEN.value for k in call.ledger.counts)


class _Held(Exception):
    """Raised through the activity by its send gate: the circuit closed its door meanwhile."""

    def __init__(self, admission: Admission) -> None:
        super().__init__("circuit open")
        self.admission = admission


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
        connector = call.connector or info.activity_type
        breakers = self.root.breakers
        holder = f"{info.workflow_id}:{info.activity_id}:{info.attempt}:{uuid.uuid4().hex[:8]}"
        admission = await self._admit(connector, call, holder)
        if not admission.go:
            raise await self._circuit_held(connector, admission, call)
        held = await self._budget_hold(connector, call, admission)
        if held is not None:
            await breakers.record(
                connector, admission, failed=None, counts=False, now=self._now(call), holder=holder
            )
            raise held

        async def gate() -> None:
            # The activity waited for its rate-limit slot: ask the breaker again before sending,
            # since an outage may have begun meanwhile (a trial or probe keeps its lease).
            nonlocal admission
            if admission.role != "call":
                return
            again = await self._admit(connector, call, holder)
            if not again.go:
                raise _Held(again)
            admission = again

        async def outcome(failed: bool | None, cls: Classification | None = None) -> None:
            # The breaker judges calls, not attempts: a call's own retries would let a few
            # unlucky calls look like an outage. Trials and half-open probes always count.
            counts_for_breaker = _first_send(call) or admission.role != "call"
            since, last = "", ""
            if cls is not None and failed:
                self.root.note_outage(connector, cls)
                since = self.root.outages[connector][0]
                last = _answer(cls)
            change = await breakers.record(
                connector,
                admission,
                failed=failed,
                counts=counts_for_breaker,
                now=self._now(call),
                holder=holder,
                since=since,
                last=last,
            )
            _log_transition(change)
            if change is not None:
                call.event("circuit", None, outcome=f"{change.from_state} -> {change.to_state}")

        ctx = call.context = CallContext(
            call.connector, call.operation, call.hints, info.attempt, call.ledger.counts
        )
        ctx.drift = getattr(self.root, "drift", None)  # schema mappings over the worker's store
        ctx.slot_at = call.ledger.slot_at
        ctx.slot_gen = call.ledger.slot_gen
        ctx.gate = gate
        token = _set_current(ctx)
        try:
            # asyncio.timeout, not wait_for: no extra task per call on the happy path.
            async with asyncio.timeout(inner_timeout(info)):
                result = await self.next.execute_activity(input)
                if spec is not None and spec.response_model is not None:
                    # Adapt the result already returned: the call is never made again for it.
                    book = getattr(self.root, "drift", None)
                    result = await fit_result(
                        book, spec.response_model, result, call.connector, call.operation
                    )
        except ApplicationError:
            # The activity chose its own verdict; a probe that got an answer saw the service up.
            await outcome(False if admission.role == "probe" else None)
            raise
        except PacingWait as wait:
            await outcome(None)  # never sent: tells nothing about the upstream
            raise await self._paced(wait, call) from None
        except _Held as held_back:
            raise await self._circuit_held(connector, held_back.admission, call) from None
        except BaseException as exc:
            found = (
                detect_error(exc, connector=call.connector, operation=call.operation)
                if isinstance(exc, Exception)
                else None
            )
            if found is None:
                await outcome(None)
                raise
            failure = found
        else:
            detected = detect_error(result, connector=call.connector, operation=call.operation)
            if detected is None:
                self.root.outages.pop(connector, None)
                await outcome(False)
                if call.ledger.pattern is not None:
                    await self._healed(call)
                return result
            failure = detected
        finally:
            _reset_current(token)

        cls = self.root.classify(failure)
        if cls.error_type in _BREAKER_TYPES:
            await outcome(True, cls)
        else:
            # A 4xx: the service is up, whatever it thinks of the call.
            await outcome(False if cls.status_code is not None else None)
        if cls.escalate_now and cls.error_type in _QUOTA_TYPES:
            reset = await self._quota_spent(connector, cls, failure, call)
            if reset is not None and reset <= self.root.config.rate_limit.park_after_s:
                # Back by itself soon: the call waits for the reset on the server, like every
                # other call of the connector (not a failed attempt, no human).
                spread = random.Random(holder).uniform(0, min(reset * 0.1, 5.0))
                call.event("attempt", cls, outcome=f"quota spent, parked {reset:.0f}s")
                metrics.activity_attempt("quota", "held", cls.error_type)
                raise self._hold(
                    call, f"{cls.message} (parked until the reset)", reset + spread, call.ledger
                )
            if reset is not None and cls.retry_after_s is None:
                # A reset header (not Retry-After) said when: the workflow may park for it.
                cls = cls.model_copy(update={"retry_after_s": reset})
        raise await self._verdict(cls, call)

    async def _circuit_held(
        self, connector: str, admission: Admission, call: Attempt
    ) -> ApplicationError:
        note = _outage_note(admission.since, None, admission.last) if admission.since else ""
        failure = Failure(
            exception="healing.CircuitOpen",
            message=f"circuit for {connector} is open{note}",
            connector=call.connector,
            operation=call.operation,
        )
        cls = self.root.classify(failure).model_copy(update={"retry_after_s": admission.wait_s})
        return await self._verdict(cls, call)

    def _now(self, call: Attempt) -> float:
        """The fleet's clock: the server's time of this attempt, plus what ran since.

        The server's clock is the one every worker shares (and time skipping moves it)."""
        return call.info.started_time.timestamp() + max(self.root.clock() - call.started, 0.0)

    async def _admit(self, connector: str, call: Attempt, holder: str) -> Admission:
        """Ask the fleet breaker; short waits (a trial in flight) are waited out here."""
        left = self.root.config.rate_limit.inline_wait_s
        while True:
            admission = await self.root.breakers.admit(
                connector,
                now=self._now(call),
                holder=holder,
                first_attempt=_first_send(call),
            )
            if admission.go or admission.wait_s > min(left, 0.5) or left <= 0:
                return admission
            step = max(admission.wait_s, 0.01)
            activity.heartbeat(*USER_HEARTBEAT.get() or (), call.ledger.to_detail())
            await asyncio.sleep(step)
            left -= step

    async def _budget_hold(
        self, connector: str, call: Attempt, admission: Admission
    ) -> ApplicationError | None:
        """Count a first attempt, or spend a retry of the fleet's retry budget: a retry past
        the budget is not sent, and waits (not a failed attempt)."""
        budget = self.root.retry_budget
        now = self._now(call)
        if _first_send(call):
            # Never reached the upstream yet (first attempt, paced, or behind the circuit).
            if call.info.attempt == 1:
                await budget.first_attempt(connector, now=now)
            return None
        if admission.role == "probe":
            return None  # the fleet's one probe per window is never held back
        verdict = await budget.try_retry(connector, now=now)
        if verdict.allowed:
            return None
        delay = self._backoff(1, call.info)
        call.event("attempt", None, outcome=f"retry budget spent, wait {delay:.2f}s")
        metrics.activity_attempt("retry_budget", "held", ErrorType.RATE_LIMITED)
        return self._hold(
            call,
            f"retry budget of {connector} spent ({verdict.retries} retries in "
            f"{self.root.config.retry_budget.window_s:g}s, limit {verdict.limit:g})",
            delay,
            call.ledger,
        )

    def _hold(self, call: Attempt, message: str, delay: float, ledger: Ledger) -> ApplicationError:
        """A server-side wait that is not a failed attempt: the ledger's counts stay."""
        ledger = dataclasses.replace(ledger, held=ledger.held + 1)
        if not call.info.is_local:
            holder = USER_HEARTBEAT.get()
            own = holder if holder is not None else user_details(call.info.heartbeat_details)
            activity.heartbeat(*own, ledger.to_detail())
        return ApplicationError(
            message,
            type=HELD_TYPE,
            non_retryable=False,
            next_retry_delay=timedelta(seconds=max(delay, MIN_DELAY_S)),
            category=ApplicationErrorCategory.BENIGN,
        )

    async def _paced(self, wait: PacingWait, call: Attempt) -> ApplicationError:
        """A call whose rate-limit slot is later: the server waits for it, or, for a spent
        daily or org quota past ``park_after_s``, the workflow parks the call until the reset."""
        policy = self.root.config.rate_limit
        if wait.quota and wait.wait_s > policy.park_after_s:
            failure = Failure(
                exception="healing.QuotaSpent",
                message=str(wait),
                connector=call.connector,
                operation=call.operation,
            )
            cls = self.root.classify(failure).model_copy(
                update={
                    "error_type": ErrorType.QUOTA_EXHAUSTED,
                    "retry_after_s": wait.wait_s,
                    "escalate_now": True,
                    "retryable": False,
                    "benign": True,
                }
            )
            return await self._verdict(cls, call)
        # Back a little early: the rest of the wait happens in the activity, at the same slot.
        delay = max(wait.wait_s - min(policy.inline_wait_s * 0.75, 1.5), MIN_DELAY_S)
        ledger = dataclasses.replace(call.ledger, slot_at=wait.slot_at, slot_gen=wait.gen)
        call.event("attempt", None, outcome=f"rate-limit slot in {wait.wait_s:.2f}s")
        metrics.activity_attempt("pace", "held", ErrorType.RATE_LIMITED)
        return self._hold(call, str(wait), delay, ledger)

    async def _quota_spent(
        self, connector: str, cls: Classification, failure: Failure, call: Attempt
    ) -> float | None:
        """Tell the fleet a daily or org quota is spent: every call parks until its reset.

        Returns:
            Seconds until the reset, when the answer says.
        """
        now = self._now(call)
        headers = {str(k).lower(): str(v) for k, v in (failure.headers or {}).items()}
        info = parse_rate_limit_headers(headers, now_epoch=now)
        reset = cls.retry_after_s
        if reset is None:
            reset = reset_delay(headers, now=datetime.fromtimestamp(now, UTC))
        await self.root.pacer.observe(
            connector, info, now=now, throttled=True, retry_after_s=reset, quota=True
        )
        return reset

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
        # Held attempts (a rate-limit slot, the retry budget) are not failures.
        earlier = info.attempt - 1 - call.ledger.held
        if not counts and earlier > 0:
            # Ledger lost (local activity, or a server that drops heartbeat details on
            # failure): count every earlier attempt against this type, the safe side.
            counts = {key: earlier}
        counts[key] = counts.get(key, 0) + 1
        alternatives, down = await self._alternatives(call)
        used = counts[key]
        total = call.elapsed()
        # The budget counts from the first failure: a long first attempt or a queue backlog
        # is not healing time. A lost ledger on a retry counts everything, the safe side.
        if call.ledger.failed_at_s is not None:
            first_failure = call.ledger.failed_at_s
        else:
            first_failure = 0.0 if earlier > 0 else total
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
                # An alternative whose circuit the fleet holds open is no way out.
                has_alternative=bool(set(self._untried(call, alternatives)) - down),
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
            held=call.ledger.held,
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
                alternatives=alternatives,
                park_s=self._park_s(cls),
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

    async def _alternatives(self, call: Attempt) -> tuple[list[str], set[str]]:
        """The call's alternatives, healthiest first by their fleet circuit (closed, then half
        open: a call sent there is its probe, then open: a reroute there would only wait
        behind it, so they come last, still offered to a human), and the open ones."""
        known = self.root.alternatives.get(call.base_connector or "", [])
        now = self._now(call)
        rank = {"closed": 0, "half_open": 1, "open": 2}
        states = {a: rank.get(await self.root.breakers.state_of(a, now=now), 0) for a in known}
        return sorted(known, key=lambda a: states[a]), {a for a in known if states[a] == 2}

    def _park_s(self, cls: Classification) -> float | None:
        """Seconds a spent quota's call may wait for its reset with no human (recorded in the
        report, so a replay parks alike whatever this worker's config is by then)."""
        reset = cls.retry_after_s
        if cls.error_type is not ErrorType.QUOTA_EXHAUSTED or reset is None or reset <= 0:
            return None
        return reset if reset <= self.root.config.max_wait_s else None

    def _untried(self, call: Attempt, alternatives: list[str]) -> list[str]:
        """Alternatives of the call's connector it has not been sent to yet."""
        tried = {call.connector, *call.hints.rerouted}
        return [a for a in alternatives if a not in tried]

    def _circuit_wait(self, cls: Classification, call: Attempt) -> float | None:
        """Seconds until the connector's open circuit lets a probe through, if it is open
        (as this worker saw it at this attempt's admission: the store's state)."""
        if cls.error_type not in _BREAKER_TYPES:
            return None
        view = self.root.breakers.get(call.connector or call.info.activity_type)
        if view.state == "closed" or view.retry_at is None:
            return None
        return max(view.retry_at - self._now(call), 0.0) + self._backoff(1, call.info)

    def _backoff(self, used: int, info: activity.Info) -> float:
        # Seeded per call and attempt: reproducible, yet callers do not retry in lockstep.
        rng = random.Random(f"{info.workflow_id}:{info.activity_id}:{info.attempt}")
        return backoff_delay(used, self.root.config.backoff, rng)
