"""Code the concurrency test runs in separate (spawned) processes: importable, no fixtures."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from healing.store import PostgresStore, SQLiteStore, Store
from healing.types import ErrorPattern, ErrorType

PATTERNS = [
    ErrorPattern(fingerprint=f"fp-{i}", connector="crm", operation="get", error_type=error_type)
    for i, error_type in enumerate(
        [ErrorType.TIMEOUT, ErrorType.RATE_LIMITED, ErrorType.AUTH_EXPIRED]
    )
]
STRATEGIES = ["retry_backoff", "wait_retry_after"]


def plan(n: int) -> list[tuple[int, str, bool, float | None]]:
    """What one process records: (pattern index, strategy, healed, heal_s), n times."""
    return [(i % 3, STRATEGIES[i % 2], i % 4 == 0, 0.25 if i % 4 == 0 else None) for i in range(n)]


def record(backend: str, target: str, n: int, start: Any, results: Any) -> None:
    """Open a store, wait for every sibling, then migrate and record ``n`` outcomes."""
    results.put(asyncio.run(_record(backend, target, n, start)))


async def _record(backend: str, target: str, n: int, start: Any) -> dict[str, Any]:
    store: Store = SQLiteStore(target) if backend == "sqlite" else PostgresStore(target)
    try:
        await store.ping()
        start.wait(timeout=60)  # all processes migrate and write at the same moment
        began = time.monotonic()
        applied = await store.migrate()
        for index, strategy, healed, heal_s in plan(n):
            await store.record_outcome(PATTERNS[index], strategy, healed=healed, heal_s=heal_s)
        return {"applied": applied, "seconds": time.monotonic() - began}
    finally:
        await store.close()


def fleet(backend: str, target: str, n: int, ident: str, start: Any, results: Any) -> None:
    """Contend with siblings for ``n`` leases, counter increments, slots and CAS writes."""
    results.put(asyncio.run(_fleet(backend, target, n, ident, start)))


async def _fleet(backend: str, target: str, n: int, ident: str, start: Any) -> dict[str, Any]:
    store: Store = SQLiteStore(target) if backend == "sqlite" else PostgresStore(target)
    won: list[int] = []
    slots: list[float] = []
    swaps = 0
    try:
        await store.ping()
        start.wait(timeout=60)
        for i in range(n):
            if await store.lease_take(f"refresh:{i}", ident, ttl_s=60, now=1000.0):
                won.append(i)
            await store.counter_add("calls", i % 7, keep_from=0)
            slots.append(await store.slot_take("rate", spacing_s=0.5, now=1000.0))
            # A read-modify-write that must lose no increment: retry on a lost swap.
            while True:
                entry = await store.state_get("budget", "crm")
                value = {"n": (entry.value["n"] if entry else 0) + 1}
                version = entry.version if entry else None
                if await store.state_put("budget", "crm", value, expected_version=version, now=1):
                    break
                swaps += 1
        return {"won": won, "slots": slots, "swaps": swaps}
    finally:
        await store.close()
