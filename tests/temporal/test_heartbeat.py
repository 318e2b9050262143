"""The healing ledger rides beside an activity's own heartbeat details, never over them."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity

from healing import BreakerPolicy, HealingConfig
from tests.temporal.harness import Call, ErrorRecorder, Harness, Scripted, fail, plugin


async def test_own_heartbeat_details_survive_healing_retries(harness: Harness) -> None:
    seen: list[list[Any]] = []

    def paginate(call: Call) -> Any:
        details = list(activity.info().heartbeat_details)
        seen.append(details)
        activity.heartbeat(f"cursor-{call.n}")
        return fail(503) if call.n <= 3 else None

    acts = Scripted(then=paginate)
    config = HealingConfig(breaker=BreakerPolicy(enabled=False))
    async with harness.worker(acts.activity, plugin=plugin(config)):
        out = await (await harness.start()).result()
    assert out["result"]["calls"] == 4  # SERVICE_DOWN x3 healed within its 3 retries
    # Each retry resumes from the cursor the previous attempt recorded, first in its details.
    assert [d[0] if d else None for d in seen] == [None, "cursor-1", "cursor-2", "cursor-3"]
    # ... and the per-type budget still counted across attempts (the ledger came along).
    ledgers = [d[-1]["healing_ledger"]["counts"] for d in seen[1:]]
    assert ledgers == [{"SERVICE_DOWN": 1}, {"SERVICE_DOWN": 2}, {"SERVICE_DOWN": 3}]


async def test_a_call_that_overruns_start_to_close_is_healed_as_a_timeout(
    harness: Harness,
) -> None:
    async def slow_then_fast(call: Call) -> Any:
        if call.n == 1:
            await asyncio.sleep(2)  # past the 1 s start_to_close (cut at 0.9 s)
        return None

    recorder = ErrorRecorder()
    acts = Scripted(then=slow_then_fast)
    async with harness.worker(acts.activity, interceptors=[recorder]):
        out = await (await harness.start({"start_to_close_s": 1})).result()
    assert out["result"]["calls"] == 2
    # Classified and paced by healing, not a bare server-side timeout.
    assert [e.type for e in recorder.errors] == ["TIMEOUT"]
    assert recorder.errors[0].next_retry_delay is not None
