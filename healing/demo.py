"""`healing demo`: a real dev server, a chaos CRM, a healing worker and a batch of workflows.

Starts the Temporal dev server (state in ``.healing/demo``), two chaos HTTP servers (``crm``,
and ``crm_eu``: its healthy reroute target), an in-process worker with the HealingPlugin, runs
``count`` IntegrationWorkflows under a seeded mixed fault plan, shows live progress and prints
what was injected, healed and escalated. Backoff is shortened (0.5 s, cap 5 s) so it ends fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from temporalio.client import Client, WorkflowHandle
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from healing.catalog import ConnectorCatalog
from healing.client import healing_status
from healing.config import BackoffPolicy, BreakerPolicy, HealingConfig
from healing.devserver import DevServer, find_free_port
from healing.plugin import HealingPlugin
from healing.runner import build_worker, connect, load_config
from healing.testing import (
    ChaosAPI,
    ChaosStats,
    ChaosThread,
    Fault,
    FaultPlan,
    FaultRule,
    ResetFault,
    StatusFault,
    TimeoutFault,
    Vendor,
)

CLIENT_TIMEOUT_S = 2
PATIENCE_S = 120.0
"""Stop waiting for in-flight workflows after this long (they are reported as still running)."""
_CATALOG = """\
[connectors.{name}]
base_url = "{url}"
timeout_s = {timeout}
alternatives = {alternatives}
[connectors.{name}.operations.get_contact]
method = "GET"
path = "/contacts/{{id}}"
[connectors.{name}.operations.create_contact]
method = "POST"
path = "/contacts"
"""


@dataclass(frozen=True)
class DemoOptions:
    count: int = 60
    seed: int = 7
    rate: float = 0.3
    """Share of upstream attempts that get a random transient fault (at most 2 in a row)."""
    keep: bool = False
    state_dir: Path = Path(".healing/demo")
    port: int | None = None
    """Temporal gRPC port; None: 7233 when free, else any free port (``ui_port``: 8233)."""
    ui_port: int | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)


@dataclass
class _Run:
    handle: WorkflowHandle[Any, Any]
    started: float
    task: asyncio.Task[Any]
    finished: float | None = None
    awaiting: bool = False

    def mark_finished(self, _: object) -> None:
        self.finished = time.monotonic()

    def outcome(self) -> str:
        """clean, healed, rerouted (healed by a reroute), failed, awaiting or running."""
        if not self.task.done():
            return "awaiting" if self.awaiting else "running"
        if self.task.cancelled() or self.task.exception() is not None:
            return "failed"
        infos = [step.get("healing") or {} for step in self.task.result()["steps"]]
        if any(h.get("rerouted_to") for h in infos):
            return "rerouted"
        healed = any(h.get("counts_by_type") or h.get("workflow_rounds") for h in infos)
        return "healed" if healed else "clean"


def demo_config() -> HealingConfig:
    """Spec defaults except a short backoff and breaker pause, so the demo ends quickly."""
    return load_config(
        backoff=BackoffPolicy(initial_s=0.5, max_s=5.0), breaker=BreakerPolicy(open_s=5.0)
    )


def fault_plan(seed: int, rate: float, count: int) -> tuple[FaultPlan, dict[int, str]]:
    """Random transient faults on every path, plus per-workflow outages and permanent errors.

    Returns the plan and what workflow ``i`` was singled out for: "404", "403" (permanent) or
    "outage" (503 for 2 attempts, or 4 so that the call reroutes to ``crm_eu``).

    429s use Slack's shape (Retry-After only). HubSpot's also says the app's 10 s window is
    spent, which paces every call of the connector for 10 s: realistic, but it would make
    most of the batch wait on one path's fault.
    """
    rng = random.Random(seed)
    picks = rng.sample(range(count), k=min(count, max(2, round(count * 0.12))))
    permanent = max(1, round(count * 0.05))
    special: dict[int, str] = {}
    rules: list[FaultRule] = []
    for n, i in enumerate(picks):
        if n < permanent:  # alternate HubSpot's 404 and GitHub's 403 permission error
            special[i] = "404" if n % 2 == 0 else "403"
            vendor: Vendor = "hubspot" if special[i] == "404" else "github"
            fault = StatusFault(status=int(special[i]), vendor=vendor)
            rules.append(FaultRule(path=f"/contacts/{i:04d}", always=fault))
            continue
        special[i] = "outage"  # 2 attempts heal in place; 4 exhaust SERVICE_DOWN and reroute
        faults = (StatusFault(status=503),) * rng.choice((2, 4))
        rules.append(FaultRule(path=f"/contacts/{i:04d}", faults=faults))
    kinds: tuple[Fault, ...] = (
        TimeoutFault(hang_s=CLIENT_TIMEOUT_S + 3),
        ResetFault(),
        StatusFault(status=500),
        StatusFault(status=503),
        StatusFault(status=429, vendor="slack", retry_after=1),
        StatusFault(status=429, vendor="slack", retry_after=rng.choice((2, 3))),
    )
    plan = FaultPlan.random(seed, rate=rate, kinds=kinds, max_consecutive=2, rules=rules)
    return plan, special


def write_catalog(path: Path, crm_url: str, eu_url: str) -> ConnectorCatalog:
    """The demo's connector catalog: ``crm`` with ``crm_eu`` as its alternative."""
    text = _CATALOG.format(
        name="crm", url=crm_url, timeout=CLIENT_TIMEOUT_S, alternatives='["crm_eu"]'
    )
    text += _CATALOG.format(name="crm_eu", url=eu_url, timeout=CLIENT_TIMEOUT_S, alternatives="[]")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return ConnectorCatalog.from_toml(text, source=str(path))


