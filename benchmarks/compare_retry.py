"""Healing vs. what a user would pick instead, on one seeded fault plan, in one run.

    .venv/bin/python benchmarks/compare_retry.py [--calls N] [--seed S] [--quick]

Starts a Temporal dev server (free ports, state in a temp dir) and the chaos CRM
(`python -m healing.testing.chaos`, its own process), then runs the same batch of one-step
`IntegrationWorkflow`s under four arms, each on its own task queue with its own worker and a
chaos reset (stats, attempt numbers, outage window) before it:

  a. healing    HealingPlugin + the catalog's `call_integration` activity
  b. default    a plain activity (same HTTP call, raises on non-2xx), Temporal's default
                RetryPolicy (unlimited attempts, 1 s, x2, cap 100 s), bounded by the deadline
  c. max4       the plain activity, RetryPolicy(maximum_attempts=4)
  d. tenacity   tenacity inside the plain activity (4 attempts, wait_exponential_jitter),
                RetryPolicy(maximum_attempts=1)

All arms run the same workflow code; arms b-d get their RetryPolicy from a small workflow
interceptor, exactly as if it were written in `execute_activity(..., retry_policy=...)`.
Then it measures happy-path throughput with and without the plugin. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from harness import (  # benchmarks/harness.py
    TENACITY,
    BreakerLog,
    ChaosProcess,
    PlainActivities,
    RetryPolicyInterceptor,
    not_circuit_news,
    p50_95,
    table,
)
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import RetryPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ActivityError, RetryState
from temporalio.worker import Worker

from activities.integration import IntegrationActivities
from healing import BackoffPolicy, BreakerPolicy, HealingConfig, HealingPlugin
from healing.catalog import ConnectorCatalog
from healing.devserver import DevServer
from healing.testing import FaultPlan, FaultRule, Outage, StatusFault
from workflows import IntegrationInput, IntegrationWorkflow, Step

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
Kind = Literal["transient", "outage", "permanent"]
ArmKey = Literal["healing", "default", "max4", "tenacity"]


def healing_config(state_dir: Path) -> HealingConfig:
    """Arm (a): the spec's backoff, matrix and budget; the breaker's open time cut to 10 s."""
    return HealingConfig(
        backoff=BackoffPolicy(initial_s=1.0, multiplier=2.0, max_s=30.0, jitter=0.2),
        breaker=BreakerPolicy(open_s=10.0),
        healing_budget_s=120.0,
        store=f"sqlite:///{state_dir / 'healing.db'}",  # never the repository's .healing/
    )


def describe_healing(cfg: HealingConfig) -> str:
    b, br = cfg.backoff, cfg.breaker
    return (
        f"HealingPlugin, backoff {b.initial_s:g}s x{b.multiplier:g} cap {b.max_s:g}s "
        f"+-{b.jitter:.0%}, Retry-After honoured, breaker {br.failure_threshold} fails/"
        f"{br.window_s:g}s >={br.min_failure_ratio:.0%} open {br.open_s:g}s, "
        f"budget {cfg.healing_budget_s:g}s"
    )


# -- the batch and what the plan itself allows ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogicalCall:
    index: int
    kind: Kind
    operation: str  # get_contact | get_deal
    ident: str

    @property
    def path(self) -> str:
        return f"/{'deals' if self.operation == 'get_deal' else 'contacts'}/{self.ident}"


def build_batch(n: int) -> list[LogicalCall]:
    """~5% permanent (404/403 in turn), 10% on an endpoint with an outage, the rest random."""
    calls = []
    for i in range(n):
        if i % 20 == 7:
            word = "missing" if (i // 20) % 2 == 0 else "forbidden"
            calls.append(LogicalCall(i, "permanent", "get_contact", f"{word}-{i}"))
        elif i % 10 == 3:
            calls.append(LogicalCall(i, "outage", "get_deal", str(i)))
        else:
            calls.append(LogicalCall(i, "transient", "get_contact", str(i)))
    return calls


def build_plan(seed: int, outage_s: float, rate: float) -> FaultPlan:
    return FaultPlan.random(
        seed,
        rate=rate,
        max_consecutive=2,
        paths_prefix="/contacts/",
        rules=[
            FaultRule(path="/contacts/missing-*", always=StatusFault(status=404)),
            FaultRule(path="/contacts/forbidden-*", always=StatusFault(status=403)),
            FaultRule(path="/deals/*", outage=Outage(duration_s=outage_s, vendor="generic")),
        ],
    )


@dataclasses.dataclass(frozen=True)
class PlanFacts:
    min_calls: dict[int, int]  # fewest upstream calls that settle each call (attempts_needed)
    own_wait_s: dict[int, float]  # transient calls: Retry-After the server asked for, summed
    faulted: frozenset[int]  # healable calls that meet at least one fault
    healable: frozenset[int]


def plan_facts(plan: FaultPlan, calls: Sequence[LogicalCall]) -> PlanFacts:
    min_calls: dict[int, int] = {}
    own: dict[int, float] = {}
    faulted: set[int] = set()
    for c in calls:
        needed = plan.attempts_needed("GET", c.path)
        if c.kind == "permanent":
            min_calls[c.index] = 1  # one call to learn it will never work
            continue
        assert needed is not None, c
        # attempts_needed leaves time windows out: an oracle waits out the outage unasked.
        min_calls[c.index] = needed
        if c.kind == "outage":
            faulted.add(c.index)
            continue
        if needed > 1:
            faulted.add(c.index)
        waits = (plan.fault_for("GET", c.path, n) for n in range(1, needed))
        own[c.index] = float(sum(getattr(f, "retry_after", None) or 0 for f in waits))
    healable = frozenset(c.index for c in calls if c.kind != "permanent")
    return PlanFacts(min_calls, own, frozenset(faulted), healable)


def build_catalog(url: str) -> ConnectorCatalog:
    """Vendors played by the one chaos server: a flaky CRM, a billing API that has an outage,
    and a fault-free `warmup` connector (its own circuit breaker) for warming workers up."""
    ops = {
        "get_contact": {"path": "/contacts/{id}"},
        "get_deal": {"path": "/deals/{id}"},
        "ping": {"path": "/hubspot/contacts/{id}"},  # outside the plan's random-fault prefix
    }
    spec = {"base_url": url, "timeout_s": 5, "operations": ops}
    names = ("crm", "billing", "warmup")
    return ConnectorCatalog.from_dict({"connectors": dict.fromkeys(names, spec)})


@dataclasses.dataclass(frozen=True)
class Arm:
    key: ArmKey
    label: str
    setup: str


ARMS = (
    Arm("healing", "a. healing plugin", ""),  # setup from describe_healing(config)
    Arm("default", "b. default policy", "RetryPolicy() = unlimited, 1s x2 cap 100s"),
    Arm("max4", "c. max_attempts=4", "RetryPolicy(maximum_attempts=4), 1s x2"),
    Arm("tenacity", "d. tenacity x4", f"{TENACITY} in the activity, maximum_attempts=1"),
)


@dataclasses.dataclass(frozen=True)
class Bench:
    """What every arm shares: servers, catalog, healing config and the run's settings."""

    client: Client
    chaos: ChaosProcess
    catalog: ConnectorCatalog
    config: HealingConfig
    args: argparse.Namespace


