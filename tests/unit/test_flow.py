"""Fleet flow control over MemoryFleetState: the shared breaker, the shared rate window, the
retry budget; and the IETF header table both parsers read alike. Times are injected."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from healing.breaker import FleetBreakers
from healing.config import BreakerPolicy, RateLimitPolicy, RetryBudgetPolicy
from healing.ratelimit import FleetPacer, parse_rate_limit_headers, reset_delay
from healing.retrybudget import RetryBudget
from healing.store.memory import MemoryFleetState

T0 = 1_800_000_000.0
"""Epoch seconds: compare times to it with ``abs=`` (a relative tolerance would be ~30 min)."""


async def _fail(b: FleetBreakers, holder: str, now: float) -> str | None:
    adm = await b.admit("crm", now=now, holder=holder)
    if not adm.go:
        return None
    change = await b.record("crm", adm, failed=True, counts=True, now=now, holder=holder)
    return change.to_state if change else adm.role


async def test_two_workers_open_one_circuit_after_five_failures_and_send_one_probe() -> None:
    fleet = MemoryFleetState()
    a, b = FleetBreakers(fleet, BreakerPolicy()), FleetBreakers(fleet, BreakerPolicy())
    roles = [await _fail((a, b)[i % 2], f"h{i}", T0 + i * 0.01) for i in range(5)]
    assert roles == ["call", "trial", "trial", "trial", "open"]
    assert b.get("crm").state == "closed"  # b has not looked since
    held = await b.admit("crm", now=T0 + 1, holder="x")
    assert not held.go and held.wait_s == pytest.approx(4.04, abs=0.005)  # first open: 5 s
    # Half-open: the whole fleet sends one probe per window.
    probe = await a.admit("crm", now=T0 + 6, holder="p1")
    other = await b.admit("crm", now=T0 + 6.1, holder="p2")
    assert probe.go and probe.role == "probe" and not other.go
    change = await a.record("crm", probe, failed=True, counts=True, now=T0 + 6.2, holder="p1")
    assert change is not None and change.to_state == "open"
    again = await b.admit("crm", now=T0 + 7, holder="p3")
    assert not again.go and again.wait_s == pytest.approx(29.2, abs=0.01)  # then open_s
    probe = await b.admit("crm", now=T0 + 36.3, holder="p4")
    assert probe.role == "probe"
    change = await b.record("crm", probe, failed=False, counts=True, now=T0 + 36.4, holder="p4")
    assert change is not None and change.to_state == "closed"
    assert (await a.admit("crm", now=T0 + 36.5, holder="y")).go  # closed for all


async def test_scattered_failures_on_a_busy_connector_do_not_serialise_it() -> None:
    b = FleetBreakers(MemoryFleetState(), BreakerPolicy())
    for i in range(20):
        adm = await b.admit("crm", now=T0 + i * 0.1, holder=f"h{i}")
        assert adm.go and adm.role == "call"
        await b.record("crm", adm, failed=i % 4 == 3, counts=True, now=T0 + i * 0.1, holder="h")


async def test_pacer_learns_a_window_from_headers_and_hands_out_distinct_slots() -> None:
    pacer = FleetPacer(MemoryFleetState(), RateLimitPolicy(headroom=1.0))
    first = await pacer.reserve("crm", now=T0, holder="h0")  # unknown connector: alone
    assert first.start == T0
    assert (await pacer.reserve("crm", now=T0, holder="h1")).start is None
    headers = {"ratelimit": "limit=20, remaining=19, reset=5", "ratelimit-policy": "20;w=5"}
    info = parse_rate_limit_headers(headers, now_epoch=T0)
    await pacer.observe("crm", info, now=T0 + 0.1)
    starts = [(await pacer.reserve("crm", now=T0 + 0.1, holder=f"h{i}")).start for i in range(4)]
    assert starts == pytest.approx([T0 + 0.1, T0 + 0.35, T0 + 0.6, T0 + 0.85], abs=0.001)
    # A 429 with Retry-After blocks the fleet and starts a new queue after the reset.
    before = await pacer.window("crm", now=T0 + 1)
    await pacer.observe("crm", None, now=T0 + 1, throttled=True, retry_after_s=4.0)
    after = await pacer.window("crm", now=T0 + 1)
    assert before is not None and after is not None and after.gen == before.gen + 1
    assert not await pacer.still_valid("crm", before.gen, now=T0 + 1)
    nxt = await pacer.reserve("crm", now=T0 + 1, holder="late")
    assert nxt.start == pytest.approx(T0 + 5.0, abs=0.001)


async def test_a_spent_rolling_window_with_no_reset_waits_one_gap_not_a_window() -> None:
    # HubSpot names its limit and interval but no reset: remaining=0 is the last call of a
    # window at the known pace, so the next slot is one gap later; a real 429 blocks longer.
    pacer = FleetPacer(MemoryFleetState(), RateLimitPolicy(headroom=1.0))
    hubspot = {
        "x-hubspot-ratelimit-max": "20",
        "x-hubspot-ratelimit-interval-milliseconds": "5000",
    }
    left = parse_rate_limit_headers({**hubspot, "x-hubspot-ratelimit-remaining": "3"}, now_epoch=T0)
    await pacer.observe("hs", left, now=T0)
    spent = parse_rate_limit_headers(
        {**hubspot, "x-hubspot-ratelimit-remaining": "0"}, now_epoch=T0
    )
    window = await pacer.observe("hs", spent, now=T0 + 1)
    assert window.blocked_until == pytest.approx(T0 + 1.25, abs=0.001)
    window = await pacer.observe("hs", spent, now=T0 + 2, throttled=True)
    assert window.blocked_until == pytest.approx(T0 + 7.0, abs=0.001)  # a 429: the whole interval


async def test_a_worker_with_a_stale_window_never_undoes_a_block_another_worker_wrote() -> None:
    fleet = MemoryFleetState()
    a, b = FleetPacer(fleet, RateLimitPolicy()), FleetPacer(fleet, RateLimitPolicy())
    ietf = {"ratelimit-policy": "20;w=5"}
    await a.observe("crm", parse_rate_limit_headers(ietf, now_epoch=T0), now=T0)
    await b.observe("crm", None, now=T0 + 0.5, throttled=True, retry_after_s=4.0)
    # a still holds its window of T0 (cached) when an answer with a new limit arrives.
    tighter = parse_rate_limit_headers({"ratelimit-policy": "10;w=5"}, now_epoch=T0 + 0.6)
    await a.observe("crm", tighter, now=T0 + 0.6)
    window = await b.window("crm", now=T0 + 0.7, fresh=True)
    assert window is not None and window.limit == 10
    assert window.blocked_until == pytest.approx(T0 + 4.5, abs=0.001)


async def test_long_quota_windows_are_not_paced_but_block_when_spent() -> None:
    pacer = FleetPacer(MemoryFleetState(), RateLimitPolicy())
    info = parse_rate_limit_headers({"sforce-limit-info": "api-usage=10/15000"}, now_epoch=T0)
    await pacer.observe("sf", info, now=T0)
    assert (await pacer.reserve("sf", now=T0, holder="a")).start == T0
    assert (await pacer.reserve("sf", now=T0, holder="b")).start == T0  # a burst is fine
    await pacer.observe("sf", None, now=T0, throttled=True, retry_after_s=3600.0, quota=True)
    parked = await pacer.reserve("sf", now=T0 + 1, holder="c")
    assert parked.quota and parked.start == pytest.approx(T0 + 3600.0, abs=0.001)


async def test_retry_budget_never_refuses_first_attempts_and_caps_retries() -> None:
    budget = RetryBudget(MemoryFleetState(), RetryBudgetPolicy(ratio=0.2, min_per_s=0.5))
    for _ in range(50):
        await budget.first_attempt("crm", now=T0)
    # 0.5/s x 10 s + 20% of 50 first attempts = 15 retries in the window.
    verdicts = [(await budget.try_retry("crm", now=T0 + 1)).allowed for _ in range(20)]
    assert verdicts == [True] * 15 + [False] * 5
    later = await budget.try_retry("crm", now=T0 + 30)  # the window moved on
    assert later.allowed


NOW = datetime.fromtimestamp(T0, UTC)


@pytest.mark.parametrize(
    ("headers", "remaining", "wait"),
    [
        # draft -10: the binding item decides, wherever it stands in the list.
        ({"ratelimit": '"daily";r=900;t=80000, "burst";r=0;t=5'}, 0, 5.0),
        ({"ratelimit": '"burst";r=0;t=5, "daily";r=900;t=80000'}, 0, 5.0),
        # both spent: the longest reset binds.
        ({"ratelimit": '"burst";r=0;t=5, "daily";r=0;t=600'}, 0, 600.0),
        # draft -07 dictionary.
        ({"ratelimit": "limit=10, remaining=0, reset=7"}, 0, 7.0),
        # draft -10 with quota left: no wait.
        ({"ratelimit": '"burst";r=3;t=5'}, 3, None),
    ],
)
def test_classification_and_pacing_read_ietf_items_alike(
    headers: dict[str, str], remaining: int, wait: float | None
) -> None:
    info = parse_rate_limit_headers(headers, now_epoch=T0)
    assert info is not None and info.remaining == remaining
    assert reset_delay(headers, now=NOW) == wait
    if wait is not None:
        assert info.reset_after_s == wait
