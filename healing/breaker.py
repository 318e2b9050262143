"""Circuit breaker per connector: stop calling an upstream that is down, probe it, resume.

Pure domain: no clock, no storage, no Temporal. Every method takes ``now`` (monotonic seconds)
so tests drive time by hand and a store can persist :meth:`CircuitBreaker.snapshot` results.

States (``BreakerState``):

- ``closed``: calls go ahead; outcomes go into a sliding window of ``policy.window_s``. The
  breaker opens when the window holds at least ``failure_threshold`` failures *and* failures
  are at least ``min_failure_ratio`` of its calls (a busy connector with scattered faults stays
  closed).
- ``open``: calls wait until ``opened_at + open_s``.
- ``half_open``: exactly one probe goes ahead; its success closes the breaker (window cleared),
  its failure reopens it for another ``open_s``. A probe that never reports back is replaced
  by a new one after ``open_s``, so a lost probe cannot wedge the breaker.

Example:
    >>> board = BreakerBoard(BreakerPolicy())
    >>> breaker = board.get("crm")
    >>> breaker.before_call(now=0.0) is None
    True
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from healing.config import BreakerPolicy
from healing.stats import wilson_lower
from healing.types import BreakerState, CircuitBreakerState, ConnectorName

PROBE_BUSY_WAIT_S = 1.0
"""Wait suggested to callers that arrive while the half-open probe is out."""

MAX_WINDOW_ENTRIES = 10_000
"""Default cap on outcomes kept per breaker; the oldest are dropped beyond it."""


@dataclass(frozen=True)
class BreakerTransition:
    """A state change, returned by the ``record_*`` methods so callers can log or emit it."""

    connector: ConnectorName
    from_state: BreakerState
    to_state: BreakerState
    at: float


class CircuitBreaker:
    """The breaker of one connector.

    Args:
        connector: Connector name, carried into snapshots and transitions.
        policy: Thresholds and timings.
        max_entries: Cap on outcomes kept in the sliding window (memory bound).
    """

    def __init__(
        self,
        connector: ConnectorName,
        policy: BreakerPolicy,
        *,
        max_entries: int = MAX_WINDOW_ENTRIES,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.connector = connector
        self.policy = policy
        self._max_entries = max_entries
        self._state: BreakerState = "closed"
        self._outcomes: deque[tuple[float, bool]] = deque()  # (at, failed), oldest first
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_at: float | None = None  # when the outstanding half-open probe left

    @property
    def state(self) -> BreakerState:
        """The stored state (an expired ``open`` turns ``half_open`` on the next call)."""
        return self._state

    def before_call(self, now: float) -> float | None:
        """Ask whether a call may go ahead now.

        Args:
            now: Monotonic seconds.

        Returns:
            None if the call may go ahead (it may be the half-open probe: report its outcome),
            otherwise the seconds to wait before asking again.
        """
        if self._state == "closed":  # also always so when the policy is disabled
            return None
        if self._state == "open":
            assert self._opened_at is not None
            retry_at = self._opened_at + self.policy.open_s
            if now < retry_at:
                return retry_at - now
            self._state = "half_open"
            self._probe_at = None
        # half_open: one probe at a time; a probe silent for open_s is presumed lost.
        if self._probe_at is None or now >= self._probe_at + self.policy.open_s:
            self._probe_at = now
            return None
        return max(min(PROBE_BUSY_WAIT_S, self._probe_at + self.policy.open_s - now), 1e-3)

    def record_success(self, now: float) -> BreakerTransition | None:
        """Record a successful call.

        Returns:
            The transition to ``closed`` if this was a half-open success, else None.
        """
        if not self.policy.enabled:
            return None
        if self._state == "half_open":
            return self._close(now)
        if self._state == "closed":
            self._append(now, failed=False)
        # Late outcomes of calls started before the breaker opened tell nothing new.
        return None

    def record_failure(self, now: float) -> BreakerTransition | None:
        """Record a failed call (only failures that say the upstream is unhealthy).

        Returns:
            The transition to ``open`` if the breaker opened or reopened, else None.
        """
        if not self.policy.enabled:
            return None
        if self._state == "half_open":
            return self._open(now)
        if self._state == "open":
            return None
        self._append(now, failed=True)
        calls = len(self._outcomes)
        if (
            self._failures >= self.policy.failure_threshold
            and wilson_lower(self._failures, calls, self.policy.ratio_confidence)
            >= self.policy.min_failure_ratio
        ):
            return self._open(now)
        return None

    def snapshot(self, now: float) -> CircuitBreakerState:
        """The breaker as a frozen model, with an expired ``open`` reported as ``half_open``."""
        self._prune(now)
        state = self._state
        retry_at: float | None = None
        if state == "open" and self._opened_at is not None:
            retry_at = self._opened_at + self.policy.open_s
            if now >= retry_at:
                state = "half_open"
        elif state == "half_open" and self._probe_at is not None:
            retry_at = self._probe_at + self.policy.open_s
        return CircuitBreakerState(
            connector=self.connector,
            state=state,
            failures_in_window=self._failures,
            calls_in_window=len(self._outcomes),
            opened_at=self._opened_at,
            retry_at=retry_at,
        )

    def _append(self, now: float, *, failed: bool) -> None:
        self._prune(now)
        if len(self._outcomes) >= self._max_entries:
            self._drop_oldest()
        self._outcomes.append((now, failed))
        self._failures += failed

    def _prune(self, now: float) -> None:
        horizon = now - self.policy.window_s
        while self._outcomes and self._outcomes[0][0] <= horizon:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, failed = self._outcomes.popleft()
        self._failures -= failed

    def _open(self, now: float) -> BreakerTransition:
        before = self._state
        self._state = "open"
        self._opened_at = now
        self._probe_at = None
        return BreakerTransition(self.connector, before, "open", now)

    def _close(self, now: float) -> BreakerTransition:
        before = self._state
        self._state = "closed"
        self._opened_at = None
        self._probe_at = None
        self._outcomes.clear()
        self._failures = 0
        return BreakerTransition(self.connector, before, "closed", now)


class BreakerBoard:
    """The breakers of every connector of one worker, created on first use.

    Args:
        policy: Policy shared by every breaker on the board.
        max_entries: Per-breaker cap on outcomes kept in the window.
    """

    def __init__(self, policy: BreakerPolicy, *, max_entries: int = MAX_WINDOW_ENTRIES) -> None:
        self.policy = policy
        self._max_entries = max_entries
        self._breakers: dict[ConnectorName, CircuitBreaker] = {}

    def get(self, connector: ConnectorName) -> CircuitBreaker:
        """The breaker of ``connector``, created closed if it does not exist yet."""
        breaker = self._breakers.get(connector)
        if breaker is None:
            breaker = CircuitBreaker(connector, self.policy, max_entries=self._max_entries)
            self._breakers[connector] = breaker
        return breaker

    def snapshots(self, now: float) -> list[CircuitBreakerState]:
        """Snapshots of every breaker created so far, sorted by connector name."""
        return [self._breakers[name].snapshot(now) for name in sorted(self._breakers)]