@contextlib.asynccontextmanager
async def arm_worker(bench: Bench, arm: ArmKey | Literal["none"], queue: str) -> Any:
    """The arm's worker on its own queue ("none": the plugin's activity without the plugin)."""
    acts: IntegrationActivities | PlainActivities
    kw: dict[str, Any] = {}
    if arm == "healing":
        acts = IntegrationActivities(bench.catalog)
        kw["plugins"] = [HealingPlugin(bench.config)]
    elif arm == "none":  # happy-path baseline: same activity, no plugin
        acts = IntegrationActivities(bench.catalog)
    else:
        acts = PlainActivities(bench.catalog, tenacity=arm == "tenacity")
        policy = {
            "default": RetryPolicy(),
            "max4": RetryPolicy(maximum_attempts=4),
            "tenacity": RetryPolicy(maximum_attempts=1),
        }[arm]
        kw["interceptors"] = [RetryPolicyInterceptor(policy)]
    worker = Worker(
        bench.client,
        task_queue=queue,
        workflows=[IntegrationWorkflow],
        activities=[acts.call_integration],
        **kw,
    )
    try:
        async with worker:
            yield worker
    finally:
        if isinstance(acts, IntegrationActivities):
            await acts.aclose()
        else:
            await acts.http.aclose()


# -- one arm --------------------------------------------------------------------------------

