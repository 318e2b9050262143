"""`healing demo`: a real dev server, a chaos CRM, a healing worker and a batch of workflows.

Starts the Temporal dev server (state in ``.healing/demo``), three chaos HTTP servers (``crm``;
``crm_eu``, its healthy reroute target; ``deals``, an OAuth 2 API whose token has expired), an
in-process worker with the HealingPlugin and a SQLite store (``healing.db`` in the state dir),
runs ``count`` IntegrationWorkflows under a seeded mixed fault plan plus one token expiry and
one schema drift, shows live progress and prints what was injected, healed and escalated, what
the store learned, and next steps that run as printed. Backoff is shortened (0.5 s, cap 5 s) so
it ends fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import shlex
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

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
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
from healing.credentials import Credential, MemoryCredentialStore, OAuthClient
from healing.devserver import DevServer, find_free_port
from healing.oauth import TokenRefresher
from healing.plugin import HealingPlugin
from healing.runner import build_worker, connect, load_config
from healing.store import EventFilter, PatternStats, Store, connect_store
from healing.testing import (
    ChaosAPI,
    ChaosStats,
    ChaosThread,
    Fault,
    FaultPlan,
    FaultRule,
    ResetFault,
    SchemaRenameFault,
    StatusFault,
    TimeoutFault,
    Vendor,
)

CLIENT_TIMEOUT_S = 2
PATIENCE_S = 120.0
"""Stop waiting for in-flight workflows after this long (they are reported as still running)."""
TOKEN_DEAL = "7"
"""The deal the token-expiry workflow reads from ``deals`` (its stored token has expired)."""
DRIFT_CONTACT = "drift-1"
"""The contact whose API answer drifted: ``email`` renamed ``email_address``."""
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
_CHECKED = """\
[connectors.crm.operations.get_checked_contact]
method = "GET"
path = "/contacts/{id}"
response_model = "healing.demo:DemoContact"
"""
_DEALS = """\
[connectors.deals]
base_url = "{url}"
timeout_s = {timeout}
[connectors.deals.auth]
kind = "oauth2"
token_url = "{url}/oauth/token"
client_id = "healing-demo"
[connectors.deals.operations.get_deal]
method = "GET"
path = "/deals/{{id}}"
"""


class DemoContact(BaseModel):
    """What ``crm.get_checked_contact`` must answer (its ``response_model``)."""

    id: str
    email: str
    name: str


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
    kind: str | None = None
    """What the workflow was singled out for: "404", "403", "outage", "token", "drift"."""
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


def demo_config(store_url: str | None = None) -> HealingConfig:
    """Spec defaults except a short backoff and breaker pause, so the demo ends quickly."""
    extra: dict[str, Any] = {"store": store_url} if store_url else {}
    return load_config(
        backoff=BackoffPolicy(initial_s=0.5, max_s=5.0), breaker=BreakerPolicy(open_s=5.0), **extra
    )


def store_url(state_dir: Path) -> str:
    """The demo's SQLite store, ``healing.db`` in the state dir (relative stays relative)."""
    return f"sqlite:///{state_dir / 'healing.db'}"  # an absolute path gives sqlite:////...


def fault_plan(seed: int, rate: float, count: int) -> tuple[FaultPlan, dict[int, str]]:
    """Random transient faults on every path, plus per-workflow outages and permanent errors.

    Returns the plan and what workflow ``i`` was singled out for: "404", "403" (permanent) or
    "outage" (503 for 2 attempts, or 4 so that the call reroutes to ``crm_eu``). The contact
    ``DRIFT_CONTACT`` always answers in a drifted schema (``email`` renamed).

    429s use Slack's shape (Retry-After only). HubSpot's also says the app's 10 s window is
    spent, which paces every call of the connector for 10 s: realistic, but it would make
    most of the batch wait on one path's fault.
    """
    rng = random.Random(seed)
    picks = rng.sample(range(count), k=min(count, max(2, round(count * 0.12))))
    permanent = max(1, round(count * 0.05))
    special: dict[int, str] = {}
    rules: list[FaultRule] = [
        FaultRule(method="GET", path=f"/contacts/{DRIFT_CONTACT}", always=SchemaRenameFault())
    ]
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