def steps_for(i: int, rng: random.Random) -> list[dict[str, Any]]:
    """get_contact, and for about 40% of the workflows a create_contact after it."""
    steps: list[dict[str, Any]] = [
        {"connector": "crm", "operation": "get_contact", "params": {"id": f"{i:04d}"}}
    ]
    if rng.random() < 0.4:
        person = {"name": f"Lead {i}", "email": f"lead{i}@example.com"}
        steps.append({"connector": "crm", "operation": "create_contact", "params": person})
    return steps


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def fault_rows(stats: list[ChaosStats]) -> list[tuple[str, int]]:
    """Injected faults by type, summed over the chaos servers."""
    kind: Counter[str] = Counter()
    status: Counter[str] = Counter()
    for st in stats:
        kind.update(st.faults_by_kind)
        status.update(st.faults_by_status)
    return [
        (f"timeout (hangs past the {CLIENT_TIMEOUT_S} s client timeout)", kind["timeout"]),
        ("connection reset", kind["reset"]),
        ("503 outage", status["503"]),
        ("500 internal error", status["500"]),
        ("429 + Retry-After (Slack shape)", status["429"]),
        ("404 / 403, permanent", status["404"] + status["403"]),
        ("total", sum(kind.values())),
    ]


async def run_demo(opts: DemoOptions) -> int:
    """Run the demo; the exit code is 1 when a workflow failed, else 0."""
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    with _on_signals(stop.set):
        return await _run(opts, stop)


