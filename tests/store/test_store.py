"""One suite, every backend: SQLite, PostgreSQL, and Supabase (REST over the same SQL)."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

import pytest

from healing.store import EventFilter, Store, StrategyStats
from healing.types import ErrorPattern, ErrorType, HealingEvent, HealingStrategy
from tests.store.conftest import StoreFactory
from tests.store.pgcluster import PASSWORD

T0 = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
AUTH = ErrorPattern(
    fingerprint="fp-auth",
    connector="crm",
    operation="get_contact",
    error_type=ErrorType.AUTH_EXPIRED,
    status_code=401,
    vendor_code="INVALID_SESSION_ID",
    template="Session expired or invalid",
)
SLOW = ErrorPattern(
    fingerprint="fp-slow",
    connector="mail",
    operation="send",
    error_type=ErrorType.TIMEOUT,
    template="read timeout after <n> s",
)


def event(minutes: float, **fields: object) -> HealingEvent:
    values: dict[str, object] = {
        "at": T0 + timedelta(minutes=minutes),
        "kind": "attempt",
        "workflow_id": "wf-1",
    }
    values.update(fields)
    return HealingEvent.model_validate(values)


async def test_migrate_is_idempotent(make_store: StoreFactory, backend: str) -> None:
    store = make_store()
    first = await store.migrate()
    assert first == ([] if backend == "supabase" else [1, 2])  # Supabase: `supabase db push` did it
    assert await store.migrate() == []
    assert await make_store().migrate() == []  # another worker starting later


async def test_store_protocol_and_display(store: Store) -> None:
    assert isinstance(store, Store)
    await store.ping()
    assert PASSWORD not in store.url_for_display


async def test_events_round_trip_newest_first(store: Store) -> None:
    full = event(
        1,
        kind="healed",
        connector="crm",
        operation="get_contact",
        error_type=ErrorType.AUTH_EXPIRED,
        fingerprint="fp-auth",
        strategy=HealingStrategy.REFRESH_TOKEN,
        outcome="healed",
        duration_s=1.25,
    )
    bare = event(0)
    same_time = [event(2, outcome="first"), event(2, outcome="second")]
    await store.record_events([bare, full])
    await store.record_events(same_time)
    await store.record_events([])
    got = await store.recent_events()
    assert got == [same_time[1], same_time[0], full, bare]  # ties: later write first
    assert got[2].strategy is HealingStrategy.REFRESH_TOKEN
    assert got[2].at.tzinfo is not None and got[2].at == full.at


async def test_naive_times_are_utc(store: Store) -> None:
    naive = event(0).model_copy(update={"at": T0.replace(tzinfo=None)})
    await store.record_events([naive])
    (got,) = await store.recent_events()
    assert got.at == T0


async def test_every_event_filter(store: Store) -> None:
    events = [
        event(0, workflow_id="wf-a", connector="crm", kind="classified", fingerprint="fp-1",
              error_type=ErrorType.TIMEOUT),
        event(1, workflow_id="wf-a", connector="mail", kind="attempt", fingerprint="fp-2",
              error_type=ErrorType.RATE_LIMITED),
        event(2, workflow_id="wf-b", connector="crm", kind="healed", fingerprint="fp-1",
              error_type=ErrorType.TIMEOUT),
        event(3, workflow_id="wf-b", connector="crm", kind="escalated", fingerprint="fp-3",
              error_type=ErrorType.AUTH_INVALID),
    ]  # fmt: skip
    await store.record_events(events)

    async def pick(**where: object) -> list[int]:
        got = await store.recent_events(EventFilter.model_validate(where))
        return [events.index(e) for e in got]

    assert await pick() == [3, 2, 1, 0]
    assert await pick(workflow_id="wf-a") == [1, 0]
    assert await pick(connector="crm") == [3, 2, 0]
    assert await pick(error_type="TIMEOUT") == [2, 0]
    assert await pick(kind="healed") == [2]
    assert await pick(fingerprint="fp-1") == [2, 0]
    assert await pick(since=T0 + timedelta(minutes=1)) == [3, 2, 1]  # inclusive
    assert await pick(limit=2) == [3, 2]
    assert await pick(workflow_id="wf-b", connector="crm", kind="escalated") == [3]
    assert await pick(workflow_id="nobody") == []


async def test_outcomes_count_and_stats(store: Store) -> None:
    assert await store.pattern_stats(AUTH.fingerprint) is None
    before = datetime.now(UTC) - timedelta(seconds=5)
    await store.record_outcome(AUTH, "refresh_token", healed=True, heal_s=1.0)
    await store.record_outcome(AUTH, "refresh_token", healed=True, heal_s=3.0)
    await store.record_outcome(AUTH, "refresh_token", healed=False)
    await store.record_outcome(AUTH, "retry", healed=False, heal_s=9.0)  # not healed: no time
    heals = [event(i, kind="healed", fingerprint=AUTH.fingerprint, strategy="refresh_token",
                   duration_s=d) for i, d in enumerate([1.0, 3.0, 8.0])]  # fmt: skip
    other = event(9, kind="healed", fingerprint="other", strategy="refresh_token", duration_s=99.0)
    await store.record_events([*heals, other])

    stats = await store.pattern_stats(AUTH.fingerprint)
    assert stats is not None
    assert stats.pattern == AUTH
    assert stats.seen == 4
    assert stats.strategies == [
        StrategyStats(strategy="refresh_token", tries=3, successes=2, total_heal_s=4.0,
                      median_heal_s=3.0),
        StrategyStats(strategy="retry", tries=1, successes=0, total_heal_s=0.0),
    ]  # fmt: skip
    assert stats.first_seen is not None and stats.last_seen is not None
    assert before <= stats.first_seen <= stats.last_seen <= datetime.now(UTC) + timedelta(seconds=5)
    first_last = stats.last_seen
    await store.record_outcome(AUTH, "retry", healed=True, heal_s=0.5)
    again = await store.pattern_stats(AUTH.fingerprint)
    assert again is not None and again.last_seen is not None
    assert again.first_seen == stats.first_seen and again.last_seen >= first_last
    assert again.seen == 5


async def test_pattern_without_optional_fields(store: Store) -> None:
    await store.record_outcome(SLOW, "retry_backoff", healed=False)
    stats = await store.pattern_stats(SLOW.fingerprint)
    assert stats is not None
    assert stats.pattern == SLOW and stats.pattern.status_code is None
    assert stats.strategies[0].median_heal_s is None


async def test_median_uses_the_newest_heals(store: Store) -> None:
    old = [event(i, kind="healed", fingerprint="fp-m", strategy="retry", duration_s=1000.0)
           for i in range(50)]  # fmt: skip
    new = [event(100 + i, kind="healed", fingerprint="fp-m", strategy="retry",
                 duration_s=float(i % 5)) for i in range(100)]  # fmt: skip
    await store.record_events(old + new)
    pattern = AUTH.model_copy(update={"fingerprint": "fp-m"})
    await store.record_outcome(pattern, "retry", healed=True, heal_s=1.0)
    stats = await store.pattern_stats("fp-m")
    assert stats is not None
    assert stats.strategies[0].median_heal_s == statistics.median(i % 5 for i in range(100))


async def test_patterns_most_seen_first(store: Store) -> None:
    for pattern, times in ((SLOW, 1), (AUTH, 3)):
        for _ in range(times):
            await store.record_outcome(pattern, "retry", healed=True, heal_s=2.0)
    third = SLOW.model_copy(update={"fingerprint": "fp-third"})
    await store.record_outcome(third, "retry", healed=False)
    await store.record_outcome(third, "retry", healed=False)
    ranked = await store.patterns()
    assert [(p.pattern.fingerprint, p.seen) for p in ranked] == [
        ("fp-auth", 3),
        ("fp-third", 2),
        ("fp-slow", 1),
    ]
    assert ranked[0].strategies[0].tries == 3 and ranked[0].strategies[0].total_heal_s == 6.0
    assert [p.pattern.fingerprint for p in await store.patterns(limit=1)] == ["fp-auth"]


async def test_fingerprints_with_reserved_characters(store: Store) -> None:
    odd = AUTH.model_copy(update={"fingerprint": 'crm:get,"contact" (401)'})
    await store.record_outcome(odd, "retry", healed=True, heal_s=1.0)
    await store.record_events([event(0, kind="healed", fingerprint=odd.fingerprint,
                                     strategy="retry", duration_s=1.0)])  # fmt: skip
    stats = await store.pattern_stats(odd.fingerprint)
    assert stats is not None and stats.strategies[0].median_heal_s == 1.0
    assert [p.pattern.fingerprint for p in await store.patterns()] == [odd.fingerprint]


@pytest.mark.parametrize("bad", [0, 10_001])
def test_event_filter_limits(bad: int) -> None:
    with pytest.raises(ValueError):
        EventFilter(limit=bad)
