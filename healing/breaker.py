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

:class:`FleetBreakers` is the same rule over the store's fleet state (DESIGN s5b), which is
what workers use: failures are counted fleet-wide in one-second buckets, the state lives in one
versioned document per connector (read at every call, so an open circuit is seen by every
worker at once), and the half-open probe is a lease named after its open window, so the whole
fleet sends one probe per window. Two additions to the pure rule, both for fleets:

- a *trial* phase: while the window's failures are at least ``min_failure_ratio`` of its
  calls (an outage's first answers), calls go one at a time (a short lease), so a busy fleet
  opens the circuit after its ``failure_threshold`` failures instead of a burst of them;
- a shorter first open (``first_open_s``, 5 s by default): a short outage heals after 5 s, a
  long one costs one more probe and then waits ``open_s`` per probe.

Example:
    >>> board = BreakerBoard(BreakerPolicy())
    >>> breaker = board.get("crm")
    >>> breaker.before_call(now=0.0) is None
    True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from healing.config import BreakerPolicy
from healing.stats import wilson_lower
from healing.store.base import FleetState
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


def should_open(failures: int, calls: int, policy: BreakerPolicy) -> bool:
    """The opening rule: ``failure_threshold`` failures that are also at least
    ``min_failure_ratio`` of the window's calls (one-sided Wilson bound)."""
    return (
        failures >= policy.failure_threshold
        and wilson_lower(failures, calls, policy.ratio_confidence) >= policy.min_failure_ratio
    )


def suspect(failures: int, calls: int, policy: BreakerPolicy) -> bool:
    """Whether the window looks like an outage starting: failures at least the ratio of the
    calls (plain ratio). Calls then go one at a time until the circuit opens or a success."""
    return failures > 0 and failures >= policy.min_failure_ratio * calls


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
        if should_open(self._failures, len(self._outcomes), self.policy):
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


# -- the fleet's breakers ---------------------------------------------------------------------

BREAKER_SPACE = "breaker"
"""Fleet-state space of the breaker documents, one per connector."""
Role = Literal["call", "trial", "probe"]


@dataclass(frozen=True)
class Admission:
    """Whether one call may go now, and as what.

    Attributes:
        go: Send it now.
        wait_s: Otherwise, ask again after this long.
        role: ``call`` (closed), ``trial`` (one at a time while an outage may be starting) or
            ``probe`` (the half-open window's one call); a trial or probe outcome always counts.
        window: For a probe, the open window it probes (its ``opened_at``).
        closed_at: When the circuit last closed: earlier outcomes no longer count.
        since: When the connector started failing (ISO time), for messages.
        last: Its latest unhealthy answer, in brief.
    """

    go: bool
    wait_s: float = 0.0
    role: Role = "call"
    window: float | None = None
    closed_at: float = 0.0
    since: str = ""
    last: str = ""


@dataclass(frozen=True)
class BreakerView:
    """The last seen state of one connector's circuit (sync, for status and tests)."""

    connector: ConnectorName
    state: BreakerState
    retry_at: float | None = None


def _num(doc: Mapping[str, Any], key: str) -> float:
    value = doc.get(key)
    return float(value) if isinstance(value, int | float) else 0.0


class FleetBreakers:
    """Circuit breakers shared by every worker through the store (DESIGN s4, s5b).

    Args:
        state: The store's fleet state (``MemoryFleetState`` for a worker without a store).
        policy: The opening rule and timings.

    Times (``now``) are epoch seconds of the fleet's common clock (the server's, in activities).
    """

    def __init__(self, state: FleetState, policy: BreakerPolicy) -> None:
        self.state = state
        self.policy = policy
        self._seen: dict[ConnectorName, BreakerView] = {}

    def get(self, connector: ConnectorName) -> BreakerView:
        """The state this worker saw last (``closed`` if it never looked)."""
        return self._seen.get(connector, BreakerView(connector, "closed"))

    def _keys(self, connector: ConnectorName) -> tuple[str, str]:
        return f"breaker:{connector}:calls", f"breaker:{connector}:fails"

    async def _doc(self, connector: ConnectorName) -> tuple[dict[str, Any], int | None]:
        entry = await self.state.state_get(BREAKER_SPACE, connector)
        if entry is None:
            return {}, None
        return dict(entry.value), entry.version

    def _view(self, connector: ConnectorName, doc: Mapping[str, Any], now: float) -> BreakerView:
        if doc.get("state") != "open":
            view = BreakerView(connector, "closed")
        else:
            retry_at = _num(doc, "opened_at") + _num(doc, "open_s")
            view = BreakerView(connector, "open" if now < retry_at else "half_open", retry_at)
        self._seen[connector] = view
        return view

    async def admit(
        self, connector: ConnectorName, *, now: float, holder: str, first_attempt: bool = True
    ) -> Admission:
        """Ask whether a call may go now (``holder``: unique per attempt).

        Only first attempts are trials: a call's own retries neither wait for the trial lease
        nor count, so one unlucky call never opens the circuit by itself."""
        if not self.policy.enabled:
            return Admission(True)
        doc, _ = await self._doc(connector)
        view = self._view(connector, doc, now)
        since, last = str(doc.get("since") or ""), str(doc.get("last") or "")
        if view.state == "open":
            assert view.retry_at is not None
            return Admission(False, view.retry_at - now, since=since, last=last)
        if view.state == "half_open":
            opened_at = _num(doc, "opened_at")
            lease = f"breaker:{connector}:probe:{opened_at:.3f}"
            # Named after its window: a worker with an older view cannot send a second probe.
            if await self.state.lease_take(lease, holder, ttl_s=self.policy.open_s, now=now):
                return Admission(True, role="probe", window=opened_at, since=since, last=last)
            return Admission(False, PROBE_BUSY_WAIT_S, since=since, last=last)
        closed_at = _num(doc, "closed_at")
        calls_key, fails_key = self._keys(connector)
        sums = await self.state.counter_sums(
            [calls_key, fails_key], since_bucket=self._keep_from(now, closed_at)
        )
        if first_attempt and suspect(sums[fails_key], sums[calls_key], self.policy):
            trial = f"breaker:{connector}:trial"
            if await self.state.lease_take(trial, holder, ttl_s=self.policy.trial_ttl_s, now=now):
                return Admission(True, role="trial", closed_at=closed_at)
            return Admission(False, 0.05, closed_at=closed_at)
        return Admission(True, closed_at=closed_at)

    async def state_of(self, connector: ConnectorName, *, now: float) -> str:
        """``connector``'s circuit for the fleet at ``now``: ``closed``, ``open`` or
        ``half_open`` (read only: no probe is taken)."""
        if not self.policy.enabled:
            return "closed"
        doc, _ = await self._doc(connector)
        return str(self._view(connector, doc, now).state)

    def _keep_from(self, now: float, closed_at: float) -> int:
        return max(int(now - self.policy.window_s) + 1, int(closed_at) + 1 if closed_at else 0)

    async def record(
        self,
        connector: ConnectorName,
        admission: Admission,
        *,
        failed: bool | None,
        counts: bool,
        now: float,
        holder: str,
        since: str = "",
        last: str = "",
    ) -> BreakerTransition | None:
        """Record a call's outcome and carry out any state change (compare-and-swap).

        Args:
            admission: What :meth:`admit` said for this call.
            failed: True for an unhealthy answer, False for a healthy one (a 4xx counts as
                the service being up), None when the outcome tells nothing (lease released only).
            counts: The outcome counts in the window (first attempts; trials and probes always).
            holder: The ``holder`` given to :meth:`admit`.
            since: When the connector started failing, kept in the document for messages.
            last: Its latest unhealthy answer, in brief.
        """
        if not self.policy.enabled:
            return None
        try:
            if admission.role == "probe":
                if failed is None:
                    return None
                return await self._settle_probe(connector, admission, failed, now, since, last)
            if failed is None or not (counts or admission.role == "trial"):
                return None
            calls_key, fails_key = self._keys(connector)
            keep = self._keep_from(now, admission.closed_at)
            calls = await self.state.counter_add(calls_key, int(now), 1, keep_from=keep)
            if not failed:
                return None
            fails = await self.state.counter_add(fails_key, int(now), 1, keep_from=keep)
            if not should_open(fails, calls, self.policy):
                return None
            doc, version = await self._doc(connector)
            if doc.get("state") == "open":
                return None  # another worker opened it
            opened = {
                "state": "open",
                "opened_at": now,
                "open_s": min(self.policy.first_open_s, self.policy.open_s),
                "opens": 1,
                "since": since or doc.get("since") or "",
                "last": last,
            }
            if await self.state.state_put(
                BREAKER_SPACE, connector, opened, expected_version=version, now=now
            ):
                self._view(connector, opened, now)
                return BreakerTransition(connector, "closed", "open", now)
            return None
        finally:
            if admission.role == "trial":
                await self.state.lease_drop(f"breaker:{connector}:trial", holder)

    async def _settle_probe(
        self,
        connector: ConnectorName,
        admission: Admission,
        failed: bool,
        now: float,
        since: str,
        last: str,
    ) -> BreakerTransition | None:
        doc, version = await self._doc(connector)
        if doc.get("state") != "open" or _num(doc, "opened_at") != admission.window:
            return None  # settled already (a replaced probe's late answer)
        if failed:
            new: dict[str, Any] = {
                **doc,
                "opened_at": now,
                "open_s": self.policy.open_s,
                "opens": int(_num(doc, "opens")) + 1,
                "last": last or doc.get("last") or "",
            }
            to: BreakerState = "open"
        else:
            new = {"state": "closed", "closed_at": now}
            to = "closed"
        if not await self.state.state_put(
            BREAKER_SPACE, connector, new, expected_version=version, now=now
        ):
            return None
        self._view(connector, new, now)
        return BreakerTransition(connector, "half_open", to, now)

    async def snapshot(self, connector: ConnectorName, *, now: float) -> CircuitBreakerState:
        """The connector's circuit as the fleet sees it now."""
        doc, _ = await self._doc(connector)
        view = self._view(connector, doc, now)
        calls_key, fails_key = self._keys(connector)
        sums = await self.state.counter_sums(
            [calls_key, fails_key], since_bucket=self._keep_from(now, _num(doc, "closed_at"))
        )
        opened = _num(doc, "opened_at") if view.state != "closed" else None
        return CircuitBreakerState(
            connector=connector,
            state=view.state,
            failures_in_window=sums[fails_key],
            calls_in_window=sums[calls_key],
            opened_at=opened,
            retry_at=view.retry_at,
        )