def write_catalog(path: Path, crm_url: str, eu_url: str, deals_url: str) -> ConnectorCatalog:
    """The demo's catalog: ``crm`` (with ``crm_eu`` as its alternative and a
    ``get_checked_contact`` with a response model) and the OAuth 2 ``deals``."""
    text = _CATALOG.format(
        name="crm", url=crm_url, timeout=CLIENT_TIMEOUT_S, alternatives='["crm_eu"]'
    )
    text += _CHECKED
    text += _CATALOG.format(name="crm_eu", url=eu_url, timeout=CLIENT_TIMEOUT_S, alternatives="[]")
    text += _DEALS.format(url=deals_url, timeout=CLIENT_TIMEOUT_S)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return ConnectorCatalog.from_toml(text, source=str(path))


async def expired_token_refresher(deals: ChaosThread) -> TokenRefresher:
    """The worker's refresher for ``deals``, holding a token the API has since expired (the
    first call gets a 401, healing refreshes it at the API's token endpoint and retries)."""
    tokens = deals.issue_tokens()
    store = MemoryCredentialStore()
    cred = Credential(
        connector="deals", access_token=tokens.access_token, refresh_token=tokens.refresh_token
    )
    await store.put(cred, expected_version=None)
    deals.expire_tokens()
    client = OAuthClient(token_url=f"{deals.url}/oauth/token", client_id="healing-demo")
    return TokenRefresher(store, {"deals": client})


def steps_for(i: int, rng: random.Random) -> list[dict[str, Any]]:
    """get_contact, and for about 40% of the workflows a create_contact after it."""
    steps: list[dict[str, Any]] = [
        {"connector": "crm", "operation": "get_contact", "params": {"id": f"{i:04d}"}}
    ]
    if rng.random() < 0.4:
        person = {"name": f"Lead {i}", "email": f"lead{i}@example.com"}
        steps.append({"connector": "crm", "operation": "create_contact", "params": person})
    return steps


EXTRA_STEPS: dict[str, list[dict[str, Any]]] = {
    "token": [{"connector": "deals", "operation": "get_deal", "params": {"id": TOKEN_DEAL}}],
    "drift": [
        {"connector": "crm", "operation": "get_checked_contact", "params": {"id": DRIFT_CONTACT}}
    ],
}
"""The workflows after the batch: one meets an expired token, one a drifted schema."""


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
        ("schema drift (email renamed email_address)", kind["schema_rename"]),
        ("total", sum(kind.values())),
    ]


def healing_command(cwd: Path | None = None) -> str:
    """How to run ``healing`` from a shell without the virtualenv activated: the console
    script beside this Python (relative to ``cwd`` when it is inside it)."""
    script = Path(sys.executable).absolute().parent / "healing"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m healing.cli"
    return shlex.quote(_shown(script, cwd))


def _shown(path: Path, cwd: Path | None) -> str:
    """``path`` relative to ``cwd`` when inside it (``.venv/bin/healing``), else absolute."""
    base = (cwd or Path.cwd()).absolute()
    absolute = path if path.is_absolute() else base / path
    try:
        return str(absolute.relative_to(base))
    except ValueError:
        return str(absolute)


def next_steps(
    state_dir: Path, *, keep: bool, address: str, example: str | None, token_wf: str | None
) -> list[str]:
    """Commands that run as printed from the demo's directory, virtualenv activated or not."""
    healing = healing_command()
    db = _shown(state_dir / "healing.db", None)
    env = f"HEALING_STORE={shlex.quote(f'sqlite:///{db}')}"
    steps = [f"{env} {healing} patterns", f"{env} {healing} events --limit 20"]
    if token_wf:
        steps.append(f"{env} {healing} events --workflow-id {shlex.quote(token_wf)}")
    if keep:
        addr = f"--address {shlex.quote(address)}"
        steps.append(f"{healing} escalations {addr}")
        if example:
            wf = shlex.quote(example)
            steps += [f"{healing} status {wf} {addr}", f"{healing} decide {wf} skip {addr}"]
    return steps


async def run_demo(opts: DemoOptions) -> int:
    """Run the demo; the exit code is 1 when a workflow failed, else 0."""
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    with _on_signals(stop.set):
        return await _run(opts, stop)


