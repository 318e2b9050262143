"""Flow control for a fleet, for real: worker processes on one task queue sharing one SQLite
store (the default ``HEALING_STORE`` kind), the Temporal dev server, and ChaosAPI servers that
count every upstream call.

- A 30 s outage under 200 workflows and 3 worker processes costs the upstream the breaker's 5
  failures plus one probe per half-open window, for the whole fleet; every call heals after.
- 300 calls against a 20 requests / 5 s window, once per header form and once with the
  catalog's limit (two or three forms at a time, each against its own ChaosAPI and connector):
  all complete with no human, at most one window's worth of 429s each, within 1.2x the
  window's own minimum time. That time is the upstream's pace, not this machine's speed (the
  calls wait for their slots), which is why it is asserted here; the same bound is checked in
  simulated time in tests/unit/test_pacing_sim.py.
- A spent daily quota parks the calls until its reset and resumes them with no human.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from healing import HealingConfig, HealingPlugin
from healing.devserver import DevServer
from healing.names import STATUS_QUERY
from healing.ratelimit import RATE_SPACE
from healing.store import SQLiteStore
from healing.testing import ChaosAPI, ChaosThread, FaultPlan, FaultRule
from healing.testing.plan import Outage
from healing.testing.ratelimits import RATE_FORMS, RateForm, RateWindow
from healing.types import HealingStatus
from workflows import IntegrationInput, IntegrationWorkflow, Step

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
WORKER_SCRIPT = Path(__file__).with_name("worker_proc.py")
STEP_TIMEOUT_S = 10.0


class Worker:
    """``worker_proc.py`` in its own process, on a shared store."""

    def __init__(
        self, address: str, queue: str, catalog: Path, store: str, config: dict[str, Any], log: Path
    ) -> None:
        self.args = [
            sys.executable,
            str(WORKER_SCRIPT),
            "--address",
            address,
            "--task-queue",
            queue,
            "--connectors",
            str(catalog),
            "--store",
            store,
            "--config-json",
            json.dumps(config),
            "--max-activities",
            "200",
        ]
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALING_")}
        env["PYTHONPATH"] = str(ROOT)
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        except TimeoutError:
            line = b""
        if not line.startswith(b"READY"):
            await self.stop()
            raise AssertionError(f"worker did not start:\n{self.log.read_text()[-3000:]}")
        return self

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def client(dev_server: DevServer) -> Client:
    return await Client.connect(dev_server.address, plugins=[HealingPlugin(HealingConfig())])


async def workers(
    n: int,
    dev_server: DevServer,
    queue: str,
    catalog: Path,
    store: str,
    cfg: dict[str, Any],
    tmp: Path,
) -> list[Worker]:
    started = []
    for i in range(n):  # one after the other: the first migrates the store
        started.append(
            await Worker(dev_server.address, queue, catalog, store, cfg, tmp / f"w{i}.log").start()
        )
    return started


async def _cleanup(client: Client, queue: str, procs: Sequence[Worker]) -> None:
    try:
        running = f'TaskQueue = "{queue}" AND ExecutionStatus = "Running"'
        async for wf in client.list_workflows(running):
            with contextlib.suppress(RPCError):  # it may have finished meanwhile
                await client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate("test over")
    finally:
        for proc in procs:
            await proc.stop()


async def _start(client: Client, queue: str, step: Step, wid: str) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        IntegrationWorkflow.run,
        IntegrationInput(steps=[step], start_to_close_s=STEP_TIMEOUT_S),
        id=wid,
        task_queue=queue,
    )


async def _status(handle: WorkflowHandle[Any, Any]) -> HealingStatus:
    return await handle.query(STATUS_QUERY, result_type=HealingStatus)


# -- the storm ---------------------------------------------------------------------------------

OUTAGE_S = 30.0
STORM_WORKFLOWS = 200
STORM_WORKERS = 3


async def test_outage_costs_the_fleet_its_threshold_and_one_probe_per_window(
    dev_server: DevServer, client: Client, tmp_path: Path
) -> None:
    cfg = HealingConfig()  # the spec's breaker: 5 failures in 60 s, first open 5 s, then 30 s
    chaos = ChaosAPI().start_in_thread()
    catalog = tmp_path / "connectors.toml"
    catalog.write_text(
        f'[connectors.crm]\nbase_url = "{chaos.url}"\ntimeout_s = 2\n'
        '[connectors.crm.operations.get_contact]\nmethod = "GET"\npath = "/contacts/{id}"\n'
    )
    queue = f"storm-{time.time_ns()}"
    store = f"sqlite:///{tmp_path / 'healing.db'}"
    procs = await workers(STORM_WORKERS, dev_server, queue, catalog, store, {}, tmp_path)
    try:
        outage = Outage(duration_s=OUTAGE_S, status=503, vendor="salesforce")
        chaos.set_plan(FaultPlan(rules=(FaultRule(path="/contacts/*", outage=outage),)))
        t0 = time.monotonic()
        handles = []
        # A busy connector: 200 workflows arrive over the outage's first 10 s.
        for i in range(STORM_WORKFLOWS):
            step = Step(connector="crm", operation="get_contact", params={"id": str(i)})
            handles.append(await _start(client, queue, step, f"{queue}-{i}"))
            await asyncio.sleep(max(t0 + i * 0.05 - time.monotonic(), 0))
        results = await asyncio.wait_for(
            asyncio.gather(*(h.result() for h in handles)), timeout=150
        )
        statuses = [await _status(h) for h in handles]
        during = chaos.stats().faults_by_status.get("503", 0)
    finally:
        try:
            await _cleanup(client, queue, procs)
        finally:
            chaos.stop()
    healed_s = time.monotonic() - t0 - OUTAGE_S
    print(
        f"{during} upstream calls in the {OUTAGE_S:g}s outage; all healed {healed_s:.1f}s after it"
    )
    policy = cfg.breaker
    # Half-open windows that began inside the outage: the first after first_open_s, then every
    # open_s (the probe that finds it recovered is not a call during the outage).
    windows = 1 + math.floor(max(OUTAGE_S - policy.first_open_s, 0) / policy.open_s)
    assert during <= policy.failure_threshold + windows, f"{during} upstream calls in the outage"
    assert during >= policy.failure_threshold  # it did open: the outage was seen
    assert all(r["steps"][0]["status"] == "ok" for r in results)
    assert [s.state for s in statuses].count("healed") + [s.state for s in statuses].count(
        "idle"
    ) == STORM_WORKFLOWS
    assert not any(s.open_escalations for s in statuses)


# -- rate windows --------------------------------------------------------------------------------

RATE_CALLS = 300
BATCH = 10
WINDOW = (20, 5.0)  # requests per seconds
WINDOW_MIN_S = RATE_CALLS / WINDOW[0] * WINDOW[1]  # 75 s


def _rate_catalog(tmp: Path, urls: dict[str, str], catalog_limit: str) -> Path:
    text = []
    for name, url in urls.items():
        text.append(f'[connectors.{name}]\nbase_url = "{url}"\ntimeout_s = 5\n')
        if name == catalog_limit:
            text.append(f"rate_limit = {{ requests = {WINDOW[0]}, per_s = {WINDOW[1]} }}\n")
        text.append(f"[connectors.{name}.operations.get_contact]\n")
        text.append('method = "GET"\npath = "/contacts/{id}"\n')
    path = tmp / "connectors.toml"
    path.write_text("".join(text))
    return path


def _connector(form: str) -> str:
    return "rl_" + form.replace("-", "_")


# Runs of two or three forms at once (each against its own ChaosAPI and connector): five or
# ten at once outrun a 2-core machine, and the time measured is then the machine's.
FORM_GROUPS = {
    "retry-after": ("retry-after", "retry-after-date"),
    "x-ratelimit": ("x-ratelimit", "github", "hubspot"),
    "ietf": ("ietf-03", "ietf-07", "ietf-10"),
    "policy-and-catalog": ("ietf-policy", "catalog"),
}


def test_form_groups_cover_every_form() -> None:
    assert sorted(f for g in FORM_GROUPS.values() for f in g) == sorted([*RATE_FORMS, "catalog"])


@pytest.mark.parametrize("group", sorted(FORM_GROUPS))
async def test_rate_windows_in_every_header_form_pace_300_calls_with_no_human(
    dev_server: DevServer, client: Client, tmp_path: Path, group: str
) -> None:
    forms: list[str] = list(FORM_GROUPS[group])
    apis: dict[str, ChaosAPI] = {}
    threads: dict[str, ChaosThread] = {}
    for form in forms:
        # The catalog case: the server says nothing until the 429 (Retry-After only).
        shape: RateForm = "retry-after" if form == "catalog" else form  # type: ignore[assignment]
        plan = FaultPlan(rate_limits=(RateWindow(requests=WINDOW[0], per_s=WINDOW[1], form=shape),))
        apis[form] = ChaosAPI(plan)
        threads[form] = apis[form].start_in_thread()
    urls = {_connector(f): threads[f].url for f in forms}
    catalog = _rate_catalog(tmp_path, urls, _connector("catalog"))
    queue = f"rates-{time.time_ns()}"
    store = f"sqlite:///{tmp_path / 'healing.db'}"
    procs = await workers(2, dev_server, queue, catalog, store, {}, tmp_path)
    try:
        for form, thread in threads.items():
            thread.set_plan(apis[form].plan)  # windows count from now
        t0 = datetime.now(UTC)

        gate = asyncio.Semaphore(32)

        async def start_one(form: str, batch: int) -> None:
            # BATCH calls per workflow, in parallel: 300 calls, fewer workflows to schedule.
            steps = [
                Step(connector=_connector(form), operation="get_contact", params={"id": str(i)})
                for i in range(batch * BATCH, (batch + 1) * BATCH)
            ]
            async with gate:
                await client.start_workflow(
                    IntegrationWorkflow.run,
                    IntegrationInput(steps=steps, start_to_close_s=STEP_TIMEOUT_S, parallel=True),
                    id=f"{queue}-{forms.index(form)}-{batch}",
                    task_queue=queue,
                )

        # Interleaved, so every form's calls start at the same pace.
        batches = range(RATE_CALLS // BATCH)
        await asyncio.gather(*(start_one(f, b) for b in batches for f in forms))
        print(f"started in {(datetime.now(UTC) - t0).total_seconds():.1f}s", flush=True)
        # No human here: a call that escalated would wait for one and never finish. Counting
        # (not awaiting 1,500 results) keeps the namespace's long polls few.
        running = f'TaskQueue = "{queue}" AND ExecutionStatus = "Running"'
        deadline = time.monotonic() + WINDOW_MIN_S * 2.5
        while time.monotonic() < deadline:
            if not (await client.count_workflows(running)).count:
                break
            await asyncio.sleep(2)
        closed: dict[str, list[tuple[str, float]]] = {f: [] for f in forms}
        async for wf in client.list_workflows(f'TaskQueue = "{queue}"'):
            form = forms[int(wf.id.removeprefix(f"{queue}-").split("-")[0])]
            close = wf.close_time.timestamp() - t0.timestamp() if wf.close_time else math.inf
            closed[form].append((wf.status.name if wf.status else "?", close))
        rates = {f: threads[f].call(apis[f].rate_stats) for f in forms}
        # The window's minimum counts from the first call the upstream saw.
        finished = {
            f: max(c for _, c in closed[f]) + t0.timestamp() - (rates[f].first_at or 0.0)
            for f in forms
        }
    finally:
        try:
            await _cleanup(client, queue, procs)
        finally:
            for thread in threads.values():
                thread.stop()
    windows = await _learned_windows(tmp_path / "healing.db")
    print("learned windows:", {k: windows.get(_connector(k)) for k in forms})
    report = {f: (rates[f].throttled, round(finished[f], 1)) for f in forms}
    ratios = {f: round(s / WINDOW_MIN_S, 2) for f, (_, s) in report.items()}
    print(f"429s and seconds per form: {report}; x the window's minimum: {ratios}")
    for form in forms:
        statuses = [status for status, _ in closed[form]]
        assert statuses == ["COMPLETED"] * (RATE_CALLS // BATCH), form
        assert rates[form].calls >= RATE_CALLS
    assert {f: n for f, (n, _) in report.items() if n > WINDOW[0]} == {}
    assert {f: r for f, r in ratios.items() if r > 1.2} == {}


async def _learned_windows(db: Path) -> dict[str, tuple[object, ...]]:
    """(limit, window_s, source) per connector, as the fleet's store holds them."""
    store = SQLiteStore(db)
    try:
        entries = await store.state_list(RATE_SPACE)
    finally:
        await store.close()
    return {
        e.key: (
            e.value.get("limit"),
            round(float(e.value.get("window_s") or 0), 2),
            e.value.get("source"),
        )
        for e in entries
    }


