"""PatternCache: TTL, store outages kept off the call path, shared reads, LRU bound."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest

from healing.config import BackoffPolicy, LearningPolicy
from healing.errors import StoreUnavailable
from healing.learning import StrategyHint
from healing.matrix import DEFAULT_MATRIX
from healing.patterns import PatternCache
from healing.store.base import EventFilter, PatternStats, Store, StrategyStats
from healing.store.memory import MemoryFleetState
from healing.types import ErrorPattern, ErrorType, HealingEvent

ROW = DEFAULT_MATRIX[ErrorType.TIMEOUT]
BACKOFF = BackoffPolicy()
POLICY = LearningPolicy(cache_ttl_s=30.0)


def never_healed(fingerprint: str) -> PatternStats:
    pattern = ErrorPattern(
        fingerprint=fingerprint, connector="crm", operation="get", error_type=ErrorType.TIMEOUT
    )
    retries = StrategyStats(strategy="retry_backoff", tries=40, successes=0)
    return PatternStats(pattern=pattern, seen=40, strategies=[retries])


class FakeClock:
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeStore(MemoryFleetState):
    """Answers pattern_stats from a dict; can be down, hang, or make callers wait a turn."""

    url_for_display = "memory://fake"

    def __init__(self) -> None:
        self.stats: dict[str, PatternStats] = {}
        self.reads: list[str] = []
        self.down = False
        self.hang = False

    async def migrate(self) -> list[int]:
        return []

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def record_events(self, events: Sequence[HealingEvent]) -> None:
        return None

    async def recent_events(self, filter: EventFilter | None = None) -> list[HealingEvent]:
        return []

    async def record_outcome(
        self, pattern: ErrorPattern, strategy: str, *, healed: bool, heal_s: float | None = None
    ) -> None:
        return None

    async def pattern_stats(self, fingerprint: str) -> PatternStats | None:
        self.reads.append(fingerprint)
        await asyncio.sleep(0)  # let concurrent callers pile up
        if self.hang:
            await asyncio.Event().wait()
        if self.down:
            raise StoreUnavailable("connection refused (memory://fake)")
        return self.stats.get(fingerprint)

    async def patterns(self, *, limit: int = 100) -> list[PatternStats]:
        return list(self.stats.values())[:limit]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> FakeStore:
    fake = FakeStore()
    fake.stats["f1"] = never_healed("f1")
    return fake


def cache(
    store: FakeStore | None, clock: FakeClock, *, policy: LearningPolicy = POLICY, **kwargs: Any
) -> PatternCache:
    return PatternCache(store, policy, clock=clock, **kwargs)


async def hint(c: PatternCache, fingerprint: str = "f1") -> StrategyHint | None:
    return await c.hint(fingerprint, ROW, backoff=BACKOFF, budget_s=120.0)


def test_fake_store_implements_the_protocol(store: FakeStore) -> None:
    assert isinstance(store, Store)


async def test_stats_are_cached_for_the_ttl(store: FakeStore, clock: FakeClock) -> None:
    c = cache(store, clock)
    first = await hint(c)
    assert first is not None and first.skip_retries
    clock.now = 29.9
    assert await hint(c) == first
    assert store.reads == ["f1"]
    clock.now = 30.1
    store.stats.pop("f1")  # the store changed; the expired entry is read again
    assert await hint(c) is None
    assert store.reads == ["f1", "f1"]


async def test_unknown_patterns_are_cached_too(store: FakeStore, clock: FakeClock) -> None:
    c = cache(store, clock)
    assert await hint(c, "new") is None
    assert await hint(c, "new") is None
    assert store.reads == ["new"]
    assert await c.stats("new") == (True, None)


@pytest.mark.parametrize(
    ("policy", "error_type", "with_store"),
    [
        (LearningPolicy(enabled=False), ErrorType.TIMEOUT, True),
        (POLICY, ErrorType.NOT_FOUND, True),
        (POLICY, ErrorType.TIMEOUT, False),
    ],
)
async def test_no_store_read_when_learning_cannot_apply(
    store: FakeStore,
    clock: FakeClock,
    policy: LearningPolicy,
    error_type: ErrorType,
    with_store: bool,
) -> None:
    c = cache(store if with_store else None, clock, policy=policy)
    row = DEFAULT_MATRIX[error_type]
    assert await c.hint("f1", row, backoff=BACKOFF, budget_s=120.0) is None
    assert store.reads == []


async def test_store_down_gives_none_at_once_and_backs_off(
    store: FakeStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store.down = True
    c = cache(store, clock, backoff_s=5.0)
    caplog.set_level(logging.INFO, logger="healing.patterns")
    assert await hint(c) is None
    clock.now = 4.9
    assert await hint(c) is None
    assert await hint(c, "f2") is None
    assert store.reads == ["f1"]  # backing off: the store is left alone
    clock.now = 5.0
    assert await hint(c) is None
    assert store.reads == ["f1", "f1"]
    store.down = False
    clock.now = 10.0
    assert await hint(c) is not None
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(messages) == 2  # one warning for the outage, one line for the recovery
    assert messages[0][0] == logging.WARNING and "StoreUnavailable" in messages[0][1]
    assert messages[1] == (logging.INFO, "healing store available again for learned patterns")


async def test_a_hanging_store_times_out_quickly(store: FakeStore, clock: FakeClock) -> None:
    store.hang = True
    c = cache(store, clock, timeout_s=0.01)
    started = time.perf_counter()
    assert await hint(c) is None
    assert time.perf_counter() - started < 0.5
    assert await hint(c) is None  # backing off, no second read
    assert store.reads == ["f1"]


async def test_a_fresh_entry_is_served_while_the_store_is_down(
    store: FakeStore, clock: FakeClock
) -> None:
    c = cache(store, clock)
    assert await hint(c) is not None
    store.down = True
    clock.now = 10.0
    assert await hint(c) is not None
    clock.now = 31.0  # expired, and the store is down: heal from the matrix
    assert await hint(c) is None


async def test_concurrent_misses_share_one_read(store: FakeStore, clock: FakeClock) -> None:
    c = cache(store, clock)
    results = await asyncio.gather(*(hint(c) for _ in range(10)))
    assert all(r is not None for r in results)
    assert store.reads == ["f1"]


async def test_size_is_bounded_least_recently_used_first(
    store: FakeStore, clock: FakeClock
) -> None:
    c = cache(store, clock, max_entries=3)
    for fp in ("a", "b", "c"):
        await hint(c, fp)
    await hint(c, "a")  # a is now the most recently used
    await hint(c, "d")  # evicts b
    assert len(c) == 3
    store.reads.clear()
    for fp in ("a", "c", "d"):
        await hint(c, fp)
    assert store.reads == []
    await hint(c, "b")
    assert store.reads == ["b"]
    assert len(c) == 3