def _console(out: TextIO) -> Console:
    """Colour and live redraws on a terminal; plain text, no wrapping, elsewhere."""
    tty = out.isatty()
    return Console(file=out, width=None if tty else 160, highlight=False, soft_wrap=not tty)


async def _run(opts: DemoOptions, stop: asyncio.Event) -> int:
    out, state_dir = opts.out, opts.state_dir
    console = _console(out)
    url = store_url(state_dir)
    config = demo_config(url)
    plan, special = fault_plan(opts.seed, opts.rate, opts.count)
    port, ui_port = opts.port or _port(7233), opts.ui_port or _port(8233)
    server = DevServer(state_dir=state_dir, port=port, ui_port=ui_port)
    console.print(f"Starting the Temporal dev server (state in {state_dir}) ...", markup=False)
    runs: list[_Run] = []
    outcomes: list[str] = []
    store: Store = await connect_store(url)
    try:
        with (
            ChaosAPI(plan).start_in_thread() as crm,
            ChaosAPI().start_in_thread() as eu,
            ChaosAPI(require_token=True).start_in_thread() as deals,
        ):
            catalog = write_catalog(state_dir / "connectors.toml", crm.url, eu.url, deals.url)
            tokens = await expired_token_refresher(deals)
            await server.start_async(timeout=60)
            try:
                with _logs_to(state_dir / "demo.log"):
                    plugin = HealingPlugin(
                        config, alternatives=catalog.alternatives(), tokens=tokens, store=store
                    )
                    client = await connect(
                        server.address,
                        server.namespace,
                        plugin,
                        runtime=_runtime_logging_to_python(),
                    )
                    worker, acts = build_worker(client, config, catalog, tokens=tokens, fleet=store)
                    try:
                        async with worker:
                            _intro(console, opts, server, (crm, eu, deals), special, url)
                            await _start(client, opts, worker.task_queue, runs, special)
                            await _progress(console, client, runs, stop)
                            await plugin.interceptor.events.flush()  # for the summary's proof
                            stats = [crm.stats(), eu.stats(), deals.stats()]
                            outcomes = await _summary(console, runs, store, stats)
                            _learned(console, await store.patterns(limit=20), url)
                            _next(console, opts, server, runs, outcomes)
                            if opts.keep and not stop.is_set():
                                console.print("\nEverything stays up; Ctrl-C stops it.")
                                await stop.wait()
                    finally:
                        for run in runs:
                            run.task.cancel()
                        await asyncio.gather(*(r.task for r in runs), return_exceptions=True)
                        await acts.aclose()
                        await tokens.aclose()
            finally:
                await asyncio.to_thread(server.stop)
    finally:
        await store.close()
    out.flush()
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
    console: Console,
    opts: DemoOptions,
    server: DevServer,
    chaos: tuple[ChaosThread, ChaosThread, ChaosThread],
    special: dict[int, str],
    url: str,
) -> None:
    crm, eu, deals = chaos
    kinds = Counter(special.values())
    console.print(
        f"Temporal {server.address}, Web UI {server.ui_url}, worker log "
        f"{opts.state_dir / 'demo.log'}, store {url}\n"
        f"Chaos CRM {crm.url} (crm), {eu.url} (crm_eu, its healthy reroute target), "
        f"{deals.url} (deals, OAuth 2: its stored access token has expired)\n"
        f"Fault plan (seed {opts.seed}): {opts.rate:.0%} of upstream attempts get a random "
        "timeout, reset, 500, 503 or Slack 429 + Retry-After 1-3 s (at most 2 in a row); "
        f"{kinds['outage']} short 503 outages (2 or 4 attempts; 4 reroute to crm_eu), "
        f"{kinds['404'] + kinds['403']} permanent 404/403; plus one expired token (deals) and "
        f"one schema drift (crm renamed email to email_address for contact {DRIFT_CONTACT})\n"
        "Demo backoff: initial 0.5 s, x2, cap 5 s; breaker pause 5 s (defaults 1 s, 30 s, 30 s; "
        f"shortened so the demo ends quickly). Client timeout {CLIENT_TIMEOUT_S} s.\n",
        markup=False,
    )


