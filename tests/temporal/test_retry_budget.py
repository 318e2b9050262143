"""The fleet's retry budget on a real Temporal worker (time-skipping server).

During an outage every caller wants to retry at once; the budget lets retries add at most
``ratio`` of the first attempts of the last ``window_s`` (plus ``min_per_s``), holds the rest as
server-side waits that are not failed attempts, and never refuses a first attempt.
"""

from __future__ import annotations

import asyncio

from healing import HealingConfig
from healing.config import BreakerPolicy, RetryBudgetPolicy
from healing.retrybudget import allowed_retries
from tests.temporal.harness import Harness, Scripted, fail, plugin

WORKFLOWS = 10
# 1 retry per 10 s plus a tenth of the first attempts: 2 retries per 10 s for 10 callers.
BUDGET = RetryBudgetPolicy(ratio=0.1, min_per_s=0.1, window_s=10.0)


async def test_retries_stay_within_the_budget_and_first_attempts_are_never_held(
    harness: Harness,
) -> None:
    # The breaker is off so that nothing but the budget stands between callers and retries.
    cfg = HealingConfig(breaker=BreakerPolicy(enabled=False), retry_budget=BUDGET)
    acts = Scripted(then=lambda c: fail(503) if c.attempt == 1 else None)
    async with harness.worker(acts.activity, plugin=plugin(cfg)):
        handles = await asyncio.gather(*(harness.start() for _ in range(WORKFLOWS)))
        outs = [await h.result() for h in handles]
    assert all(out["result"]["ok"] for out in outs)
    firsts = [c for c in acts.calls if c.attempt == 1]
    retries = [c for c in acts.calls if c.attempt > 1]
    assert len(firsts) == WORKFLOWS and len(retries) == WORKFLOWS  # each heals on one retry
    start = min(c.started for c in firsts)
    assert max((c.started - start).total_seconds() for c in firsts) < 5  # none was held
    limit = allowed_retries(WORKFLOWS, BUDGET)
    for retry in retries:
        recent = [
            r for r in retries if 0 <= (retry.started - r.started).total_seconds() < BUDGET.window_s
        ]
        assert len(recent) <= limit + 1, (len(recent), limit)  # +1: one-second buckets
    # The budget spread the retries out instead of sending them in one burst.
    spread = (max(r.started for r in retries) - min(r.started for r in retries)).total_seconds()
    assert spread >= BUDGET.window_s * (WORKFLOWS / (limit + 1) - 1), spread