# -- a spent daily quota -------------------------------------------------------------------------

QUOTA = 20
QUOTA_RESET_S = 20.0  # a "day" short enough for CI


async def test_spent_daily_quota_parks_calls_until_the_reset_with_no_human(
    dev_server: DevServer, client: Client, tmp_path: Path
) -> None:
    # Google's daily quota: 403 dailyLimitExceeded, Retry-After until the quota's reset.
    window = RateWindow(requests=QUOTA, per_s=QUOTA_RESET_S, form="google-quota")
    api = ChaosAPI(FaultPlan(rate_limits=(window,)))
    thread = api.start_in_thread()
    catalog = tmp_path / "connectors.toml"
    catalog.write_text(
        f'[connectors.gq]\nbase_url = "{thread.url}"\ntimeout_s = 5\n'
        '[connectors.gq.operations.get_contact]\nmethod = "GET"\npath = "/contacts/{id}"\n'
    )
    queue = f"quota-{time.time_ns()}"
    store = f"sqlite:///{tmp_path / 'healing.db'}"
    procs = await workers(2, dev_server, queue, catalog, store, {}, tmp_path)
    try:
        thread.set_plan(api.plan)
        t0 = time.monotonic()
        steps = [
            Step(connector="gq", operation="get_contact", params={"id": str(i)})
            for i in range(QUOTA * 2)
        ]
        handle = await client.start_workflow(
            IntegrationWorkflow.run,
            IntegrationInput(steps=steps, start_to_close_s=STEP_TIMEOUT_S, parallel=True),
            id=f"{queue}-0",
            task_queue=queue,
        )
        result = await asyncio.wait_for(handle.result(), timeout=QUOTA_RESET_S * 4)
        took = time.monotonic() - t0
        status = await _status(handle)
        rates = thread.call(api.rate_stats)
    finally:
        try:
            await _cleanup(client, queue, procs)
        finally:
            thread.stop()
    assert [s["status"] for s in result["steps"]] == ["ok"] * (QUOTA * 2)
    # Half the calls had to wait for the reset: the run outlasts it, with no human.
    assert took >= QUOTA_RESET_S * 0.9
    assert not status.open_escalations and status.state != "awaiting_decision"
    # The fleet learned the block from the first refusals: parked calls were not sent again
    # and again (at most one refusal per call that met the spent quota).
    assert rates.throttled <= QUOTA
