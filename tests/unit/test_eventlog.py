"""EventLog: batching, buffering through store outages, drop-oldest, warnings, recovery."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest

from healing.errors import StoreUnavailable
from healing.eventlog import EventLog
from healing.store.base import EventFilter, PatternStats, Store
from healing.store.memory import MemoryFleetState
from healing.types import ErrorPattern, ErrorType, HealingEvent

AT = datetime(2025, 1, 1, tzinfo=UTC)
PATTERN = ErrorPattern(
    fingerprint="f1", connector="crm", operation="get_contact", error_type=ErrorType.TIMEOUT
)


class FakeClock:
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeStore(MemoryFleetState):
    """An in-memory Store that can be switched down, made to hang, or hooked mid-write."""

    url_for_display = "memory://fake"

    def __init__(self) -> None:
        self.events: list[HealingEvent] = []
        self.batches: list[int] = []
        self.outcomes: list[tuple[str, str, bool, float | None]] = []
        self.down = False
        self.hang = False
        self.during_write: Callable[[], None] | None = None
        self.attempts = 0

    async def _gate(self) -> None:
        if self.during_write is not None:
            self.during_write()
        if self.hang:
            await asyncio.Event().wait()
        if self.down:
            raise StoreUnavailable("connection refused (memory://fake)")

    async def migrate(self) -> list[int]:
        return []

    async def ping(self) -> None:
        await self._gate()

    async def close(self) -> None:
        return None

    async def record_events(self, events: Sequence[HealingEvent]) -> None:
        self.attempts += 1
        await self._gate()
        self.events.extend(events)
        self.batches.append(len(events))

    async def recent_events(self, filter: EventFilter | None = None) -> list[HealingEvent]:
        return list(reversed(self.events))

    async def record_outcome(
        self, pattern: ErrorPattern, strategy: str, *, healed: bool, heal_s: float | None = None
    ) -> None:
        await self._gate()
        self.outcomes.append((pattern.fingerprint, strategy, healed, heal_s))

    async def pattern_stats(self, fingerprint: str) -> PatternStats | None:
        return None

    async def patterns(self, *, limit: int = 100) -> list[PatternStats]:
        return []


def event(i: int) -> HealingEvent:
    return HealingEvent(at=AT, kind="attempt", workflow_id=f"wf-{i}", connector="crm")


def ids(events: Sequence[HealingEvent]) -> list[int]:
    return [int(e.workflow_id.removeprefix("wf-")) for e in events]


async def until(condition: Callable[[], bool], yields: int = 200) -> None:
    """Let the event loop run (no real sleep) until ``condition`` holds."""
    for _ in range(yields):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_fake_store_implements_the_protocol(store: FakeStore) -> None:
    assert isinstance(store, Store)


async def test_without_a_store_everything_is_a_no_op(clock: FakeClock) -> None:
    log = EventLog(None, clock=clock)
    log.start()
    for i in range(10):
        log.emit(event(i))
    log.record_outcome(PATTERN, "retry_backoff", True, 1.0)
    assert await log.flush() == 0
    await log.aclose()
    stats = log.stats()
    assert (stats.written, stats.buffered, stats.dropped, stats.failed_flushes) == (0, 0, 0, 0)
    assert stats.outcomes_buffered == 0


async def test_flush_writes_in_batches_in_order(store: FakeStore, clock: FakeClock) -> None:
    log = EventLog(store, clock=clock, max_batch=200)
    for i in range(450):
        log.emit(event(i))
    assert store.events == []  # emit itself never writes
    assert await log.flush() == 450
    assert store.batches == [200, 200, 50]
    assert ids(store.events) == list(range(450))
    assert log.stats().written == 450 and log.stats().buffered == 0


async def test_store_down_buffers_and_warns_with_counts(
    store: FakeStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store.down = True
    log = EventLog(store, clock=clock)
    for i in range(120):
        log.emit(event(i))
    with caplog.at_level(logging.WARNING, logger="healing.eventlog"):
        assert await log.flush() == 0
    stats = log.stats()
    assert (stats.written, stats.buffered, stats.dropped, stats.failed_flushes) == (0, 120, 0, 1)
    assert stats.store_available is False
    [record] = caplog.records
    assert record.getMessage().startswith(
        "healing store unavailable: 120 events buffered, 0 dropped"
    )
    assert "memory://fake" in record.getMessage()


async def test_full_buffer_drops_the_oldest(store: FakeStore, clock: FakeClock) -> None:
    store.down = True
    log = EventLog(store, clock=clock, max_buffer=100)
    for i in range(150):
        log.emit(event(i))
    await log.flush()
    assert (log.stats().buffered, log.stats().dropped) == (100, 50)
    store.down = False
    assert await log.flush() == 100
    assert ids(store.events) == list(range(50, 150))


async def test_a_failed_batch_goes_back_in_front_dropping_its_oldest_when_full(
    store: FakeStore, clock: FakeClock
) -> None:
    log = EventLog(store, clock=clock, max_batch=5, max_buffer=10)
    for i in range(10):
        log.emit(event(i))
    store.down = True

    # While the first batch (0-4) is out, three newer events arrive: only two of the batch fit.
    def three_newer() -> None:
        for i in (10, 11, 12):
            log.emit(event(i))

    store.during_write = three_newer
    await log.flush()
    store.during_write = None
    assert (log.stats().buffered, log.stats().dropped) == (10, 3)
    store.down = False
    assert await log.flush() == 10
    assert ids(store.events) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]


async def test_warning_is_rate_limited_and_recovery_is_announced(
    store: FakeStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store.down = True
    log = EventLog(store, clock=clock, warn_interval_s=60.0)
    caplog.set_level(logging.INFO, logger="healing.eventlog")
    for step in range(5):  # five failed flushes within a minute: one warning
        clock.now = step * 10.0
        for i in range(20):
            log.emit(event(step * 20 + i))
        await log.flush()
    clock.now = 61.0
    await log.flush()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("healing store unavailable: 20 events buffered, 0 dropped")
    assert warnings[1].startswith("healing store unavailable: 100 events buffered, 0 dropped")
    assert log.stats().failed_flushes == 6

    store.down = False
    caplog.clear()
    assert await log.flush() == 100
    assert len(store.events) == 100 and len({e.workflow_id for e in store.events}) == 100
    stats = log.stats()
    assert (stats.written, stats.buffered, stats.failed_flushes) == (100, 0, 6)
    assert stats.store_available is True
    [info] = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "available again" in info and "after 6 failed writes" in info


async def test_emit_never_blocks_with_the_store_down(store: FakeStore, clock: FakeClock) -> None:
    store.down = True
    log = EventLog(store, clock=clock, max_buffer=10_000)
    log.start()
    events = [event(i) for i in range(100_000)]
    started = time.perf_counter()
    for e in events:
        log.emit(e)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"100k emits took {elapsed:.2f} s"
    assert (log.stats().buffered, log.stats().dropped) == (10_000, 90_000)
    await log.aclose(timeout_s=1.0)


async def test_a_full_batch_wakes_the_background_writer(store: FakeStore, clock: FakeClock) -> None:
    log = EventLog(store, clock=clock, max_batch=50, flush_interval_s=3600.0)
    log.start()
    for i in range(49):
        log.emit(event(i))
    for _ in range(20):
        await asyncio.sleep(0)
    assert store.events == []  # under a batch and the interval is an hour away
    log.emit(event(49))
    await until(lambda: len(store.events) == 50)
    await log.aclose()


async def test_emit_from_a_thread_wakes_the_writer(store: FakeStore, clock: FakeClock) -> None:
    log = EventLog(store, clock=clock, max_batch=100, flush_interval_s=3600.0)
    log.start()

    def emit_batch() -> None:
        for i in range(100):
            log.emit(event(i))

    await asyncio.to_thread(emit_batch)
    await until(lambda: len(store.events) == 100)
    await log.aclose()


async def test_aclose_flushes_what_is_queued(store: FakeStore, clock: FakeClock) -> None:
    log = EventLog(store, clock=clock, flush_interval_s=3600.0)
    log.start()
    for i in range(5):
        log.emit(event(i))
    log.record_outcome(PATTERN, "retry_backoff", True, 2.5)
    await log.aclose()
    assert ids(store.events) == [0, 1, 2, 3, 4]
    assert store.outcomes == [("f1", "retry_backoff", True, 2.5)]
    log.emit(event(5))  # after closing: counted, not kept
    assert (log.stats().written, log.stats().buffered, log.stats().dropped) == (5, 0, 1)


async def test_aclose_with_the_store_down_counts_what_is_lost(
    store: FakeStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store.down = True
    log = EventLog(store, clock=clock, flush_interval_s=3600.0)
    log.start()
    for i in range(7):
        log.emit(event(i))
    with caplog.at_level(logging.WARNING, logger="healing.eventlog"):
        await log.aclose(timeout_s=1.0)
    assert (log.stats().buffered, log.stats().dropped) == (0, 7)
    assert "closed with 7 events and 0 outcomes unwritten" in caplog.text


async def test_a_hanging_store_times_out_and_keeps_the_events(
    store: FakeStore, clock: FakeClock
) -> None:
    store.hang = True
    log = EventLog(store, clock=clock, write_timeout_s=0.01)
    for i in range(3):
        log.emit(event(i))
    assert await log.flush() == 0
    assert (log.stats().buffered, log.stats().failed_flushes) == (3, 1)
    store.hang = False
    assert await log.flush() == 3


async def test_aclose_gives_up_on_a_hanging_store(store: FakeStore, clock: FakeClock) -> None:
    store.hang = True
    log = EventLog(store, clock=clock, write_timeout_s=3600.0)
    log.start()
    log.emit(event(0))
    await log.aclose(timeout_s=0.02)
    assert (log.stats().written, log.stats().dropped) == (0, 1)


async def test_outcomes_wait_out_an_outage_in_their_own_bounded_queue(
    store: FakeStore, clock: FakeClock
) -> None:
    store.down = True
    log = EventLog(store, clock=clock, max_outcomes=3)
    for i in range(5):
        log.record_outcome(PATTERN, "retry_backoff", healed=i % 2 == 0, heal_s=float(i))
    await log.flush()
    stats = log.stats()
    assert (stats.outcomes_buffered, stats.outcomes_dropped, stats.outcomes_written) == (3, 2, 0)
    store.down = False
    await log.flush()
    assert store.outcomes == [
        ("f1", "retry_backoff", True, 2.0),
        ("f1", "retry_backoff", False, 3.0),
        ("f1", "retry_backoff", True, 4.0),
    ]
    assert log.stats().outcomes_written == 3


async def test_overflow_with_the_store_up_is_warned_about(
    store: FakeStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    log = EventLog(store, clock=clock, max_buffer=10)
    for i in range(15):
        log.emit(event(i))
    with caplog.at_level(logging.WARNING, logger="healing.eventlog"):
        assert await log.flush() == 10
        assert await log.flush() == 0  # nothing new dropped: no second warning
    assert [r.getMessage() for r in caplog.records] == [
        "healing event log full: 5 events dropped so far (max_buffer 10)"
    ]


async def test_a_down_store_is_retried_on_the_interval_not_on_every_emit(
    store: FakeStore, clock: FakeClock
) -> None:
    store.down = True
    log = EventLog(store, clock=clock, max_batch=10, flush_interval_s=3600.0)
    log.start()
    for i in range(10):
        log.emit(event(i))
    await until(lambda: log.stats().failed_flushes == 1)
    for i in range(10, 1000):
        log.emit(event(i))
        await asyncio.sleep(0)
    assert store.attempts == 1
    assert log.stats().buffered == 1000
    await log.aclose(timeout_s=1.0)
