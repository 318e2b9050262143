"""The Store protocol: what every backend (SQLite, PostgreSQL, Supabase) provides.

One schema for all backends (``healing/store/migrations/``). Counters are updated atomically by
the database (``INSERT ... ON CONFLICT DO UPDATE SET n = n + 1`` or the SQL function
``healing_record_outcome``), never read-modify-written by Python, so concurrent workers lose
no update.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class Store(Protocol):
    """Persistence for the event log and learned error patterns."""

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