Outcome = Literal["ok", "human", "gave_up", "deadline"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "human", "gave_up", "deadline")


@dataclasses.dataclass
class ArmResult:
    outcomes: dict[int, Outcome]
    durations_s: dict[int, float]  # workflow start -> close, server clock
    outage_left_s: dict[int, float]  # outage calls: window still to run when the call started
    upstream_calls: dict[int, int]
    total_upstream_calls: int
    wall_s: float
    errors: dict[int, str]
    circuit_opened: dict[str, int]


async def answer_escalations(client: Client, queue: str, decided: set[str]) -> None:
    """The on-call human: abort every escalation as soon as visibility shows it."""
    query = (
        f"TaskQueue = '{queue}' AND HealingStatus = 'awaiting_decision' "
        "AND ExecutionStatus = 'Running'"
    )
    decision = {"option": "abort", "decided_by": "benchmark", "note": "benchmark operator"}
    while True:
        async for wf in client.list_workflows(query):
            if wf.id in decided:
                continue
            with contextlib.suppress(Exception):  # not open yet, or closed meanwhile
                await client.get_workflow_handle(wf.id).execute_update(
                    "decide_escalation", decision
                )
                decided.add(wf.id)
        await asyncio.sleep(0.5)


async def run_arm(bench: Bench, arm: ArmKey, calls: Sequence[LogicalCall]) -> ArmResult:
    queue = f"bench-{arm}-{uuid.uuid4().hex[:8]}"
    decided: set[str] = set()
    breakers = BreakerLog()
    logging.getLogger("healing").addHandler(breakers)
    try:
        async with arm_worker(bench, arm, queue):
            await warm_up(bench.client, queue)
            await bench.chaos.reset()  # stats, attempt numbers, and the outage window restarts
            reset_at = time.time()
            started = time.monotonic()
            handles = await asyncio.gather(*(_start(bench, queue, c) for c in calls))
            operator = asyncio.create_task(answer_escalations(bench.client, queue, decided))
            try:
                errors = await asyncio.gather(*(_settle(h) for h in handles))
            finally:
                operator.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await operator
            wall = time.monotonic() - started
            descs = await asyncio.gather(*(h.describe() for h in handles))
    finally:
        logging.getLogger("healing").removeHandler(breakers)
    stats = await bench.chaos.stats()  # after the worker drained its last in-flight attempts
    result = ArmResult({}, {}, {}, {}, stats.total_calls, wall, {}, dict(breakers.opened))
    for c, d, e in zip(calls, descs, errors, strict=True):
        assert d.close_time is not None
        result.durations_s[c.index] = (d.close_time - d.start_time).total_seconds()
        result.upstream_calls[c.index] = stats.calls_to("GET", c.path)
        if e is not None:
            result.errors[c.index] = _innermost(e)
        if d.status == WorkflowExecutionStatus.COMPLETED:
            result.outcomes[c.index] = "ok"
        elif d.status == WorkflowExecutionStatus.TIMED_OUT or _hit_deadline(e):
            result.outcomes[c.index] = "deadline"
        else:
            result.outcomes[c.index] = "human" if d.id in decided else "gave_up"
        if c.kind == "outage":
            left = reset_at + bench.args.outage_s - d.start_time.timestamp()
            result.outage_left_s[c.index] = max(left, 0.0)
    return result


async def warm_up(client: Client, queue: str, n: int = 10) -> None:
    """A few fault-free calls first (own connector, own breaker), so no arm pays a cold start."""
    step = Step(connector="warmup", operation="ping", params={"id": "1"})
    await asyncio.gather(
        *(
            client.execute_workflow(
                IntegrationWorkflow.run,
                IntegrationInput(steps=[step]),
                id=f"{queue}-warmup-{k}",
                task_queue=queue,
            )
            for k in range(n)
        )
    )


async def _start(bench: Bench, queue: str, call: LogicalCall) -> WorkflowHandle[Any, Any]:
    connector = bench.args.outage_on if call.kind == "outage" else "crm"
    step = Step(connector=connector, operation=call.operation, params={"id": call.ident})
    return await bench.client.start_workflow(
        IntegrationWorkflow.run,
        IntegrationInput(steps=[step], start_to_close_s=30),
        id=f"{queue}-{call.index}",
        task_queue=queue,
        execution_timeout=timedelta(seconds=bench.args.deadline_s),
    )


