"""The event log writer: healing steps and outcomes to the store, in batches, off the call path.

Activities call :meth:`EventLog.emit` and :meth:`EventLog.record_outcome`, which only append to
a bounded queue (O(1); never block, never raise; safe from a sync activity's thread too). One
background task (:meth:`EventLog.start`) writes the queue in batches when a batch is full or
``flush_interval_s`` has passed. When the store fails (PostgreSQL stopped, a timeout, anything)
the batch goes back to the front and the next round tries again, while calls heal from the
matrix; a full queue drops its oldest entries and counts them. A warning names the buffered and
dropped counts at most once per ``warn_interval_s``; an info line says when writing resumes.
With ``store=None`` every method is a cheap no-op. Counters are best effort across threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from healing.store.base import Store
from healing.types import ErrorPattern, HealingEvent

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventLogStats:
    """Counters of an :class:`EventLog` since it was created."""

    written: int
    buffered: int
    dropped: int
    failed_flushes: int
    outcomes_written: int
    outcomes_buffered: int
    outcomes_dropped: int
    store_available: bool


@dataclass(frozen=True)
class _Outcome:
    pattern: ErrorPattern
    strategy: str
    healed: bool
    heal_s: float | None

    async def write(self, store: Store) -> None:
        await store.record_outcome(
            self.pattern, self.strategy, healed=self.healed, heal_s=self.heal_s
        )


class EventLog:
    """Buffers healing events and outcomes and writes them to the store in the background.

    Args:
        store: Where to write; None turns the log into a no-op.
        clock: Monotonic seconds, used to rate-limit warnings.
        max_batch: Events per ``store.record_events`` call; a full batch wakes the writer.
        flush_interval_s: Longest time an event waits before the writer tries to write it.
        max_buffer: Events kept while the store is slow or down; beyond it the oldest go.
        max_outcomes: Outcomes kept the same way.
        write_timeout_s: Longest one store write may take before it counts as failed.
        warn_interval_s: Least time between two "store unavailable" warnings.
        logger: Where warnings go; ``healing.eventlog`` by default.
    """

    def __init__(
        self,
        store: Store | None,
        *,
        clock: Callable[[], float],
        max_batch: int = 200,
        flush_interval_s: float = 1.0,
        max_buffer: int = 10_000,
        max_outcomes: int = 1_000,
        write_timeout_s: float = 5.0,
        warn_interval_s: float = 60.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if max_batch < 1 or max_buffer < 1 or max_outcomes < 1:
            raise ValueError("max_batch, max_buffer and max_outcomes must be at least 1")
        self._store = store
        self._url = store.url_for_display if store is not None else ""
        self._clock = clock
        self._max_batch = max_batch
        self._flush_interval_s = flush_interval_s
        self._write_timeout_s = write_timeout_s
        self._warn_interval_s = warn_interval_s
        self._log = logger or _LOG
        self._events: deque[HealingEvent] = deque(maxlen=max_buffer)
        self._outcomes: deque[_Outcome] = deque(maxlen=max_outcomes)
        self._written = self._dropped = self._failed = self._outage_failures = 0
        self._outcomes_written = self._outcomes_dropped = 0
        self._available = True
        self._last_warning: float | None = None
        self._warned_dropped = 0
        self._closed = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._wake_requested = False

    def emit(self, event: HealingEvent) -> None:
        """Queue one event for writing. O(1); never blocks, never raises.

        Args:
            event: The healing step.
        """
        if self._store is None:
            return
        if self._closed:
            self._dropped += 1
            return
        if len(self._events) == self._events.maxlen:
            self._dropped += 1  # the append below pushes the oldest out
        self._events.append(event)
        if len(self._events) >= self._max_batch and self._available and not self._wake_requested:
            self._request_wake()  # while the store is down, only the interval retries

    def record_outcome(
        self, pattern: ErrorPattern, strategy: str, healed: bool, heal_s: float | None = None
    ) -> None:
        """Queue one try of ``strategy`` on ``pattern`` for the learned stats. Never blocks.

        Args:
            pattern: The error pattern the try healed or not.
            strategy: The strategy tried (a ``HealingStrategy`` value).
            healed: Whether the call healed.
            heal_s: Time from the first failure to the heal, when it healed.
        """
        if self._store is None:
            return
        if self._closed:
            self._outcomes_dropped += 1
            return
        if len(self._outcomes) == self._outcomes.maxlen:
            self._outcomes_dropped += 1  # the append below pushes the oldest out
        self._outcomes.append(_Outcome(pattern, strategy, healed, heal_s))

    def stats(self) -> EventLogStats:
        """The counters: written, buffered, dropped, failed flushes, outcomes, availability."""
        return EventLogStats(
            written=self._written,
            buffered=len(self._events),
            dropped=self._dropped,
            failed_flushes=self._failed,
            outcomes_written=self._outcomes_written,
            outcomes_buffered=len(self._outcomes),
            outcomes_dropped=self._outcomes_dropped,
            store_available=self._available,
        )

    def start(self) -> None:
        """Start the background writer on the running event loop (idempotent)."""
        if self._store is None or self._task is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="healing-eventlog")

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop the writer after writing what it can within ``timeout_s``; idempotent.

        What is still queued afterwards, and whatever is emitted after closing, is counted as
        dropped; a warning names what was lost.

        Args:
            timeout_s: Longest time to spend on the final writes.
        """
        if self._store is None or self._closed:
            return
        self._stopping = True
        if self._task is not None and self._wake is not None:
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), timeout_s)
        self._closed = True
        lost, lost_outcomes = len(self._events), len(self._outcomes)
        if lost or lost_outcomes:
            self._dropped += lost
            self._outcomes_dropped += lost_outcomes
            self._events.clear()
            self._outcomes.clear()
            self._log.warning(
                "healing event log closed with %d events and %d outcomes unwritten (%s)",
                lost,
                lost_outcomes,
                self._url,
            )

    async def flush(self) -> int:
        """Write everything queued, batch by batch, stopping at the first store failure.

        Returns:
            The number of events written by this call.
        """
        if self._store is None:
            return 0
        store, written, outcomes = self._store, 0, 0
        self._wake_requested = False
        try:
            while self._events:
                size = min(self._max_batch, len(self._events))
                batch = [self._events.popleft() for _ in range(size)]
                await self._write(partial(store.record_events, batch), batch, self._events)
                written += len(batch)
                self._written += len(batch)
            while self._outcomes:
                one = self._outcomes.popleft()
                await self._write(partial(one.write, store), [one], self._outcomes)
                outcomes += 1
                self._outcomes_written += 1
        except Exception as exc:  # the store is down or broken: keep the queue, warn, go on
            self._failed += 1
            self._outage_failures += 1
            self._on_failure(exc)
            return written
        if not self._available and written + outcomes:
            self._available = True
            self._log.info(
                "healing store available again (%s) after %d failed writes: "
                "writing resumed, %d events and %d outcomes written",
                self._url,
                self._outage_failures,
                written,
                outcomes,
            )
            self._outage_failures = 0
        self._warn_if_dropping()
        return written

    async def _write(
        self, write: Callable[[], Awaitable[None]], items: list[Any], queue: deque[Any]
    ) -> None:
        try:
            await asyncio.wait_for(write(), self._write_timeout_s)
        except BaseException:  # failed, timed out or cancelled: the items go back in front
            room = (queue.maxlen or 0) - len(queue)
            kept = items[len(items) - room :] if room < len(items) else items
            lost = len(items) - len(kept)
            if queue is self._events:
                self._dropped += lost
            else:
                self._outcomes_dropped += lost
            queue.extendleft(reversed(kept))
            raise

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
            self._wake.clear()
            await self.flush()
            if self._stopping and not (self._available and (self._events or self._outcomes)):
                return  # stopping, and all written or the store is down

    def _request_wake(self) -> None:
        if self._loop is None or self._wake is None:
            return
        self._wake_requested = True
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._wake.set)

    def _may_warn(self) -> bool:
        now = self._clock()
        if self._last_warning is not None and now - self._last_warning < self._warn_interval_s:
            return False
        self._last_warning, self._warned_dropped = now, self._dropped
        return True

    def _on_failure(self, exc: Exception) -> None:
        self._available = False
        if not self._may_warn():
            return
        self._log.warning(
            "healing store unavailable: %d events buffered, %d dropped (%s: %s: %s)",
            len(self._events),
            self._dropped,
            self._url,
            type(exc).__name__,
            str(exc)[:200],
        )

    def _warn_if_dropping(self) -> None:
        if self._dropped != self._warned_dropped and self._may_warn():
            self._log.warning(
                "healing event log full: %d events dropped so far (max_buffer %d)",
                self._dropped,
                self._events.maxlen,
            )
