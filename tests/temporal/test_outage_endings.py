"""How outages end (DESIGN s4), on the time-skipping server with the server's clock.

The rule: the matrix's attempts bound retries at the retry cadence; a transient failure that
outlasts them reroutes at once where an alternative exists, and otherwise waits for recovery
inside the 120 s budget at the probe cadence (30 s), whether the connector is quiet (one call)
or busy (its breaker opened). Before, a 20 s outage on a quiet connector went to a human after
about 8 s, and a connector with an alternative waited 100-140 s behind its open circuit.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from healing import BreakerPolicy, HealingConfig
from tests.temporal.harness import Call, Harness, Scripted, fail, plugin, server_clock

ALTERNATIVES = {"crm": ["crm_eu"]}


class Outage:
    """503 with a vendor code from ``crm`` for ``seconds`` of server time after the first call;
    the alternative always answers."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.t0: datetime | None = None

    def __call__(self, call: Call) -> Any:
        if call.connector == "crm_eu":
            return None
        if self.t0 is None:
            self.t0 = call.started
        if (call.started - self.t0).total_seconds() < self.seconds:
            return fail(503, body={"error": {"code": "backendError"}})
        return None

    def upstream_calls(self, acts: Scripted, connector: str = "crm") -> int:
        return sum(1 for c in acts.calls if (c.connector or "crm") == connector)


def _breaker_plugin(alternatives: dict[str, list[str]] | None = None) -> Any:
    return plugin(
        HealingConfig(breaker=BreakerPolicy(failure_threshold=5, window_s=60, open_s=30)),
        alternatives=alternatives,
        clock=server_clock,
    )


@pytest.mark.parametrize(("outage_s", "calls"), [(5, 4), (20, 5), (90, 7)])
async def test_quiet_connector_outage_heals_without_a_human(
    harness: Harness, outage_s: float, calls: int
) -> None:
    outage = Outage(outage_s)
    acts = Scripted(then=outage)
    async with harness.worker(acts.activity, plugin=_breaker_plugin()):
        handle = await harness.start()
        out = await handle.result()
        st = await harness.status(handle)
    assert out["result"]["ok"] is True
    # Retries at ~1, 2, 4 s; then one probe per 30 s until the upstream answers.
    assert acts.count == calls, acts.gaps()
    assert all(gap < 9 for gap in acts.gaps()[:3])
    assert all(29 <= gap <= 36 for gap in acts.gaps()[3:]), acts.gaps()
    assert st.state == "healed" and not st.open_escalations
    assert (await harness.search_attributes(handle))[0] == "healed"


async def test_quiet_connector_outage_past_the_budget_says_since_when(harness: Harness) -> None:
    acts = Scripted(then=Outage(10_000))
    async with harness.worker(acts.activity, plugin=_breaker_plugin()):
        handle = await harness.start()
        st = await harness.escalated(handle)
    esc = st.open_escalation
    assert esc is not None and esc.error_type == "SERVICE_DOWN"
    assert acts.count == 7  # 1 + 3 retries + 3 probes inside 120 s, then a human
    assert "failing since" in esc.explanation
    assert "HTTP 503 (code backendError)" in esc.explanation


@pytest.mark.parametrize("outage_s", [20, 90])
async def test_quiet_connector_with_alternative_reroutes_once_retries_are_spent(
    harness: Harness, outage_s: float
) -> None:
    outage = Outage(outage_s)
    acts = Scripted(then=outage)
    async with harness.worker(acts.activity, plugin=_breaker_plugin(ALTERNATIVES)):
        handle = await harness.start()
        out = await handle.result()
    assert out["result"]["connector"] == "crm_eu"
    assert [c.connector for c in acts.calls] == ["crm"] * 4 + ["crm_eu"]
    assert outage.t0 is not None
    rerouted_after = (acts.calls[-1].started - outage.t0).total_seconds()
    assert rerouted_after < 12, rerouted_after  # not 100-140 s behind an open circuit


async def _busy(harness: Harness, acts: Scripted, n: int) -> list[WorkflowHandle[Any, Any]]:
    return list(await asyncio.gather(*(harness.start() for _ in range(n))))


@pytest.mark.parametrize("outage_s", [20, 90])
async def test_busy_connector_outage_waits_behind_the_breaker(
    harness: Harness, outage_s: float
) -> None:
    outage = Outage(outage_s)
    acts = Scripted(then=outage)
    async with harness.worker(acts.activity, plugin=_breaker_plugin()):
        handles = await _busy(harness, acts, 8)
        results = [await h.result() for h in handles]
        states = [(await harness.status(h)).state for h in handles]
    assert all(r["result"]["ok"] for r in results)
    assert states == ["healed"] * 8  # no human, busy or quiet
    # The open circuit holds calls back: far fewer upstream calls than 8 calls x 7 attempts.
    assert acts.count <= 8 + 8 * 3 + outage_s // 30 + 8, acts.count


async def test_busy_connector_with_alternative_reroutes_at_once(harness: Harness) -> None:
    outage = Outage(90)
    acts = Scripted(then=outage)
    async with harness.worker(acts.activity, plugin=_breaker_plugin(ALTERNATIVES)):
        handles = await _busy(harness, acts, 8)
        results = [await h.result() for h in handles]
    assert [r["result"]["connector"] for r in results] == ["crm_eu"] * 8
    assert outage.t0 is not None
    last = max(c.started for c in acts.calls)
    assert (last - outage.t0).total_seconds() < 15  # rerouted, not waiting out the circuit
