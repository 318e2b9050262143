"""FallbackFleetState: flow control decides in this process while the store is away, and
goes back to the fleet's state once it answers (tests/chaos/test_store_outage.py end to end)."""

from __future__ import annotations

from typing import Any

from healing.errors import StoreUnavailable
from healing.store.fallback import FallbackFleetState
from healing.store.memory import MemoryFleetState


class _Flaky(MemoryFleetState):
    down = False

    async def slot_take(self, key: str, **kwargs: Any) -> float:
        if self.down:
            raise StoreUnavailable("postgresql://***@db/x: connection refused")
        return await super().slot_take(key, **kwargs)


async def test_a_store_outage_falls_back_to_memory_and_comes_back() -> None:
    now = [0.0]
    store = _Flaky()
    fleet = FallbackFleetState(store, retry_after_s=5, clock=lambda: now[0])
    assert await fleet.slot_take("rate", spacing_s=1, now=100) == 100
    store.down = True
    assert await fleet.slot_take("rate", spacing_s=1, now=100) == 100  # local: a fresh slot
    assert await fleet.slot_take("rate", spacing_s=1, now=100) == 101
    store.down = False
    now[0] = 4.9  # still left alone: no call pays the store's timeout meanwhile
    assert await fleet.slot_take("rate", spacing_s=1, now=100) == 102
    now[0] = 5.0
    assert await fleet.slot_take("rate", spacing_s=1, now=100) == 101  # the fleet's again
