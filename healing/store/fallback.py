"""Fleet state that survives a store outage: the store while it answers, this process's memory
while it does not.

Flow control (breaker, rate slots, retry budget) and drift reads must never fail a call because
the store is away: healing then goes on from per-process state, as a worker without a store
does, and returns to the fleet's state when the store answers again. Credentials never use this
(a token only in memory would be lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from healing.errors import StoreError
from healing.store.base import FleetState, StateEntry
from healing.store.memory import MemoryFleetState

logger = logging.getLogger("healing")
T = TypeVar("T")


class FallbackFleetState:
    """``primary`` with a bounded wait per call; on a store error or timeout, ``local``.

    Args:
        primary: the store's fleet state.
        timeout_s: how long one call may wait for the store.
        retry_after_s: after a failure, the store is left alone this long (no call pays the
            timeout again meanwhile).
    """

    def __init__(
        self,
        primary: FleetState,
        *,
        timeout_s: float = 2.0,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.local = MemoryFleetState()
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._down_until = 0.0

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._clock() >= self._down_until:
            call: Awaitable[Any] = getattr(self.primary, name)(*args, **kwargs)
            try:
                return await asyncio.wait_for(call, self._timeout_s)
            except (StoreError, TimeoutError) as exc:
                if self._down_until == 0.0 or self._clock() >= self._down_until:
                    logger.warning(
                        "healing store unavailable for fleet state (%s); deciding in this "
                        "process until it answers again",
                        exc or type(exc).__name__,
                    )
                self._down_until = self._clock() + self._retry_after_s
        return await getattr(self.local, name)(*args, **kwargs)

    async def state_get(self, space: str, key: str) -> StateEntry | None:
        result: StateEntry | None = await self._call("state_get", space, key)
        return result

    async def state_list(self, space: str, *, limit: int = 1000) -> list[StateEntry]:
        result: list[StateEntry] = await self._call("state_list", space, limit=limit)
        return result

    async def state_put(
        self,
        space: str,
        key: str,
        value: Mapping[str, Any],
        *,
        expected_version: int | None,
        now: float,
    ) -> int | None:
        result: int | None = await self._call(
            "state_put", space, key, value, expected_version=expected_version, now=now
        )
        return result

    async def state_delete(
        self, space: str, key: str, *, expected_version: int | None = None
    ) -> bool:
        return bool(await self._call("state_delete", space, key, expected_version=expected_version))

    async def lease_take(self, name: str, holder: str, *, ttl_s: float, now: float) -> bool:
        return bool(await self._call("lease_take", name, holder, ttl_s=ttl_s, now=now))

    async def lease_drop(self, name: str, holder: str) -> bool:
        return bool(await self._call("lease_drop", name, holder))

    async def counter_add(self, key: str, bucket: int, n: int = 1, *, keep_from: int) -> int:
        return int(await self._call("counter_add", key, bucket, n, keep_from=keep_from))

    async def counter_sums(self, keys: Sequence[str], *, since_bucket: int) -> dict[str, int]:
        result: dict[str, int] = await self._call("counter_sums", keys, since_bucket=since_bucket)
        return result

    async def slot_take(
        self, key: str, *, spacing_s: float, now: float, not_before: float | None = None
    ) -> float:
        return float(
            await self._call("slot_take", key, spacing_s=spacing_s, now=now, not_before=not_before)
        )
