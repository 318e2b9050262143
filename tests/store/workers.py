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
