"""The healing policy: what happens next to a failed call, and why. Pure functions.

Two decisions, one per side of Temporal, each a function of plain values that a unit test
calls with a table (``tests/unit/test_policy.py``); the interceptors only carry them out.

- :func:`next_attempt` (activity side, after each failed attempt): retry after a delay, wait
  for the upstream's recovery, or hand the call over to the workflow side.
- :func:`next_step` (workflow side, once a call is handed over): refresh the credentials,
  adapt the schema, reroute to an alternative, or escalate to a human.

The rule for outages (DESIGN s4): the matrix's attempts bound retries at the retry cadence; a
transient failure that outlasts them reroutes at once where an alternative exists, and
otherwise waits for recovery inside the healing budget at the probe cadence (the breaker's
``open_s``), whether the connector is busy (its circuit is open) or quiet.

Also here: how long a human's ``wait`` lasts (:func:`wait_after_decision`, always bounded),
and which final state a call reports (:func:`final_state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from healing.escalation import format_duration
from healing.learning import StrategyHint
from healing.types import Classification, ErrorType, HealingState, HealingStrategy

TRANSIENT_TYPES = frozenset(
    {
        ErrorType.TIMEOUT,
        ErrorType.SERVICE_DOWN,
        ErrorType.NETWORK_ERROR,
        ErrorType.RATE_LIMITED,
    }
)
"""Failures that say the upstream is unwell or busy, not that the request is wrong: they
outlast their retries by waiting for recovery or by rerouting."""
REROUTABLE_TYPES = TRANSIENT_TYPES | {ErrorType.CIRCUIT_OPEN}
"""Failures another region or vendor of the same operation may not share."""
LEGACY_REROUTABLE_TYPES = frozenset({ErrorType.SERVICE_DOWN, ErrorType.CIRCUIT_OPEN})
"""What workflows started before the outage rule rerouted; their histories replay by it."""
MIN_DELAY_S = 0.1
"""Floor of every server-side wait: a zero ``next_retry_delay`` would hand the pace back to
the activity's own RetryPolicy."""
WORKFLOW_STRATEGIES: dict[HealingStrategy, str] = {
    HealingStrategy.REFRESH_TOKEN: "a credential refresh",
    HealingStrategy.SCHEMA_ADAPT: "a schema adaptation",
}
"""Strategies only the workflow side can carry out (it runs the healing activities)."""

AttemptAction = Literal["retry", "wait_recovery", "hand_over"]
StepAction = Literal["refresh", "adapt", "reroute", "park", "escalate"]


@dataclass(frozen=True)
class AttemptSituation:
    """Everything the activity side knows when an attempt has failed."""

    classification: Classification
    used: int
    """Failures of this error type in this call so far, this one included."""
    elapsed_s: float
    """Healing time this call has spent (server time)."""
    budget_s: float
    """Healing time this call may spend before it escalates."""
    backoff_s: float
    """The jittered backoff for this retry (``backoff_delay(used, ...)``)."""
    probe_interval_s: float
    """The probe cadence: how often a waiting call asks a down upstream again."""
    max_retry_after_s: float
    """A Retry-After longer than this is handed over (the human may choose to wait)."""
    hint: StrategyHint | None = None
    """The learned hint for this pattern (None: the matrix alone, or this call explores)."""
    circuit_wait_s: float | None = None
    """Seconds until the connector's open circuit lets a probe through (None: closed)."""
    has_alternative: bool = False
    """An alternative connector this call has not tried yet exists."""
    spread: float = 0.0
    """A per-call fraction in [0, 0.1]: waits of calls throttled together end apart."""


@dataclass(frozen=True)
class AttemptVerdict:
    action: AttemptAction
    delay_s: float | None = None
    """For retry and wait_recovery: seconds the server waits before the next attempt."""
    reason: str = ""
    """Why; for hand_over, why the activity side stopped (the escalation quotes it)."""