async def _start(
    client: Client, opts: DemoOptions, task_queue: str, runs: list[_Run], special: dict[int, str]
) -> None:
    rng = random.Random(opts.seed)
    batch = uuid.uuid4().hex[:6]
    inputs: list[tuple[str, str | None, list[dict[str, Any]]]] = [
        (f"{i:03d}", special.get(i), steps_for(i, rng)) for i in range(opts.count)
    ]
    inputs += [(kind, kind, steps) for kind, steps in EXTRA_STEPS.items()]
    for suffix, kind, steps in inputs:
        handle = await client.start_workflow(
            "IntegrationWorkflow",
            {"steps": steps},
            id=f"demo-{batch}-{suffix}",
            task_queue=task_queue,
        )
        run = _Run(handle, time.monotonic(), asyncio.create_task(handle.result()), kind=kind)
        run.task.add_done_callback(run.mark_finished)
        runs.append(run)


async def _progress(
    console: Console, client: Client, runs: list[_Run], stop: asyncio.Event
) -> None:
    """A progress bar (redrawn in place on a terminal; a line per change elsewhere) until
    every workflow is done or waits for a human."""
    deadline = time.monotonic() + PATIENCE_S
    bar = Progress(
        TextColumn("[bold]workflows"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    task = bar.add_task("workflows", total=len(runs), counts="")
    last = ""
    with bar:
        while not stop.is_set():
            pending = [r for r in runs if not r.task.done()]
            reports = await asyncio.gather(
                *(healing_status(client, r.handle.id) for r in pending), return_exceptions=True
            )
            for run, rep in zip(pending, reports, strict=True):
                if not isinstance(rep, BaseException) and rep.healing is not None:
                    run.awaiting = bool(rep.healing.open_escalations)
            awaiting = sum(r.awaiting for r in pending)
            done = len(runs) - len(pending)
            counts = (
                f"[green]done {done}[/] | [cyan]healing {len(pending) - awaiting}[/] | "
                f"[yellow]awaiting decision {awaiting}[/]"
            )
            bar.update(task, completed=done + awaiting, counts=counts)
            line = Text.from_markup(f"{counts} | total {len(runs)}").plain
            if not console.is_terminal and line != last:
                console.print(line, markup=False)
                last = line
            if awaiting == len(pending) or time.monotonic() > deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def _healed_by(store: Store, run: _Run | None, kind: str) -> str | None:
    """The store's proof that ``run`` healed by ``kind`` ("refreshed", "adapted"): the
    event's outcome, or None when the workflow did not finish or the event is missing."""
    if run is None or run.outcome() not in ("healed", "rerouted"):
        return None
    events = await store.recent_events(EventFilter(workflow_id=run.handle.id, kind=kind))
    return (events[0].outcome or kind) if events else None


def _styled(label: str, value: object, style: str = "") -> Text:
    text = Text(label)
    text.append(str(value), style=style)
    return text


async def _summary(
    console: Console, runs: list[_Run], store: Store, stats: list[ChaosStats]
) -> list[str]:
    """Print the outcome table; returns each workflow's outcome."""
    outcomes = [r.outcome() for r in runs]
    n = Counter(outcomes)
    healed = n["healed"] + n["rerouted"]
    transient = [o for r, o in zip(runs, outcomes, strict=True) if r.kind in (None, "outage")]
    met_fault = [o for o in transient if o != "clean"]
    healed_transient = sum(1 for o in met_fault if o in ("healed", "rerouted"))
    times = [r.finished - r.started for r, o in zip(runs, outcomes, strict=True)
             if o in ("healed", "rerouted") and r.finished is not None]  # fmt: skip
    # Logical calls: distinct GET paths and POST idempotency keys on crm (reroutes repeat them).
    crm = stats[0]
    logical = len(crm.idempotency_keys) + sum(1 for route in crm.calls if route[:4] == "GET ")
    upstream = sum(st.total_calls for st in stats[:2])
    dead = [f"GET /contacts/{int(r.handle.id.rsplit('-', 1)[1]):04d}"
            for r in runs if r.kind in ("404", "403")]  # fmt: skip
    p50, p95 = _s(percentile(times, 50)), _s(percentile(times, 95))
    per_call = f"{upstream / max(logical, 1):.2f} ({upstream}/{logical})"
    wasted = f"{sum(crm.calls.get(p, 0) for p in dead)} for {len(dead)}"
    by_kind = {r.kind: r for r in runs if r.kind in EXTRA_STEPS}
    refreshed = await _healed_by(store, by_kind.get("token"), "refreshed")
    adapted = await _healed_by(store, by_kind.get("drift"), "adapted")
    rows: list[tuple[str, object, str]] = [("Faults injected by the chaos API", "", "bold")]
    rows += [(f"  {label}", count, "") for label, count in fault_rows(stats)]
    rows += [
        ("Workflows (steps: get_contact, some create_contact)", len(runs), "bold"),
        ("  healed without a human", healed, "green"),
        ("    of which rerouted to crm_eu", n["rerouted"], "green"),
        ("  no fault met", n["clean"], ""),
        ("  escalated, awaiting a decision", n["awaiting"], "yellow"),
        ("  failed / still running", f"{n['failed']} / {n['running']}",
         "red" if n["failed"] or n["running"] else ""),
        ("Transient faults healed without a human",
         f"{healed_transient}/{len(met_fault)} workflows", "green"),
        ("Expired token (deals.get_deal, 401)",
         "healed by a token refresh" if refreshed else "NOT healed",
         "green" if refreshed else "red"),
        ("Schema drift (crm.get_checked_contact)",
         f"healed by a schema adaptation ({adapted})" if adapted else "NOT healed",
         "green" if adapted else "red"),
        ("Time to heal p50 / p95 (start to done)", f"{p50} / {p95}", ""),
        ("Upstream calls per logical call", per_call, ""),
        ("Calls to permanently failing paths", wasted, ""),
    ]  # fmt: skip
    width = max(len(label) for label, _, _ in rows) + 2
    console.print()
    for label, value, style in rows:
        console.print(_styled(f"{label:<{width}}" if value != "" else label, value, style))
    return outcomes


def _learned(console: Console, patterns: list[PatternStats], url: str) -> None:
    """What the store learned: one row per error pattern, its best strategy first."""
    console.print()
    if not patterns:
        console.print(f"The store ({url}) learned no error pattern.", markup=False)
        return
    table = Table(title=f"What the store learned ({url})", title_justify="left")
    for name in ("call", "error", "seen", "strategies (healed/tries, median heal)"):
        table.add_column(name, justify="right" if name == "seen" else "left")
    for stats in patterns:
        pat = stats.pattern
        error = pat.error_type.value + (f" {pat.status_code}" if pat.status_code else "")
        ranked = sorted(stats.strategies, key=lambda st: (-st.successes, st.tries))
        tried = ", ".join(
            f"{st.strategy} {st.successes}/{st.tries}"
            + (f" ({st.median_heal_s:.1f}s)" if st.median_heal_s is not None else "")
            for st in ranked
        )
        table.add_row(f"{pat.connector}.{pat.operation}", error, str(stats.seen), tried or "-")
    console.print(table)


def _next(
    console: Console, opts: DemoOptions, server: DevServer, runs: list[_Run], outcomes: list[str]
) -> None:
    waiting = [r.handle.id for r, o in zip(runs, outcomes, strict=True) if o == "awaiting"]
    token = next((r.handle.id for r in runs if r.kind == "token"), None)
    steps = next_steps(
        opts.state_dir,
        keep=opts.keep,
        address=server.address,
        example=waiting[0] if waiting else None,
        token_wf=token,
    )
    console.print("\n[bold]Next steps[/] (they run as printed, from this directory):")
    for step in steps:
        console.print(f"  $ {step}", markup=False)
    query = "HealingStatus%3D%22awaiting_decision%22"
    if opts.keep:
        console.print(
            f"  Web UI: {server.ui_url}/namespaces/{server.namespace}/workflows?query={query}",
            markup=False,
        )
    else:
        console.print(
            f"The demo stops what it started now; escalated workflows stay in "
            f"{server.state_dir / 'temporal.db'}. To decide them live (retry, skip, abort, "
            f"edit_and_retry ...) in the terminal or the Web UI: {healing_command()} demo --keep",
            markup=False,
        )


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
