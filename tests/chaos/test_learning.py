"""Learning pays: a pattern retries never heal stops costing retries; nothing else changes.

1. One chaos run, all real: the dev server, `ChaosAPI` on 127.0.0.1, an in-process `Worker`
   with `HealingPlugin(config, store=<SQLite in a temp dir>)`, `IntegrationWorkflow` and
   `IntegrationActivities`. `/contacts/dead-*` answers 503 forever; `/contacts/ok-*` fails twice
   (500, then a connection reset) and then answers; `/contacts/gone-*` is a permanent 404.
   Two waves of workflows run one after the other: before the store holds enough evidence, and
   after. A human (this test) skips every escalation through `healing.client.decide`.
2. Safety on the time-skipping server: learning never retries a non-retryable error, never adds
   attempts past the matrix, and `LearningPolicy(enabled=False)` ignores the store entirely.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import IntegrationActivities
from healing import BackoffPolicy, BreakerPolicy, HealingConfig, HealingPlugin, detect_error
from healing.client import decide
from healing.config import LearningPolicy
from healing.devserver import DevServer
from healing.learning import pattern_of
from healing.names import STATUS_QUERY as QUERY
from healing.stats import wilson_interval
from healing.store import Store, connect_store
from healing.testing import ChaosAPI, ChaosThread, FaultPlan, FaultRule, ResetFault, StatusFault
from healing.types import Classification, ErrorType, HealingEvent, HealingStatus
from tests.e2e.helpers import crm_catalog, healing_command, run
from tests.temporal.harness import Harness, Scripted, fail, server_clock
from workflows import IntegrationInput, IntegrationWorkflow, Step

pytestmark = pytest.mark.chaos

# Wilson rule (healing/learning.py): retries are skipped once a pattern has min_observations
# tries and the one-sided upper bound, at min_confidence, of their success rate is below
# never_heals_below. At the default min_confidence 0.9 (z = 1.2816), 0 heals in n tries gives
# the bound z^2 / (n + z^2): 0.62, 0.45, 0.35, 0.29 for n = 1..4. With never_heals_below=0.5 the
# bound is already low enough at n = 2, so min_observations=4 decides: four exhausted dead calls
# (one recorded "not healed" each) and the fifth hands over at once. Eight dead workflows (two
# waves of four) cross the threshold in the middle. explore_rate=0: no call re-tests the pattern.
LEARNING = LearningPolicy(
    min_observations=4, never_heals_below=0.5, explore_rate=0.0, cache_ttl_s=0.2
)
# The breaker is off: sixteen 503s in a row would open it and mix CIRCUIT_OPEN waits into what
# this test measures (learning). Short backoff so the run takes seconds, and a budget too short
# for a 30 s recovery probe, so a dead call escalates once its retries are spent.
CONFIG = HealingConfig(
    backoff=BackoffPolicy(initial_s=0.2, max_s=1.0),
    breaker=BreakerPolicy(enabled=False),
    learning=LEARNING,
    healing_budget_s=10.0,
)
DEAD_BUDGET = 1 + CONFIG.row(ErrorType.SERVICE_DOWN).max_attempts  # 1 call + 3 retries
WAVE = 4  # dead calls per wave (= min_observations)
HEALTHY_FAULTS = (StatusFault(status=500), ResetFault())
PLAN = FaultPlan(
    rules=(
        FaultRule(path="/contacts/dead-*", always=StatusFault(status=503)),
        FaultRule(path="/contacts/gone-*", always=StatusFault(status=404)),
        FaultRule(path="/contacts/ok-*", faults=HEALTHY_FAULTS),
        FaultRule(path="/contacts/blip-*", faults=(StatusFault(status=503),)),
    )
)
STEP_TIMEOUT_S = 5.0
DEADLINE_S = 30.0  # one logical call, escalation included, well within this


def test_threshold_is_reached_at_min_observations() -> None:
    level = 2 * LEARNING.min_confidence - 1  # one-sided bound = one end of this interval
    upper = [wilson_interval(0, n, level)[1] for n in range(1, 5)]
    assert [round(u, 2) for u in upper] == [0.62, 0.45, 0.35, 0.29]
    assert upper[LEARNING.min_observations - 1] < LEARNING.never_heals_below


# -- the chaos rig: dev server, ChaosAPI, an in-process worker with a SQLite store -----------


@dataclass
class Rig:
    client: Client
    chaos: ChaosThread
    plugin: HealingPlugin
    store: Store
    db: Path
    task_queue: str


@pytest.fixture
async def rig(dev_server: DevServer, tmp_path: Path) -> AsyncIterator[Rig]:
    db = tmp_path / "healing.db"
    store = await connect_store(f"sqlite:///{db}")  # absolute path: sqlite:////tmp/...
    chaos = ChaosAPI(PLAN).start_in_thread()
    catalog = crm_catalog(chaos.url, timeout_s=2)
    # No plugin on the client: a client's plugins also apply to its workers, and this worker
    # must carry exactly one HealingPlugin (the one with the store).
    client = await Client.connect(dev_server.address, data_converter=pydantic_data_converter)
    plugin = HealingPlugin(CONFIG, store=store)
    task_queue = f"learning-{uuid.uuid4()}"
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
                try:
                    yield Rig(client, chaos, plugin, store, db, task_queue)
                finally:
                    running = f'TaskQueue = "{task_queue}" AND ExecutionStatus = "Running"'
                    async for wf in client.list_workflows(running):
                        await client.get_workflow_handle(wf.id).terminate("test over")
    finally:
        chaos.stop()
        await store.close()


@dataclass
class Measured:
    ident: str
    upstream_calls: int
    seconds: float  # start -> healed (result) or start -> awaiting_decision
    status: HealingStatus | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def explanation(self) -> str:
        assert self.status is not None and self.status.open_escalation is not None
        return self.status.open_escalation.explanation

    @property
    def fingerprint(self) -> str:
        assert self.status is not None and self.status.open_escalation is not None
        return self.status.open_escalation.classification.fingerprint


async def start(rig: Rig, ident: str) -> WorkflowHandle[Any, Any]:
    step = Step(connector="crm", operation="get_contact", params={"id": ident})
    return await rig.client.start_workflow(
        IntegrationWorkflow.run,
        IntegrationInput(steps=[step], start_to_close_s=STEP_TIMEOUT_S),
        id=f"learning-{ident}-{uuid.uuid4().hex[:8]}",
        task_queue=rig.task_queue,
    )


async def awaiting_decision(handle: WorkflowHandle[Any, Any]) -> HealingStatus:
    """Poll the healing_status query until an escalation is open."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            status = HealingStatus.model_validate(await handle.query(QUERY))
        except Exception:  # first workflow task not done yet
            status = None
        if status is not None and status.state == "awaiting_decision":
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} did not escalate within {DEADLINE_S}s")


