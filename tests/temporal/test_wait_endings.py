"""Every ``wait`` is bounded and says when it will resume (time-skipping server).

Before, a ``wait`` decision after ``Retry-After: 99999999`` parked the workflow for 366 days.
"""

from __future__ import annotations

import time

from healing.client import decide
from tests.temporal.harness import Harness, Scripted, fail

DAY = 24 * 3600.0


async def test_wait_after_an_absurd_retry_after_is_capped_at_max_wait(harness: Harness) -> None:
    acts = Scripted([fail(429, headers={"Retry-After": "99999999"})], then=None)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        st = await harness.escalated(handle)
        esc = st.open_escalation
        assert esc is not None and esc.error_type == "RATE_LIMITED"
        (wait,) = [o for o in esc.options if o.option == "wait"]
        assert "wait 1d" in wait.effect and "resumes at" in wait.effect, wait.effect
        await decide(harness.client, handle.id, "wait", decided_by="test")
        out = await handle.result()
        st = await harness.status(handle)
    assert out["result"]["ok"] is True and acts.count == 2
    (gap,) = acts.gaps()
    assert DAY <= gap < DAY + 60, gap  # one day (HealingConfig.max_wait_s), not 3 years
    waiting = [a for a in st.history if a.outcome == "waiting"]
    assert waiting and "resumes at" in waiting[0].detail and waiting[0].delay_s == DAY
    assert st.state == "resolved"


async def test_a_quota_waits_until_its_reset_by_default(harness: Harness) -> None:
    # GitHub's primary limit: remaining 0, reset in an hour (epoch seconds).
    reset = int(time.time()) + 3600
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-limit": "5000"}
    headers["x-ratelimit-reset"] = str(reset)
    acts = Scripted([fail(403, headers=headers, body={"message": "API rate limit exceeded"})])
    async with harness.worker(acts.activity):
        handle = await harness.start()
        esc = (await harness.escalated(handle)).open_escalation
        assert esc is not None and esc.error_type == "RATE_LIMITED"
        assert esc.classification.retry_after_s is not None
        assert 3500 <= esc.classification.retry_after_s <= 3700
        (wait,) = [o for o in esc.options if o.option == "wait"]
        assert "wait 1h" in wait.effect or "wait 59m" in wait.effect, wait.effect
        await decide(harness.client, handle.id, "wait", decided_by="test")  # no wait_s
        out = await handle.result()
    assert out["result"]["ok"] is True
    (gap,) = acts.gaps()
    assert 3500 <= gap <= 3760, gap


async def test_a_humans_wait_beyond_the_maximum_is_capped(harness: Harness) -> None:
    acts = Scripted([fail(503)] * 10, then=None)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        await harness.escalated(handle)
        before = acts.count
        await decide(harness.client, handle.id, "wait", wait_s=10 * DAY, decided_by="test")
        out = await handle.result()
    assert out["result"]["ok"] is True
    gap = (acts.calls[before].started - acts.calls[before - 1].started).total_seconds()
    assert DAY <= gap < DAY + 60, gap
