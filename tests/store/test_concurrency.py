"""8 processes x 1,000 outcomes on the same 3 patterns: exact counts, no lost update."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from pathlib import Path

import pytest

from healing.store import PostgresStore, SQLiteStore, Store
from tests.store import workers

PROCESSES = 8
PER_PROCESS = 1_000


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_no_lost_updates(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = str(tmp_path / "h.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=workers.record, args=(backend, target, PER_PROCESS, start, results))
        for _ in range(PROCESSES)
    ]
    began = time.monotonic()
    for proc in procs:
        proc.start()
    reports = [results.get(timeout=240) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    wall = time.monotonic() - began

    # The 8 processes migrated at once: exactly one of them applied version 1.
    assert sorted(r["applied"] for r in reports) == [[]] * (PROCESSES - 1) + [[1, 2]]

    tries: Counter[tuple[int, str]] = Counter()
    successes: Counter[tuple[int, str]] = Counter()
    for index, strategy, healed, _ in workers.plan(PER_PROCESS):
        tries[index, strategy] += PROCESSES
        successes[index, strategy] += PROCESSES * healed
    store: Store = SQLiteStore(target) if backend == "sqlite" else PostgresStore(target)
    try:
        ranked = await store.patterns()
        assert sum(p.seen for p in ranked) == PROCESSES * PER_PROCESS
        for index, pattern in enumerate(workers.PATTERNS):
            stats = await store.pattern_stats(pattern.fingerprint)
            assert stats is not None
            assert stats.seen == sum(n for (i, _), n in tries.items() if i == index)
            got = {s.strategy: (s.tries, s.successes, s.total_heal_s) for s in stats.strategies}
            assert got == {
                strategy: (n, successes[i, strategy], successes[i, strategy] * 0.25)
                for (i, strategy), n in tries.items()
                if i == index
            }
    finally:
        await store.close()
    slowest = max(r["seconds"] for r in reports)  # from the barrier to the last write
    print(f"\n{backend}: {PROCESSES}x{PER_PROCESS}: writers {slowest:.2f} s, wall {wall:.2f} s")


FLEET_PROCESSES = 4
FLEET_ROUNDS = 100


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_fleet_state_across_processes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Separate processes: each lease has one holder, slots are distinct, no count is lost."""
    target = str(tmp_path / "h.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    store: Store = SQLiteStore(target) if backend == "sqlite" else PostgresStore(target)
    await store.migrate()
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(FLEET_PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(
            target=workers.fleet, args=(backend, target, FLEET_ROUNDS, f"w{i}", start, results)
        )
        for i in range(FLEET_PROCESSES)
    ]
    for proc in procs:
        proc.start()
    reports = [results.get(timeout=240) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    try:
        won = sorted(i for r in reports for i in r["won"])
        assert won == list(range(FLEET_ROUNDS))  # every lease taken exactly once
        slots = sorted(s for r in reports for s in r["slots"])
        assert slots == [1000.0 + 0.5 * i for i in range(FLEET_PROCESSES * FLEET_ROUNDS)]
        total = FLEET_PROCESSES * FLEET_ROUNDS
        assert (await store.counter_sums(["calls"], since_bucket=0)) == {"calls": total}
        budget = await store.state_get("budget", "crm")
        assert budget is not None and budget.value == {"n": total} and budget.version == total
    finally:
        await store.close()
    print(f"\n{backend}: {sum(r['swaps'] for r in reports)} lost swaps retried")
