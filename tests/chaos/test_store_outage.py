"""The healing store goes away mid-run: healing goes on from the matrix, nothing blocks.

A real dev server, `ChaosAPI` (every contact fails once with 503, then answers), and an
in-process `Worker` with `HealingPlugin(config, store=PostgresStore(<private cluster>))`. A
steady stream of `IntegrationWorkflow`s runs while PostgreSQL is stopped (`pg_ctl stop`) and
started again: every workflow completes in bounded time, the event log counts what it buffers
and warns once, and after the restart the same store writes again, buffered events included.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities import IntegrationActivities
from healing import BackoffPolicy, BreakerPolicy, HealingConfig, HealingPlugin
from healing.config import LearningPolicy
from healing.devserver import DevServer
from healing.eventlog import EventLogStats
from healing.store import EventFilter, PostgresStore
from healing.testing import ChaosAPI, FaultPlan, FaultRule, StatusFault
from tests.conftest import PgServer
from tests.e2e.helpers import crm_catalog
from tests.store.pgcluster import PASSWORD
from workflows import IntegrationInput, IntegrationWorkflow, Step

pytestmark = pytest.mark.chaos

# Breaker off: every call failing once is a 50% failure ratio, which would open it and add
# CIRCUIT_OPEN waits that have nothing to do with the store. A short pattern-cache TTL so the
# learned-pattern reads meet the outage too (not only the event log's writes).
CONFIG = HealingConfig(
    backoff=BackoffPolicy(initial_s=0.2, max_s=1.0),
    breaker=BreakerPolicy(enabled=False),
    learning=LearningPolicy(cache_ttl_s=0.3),
)
PLAN = FaultPlan(rules=(FaultRule(path="/contacts/*", faults=(StatusFault(status=503),)),))
START_EVERY_S = 0.25
MAX_WORKFLOW_S = 8.0  # healthy: ~1-2 s (one retry at the dev server's ~1 s granularity)
PHASE_DEADLINE_S = 20.0


@dataclass
class Run:
    workflow_id: str
    ident: str
    phase: str
    seconds: float | None = None
    result: dict[str, Any] | None = None


async def until(check: Callable[[], Any], what: str, within: float = PHASE_DEADLINE_S) -> None:
    deadline = time.monotonic() + within
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_store_outage_mid_run_blocks_nothing_and_writing_resumes(
    dev_server: DevServer,
    pg_server: PgServer,
    pg_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = pg_server.cluster
    if cluster is None:
        pytest.skip("HEALING_TEST_POSTGRES_URL names a server this test cannot stop")
    caplog.set_level(logging.INFO, logger="healing")
    store = PostgresStore(pg_url, timeout=1, connect_timeout=2, reconnect_timeout=5)
    await store.migrate()
    chaos = ChaosAPI(PLAN).start_in_thread()
    catalog = crm_catalog(chaos.url, timeout_s=2)
    client = await Client.connect(dev_server.address, data_converter=pydantic_data_converter)
    plugin = HealingPlugin(CONFIG, store=store)
    events = plugin.interceptor.events
    task_queue = f"store-outage-{uuid.uuid4()}"
    runs: list[Run] = []
    phase = "up"
    stopped = False
    began = time.monotonic()

    async def one(run: Run) -> None:
        t0 = time.monotonic()
        step = Step(connector="crm", operation="get_contact", params={"id": run.ident})
        run.result = await asyncio.wait_for(
            client.execute_workflow(
                IntegrationWorkflow.run,
                IntegrationInput(steps=[step], start_to_close_s=5),
                id=run.workflow_id,
                task_queue=task_queue,
                result_type=dict,
            ),
            MAX_WORKFLOW_S * 2,  # a blocked workflow fails the test here, not at the timeout
        )
        run.seconds = time.monotonic() - t0

    async def stream(tasks: list[asyncio.Task[None]]) -> None:
        n = 0
        while True:
            ident = f"so-{n:03d}"
            run = Run(f"store-outage-{ident}-{uuid.uuid4().hex[:6]}", ident, phase)
            runs.append(run)
            tasks.append(asyncio.create_task(one(run)))
            n += 1
            await asyncio.sleep(START_EVERY_S)

    def done(phase_name: str, at_least: int) -> bool:
        mine = [r for r in runs if r.phase == phase_name]
        return len(mine) >= at_least and all(r.result is not None for r in mine[:at_least])

    tasks: list[asyncio.Task[None]] = []
    starter: asyncio.Task[None] | None = None
    try:
        async with IntegrationActivities(catalog) as acts:
            worker = Worker(
                client,
                task_queue=task_queue,
                workflows=[IntegrationWorkflow],
                activities=[acts.call_integration],
                plugins=[plugin],
            )
            async with worker:
                starter = asyncio.create_task(stream(tasks))
                # 1. Store up: events reach PostgreSQL.
                await until(lambda: done("up", 4) and events.stats().written > 0, "writes")
                written_before = events.stats().written

                # 2. Stop PostgreSQL; the stream goes on.
                stop_at = time.monotonic()
                await asyncio.to_thread(cluster.stop)
                stopped = True
                phase = "down"
                await until(lambda: done("down", 8), "workflows during the outage")
                await until(
                    lambda: events.stats().failed_flushes > 0 and events.stats().buffered > 0,
                    "a failed flush with events buffered",
                )
                outage: EventLogStats = events.stats()
                assert not outage.store_available

                # 3. Start it again: the same store writes again, the buffer drains.
                await asyncio.to_thread(cluster.start)
                stopped = False
                outage_s = time.monotonic() - stop_at
                restart_written = events.stats().written
                phase = "back"
                await until(lambda: done("back", 4), "workflows after the restart")
                back_ids = [r.workflow_id for r in runs if r.phase == "back"][:4]

                async def back_events_stored() -> bool:
                    if not events.stats().store_available:
                        return False
                    try:
                        found = await store.recent_events(EventFilter(workflow_id=back_ids[-1]))
                    except Exception:
                        return False
                    return bool(found)

                await until(back_events_stored, "events from after the restart in the store")
                starter.cancel()
                await asyncio.gather(*tasks)
                await events.flush()
                final = events.stats()
                upstream = chaos.stats()
    finally:
        if starter is not None:
            starter.cancel()
        for task in tasks:
            task.cancel()
        if stopped:
            await asyncio.to_thread(cluster.start)  # pg_url's teardown drops the database
        chaos.stop()
        await store.close()
    elapsed = time.monotonic() - began

    # Every workflow completed, healed from the matrix (503 once, then fine), in bounded time.
    for run in runs:
        assert run.result is not None and run.seconds is not None, run
        step = run.result["steps"][0]
        assert step["status"] == "ok", run
        assert step["healing"]["counts_by_type"] == {"SERVICE_DOWN": 1}, run
        assert run.seconds < MAX_WORKFLOW_S, run
        assert upstream.calls_to("GET", f"/contacts/{run.ident}") == 2

    # The outage was counted and named once, without the password.
    assert outage.buffered > 0 and outage.failed_flushes > 0
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith("healing store unavailable:")
    ]
    assert warnings, caplog.text[-3000:]
    assert "events buffered" in warnings[0] and "dropped" in warnings[0]
    assert store.url_for_display in warnings[0]
    assert PASSWORD not in caplog.text
    assert any("healing store available again" in r.getMessage() for r in caplog.records)
    # The learned-pattern reads met the outage too, and healed from the matrix without waiting.
    assert "healing store unavailable for learned patterns" in caplog.text

    # Writing resumed: more written than before the restart, buffered outage events included.
    assert final.store_available and final.buffered == 0
    assert final.written > restart_written >= written_before
    down_ids = [r.workflow_id for r in runs if r.phase == "down"]
    for wid in (down_ids[0], back_ids[0]):
        assert await fetch_events(pg_url, wid), wid

    by_phase = {
        name: sorted(r.seconds for r in runs if r.phase == name and r.seconds is not None)
        for name in ("up", "down", "back")
    }
    print(
        f"\n[store-outage] {len(runs)} workflows in {elapsed:.1f}s, PostgreSQL down "
        f"{outage_s:.1f}s; per-workflow wall time median/max: "
        + ", ".join(
            f"{name} {statistics.median(t):.2f}/{max(t):.2f}s (n={len(t)})"
            for name, t in by_phase.items()
        )
    )
    print(
        f"[store-outage] during the outage: buffered {outage.buffered}, dropped "
        f"{outage.dropped}, failed flushes {outage.failed_flushes}, outcomes buffered "
        f"{outage.outcomes_buffered}; written {written_before} before the stop, "
        f"{restart_written} at restart, {final.written} at the end (dropped {final.dropped}, "
        f"outcomes written {final.outcomes_written})"
    )
    print(f"[store-outage] warning: {warnings[0]}")


async def fetch_events(url: str, workflow_id: str) -> list[Any]:
    """A fresh store on the same database: what a CLI reading it would see."""
    reader = PostgresStore(url, timeout=5)
    try:
        return await reader.recent_events(EventFilter(workflow_id=workflow_id))
    finally:
        await reader.close()
