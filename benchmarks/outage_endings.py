"""How outages end: who heals, after how long, at what upstream cost, in one run.

    .venv/bin/python benchmarks/outage_endings.py [--outages 5,20,90] [--busy 20]

Starts a Temporal dev server (free ports, temp dir) and one in-process chaos API per scenario
(127.0.0.1, free ports), then runs every scenario at once on one healing worker with the
default HealingConfig (backoff 1-2-4 s, breaker 5 failures in 60 s / probe every 30 s, 120 s
healing budget). A scenario is an outage of N seconds on a connector, quiet (one call) or busy
(``--busy`` concurrent calls), with or without an alternative connector that works. Each
logical call is a one-step ``IntegrationWorkflow``; a call that escalates is counted and then
terminated. The table shows, per scenario: calls healed without a human, time from start to
the heal (p50 / max), upstream calls to the down connector (per call), and calls that went to
the alternative.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from harness import table  # benchmarks/harness.py
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.integration import IntegrationActivities
from healing import HealingConfig, HealingPlugin
from healing.catalog import ConnectorCatalog
from healing.devserver import DevServer
from healing.names import STATUS_QUERY as QUERY
from healing.testing import ChaosAPI, FaultPlan, FaultRule, Outage
from workflows import IntegrationWorkflow


@dataclass
class Scenario:
    outage_s: float
    busy: bool
    alternative: bool
    calls: int
    down: ChaosAPI | None = None
    alt: ChaosAPI | None = None
    healed_s: list[float] = field(default_factory=list)
    escalated: int = 0

    @property
    def name(self) -> str:
        load = "busy" if self.busy else "quiet"
        alt = "alternative" if self.alternative else "no alternative"
        return f"{self.outage_s:.0f} s, {load}, {alt}"

    @property
    def connector(self) -> str:
        return f"c{int(self.outage_s)}_{int(self.busy)}_{int(self.alternative)}"


def _catalog(scenarios: list[Scenario]) -> ConnectorCatalog:
    connectors: dict[str, Any] = {}
    op = {"get_contact": {"method": "GET", "path": "/contacts/{id}"}}
    for s in scenarios:
        assert s.down is not None
        main: dict[str, Any] = {"base_url": s.down.url, "timeout_s": 5, "operations": op}
        if s.alternative:
            assert s.alt is not None
            main["alternatives"] = [f"{s.connector}_alt"]
            connectors[f"{s.connector}_alt"] = {"base_url": s.alt.url, "operations": op}
        connectors[s.connector] = main
    return ConnectorCatalog.from_dict({"connectors": connectors})


async def _status(handle: WorkflowHandle[Any, Any]) -> str:
    try:
        raw = await handle.query(QUERY)
    except Exception:  # not started yet, or already closed
        return ""
    return str(raw.get("state", "")) if isinstance(raw, dict) else ""


async def _one(client: Client, s: Scenario, i: int, task_queue: str, t0: float) -> None:
    step = {"connector": s.connector, "operation": "get_contact", "params": {"id": f"p{i}"}}
    handle = await client.start_workflow(
        "IntegrationWorkflow",
        {"steps": [step]},
        id=f"outage-{s.connector}-{i}-{uuid.uuid4().hex[:6]}",
        task_queue=task_queue,
    )
    result = asyncio.ensure_future(handle.result())
    while not result.done():
        await asyncio.wait([result], timeout=1.0)
        if not result.done() and await _status(handle) == "awaiting_decision":
            s.escalated += 1
            result.cancel()
            await handle.terminate("benchmark: escalated")
            return
    if not result.cancelled() and result.exception() is None:
        s.healed_s.append(time.monotonic() - t0)


async def _run(args: argparse.Namespace) -> list[Scenario]:
    outages = [float(x) for x in args.outages.split(",")]
    scenarios = [
        Scenario(o, busy, alt, args.busy if busy else 1)
        for o in outages
        for busy in (False, True)
        for alt in (False, True)
    ]
    with tempfile.TemporaryDirectory(prefix="outages-") as tmp:
        async with DevServer(state_dir=tmp, ui=False, db=False) as server:
            for s in scenarios:
                rule = FaultRule(path="/contacts/*", outage=Outage(duration_s=s.outage_s))
                s.down = await ChaosAPI(FaultPlan(rules=(rule,))).start()
                s.alt = await ChaosAPI(FaultPlan()).start() if s.alternative else None
            try:
                catalog = _catalog(scenarios)
                client = await server.connect(data_converter=pydantic_data_converter)
                task_queue = f"outages-{uuid.uuid4()}"
                plugin = HealingPlugin(HealingConfig(), alternatives=catalog.alternatives())
                async with IntegrationActivities(catalog) as acts:
                    worker = Worker(
                        client,
                        task_queue=task_queue,
                        workflows=[IntegrationWorkflow],
                        activities=[acts.call_integration],
                        plugins=[plugin],
                        max_concurrent_activities=200,
                    )
                    async with worker:
                        for s in scenarios:  # each outage window starts with its calls
                            assert s.down is not None
                            s.down.set_plan(s.down.plan)
                        t0 = time.monotonic()
                        await asyncio.gather(
                            *(
                                _one(client, s, i, task_queue, t0)
                                for s in scenarios
                                for i in range(s.calls)
                            )
                        )
            finally:
                for s in scenarios:
                    for api in (s.down, s.alt):
                        if api is not None:
                            await api.stop()
    return scenarios


def _report(scenarios: list[Scenario]) -> str:
    rows = [
        [
            "outage, load, alternative",
            "healed, no human",
            "escalated",
            "heal s p50/max",
            "down calls (per call)",
            "alternative calls",
        ]
    ]
    for s in scenarios:
        assert s.down is not None
        down = s.down.stats().total_calls
        alt = s.alt.stats().total_calls if s.alt is not None else 0
        heal = f"{statistics.median(s.healed_s):.0f} / {max(s.healed_s):.0f}" if s.healed_s else "-"
        rows.append(
            [
                s.name,
                f"{len(s.healed_s)}/{s.calls}",
                str(s.escalated),
                heal,
                f"{down} ({down / s.calls:.1f})",
                str(alt),
            ]
        )
    return table(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outages", default="5,20,90", help="outage lengths in seconds (5,20,90)")
    p.add_argument("--busy", type=int, default=20, help="concurrent calls on a busy connector")
    args = p.parse_args(argv)
    began = time.monotonic()
    scenarios = asyncio.run(_run(args))
    print(_report(scenarios))
    print(f"\n(one run, all scenarios at once, {time.monotonic() - began:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