async def escalate_and_skip(rig: Rig, ident: str) -> Measured:
    began = time.monotonic()
    handle = await start(rig, ident)
    status = await awaiting_decision(handle)
    seconds = time.monotonic() - began
    return await skip(rig, ident, handle, status, seconds)


async def skip(
    rig: Rig, ident: str, handle: WorkflowHandle[Any, Any], status: HealingStatus, seconds: float
) -> Measured:
    esc = status.open_escalation
    assert esc is not None
    await decide(rig.client, handle.id, "skip", escalation_id=esc.escalation_id, decided_by="test")
    result = await asyncio.wait_for(handle.result(), DEADLINE_S)
    assert result["steps"][0]["status"] == "skipped"
    calls = rig.chaos.stats().calls_to("GET", f"/contacts/{ident}")
    return Measured(ident, calls, seconds, status, result)


async def heal(rig: Rig, ident: str) -> Measured:
    began = time.monotonic()
    handle = await start(rig, ident)
    result = await asyncio.wait_for(handle.result(), DEADLINE_S)
    seconds = time.monotonic() - began
    calls = rig.chaos.stats().calls_to("GET", f"/contacts/{ident}")
    return Measured(ident, calls, seconds, None, result)


@dataclass
class Wave:
    dead: list[Measured] = field(default_factory=list)
    healthy: list[Measured] = field(default_factory=list)
    gone: list[Measured] = field(default_factory=list)


async def run_wave(rig: Rig, name: str) -> Wave:
    """Sequential workflows: each dead call escalates before the next one starts."""
    wave = Wave()
    for i in range(WAVE):
        wave.dead.append(await escalate_and_skip(rig, f"dead-{name}{i}"))
        wave.healthy.append(await heal(rig, f"ok-{name}{i}"))
        if i % 2 == 0:
            wave.gone.append(await escalate_and_skip(rig, f"gone-{name}{i}"))
    return wave


def per_call(found: list[Measured]) -> tuple[float, float]:
    return (
        statistics.mean(m.upstream_calls for m in found),
        statistics.median(m.seconds for m in found),
    )


