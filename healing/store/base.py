"""The Store protocol: what every backend (SQLite, PostgreSQL, Supabase) provides.

One schema for all backends (``healing/store/migrations/``). Counters are updated atomically by
the database (``INSERT ... ON CONFLICT DO UPDATE SET n = n + 1`` or the SQL function
``healing_record_outcome``), never read-modify-written by Python, so concurrent workers lose
no update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from healing.types import ErrorPattern, HealingEvent


class StrategyStats(BaseModel):
    """Outcomes of one strategy on one error pattern."""

    model_config = ConfigDict(frozen=True)

    strategy: str
    tries: int = 0
    successes: int = 0
    total_heal_s: float = 0.0
    median_heal_s: float | None = None
    """From recent healed events of this pattern and strategy; None when there are none."""


class PatternStats(BaseModel):
    """An error pattern with what has been tried on it."""

    model_config = ConfigDict(frozen=True)

    pattern: ErrorPattern
    seen: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    strategies: list[StrategyStats] = Field(default_factory=list)


class EventFilter(BaseModel):
    model_config = ConfigDict(frozen=True)

    limit: int = Field(default=50, ge=1, le=10_000)
    workflow_id: str | None = None
    connector: str | None = None
    error_type: str | None = None
    kind: str | None = None
    fingerprint: str | None = None
    since: datetime | None = None


ANY_VERSION: Final = -1
"""``state_put(..., expected_version=ANY_VERSION)`` writes whatever is stored."""


class StateEntry(BaseModel):
    """One versioned JSON document of fleet state (DESIGN s5b)."""

    model_config = ConfigDict(frozen=True)

    space: str
    """What kind of state: ``credentials``, ``breaker``, ``mappings``, ``drift``, ..."""
    key: str
    version: int = Field(ge=1)
    """1 when first written, +1 per write; the compare-and-swap guard."""
    value: dict[str, Any]
    updated_at: float
    """Epoch seconds given by the writer."""


@runtime_checkable
class FleetState(Protocol):
    """State shared by every worker of a fleet (DESIGN s5b), in four shapes: versioned
    documents, leases, windowed counters and slots. Every backend of :class:`Store` has it;
    :class:`healing.store.memory.MemoryFleetState` holds it in one process (tests, no store).
    """

    async def state_get(self, space: str, key: str) -> StateEntry | None: ...

    async def state_list(self, space: str, *, limit: int = 1000) -> list[StateEntry]:
        """The documents of ``space``, by key."""

    async def state_put(
        self,
        space: str,
        key: str,
        value: Mapping[str, Any],
        *,
        expected_version: int | None,
        now: float,
    ) -> int | None:
        """Compare-and-swap: write ``value`` if the stored version is ``expected_version``
        (None: only if nothing is stored; ``ANY_VERSION``: unconditionally).

        Returns the new version, or None when the stored version differed (nothing written).
        """

    async def state_delete(
        self, space: str, key: str, *, expected_version: int | None = None
    ) -> bool:
        """Delete a document (only at ``expected_version`` unless None); True if one went."""

    async def lease_take(self, name: str, holder: str, *, ttl_s: float, now: float) -> bool:
        """Hold ``name`` until ``now + ttl_s`` if it is free, expired, or ``holder``'s already
        (then it is extended). A holder that dies loses it when the ttl runs out."""

    async def lease_drop(self, name: str, holder: str) -> bool:
        """Release ``name`` if ``holder`` holds it; True if it did."""

    async def counter_add(self, key: str, bucket: int, n: int = 1, *, keep_from: int) -> int:
        """Add ``n`` to ``bucket`` of ``key``, forget its buckets before ``keep_from``, and
        return the key's total from ``keep_from`` on (a sliding window, atomically)."""

    async def counter_sums(self, keys: Sequence[str], *, since_bucket: int) -> dict[str, int]:
        """Totals of ``keys`` from ``since_bucket`` on (0 for a key never counted)."""

    async def slot_take(
        self, key: str, *, spacing_s: float, now: float, not_before: float | None = None
    ) -> float:
        """Reserve the next start time for ``key``: at or after ``now`` and ``not_before``, and
        ``spacing_s`` after the previous reservation. Distinct callers get distinct starts.
        ``spacing_s=0`` with ``not_before`` only pushes later reservations past it."""


@runtime_checkable
class Store(FleetState, Protocol):
    """Persistence for the event log, learned error patterns and fleet state."""

    url_for_display: str
    """The store URL with any password removed, for messages."""

    async def migrate(self) -> list[int]:
        """Apply pending migrations idempotently; return the versions applied now."""

    async def ping(self) -> None:
        """Raise StoreUnavailable if the database cannot be reached."""

    async def close(self) -> None: ...

    async def record_events(self, events: Sequence[HealingEvent]) -> None:
        """Append events (one round trip per batch)."""

    async def recent_events(self, filter: EventFilter | None = None) -> list[HealingEvent]:
        """Newest first."""

    async def record_outcome(
        self, pattern: ErrorPattern, strategy: str, *, healed: bool, heal_s: float | None = None
    ) -> None:
        """Count one try of ``strategy`` on ``pattern`` (creating the pattern if new)."""

    async def pattern_stats(self, fingerprint: str) -> PatternStats | None: ...

    async def patterns(self, *, limit: int = 100) -> list[PatternStats]:
        """Most seen first."""
