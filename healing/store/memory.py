"""Fleet state in one process's memory, with the semantics of the SQL backends.

For unit tests of the modules built on fleet state (credentials, breaker, rate slots,
mappings): a test store mixes :class:`MemoryFleetState` in beside its own event log. Not for
workers: state that changes a healing decision must be shared by the fleet (DESIGN s5b).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from healing.store.base import ANY_VERSION, StateEntry


class MemoryFleetState:
    """The fleet-state half of :class:`healing.store.Store`, in a dict (one event loop)."""

    def __init__(self) -> None:
        self.documents: dict[tuple[str, str], StateEntry] = {}
        self.leases: dict[str, tuple[str, float]] = {}
        self.counters: dict[str, dict[int, int]] = {}
        self.slots: dict[str, float] = {}

    async def state_get(self, space: str, key: str) -> StateEntry | None:
        return self.documents.get((space, key))

    async def state_list(self, space: str, *, limit: int = 1000) -> list[StateEntry]:
        found = sorted((k, e) for (s, k), e in self.documents.items() if s == space)
        return [entry for _, entry in found[:limit]]

    async def state_put(
        self,
        space: str,
        key: str,
        value: Mapping[str, Any],
        *,
        expected_version: int | None,
        now: float,
    ) -> int | None:
        current = self.documents.get((space, key))
        if expected_version != ANY_VERSION and (current and current.version) != expected_version:
            return None
        version = 1 if current is None else current.version + 1
        self.documents[(space, key)] = StateEntry(
            space=space, key=key, version=version, value=copy.deepcopy(dict(value)), updated_at=now
        )
        return version

    async def state_delete(
        self, space: str, key: str, *, expected_version: int | None = None
    ) -> bool:
        current = self.documents.get((space, key))
        if current is None or expected_version not in (None, current.version):
            return False
        del self.documents[(space, key)]
        return True

    async def lease_take(self, name: str, holder: str, *, ttl_s: float, now: float) -> bool:
        held = self.leases.get(name)
        if held is not None and held[0] != holder and held[1] > now:
            return False
        self.leases[name] = (holder, now + ttl_s)
        return True

    async def lease_drop(self, name: str, holder: str) -> bool:
        if self.leases.get(name, ("", 0.0))[0] != holder:
            return False
        del self.leases[name]
        return True

    async def counter_add(self, key: str, bucket: int, n: int = 1, *, keep_from: int) -> int:
        buckets = self.counters.setdefault(key, {})
        for old in [b for b in buckets if b < keep_from]:
            del buckets[old]
        buckets[bucket] = buckets.get(bucket, 0) + n
        return sum(v for b, v in buckets.items() if b >= keep_from)

    async def counter_sums(self, keys: Sequence[str], *, since_bucket: int) -> dict[str, int]:
        return {
            key: sum(v for b, v in self.counters.get(key, {}).items() if b >= since_bucket)
            for key in keys
        }

    async def slot_take(
        self, key: str, *, spacing_s: float, now: float, not_before: float | None = None
    ) -> float:
        floor = now if not_before is None else max(now, not_before)
        start = max(self.slots.get(key, floor), floor)
        self.slots[key] = start + spacing_s
        return start