async def test_learning_stops_spending_retries_on_a_pattern_that_never_heals(rig: Rig) -> None:
    began = time.monotonic()
    before = await run_wave(rig, "b")
    # Every outcome of wave 1 in the store, and every cached read of it expired.
    await rig.plugin.interceptor.events.flush()
    dead_fp = before.dead[0].fingerprint
    stats = await rig.store.pattern_stats(dead_fp)
    assert stats is not None
    assert [(s.strategy, s.tries, s.successes) for s in stats.strategies] == [
        ("retry_then_reroute", WAVE, 0)
    ]
    await asyncio.sleep(LEARNING.cache_ttl_s)
    after = await run_wave(rig, "a")
    await rig.plugin.interceptor.events.flush()
    elapsed = time.monotonic() - began

    # Before: the matrix's SERVICE_DOWN budget, spent in full, on every dead call.
    for i, m in enumerate(before.dead):
        assert m.upstream_calls == DEAD_BUDGET, m
        assert m.fingerprint == dead_fp
        assert "did not recover within the healing budget" in m.explanation
        if i < WAVE - 1:  # the last one's workflow side may already read 4 tries
            assert "learned" not in m.explanation
    # After: one call, and the escalation says learning decided it.
    for m in after.dead:
        assert m.upstream_calls == 1, m
        assert m.fingerprint == dead_fp
        assert "learned: retries healed this pattern 0 of 4 times" in m.explanation, m.explanation
    # Learning recorded no new tries (no retries were spent, explore_rate=0).
    stats = await rig.store.pattern_stats(dead_fp)
    assert stats is not None and stats.strategies[0].tries == WAVE

    # The transient calls heal alone, same calls, in both waves: learning never blocks them.
    for m in before.healthy + after.healthy:
        step = m.result["steps"][0]
        assert step["status"] == "ok", m
        assert step["healing"]["counts_by_type"] == {"INTERNAL_ERROR": 1, "NETWORK_ERROR": 1}
        assert step["healing"]["escalated"] is False
        assert m.upstream_calls == 1 + len(HEALTHY_FAULTS)
    # The 404 is not retryable: one call and the same reason in both waves, no learning.
    gone_fps = {m.fingerprint for m in before.gone + after.gone}
    assert len(gone_fps) == 1
    for m in before.gone + after.gone:
        assert m.upstream_calls == 1
        assert "NOT_FOUND is not retryable" in m.explanation
        assert "learned" not in m.explanation
    assert await rig.store.pattern_stats(gone_fps.pop()) is None  # no outcome ever recorded

    rows = [
        ("dead 503, escalates", before.dead, after.dead),
        ("500+reset, heals", before.healthy, after.healthy),
        ("404, escalates", before.gone, after.gone),
    ]
    print(f"\n[learning] same run, {elapsed:.1f}s; calls = upstream requests per logical call")
    print(f"[learning] {'call':<22} {'calls before':>12} {'after':>6} {'s before':>9} {'after':>6}")
    for name, b, a in rows:
        (cb, sb), (ca, sa) = per_call(b), per_call(a)
        print(f"[learning] {name:<22} {cb:>12.2f} {ca:>6.2f} {sb:>9.2f} {sa:>6.2f}")
    dead_before, dead_after = per_call(before.dead)[1], per_call(after.dead)[1]
    assert dead_after < dead_before / 2, (dead_before, dead_after)
    assert max(m.seconds for m in after.dead) < min(m.seconds for m in before.dead)
    print(f"[learning] escalation reason after: {after.dead[0].explanation.splitlines()[1]}")

    # The CLI sees what the worker learned, from the same SQLite file.
    cli = [*healing_command(), "patterns", "--json"]
    code, out, err = await run(*cli, env={"HEALING_STORE": f"sqlite:///{rig.db}"})
    assert code == 0, err
    listed = {p["pattern"]["fingerprint"]: p for p in json.loads(out)}
    assert dead_fp in listed, sorted(listed)
    dead = listed[dead_fp]
    assert dead["pattern"]["error_type"] == "SERVICE_DOWN"
    assert dead["pattern"]["status_code"] == 503
    assert [(s["strategy"], s["tries"], s["successes"]) for s in dead["strategies"]] == [
        ("retry_then_reroute", WAVE, 0)
    ]


# -- safety on the time-skipping server -----------------------------------------------------

SAFE_CONFIG = HealingConfig(breaker=BreakerPolicy(enabled=False), learning=LEARNING)