def _retry_delay(s: AttemptSituation) -> float:
    cls = s.classification
    if cls.retry_after_s is not None:
        # Never sooner than asked, but spread: callers throttled together return apart.
        return max(cls.retry_after_s * (1 + s.spread), MIN_DELAY_S)
    if s.hint is not None and s.hint.wait_s is not None and not s.hint.skip_retries:
        return max(s.hint.wait_s * (1 + s.spread), MIN_DELAY_S)  # learned, yet not in lockstep
    return max(s.backoff_s, MIN_DELAY_S)


def _recovery_wait(s: AttemptSituation) -> float:
    if s.circuit_wait_s is not None:
        return max(s.circuit_wait_s, MIN_DELAY_S)
    # The probe cadence, or later when the service asks for later: never a probe a second.
    asked = s.classification.retry_after_s or 0.0
    return max(asked, s.probe_interval_s) * (1 + s.spread)


def next_attempt(s: AttemptSituation) -> AttemptVerdict:
    """What the activity side does after a failed attempt.

    Returns:
        ``retry`` after ``delay_s`` (the matrix's retries, paced by backoff or Retry-After),
        ``wait_recovery`` after ``delay_s`` (retries spent on a transient failure with no
        alternative: ask again at the probe cadence while the budget lasts), or
        ``hand_over`` to the workflow side (refresh, adapt, reroute or escalate), with why.
    """
    cls = s.classification
    key = cls.error_type.value

    def hand_over(reason: str) -> AttemptVerdict:
        return AttemptVerdict("hand_over", reason=reason)

    if not cls.retryable:
        return hand_over(f"{key} is not retryable")
    if cls.escalate_now:
        return hand_over(f"{key} cannot heal by waiting now ({cls.rule})")
    if cls.strategy is HealingStrategy.SCHEMA_ADAPT and not cls.schema_mapping:
        # The activity adapted what it had and found no mapping: a retry would re-send it.
        return hand_over(f"{key}: no mapping with enough evidence makes the response fit")
    if cls.strategy in WORKFLOW_STRATEGIES:
        # Retrying with the same token or schema cannot work.
        return hand_over(f"{key} needs {WORKFLOW_STRATEGIES[cls.strategy]}")
    if s.hint is not None and s.hint.skip_retries:
        return hand_over(f"learned: {s.hint.reason}")
    if cls.error_type is ErrorType.CIRCUIT_OPEN:
        # Our own breaker's wait, bounded by the budget: never "the service asks".
        if s.has_alternative:
            return hand_over("the connector's circuit is open and an alternative is available")
        delay = s.circuit_wait_s if s.circuit_wait_s is not None else _retry_delay(s)
        delay = max(delay, MIN_DELAY_S)
        if s.elapsed_s + delay > s.budget_s:
            return hand_over(_budget_reason(s, "the circuit stayed open"))
        return AttemptVerdict("wait_recovery", delay, "waiting behind the open circuit")
    if cls.retry_after_s is not None and cls.retry_after_s > s.max_retry_after_s:
        return hand_over(
            f"the service asks to wait {format_duration(cls.retry_after_s)}, past the "
            f"{format_duration(s.max_retry_after_s)} limit"
        )
    if s.used > cls.max_attempts:
        spent = f"the {cls.max_attempts} retries for {key} are spent"
        if cls.error_type not in TRANSIENT_TYPES:
            return hand_over(spent)
        if s.has_alternative:
            return hand_over(f"{spent}; an alternative is available")
        wait = _recovery_wait(s)
        if s.elapsed_s + wait > s.budget_s:
            return hand_over(_budget_reason(s, "the upstream did not recover"))
        return AttemptVerdict("wait_recovery", wait, f"{spent}; waiting for recovery")
    delay = _retry_delay(s)
    if s.elapsed_s + delay > s.budget_s:
        return hand_over(_budget_reason(s, "retrying would take too long"))
    return AttemptVerdict("retry", delay, f"retry {s.used} of {cls.max_attempts}")