async def _run(opts: DemoOptions, stop: asyncio.Event) -> int:
    out, state_dir = opts.out, opts.state_dir
    config = demo_config()
    plan, special = fault_plan(opts.seed, opts.rate, opts.count)
    port, ui_port = opts.port or _port(7233), opts.ui_port or _port(8233)
    server = DevServer(state_dir=state_dir, port=port, ui_port=ui_port)
    print(f"Starting the Temporal dev server (state in {state_dir}) ...", file=out, flush=True)
    runs: list[_Run] = []
    with ChaosAPI(plan).start_in_thread() as crm, ChaosAPI().start_in_thread() as eu:
        catalog = write_catalog(state_dir / "connectors.toml", crm.url, eu.url)
        await server.start_async(timeout=60)
        try:
            with _logs_to(state_dir / "demo.log"):
                plugin = HealingPlugin(config, alternatives=catalog.alternatives())
                client = await connect(
                    server.address, server.namespace, plugin, runtime=_runtime_logging_to_python()
                )
                worker, acts = build_worker(client, config, catalog)
                try:
                    async with worker:
                        _intro(opts, server, crm, eu, special)
                        await _start(client, opts, worker.task_queue, runs)
                        await _progress(client, runs, out, stop)
                        outcomes = _summary(opts, server, runs, special, [crm.stats(), eu.stats()])
                        if opts.keep and not stop.is_set():
                            print("\nEverything stays up; Ctrl-C stops it.", file=out, flush=True)
                            await stop.wait()
                finally:
                    for run in runs:
                        run.task.cancel()
                    await asyncio.gather(*(r.task for r in runs), return_exceptions=True)
                    await acts.aclose()
        finally:
            await asyncio.to_thread(server.stop)
    return 1 if "failed" in outcomes else 0