def classified(plugin: HealingPlugin, exc: Exception) -> Classification:
    """What the activity side will classify ``exc`` as (same code path, same fingerprint)."""
    failure = detect_error(exc, connector="crm", operation="get_contact")
    assert failure is not None
    return plugin.interceptor.classify(failure)


async def seed(
    store: Store, cls: Classification, strategy: str, *, n: int, healed: bool, heal_s: float = 5
) -> None:
    pattern = pattern_of(cls, "crm", "get_contact")
    for _ in range(n):
        await store.record_outcome(pattern, strategy, healed=healed, heal_s=heal_s)
    if healed:  # median heal time comes from "healed" events
        event = HealingEvent.model_validate(
            {
                "at": datetime.now(UTC),
                "kind": "healed",
                "workflow_id": "seed",
                "fingerprint": cls.fingerprint,
                "strategy": strategy,
                "duration_s": heal_s,
            }
        )
        await store.record_events([event] * n)


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await connect_store(f"sqlite:///{tmp_path / 'healing.db'}")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def ts_harness(ts_env: WorkflowEnvironment) -> AsyncIterator[Harness]:
    h = Harness(ts_env, f"tq-{uuid.uuid4()}")
    try:
        yield h
    finally:
        await h.cleanup()


async def test_learning_never_retries_non_retryable_nor_adds_attempts(
    ts_harness: Harness, sqlite_store: Store
) -> None:
    h = ts_harness
    plugin = HealingPlugin(SAFE_CONFIG, store=sqlite_store)
    not_found, internal = fail(404), fail(500)
    cls_404, cls_500 = classified(plugin, not_found), classified(plugin, internal)
    # The store says retries always heal both patterns, after 5 s.
    await seed(sqlite_store, cls_404, "retry", n=20, healed=True)
    await seed(sqlite_store, cls_500, "retry", n=20, healed=True)
    row = SAFE_CONFIG.row(ErrorType.INTERNAL_ERROR)
    hint = await plugin.interceptor.patterns.hint(
        cls_500.fingerprint, row, backoff=SAFE_CONFIG.backoff, budget_s=120
    )
    assert hint is not None and hint.wait_s == 5.0 and not hint.skip_retries  # evidence works

    gone = Scripted(then=not_found, name="crm_404")
    broken = Scripted(then=internal, name="crm_500")
    async with h.worker(gone.activity, broken.activity, plugin=plugin):
        handle = await h.start({"activity": "crm_404"})
        esc = (await h.escalated(handle)).open_escalation
        assert esc is not None
        assert esc.classification.fingerprint == cls_404.fingerprint
        assert gone.count == 1, "learning retried a non-retryable error"
        assert "NOT_FOUND is not retryable" in esc.explanation

        handle = await h.start({"activity": "crm_500"})
        esc = (await h.escalated(handle)).open_escalation
        assert esc is not None
        assert esc.classification.fingerprint == cls_500.fingerprint
        assert broken.count == 1 + row.max_attempts, "learning added attempts"
        assert "the 2 retries for INTERNAL_ERROR are spent" in esc.explanation
        # The learned wait (5 s) paced those retries: learning was on, within the bounds.
        assert all(4.9 <= gap <= 6.0 for gap in broken.gaps()), broken.gaps()


async def test_heals_by_retry_give_a_median_heal_time(
    ts_harness: Harness, sqlite_store: Store
) -> None:
    plugin = HealingPlugin(SAFE_CONFIG, store=sqlite_store)
    once = Scripted(then=lambda call: fail(503) if call.attempt == 1 else None)
    async with ts_harness.worker(once.activity, plugin=plugin):
        for _ in range(LEARNING.min_observations):
            await (await ts_harness.start()).result()
    await plugin.interceptor.events.flush()
    stats = await sqlite_store.pattern_stats(classified(plugin, fail(503)).fingerprint)
    assert stats is not None
    (retry,) = stats.strategies
    assert (retry.tries, retry.successes) == (LEARNING.min_observations,) * 2
    assert retry.median_heal_s is not None


