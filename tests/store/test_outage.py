"""The PostgreSQL server goes away mid-run and comes back: the same store resumes writing."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from healing.errors import StoreUnavailable
from healing.store import PostgresStore
from healing.types import ErrorPattern, ErrorType, HealingEvent
from tests.store.conftest import PgServer
from tests.store.pgcluster import PASSWORD

PATTERN = ErrorPattern(
    fingerprint="fp", connector="crm", operation="get", error_type=ErrorType.TIMEOUT
)


async def test_store_outage_and_recovery(pg_server: PgServer, pg_url: str) -> None:
    cluster = pg_server.cluster
    if cluster is None:
        pytest.skip("HEALING_TEST_POSTGRES_URL names a server this test cannot stop")
    store = PostgresStore(pg_url, timeout=2, connect_timeout=2, reconnect_timeout=5)
    await store.migrate()
    await store.record_outcome(PATTERN, "retry", healed=True, heal_s=1.0)

    await asyncio.to_thread(cluster.stop)
    try:
        for call in (
            store.record_outcome(PATTERN, "retry", healed=False),
            store.record_events(
                [HealingEvent(at=datetime.now(UTC), kind="attempt", workflow_id="w")]
            ),
            store.pattern_stats("fp"),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await call
            assert time.monotonic() - started < 4  # the pool's 2 s, plus one refused connect
            assert str(caught.value).startswith(store.url_for_display)
            assert PASSWORD not in str(caught.value)
    finally:
        await asyncio.to_thread(cluster.start)

    back = time.monotonic()
    failures = 0
    while True:  # the pool reconnects by itself; the same store object is used throughout
        try:
            await store.record_outcome(PATTERN, "retry", healed=True, heal_s=3.0)
            break
        except StoreUnavailable:
            failures += 1
            assert time.monotonic() - back < 30, "the store did not reconnect within 30 s"
            await asyncio.sleep(0.2)
    print(f"\nwrites resumed {time.monotonic() - back:.2f} s after restart ({failures} failed)")
    stats = await store.pattern_stats("fp")
    assert stats is not None
    (retry,) = stats.strategies
    assert (retry.tries, retry.successes, retry.total_heal_s) == (2, 2, 4.0)  # nothing half-done
    await store.close()