@contextlib.contextmanager
def _on_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM call ``callback`` (the demo then stops what it started, in order)."""
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signum, callback)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _runtime_logging_to_python() -> Runtime:
    """A Temporal runtime whose core (Rust) warnings go to Python logging, so to the log file."""
    logs = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )
    return Runtime(telemetry=TelemetryConfig(logging=logs))


def _port(preferred: int) -> int:
    """``preferred`` when nothing listens there, else a free port."""
    with socket.socket() as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return find_free_port()
    return preferred


@contextlib.contextmanager
def _logs_to(log_file: Path) -> Iterator[None]:
    """Worker and healing logs (a warning per failed attempt) go to a file, not the screen."""
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("temporalio", "healing")]
    saved = [(lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, (propagate, level) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.propagate, lg.level = propagate, level
        handler.close()


def _intro(
    opts: DemoOptions, server: DevServer, crm: ChaosThread, eu: ChaosThread, special: dict[int, str]
) -> None:
    kinds = Counter(special.values())
    print(
        f"Temporal {server.address}, Web UI {server.ui_url}, worker log "
        f"{opts.state_dir / 'demo.log'}\n"
        f"Chaos CRM {crm.url} (crm) and {eu.url} (crm_eu, its healthy reroute target)\n"
        f"Fault plan (seed {opts.seed}): {opts.rate:.0%} of upstream attempts get a random "
        "timeout, reset, 500, 503 or Slack 429 + Retry-After 1-3 s (at most 2 in a row); "
        f"{kinds['outage']} short 503 outages (2 or 4 attempts; 4 reroute to crm_eu), "
        f"{kinds['404'] + kinds['403']} permanent 404/403\n"
        "Demo backoff: initial 0.5 s, x2, cap 5 s; breaker pause 5 s (defaults 1 s, 30 s, 30 s; "
        f"shortened so the demo ends quickly). Client timeout {CLIENT_TIMEOUT_S} s.\n",
        file=opts.out,
        flush=True,
    )


async def _start(client: Client, opts: DemoOptions, task_queue: str, runs: list[_Run]) -> None:
    rng = random.Random(opts.seed)
    batch = uuid.uuid4().hex[:6]
    for i in range(opts.count):
        handle = await client.start_workflow(
            "IntegrationWorkflow",
            {"steps": steps_for(i, rng)},
            id=f"demo-{batch}-{i:03d}",
            task_queue=task_queue,
        )
        run = _Run(handle, time.monotonic(), asyncio.create_task(handle.result()))
        run.task.add_done_callback(run.mark_finished)
        runs.append(run)


async def _progress(client: Client, runs: list[_Run], out: TextIO, stop: asyncio.Event) -> None:
    """One updating line until every workflow is done or waits for a human."""
    deadline = time.monotonic() + PATIENCE_S
    tty, last = out.isatty(), ""
    while not stop.is_set():
        pending = [r for r in runs if not r.task.done()]
        reports = await asyncio.gather(
            *(healing_status(client, r.handle.id) for r in pending), return_exceptions=True
        )
        for run, rep in zip(pending, reports, strict=True):
            if not isinstance(rep, BaseException) and rep.healing is not None:
                run.awaiting = bool(rep.healing.open_escalations)
        awaiting = sum(r.awaiting for r in pending)
        line = (
            f"done {len(runs) - len(pending)} | healing {len(pending) - awaiting} | "
            f"awaiting decision {awaiting} | total {len(runs)}"
        )
        if line != last:
            print(("\r" if tty else "") + line, end="" if tty else "\n", file=out, flush=True)
            last = line
        if awaiting == len(pending) or time.monotonic() > deadline:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    if tty:
        print(file=out)


def _summary(
    opts: DemoOptions,
    server: DevServer,
    runs: list[_Run],
    special: dict[int, str],
    stats: list[ChaosStats],
) -> list[str]:
    """Print the tables and the how-to-decide lines; returns each workflow's outcome."""
    out = opts.out
    outcomes = [r.outcome() for r in runs]
    n = Counter(outcomes)
    healed = n["healed"] + n["rerouted"]
    transient = [o for i, o in enumerate(outcomes) if special.get(i) not in ("404", "403")]
    met_fault = [o for o in transient if o != "clean"]
    times = [r.finished - r.started for r, o in zip(runs, outcomes, strict=True)
             if o in ("healed", "rerouted") and r.finished is not None]  # fmt: skip
    # Logical calls: distinct GET paths and POST idempotency keys on crm (reroutes repeat them).
    crm = stats[0]
    logical = len(crm.idempotency_keys) + sum(1 for route in crm.calls if route[:4] == "GET ")
    upstream = sum(st.total_calls for st in stats)
    dead = [f"GET /contacts/{i:04d}" for i, kind in special.items() if kind in ("404", "403")]
    p50, p95 = _s(percentile(times, 50)), _s(percentile(times, 95))
    per_call = f"{upstream / max(logical, 1):.2f} ({upstream}/{logical})"
    wasted = f"{sum(crm.calls.get(p, 0) for p in dead)} for {len(dead)}"
    rows: list[tuple[str, object]] = [("Faults injected by the chaos API", "")]
    rows += [(f"  {label}", count) for label, count in fault_rows(stats)]
    rows += [
        ("Workflows (steps: get_contact, some create_contact)", len(runs)),
        ("  healed without a human", healed),
        ("    of which rerouted to crm_eu", n["rerouted"]),
        ("  no fault met", n["clean"]),
        ("  escalated, awaiting a decision", n["awaiting"]),
        ("  failed / still running", f"{n['failed']} / {n['running']}"),
        ("Transient faults healed without a human", f"{healed}/{len(met_fault)} workflows"),
        ("Time to heal p50 / p95 (start to done)", f"{p50} / {p95}"),
        ("Upstream calls per logical call", per_call),
        ("Calls to permanently failing paths", wasted),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows) + 2
    print("", file=out)
    for label, value in rows:
        print(f"{label:<{width}}{value}", file=out)
    waiting = [r.handle.id for r, o in zip(runs, outcomes, strict=True) if o == "awaiting"]
    addr = f"--address {server.address}"
    example = waiting[0] if waiting else "<workflow-id>"
    query = "HealingStatus%3D%22awaiting_decision%22"
    print(
        "\nDecide the escalated ones (retry, skip, abort, edit_and_retry ...):\n"
        f"  healing escalations {addr}\n"
        f"  healing status {example} {addr}\n"
        f"  healing decide {example} skip {addr}\n"
        f"  Web UI: {server.ui_url}/namespaces/{server.namespace}/workflows?query={query}",
        file=out,
    )
    if not opts.keep:
        print(
            "The demo stops what it started now; escalated workflows stay in "
            f"{server.state_dir / 'temporal.db'}. Run `healing demo --keep` to decide live.",
            file=out,
        )
    out.flush()
    return outcomes


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