async def test_learning_disabled_ignores_never_heals_evidence(
    ts_env: WorkflowEnvironment, sqlite_store: Store
) -> None:
    down = fail(503)
    enabled = HealingPlugin(SAFE_CONFIG, store=sqlite_store)
    cls_503 = classified(enabled, down)
    await seed(sqlite_store, cls_503, "retry_then_reroute", n=50, healed=False)

    # Control: with learning on, that evidence hands the call over at once.
    control = Harness(ts_env, f"tq-{uuid.uuid4()}")
    acts = Scripted([down, down], name="crm_503")
    try:
        async with control.worker(acts.activity, plugin=enabled):
            handle = await control.start({"activity": "crm_503"})
            esc = (await control.escalated(handle)).open_escalation
            assert esc is not None and acts.count == 1
            assert "learned: retries healed this pattern 0 of 50 times" in esc.explanation
            await decide(control.client, handle.id, "skip", escalation_id=esc.escalation_id)
            assert (await handle.result())["skipped"] is True
    finally:
        await control.cleanup()

    no_learning = LEARNING.model_copy(update={"enabled": False})
    off = HealingConfig(breaker=BreakerPolicy(enabled=False), learning=no_learning)
    disabled = HealingPlugin(off, store=sqlite_store)
    h = Harness(ts_env, f"tq-{uuid.uuid4()}")
    acts = Scripted([down, down], name="crm_503")
    try:
        async with h.worker(acts.activity, plugin=disabled):
            handle = await h.start({"activity": "crm_503"})
            out = await handle.result()
            status = await h.status(handle)
    finally:
        await h.cleanup()
    assert out["result"]["ok"] is True and acts.count == 3  # healed by the matrix's retries
    assert status.open_escalations == [] and status.state != "awaiting_decision"
    assert disabled.interceptor.patterns.store_reads == 0  # the store was never asked


async def test_hopeless_evidence_ages_so_a_later_blip_heals(
    ts_env: WorkflowEnvironment, sqlite_store: Store
) -> None:
    # An outage taught "retries never heal this 503"; hours later a one-off 503 of the same
    # pattern must heal by the matrix (2 calls), not go straight to a human.
    down = fail(503)
    fresh = HealingPlugin(SAFE_CONFIG, store=sqlite_store)
    cls_503 = classified(fresh, down)
    await seed(sqlite_store, cls_503, "retry_then_reroute", n=50, healed=False)

    control = Harness(ts_env, f"tq-{uuid.uuid4()}")
    acts = Scripted([down], name="crm_503")
    try:
        async with control.worker(acts.activity, plugin=fresh):
            handle = await control.start({"activity": "crm_503"})
            esc = (await control.escalated(handle)).open_escalation
            assert esc is not None and acts.count == 1  # fresh evidence: learned, at once
            await decide(control.client, handle.id, "skip", escalation_id=esc.escalation_id)
    finally:
        await control.cleanup()

    later = datetime.now(UTC) + timedelta(seconds=LEARNING.evidence_ttl_s + 60)
    aged = HealingPlugin(SAFE_CONFIG, store=sqlite_store, wall_clock=lambda: later)
    h = Harness(ts_env, f"tq-{uuid.uuid4()}")
    acts = Scripted([down], name="crm_503")
    try:
        async with h.worker(acts.activity, plugin=aged):
            out = await (await h.start({"activity": "crm_503"})).result()
    finally:
        await h.cleanup()
    assert out["result"]["ok"] is True and acts.count == 2


async def test_waits_behind_the_breaker_teach_no_recovery_time(
    ts_harness: Harness, sqlite_store: Store
) -> None:
    # Eight concurrent single 503s trip the breaker and wait ~30 s behind it: that wait is
    # the healer's own pacing, not the upstream's recovery time, so it is not learned as one.
    breaker = BreakerPolicy(failure_threshold=5, window_s=60, open_s=30, first_open_s=30)
    config = HealingConfig(breaker=breaker, learning=LEARNING)
    plugin = HealingPlugin(config, store=sqlite_store, clock=server_clock)
    once = Scripted(then=lambda call: fail(503) if call.attempt == 1 else None)
    async with ts_harness.worker(once.activity, plugin=plugin):
        handles = await asyncio.gather(*(ts_harness.start() for _ in range(8)))
        outs = [await handle.result() for handle in handles]
    assert all(out["result"]["ok"] for out in outs)
    await plugin.interceptor.events.flush()
    stats = await sqlite_store.pattern_stats(classified(plugin, fail(503)).fingerprint)
    assert stats is not None
    waits = [c.started for c in once.calls]
    assert (max(waits) - min(waits)).total_seconds() >= 29  # they did wait behind the circuit
    learned = {s.strategy: s.median_heal_s for s in stats.strategies}
    assert learned.get("retry_then_reroute") is None, learned
