"""The fleet pacer against ChaosAPI's own rate book, in simulated time.

Each call takes a slot (``FleetPacer.reserve``), waits for it, checks its generation as
``call_integration`` does, is answered by ``RateBook`` (the chaos server's window, in each
vendor's header form), and teaches the pacer what the answer said. A refused call asks for a
new slot. Time is a number the simulation moves, so the figures are exact and repeatable; the
real-time proof on the dev server is ``tests/chaos/test_fleet_flow.py``.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from healing.backoff import parse_retry_after
from healing.config import RateLimitPolicy
from healing.ratelimit import FleetPacer, parse_rate_limit_headers
from healing.store.memory import MemoryFleetState
from healing.testing.ratelimits import RateBook, RateForm, RateWindow

T0 = 1_800_000_000.0
WINDOW = (20, 5.0)
CALLS = 300
WINDOW_MIN_S = CALLS / WINDOW[0] * WINDOW[1]


@dataclass
class Run:
    throttled: int
    seconds: float
    """From the first call the upstream saw to the last answer."""
    end: float
    """Epoch seconds of the last answer."""


async def drive(
    answer: RateBook | float,
    *,
    form: RateForm = "retry-after",
    calls: int = CALLS,
    in_flight: int = 40,
    seed: int = 1,
    offset_s: float = 0.0,
    pacer: FleetPacer | None = None,
) -> Run:
    """``answer``: the chaos server's rate book, or a share of answers that are random
    ``429 Retry-After: 1`` with no window behind them (load shedding)."""
    rng = random.Random(seed)
    pacer = pacer or FleetPacer(MemoryFleetState(), RateLimitPolicy())
    windows = (RateWindow(requests=WINDOW[0], per_s=WINDOW[1], form=form),)
    start = T0 + offset_s
    events: list[tuple[float, int, str, int]] = [(start, i, "reserve", 0) for i in range(in_flight)]
    heapq.heapify(events)
    waiting = calls - in_flight  # calls not yet started
    throttled, first, last = 0, None, start
    while events:
        now, caller, step, gen = heapq.heappop(events)
        if step == "reserve":
            slot = await pacer.reserve("crm", now=now, holder=f"{caller}@{now}")
            if slot.start is None:
                heapq.heappush(events, (now + slot.retry_in_s, caller, "reserve", 0))
            elif slot.start > now + 0.001:
                heapq.heappush(events, (slot.start, caller, "check", slot.gen))
            else:
                heapq.heappush(events, (now + rng.uniform(0.01, 0.05), caller, "answer", 0))
        elif step == "check":  # queued: the window may have moved on meanwhile
            valid = await pacer.still_valid("crm", gen, now=now)
            nxt = (now + rng.uniform(0.01, 0.05), "answer") if valid else (now, "reserve")
            heapq.heappush(events, (nxt[0], caller, nxt[1], 0))
        else:
            first = now if first is None else first
            if isinstance(answer, RateBook):
                headers, refused = answer.admit(
                    windows, "/contacts/1", lambda _: None, elapsed_s=now - T0, now_epoch=now
                )
                got = dict(refused.headers if refused is not None else headers)
            else:
                refused_now = rng.random() < answer
                refused, got = (True, {"Retry-After": "1"}) if refused_now else (None, {})
            lower = {k.lower(): v for k, v in got.items()}
            info = parse_rate_limit_headers(lower, now_epoch=now)
            if refused is not None:
                throttled += 1
                ra = lower.get("retry-after")
                wait = parse_retry_after(ra, now=datetime.fromtimestamp(now, UTC)) if ra else None
                await pacer.observe("crm", info, now=now, throttled=True, retry_after_s=wait)
                heapq.heappush(events, (now, caller, "reserve", 0))
                continue
            await pacer.observe("crm", info, now=now)
            last = now
            if waiting > 0:
                waiting -= 1
                heapq.heappush(events, (now, caller, "reserve", 0))
    return Run(throttled, last - (first or start), last)


@pytest.mark.parametrize("form", ["retry-after", "retry-after-date", "hubspot", "x-ratelimit"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_window_is_paced_near_its_minimum_with_few_refusals(
    form: RateForm, seed: int
) -> None:
    run = await drive(RateBook(), form=form, seed=seed, offset_s=seed * 1.7)
    assert run.throttled <= WINDOW[0]  # at most one window's worth, in total
    assert run.seconds <= 1.2 * WINDOW_MIN_S, run


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_refusals_block_for_their_retry_after_but_never_ratchet_the_pace_down(
    seed: int,
) -> None:
    # 5% of answers are a 429 with Retry-After: 1 and no window behind them. Each blocks the
    # connector for its second and slows the pace a while; the pace must not collapse (it
    # did: one call per window after a few such 429s, 80-209 s for these runs).
    run = await drive(0.05, calls=240, in_flight=20, seed=seed)
    assert run.throttled > 5
    assert run.seconds <= 10.0 + 4.0 * run.throttled, run


async def test_a_lull_leaves_the_learned_pace_in_place() -> None:
    # Probing doubles the pace only for windows the upstream let fill: after ten idle
    # minutes the next batch starts at the learned pace, not unpaced into a wall of 429s
    # (it did: 41 refusals, every call in flight).
    book = RateBook()
    pacer = FleetPacer(MemoryFleetState(), RateLimitPolicy())
    warm = await drive(book, calls=100, pacer=pacer)
    later = await drive(book, calls=100, pacer=pacer, offset_s=warm.end - T0 + 600.0)
    assert later.throttled <= 4, later
    assert later.seconds <= 1.2 * (100 / WINDOW[0] * WINDOW[1]), later


class _Paused(MemoryFleetState):
    """Holds the first ``counter_sums`` until released: one call of a worker mid-learning."""

    def __init__(self) -> None:
        super().__init__()
        self.reached, self.release = asyncio.Event(), asyncio.Event()

    async def counter_sums(self, keys: list[str], *, since_bucket: int) -> dict[str, int]:
        if not self.reached.is_set():
            self.reached.set()
            await self.release.wait()
        return await super().counter_sums(keys, since_bucket=since_bucket)


async def test_two_calls_of_one_worker_never_lose_each_others_window() -> None:
    fleet = _Paused()
    pacer = FleetPacer(fleet, RateLimitPolicy())
    await pacer.observe("crm", None, now=T0, throttled=True, retry_after_s=2.0)  # a boundary
    fleet.reached.clear()
    # A: a bare 429 that measures a window, paused while it counts what the window took.
    a = asyncio.create_task(
        pacer.observe("crm", None, now=T0 + 5, throttled=True, retry_after_s=2.0)
    )
    await fleet.reached.wait()
    # B, in the same worker meanwhile: the answer says the window is spent for 300 s.
    await pacer.observe("crm", None, now=T0 + 5.1, throttled=True, retry_after_s=300.0)
    fleet.release.set()
    await a
    window = await pacer.window("crm", now=T0 + 6, fresh=True)
    assert window is not None
    assert window.blocked_until == pytest.approx(T0 + 305.1, abs=0.001)  # B's block stands
