"""The pattern cache: learned stats per error pattern, read from the store at most every TTL.

:meth:`PatternCache.hint` is what the healing activity behind a learned hint calls: it reads
``store.pattern_stats`` (through a per-fingerprint cache of ``policy.cache_ttl_s``, bounded
LRU) and turns the stats into a :class:`~healing.learning.StrategyHint` with
:func:`~healing.learning.hint_for`. It never makes healing wait on the store: a read takes at
most ``timeout_s``; a failed or slow read returns None (heal from the matrix) and the store is
left alone for ``backoff_s`` before it is asked again. Concurrent misses on one fingerprint
share one read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from healing.config import BackoffPolicy, LearningPolicy
from healing.learning import StrategyHint, hint_for
from healing.matrix import MatrixRow
from healing.store.base import PatternStats, Store

_LOG = logging.getLogger(__name__)


class PatternCache:
    """Learned stats per fingerprint, cached, with the store's outages kept off the call path.

    Args:
        store: Where the stats live; None means no learning (every hint is None).
        policy: The learning knobs (``enabled``, ``cache_ttl_s`` and the hint rules).
        clock: Monotonic seconds, for the TTL and the backoff.
        wall_clock: Aware "now", to age evidence (``policy.evidence_ttl_s``); None: never.
        timeout_s: Longest one store read may take.
        backoff_s: How long to leave the store alone after a failed read.
        max_entries: Fingerprints kept; the least recently used go first.
        logger: Where outage warnings go; ``healing.patterns`` by default.
    """

    def __init__(
        self,
        store: Store | None,
        policy: LearningPolicy,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime] | None = None,
        timeout_s: float = 0.5,
        backoff_s: float = 5.0,
        max_entries: int = 10_000,
        logger: logging.Logger | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._store = store
        self._policy = policy
        self._clock = clock
        self._wall_clock = wall_clock
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._max_entries = max_entries
        self._log = logger or _LOG
        self._entries: OrderedDict[str, tuple[float, PatternStats | None]] = OrderedDict()
        self._reads: dict[str, asyncio.Task[tuple[bool, PatternStats | None]]] = {}
        self._paused_until: float | None = None
        self.store_reads = 0
        """Reads sent to the store (hits and skipped reads are not counted)."""

    def __len__(self) -> int:
        return len(self._entries)

    async def hint(
        self, fingerprint: str, row: MatrixRow, *, backoff: BackoffPolicy, budget_s: float
    ) -> StrategyHint | None:
        """The learned hint for one failure, or None to heal from the matrix alone.

        Args:
            fingerprint: The failure's error pattern (``healing.classify.fingerprint``).
            row: The matrix row of its error type; a non-retryable row never reads the store.
            backoff: The backoff policy, which clamps a learned wait.
            budget_s: The healing budget of one call.

        Returns:
            The hint from :func:`healing.learning.hint_for`; None when learning is off, the
            evidence is thin, or the store did not answer in time.
        """
        if self._store is None or not self._policy.enabled or not row.retryable:
            return None
        if row.max_attempts == 0:
            return None
        found, stats = await self.stats(fingerprint)
        if not found:
            return None
        now = self._wall_clock() if self._wall_clock is not None else None
        return hint_for(stats, row, self._policy, backoff=backoff, budget_s=budget_s, now=now)

    async def stats(self, fingerprint: str) -> tuple[bool, PatternStats | None]:
        """The pattern's stats, from the cache or the store.

        Returns:
            ``(True, stats)`` with stats None for a pattern the store does not know, or
            ``(False, None)`` when the store is unavailable (failed, slow, or backing off).
        """
        now = self._clock()
        entry = self._entries.get(fingerprint)
        if entry is not None and entry[0] > now:
            self._entries.move_to_end(fingerprint)
            return True, entry[1]
        if self._store is None or (self._paused_until is not None and now < self._paused_until):
            return False, None
        read = self._reads.get(fingerprint)
        if read is None:
            read = asyncio.ensure_future(self._read(self._store, fingerprint))
            self._reads[fingerprint] = read
            read.add_done_callback(lambda _: self._reads.pop(fingerprint, None))
        # A caller cancelled while waiting leaves the shared read running for the others.
        return await asyncio.shield(read)

    def invalidate(self, fingerprint: str | None = None) -> None:
        """Forget one pattern's cached stats, or all of them."""
        if fingerprint is None:
            self._entries.clear()
        else:
            self._entries.pop(fingerprint, None)

    async def _read(self, store: Store, fingerprint: str) -> tuple[bool, PatternStats | None]:
        self.store_reads += 1
        try:
            stats = await asyncio.wait_for(store.pattern_stats(fingerprint), self._timeout_s)
        except Exception as exc:  # StoreUnavailable, a timeout or a broken backend alike
            now = self._clock()
            if self._paused_until is None:
                self._log.warning(
                    "healing store unavailable for learned patterns (%s: %s); healing from the "
                    "matrix, asking again in %.3g s",
                    type(exc).__name__,
                    str(exc)[:200],
                    self._backoff_s,
                )
            self._paused_until = now + self._backoff_s
            return False, None
        if self._paused_until is not None:
            self._log.info("healing store available again for learned patterns")
            self._paused_until = None
        self._entries[fingerprint] = (self._clock() + self._policy.cache_ttl_s, stats)
        self._entries.move_to_end(fingerprint)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return True, stats