async def _settle(handle: WorkflowHandle[Any, Any]) -> BaseException | None:
    try:
        await handle.result()
    except Exception as exc:
        return exc
    return None


def _innermost(error: BaseException) -> str:
    """The innermost message of a workflow failure (an escalation's reason, an HTTP error)."""
    while True:
        cause = getattr(error, "cause", None) or error.__cause__
        if cause is None:
            return f"{type(error).__name__}: {error}"
        error = cause


def _hit_deadline(error: BaseException | None) -> bool:
    """The server stopped retrying because the next attempt would pass the deadline."""
    cause = error.cause if isinstance(error, WorkflowFailureError) else None
    return isinstance(cause, ActivityError) and cause.retry_state == RetryState.TIMEOUT


# -- happy-path overhead --------------------------------------------------------------------


async def throughput(client: Client, queue: str, n: int, concurrency: int = 10) -> float:
    """Activities per second: `concurrency` workflows at once, each running n/concurrency steps."""
    per = max(n // concurrency, 1)

    async def one(k: int) -> None:
        steps = [
            Step(connector="crm", operation="get_contact", params={"id": str(k * per + j)})
            for j in range(per)
        ]
        await client.execute_workflow(
            IntegrationWorkflow.run,
            IntegrationInput(steps=steps),
            id=f"{queue}-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )

    started = time.monotonic()
    await asyncio.gather(*(one(k) for k in range(concurrency)))
    return per * concurrency / (time.monotonic() - started)


async def overhead(bench: Bench) -> list[dict[str, float]]:
    """Interleaved rounds (order alternating) of the same no-fault batch, with and without."""
    await bench.chaos.set_plan(FaultPlan())
    q_with, q_without = (f"bench-{k}-{uuid.uuid4().hex[:8]}" for k in ("plugin", "plain"))
    async with arm_worker(bench, "healing", q_with), arm_worker(bench, "none", q_without):
        for q in (q_with, q_without):
            await warm_up(bench.client, q)
        out = []
        for r in range(bench.args.rounds):
            order = (q_with, q_without) if r % 2 == 0 else (q_without, q_with)
            rates = {q: await throughput(bench.client, q, bench.args.overhead_n) for q in order}
            w, wo = rates[q_with], rates[q_without]
            out.append({"with_plugin": w, "without": wo, "ratio": w / wo})
    return out


# -- figures and tables ---------------------------------------------------------------------


def figures(r: ArmResult, calls: Sequence[LogicalCall], facts: PlanFacts) -> dict[str, Any]:
    n = len(calls)
    ok = [i for i, o in r.outcomes.items() if o == "ok"]
    faulted_ok = [i for i in ok if i in facts.faulted]
    perm = [c.index for c in calls if c.kind == "permanent"]
    kinds = {c.index: c.kind for c in calls}
    reasons = collections.Counter(
        _short(msg) for i, msg in r.errors.items() if kinds[i] != "permanent"
    )
    return {
        "healed_pct": 100 * len(ok) / n,
        "faulted_healed_pct": 100 * len(faulted_ok) / max(len(facts.faulted), 1),
        "upstream_per_call": r.total_upstream_calls / n,
        "wasted_on_permanent": sum(max(r.upstream_calls[i] - 1, 0) for i in perm),
        "outcomes": {o: sum(1 for v in r.outcomes.values() if v == o) for o in OUTCOMES},
        "wall_s": r.wall_s,
        "heal_s_transient": [r.durations_s[i] for i in faulted_ok if kinds[i] == "transient"],
        "heal_s_outage": [r.durations_s[i] for i in faulted_ok if kinds[i] == "outage"],
        "outage_left_s": list(r.outage_left_s.values()),
        "circuit_opened": r.circuit_opened,
        "not_healed_reasons": dict(reasons.most_common()),
    }


def _short(message: str) -> str:
    """First line of an error, without its URL (HTTPStatusError names the request's URL)."""
    first = message.splitlines()[0] if message else ""
    return re.sub(r" for url '[^']*'", "", first)[:130]


def report(
    bench: Bench,
    calls: Sequence[LogicalCall],
    facts: PlanFacts,
    figs: dict[str, dict[str, Any]],
    rounds: list[dict[str, float]],
) -> str:
    by_kind: collections.Counter[str] = collections.Counter(c.kind for c in calls)
    parts = [
        _header(bench, by_kind, facts),
        _outcomes(figs, facts, by_kind, len(calls)),
        _heal_times(figs, facts, by_kind),
        _overhead(rounds, bench.args.overhead_n),
    ]
    return "\n\n".join(parts)


def _header(bench: Bench, by_kind: collections.Counter[str], facts: PlanFacts) -> str:
    args = bench.args
    setups = {a.key: a.setup or describe_healing(bench.config) for a in ARMS}
    faulted = sum(1 for i in facts.faulted if i in facts.own_wait_s)
    return "\n".join(
        [
            f"plan seed {args.seed}: {by_kind['transient']} crm GET /contacts/{{i}} (random "
            f"faults at rate {args.rate}, <=2 in a row: 503/429 Retry-After 1, 502, reset, "
            f"truncated; {faulted} calls meet one)",
            f"  + {by_kind['outage']} {args.outage_on} GET /deals/{{i}} in a {args.outage_s:g}s "
            f"503 outage + {by_kind['permanent']} crm permanent 404/403; all start at once, "
            f"deadline {args.deadline_s:g}s each; arm a's escalations: the benchmark aborts them",
            *(f"  {a.label}: {setups[a.key]}" for a in ARMS),
        ]
    )


def _outcomes(
    figs: dict[str, dict[str, Any]], facts: PlanFacts, by_kind: collections.Counter[str], n: int
) -> str:
    min_calls = sum(facts.min_calls.values()) / n
    rows = [
        ["arm", "healed", "faulted healed", "calls/call", "wasted 4xx", "ok/human/gave up/deadline",
         "wall s"],
        ["plan's limit", f"{100 * len(facts.healable) / n:.1f}%", "100.0%", f"{min_calls:.2f}",
         "0", f"{len(facts.healable)}/{by_kind['permanent']}/0/0", "-"],
    ]  # fmt: skip
    notes = []
    for a in ARMS:
        f = figs[a.key]
        o = f["outcomes"]
        rows.append([
            a.label, f"{f['healed_pct']:.1f}%", f"{f['faulted_healed_pct']:.1f}%",
            f"{f['upstream_per_call']:.2f}", str(f["wasted_on_permanent"]),
            f"{o['ok']}/{o['human']}/{o['gave_up']}/{o['deadline']}", f"{f['wall_s']:.1f}",
        ])  # fmt: skip
        for reason, count in list(f["not_healed_reasons"].items())[:2]:
            notes.append(f"  {a.key}: {count} not healed: {reason}")
    opened = figs["healing"]["circuit_opened"]
    circuits = ", ".join(f"{k} x{v}" for k, v in sorted(opened.items())) or "never"
    return "\n".join([table(rows), f"  healing: circuit opened {circuits}", *notes])


def _heal_times(
    figs: dict[str, dict[str, Any]], facts: PlanFacts, by_kind: collections.Counter[str]
) -> str:
    own = [facts.own_wait_s[i] for i in facts.faulted if i in facts.own_wait_s]
    rows = [
        ["time to heal, s (p50 / p95)", f"transient (n={len(own)})",
         f"outage (n={by_kind['outage']})"],
        ["fault's own length", p50_95(own), p50_95(figs["healing"]["outage_left_s"])],
    ]  # fmt: skip
    for a in ARMS:
        f = figs[a.key]
        rows.append([
            f"{a.label} (healed {len(f['heal_s_transient'])}+{len(f['heal_s_outage'])})",
            p50_95(f["heal_s_transient"]), p50_95(f["heal_s_outage"]),
        ])  # fmt: skip
    note = (
        "  (workflow start -> completion, server clock; own length = Retry-After the server "
        "asked for / outage time left)"
    )
    return f"{table(rows)}\n{note}"


def _overhead(rounds: list[dict[str, float]], n: int) -> str:
    rows = [["happy path (no faults)", "with plugin act/s", "without act/s", "ratio"]]
    for k, r in enumerate(rounds, 1):
        rows.append(
            [f"round {k}", f"{r['with_plugin']:.1f}", f"{r['without']:.1f}", f"{r['ratio']:.2f}"]
        )
    rows.append(["median", "", "", f"{statistics.median(r['ratio'] for r in rounds):.2f}"])
    note = (
        f"  ({n} call_integration activities per run, 10 workflows at a time, order "
        "alternating; ratio = with / without)"
    )
    return f"{table(rows)}\n{note}"


def results_json(
    bench: Bench,
    calls: Sequence[LogicalCall],
    facts: PlanFacts,
    figs: dict[str, dict[str, Any]],
    rounds: list[dict[str, float]],
) -> dict[str, Any]:
    n = len(calls)
    return {
        "args": vars(bench.args),
        "healing_config": bench.config.model_dump(
            mode="json", include={"backoff", "breaker", "healing_budget_s"}
        ),
        "plan": {
            "healable_pct": 100 * len(facts.healable) / n,
            "min_upstream_per_call": sum(facts.min_calls.values()) / n,
            "faulted_calls": len(facts.faulted),
            "kinds": dict(collections.Counter(c.kind for c in calls)),
        },
        "arms": {
            a.key: {"label": a.label, "setup": a.setup or describe_healing(bench.config)}
            | figs[a.key]
            for a in ARMS
        },
        "overhead": {
            "activities_per_run": bench.args.overhead_n,
            "rounds": rounds,
            "median_ratio": statistics.median(r["ratio"] for r in rounds),
        },
    }


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller run (~1-2 min)")
    p.add_argument("--calls", type=int, help="logical calls per arm (150; quick 40)")
    p.add_argument("--seed", type=int, default=7, help="fault plan seed (7)")
    p.add_argument("--rate", type=float, default=0.3, help="random transient fault rate (0.3)")
    p.add_argument("--outage-s", type=float, default=10.0, help="outage length on /deals (10)")
    p.add_argument(
        "--outage-on",
        choices=("billing", "crm"),
        default="billing",
        help="connector of the outage calls: a vendor of its own (default) or the flaky CRM",
    )
    p.add_argument("--deadline-s", type=float, help="workflow execution timeout (60; quick 30)")
    p.add_argument("--overhead-n", type=int, help="activities per throughput run (300; quick 100)")
    p.add_argument("--rounds", type=int, help="interleaved throughput rounds (5; quick 3)")
    args = p.parse_args(argv)
    args.calls = args.calls or (40 if args.quick else 150)
    args.deadline_s = args.deadline_s or (30.0 if args.quick else 60.0)
    args.overhead_n = args.overhead_n or (100 if args.quick else 300)
    args.rounds = args.rounds or (3 if args.quick else 5)
    return args


def quiet_logs() -> None:
    """Failing calls are the point of the run: keep the SDK's per-failure tracebacks out."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("temporalio").setLevel(logging.CRITICAL)
    for handler in logging.getLogger().handlers:
        handler.addFilter(not_circuit_news)  # counted by BreakerLog instead


async def run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The whole benchmark: servers up, four arms, the overhead rounds, servers down."""
    calls = build_batch(args.calls)
    plan = build_plan(args.seed, args.outage_s, args.rate)
    facts = plan_facts(plan, calls)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        async with (
            DevServer(state_dir=tmp, ui=False, db=False) as server,
            ChaosProcess(plan, Path(tmp)) as chaos,
        ):
            bench = Bench(
                client=await server.connect(data_converter=pydantic_data_converter),
                chaos=chaos,
                catalog=build_catalog(chaos.url),
                config=healing_config(Path(tmp)),
                args=args,
            )
            figs: dict[str, dict[str, Any]] = {}
            for arm in ARMS:
                print(f"running {arm.label} ...", file=sys.stderr, flush=True)
                figs[arm.key] = figures(await run_arm(bench, arm.key, calls), calls, facts)
            print("measuring happy-path overhead ...", file=sys.stderr, flush=True)
            rounds = await overhead(bench)
    return report(bench, calls, facts, figs, rounds), results_json(
        bench, calls, facts, figs, rounds
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    started = time.monotonic()
    text, data = asyncio.run(run(args))
    print(text)
    data["total_s"] = round(time.monotonic() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2))
    print(f"total {data['total_s']:.0f}s; JSON in {os.path.relpath(RESULTS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
