"""The circuit breaker inside healing: it judges calls (not attempts), and calls wait out an
open circuit within the healing budget instead of spending retries or reaching a human.

The breaker's clock is the server time of each attempt, so time skipping moves it too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from healing import BreakerPolicy, HealingConfig
from tests.temporal.harness import (
    Call,
    ErrorRecorder,
    Harness,
    Scripted,
    fail,
    plugin,
    server_clock,
)
from tests.temporal.wf import TwoCallsWorkflow


def with_breaker(**policy: Any) -> Any:
    return plugin(HealingConfig(breaker=BreakerPolicy(**policy)), clock=server_clock)


async def test_one_calls_retries_do_not_open_the_breaker(harness: Harness) -> None:
    recorder = ErrorRecorder()
    acts = Scripted([fail(503), fail(503), fail(503)])
    p = with_breaker(failure_threshold=2, min_failure_ratio=0.5)
    async with harness.worker(acts.activity, plugin=p, interceptors=[recorder]):
        handle = await harness.start()
        out = await handle.result()
    assert out["result"]["calls"] == 4  # 1 + 3 retries, none held back by a circuit
    types = [getattr(e, "type", None) for e in recorder.errors]
    assert "CIRCUIT_OPEN" not in types and types.count("SERVICE_DOWN") == 3
    assert p.interceptor.breakers.get("crm").state == "closed"


async def test_calls_wait_out_an_open_circuit_within_the_budget(harness: Harness) -> None:
    first: list[datetime] = []

    def outage(call: Call) -> Any:
        first.append(call.started) if not first else None
        down = (call.started - first[0]).total_seconds() < 90
        return fail(503) if down else None

    a = Scripted(then=outage, name="crm_a")
    b = Scripted(then=outage, name="crm_b")
    p = with_breaker(failure_threshold=2, min_failure_ratio=0.5, open_s=20)
    async with harness.worker(a.activity, b.activity, plugin=p):
        handle = await harness.start(["crm_a", "crm_b"], workflow=TwoCallsWorkflow.run)
        results = await handle.result()
        status = await harness.status(handle)
    # A 90 s outage outlasts SERVICE_DOWN's own 3 retries (about 1 + 2 + 4 s); both calls
    # healed anyway by waiting behind the open circuit, without a human.
    assert [r["ok"] for r in results] == [True, True]
    assert not status.open_escalations and status.state != "awaiting_decision"
    # Waiting behind the circuit sends nothing upstream: far fewer calls than a 1 s cadence.
    assert a.count + b.count <= 12