def _budget_reason(s: AttemptSituation, what: str) -> str:
    return f"{what} within the healing budget of {format_duration(s.budget_s)}"


@dataclass(frozen=True)
class StepSituation:
    """Everything the workflow side knows when the activity side handed a call over."""

    classification: Classification
    refreshes: int = 0
    """Credential refreshes this call has had."""
    adapts: int = 0
    """Schema adaptations this call has had."""
    untried_alternatives: tuple[str, ...] = ()
    has_connector: bool = True
    """The call names a connector (refresh, adapt and reroute need one)."""
    legacy: bool = False
    """A workflow started before the outage rule: reroute as it did then (replay safety)."""
    parks: int = 0
    """Times this call already waited for a spent quota's reset."""
    park_s: float | None = None
    """Seconds until a spent quota's reset, when the activity side's report says the call may
    wait for it with no human (None: it may not, as reports before parking said nothing)."""


MAX_PARKS: Final = 3
"""Resets a call waits for before a human is asked: a quota still spent after three resets
is not coming back by itself (a wrong reset header, a plan downgrade)."""


@dataclass(frozen=True)
class StepVerdict:
    action: StepAction
    target: str | None = None
    """For reroute: the alternative to call."""
    reason: str = ""
    delay_s: float | None = None
    """For park: seconds until the quota's reset."""


def next_step(s: StepSituation) -> StepVerdict:
    """What the workflow side does with a call the activity side handed over.

    The bounds come from the recorded classification (its ``max_attempts``), not live config,
    so a replay decides alike.
    """
    cls = s.classification
    etype = cls.error_type
    if etype is ErrorType.AUTH_EXPIRED and s.has_connector:
        if s.refreshes < cls.max_attempts:
            return StepVerdict("refresh", reason="the credentials expired")
        return StepVerdict("escalate", reason=f"{s.refreshes} refreshes did not help")
    if etype is ErrorType.SCHEMA_MISMATCH and cls.schema_mapping and s.has_connector:
        if s.adapts < cls.max_attempts:
            return StepVerdict("adapt", reason="renamed fields can be mapped")
        return StepVerdict("escalate", reason=f"{s.adapts} adaptations did not help")
    if s.legacy:
        reroutable = etype in LEGACY_REROUTABLE_TYPES
    else:
        # A quota (escalate_now) is our account's, not the upstream's health: no reroute.
        reroutable = etype in REROUTABLE_TYPES and cls.retryable and not cls.escalate_now
    if reroutable and s.has_connector and s.untried_alternatives:
        target = s.untried_alternatives[0]
        return StepVerdict("reroute", target=target, reason=f"{etype.value}: try {target}")
    if etype is ErrorType.QUOTA_EXHAUSTED and s.park_s is not None and s.park_s > 0:
        # The account's quota comes back at a known time: the call waits for it, durably.
        if s.parks < MAX_PARKS:
            return StepVerdict("park", reason="the quota resets by itself", delay_s=s.park_s)
        return StepVerdict("escalate", reason=f"{s.parks} quota resets did not help")
    return StepVerdict("escalate", reason="no healing strategy is left")


def wait_after_decision(
    *, asked_s: float | None, retry_after_s: float | None, default_s: float, max_s: float
) -> float:
    """Seconds a ``wait`` decision waits: what the human asked, else the service's hint (a
    quota's reset time), else ``default_s``; never more than ``max_s``."""
    for candidate in (asked_s, retry_after_s):
        if candidate is not None and candidate > 0:
            return min(candidate, max_s)
    return min(default_s, max_s)


def final_state(*, decided_by_human: bool, failed: bool = False) -> HealingState:
    """The state a call that needed healing ends in: ``healed`` with no human, ``resolved``
    after a human's decision (so "healed without a human" counts from the list view)."""
    if failed:
        return "failed"
    return "resolved" if decided_by_human else "healed"
