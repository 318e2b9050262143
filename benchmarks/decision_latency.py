"""How long a human decision takes to resume a paused workflow, and what paused workflows cost
a worker in memory, in one run.

    .venv/bin/python benchmarks/decision_latency.py [-n 30] [--paused 1000] [--cache 100]
    .venv/bin/python benchmarks/decision_latency.py --quick      # -n 5, --paused 200

Starts a Temporal dev server (free ports, temp dir, headless, in memory, search attributes
registered), then:

1. Decision-to-resume latency. A healing worker runs in process; its only activity is a tiny
   ``@healing.integration`` stand-in for ``call_integration`` that fails with a 404-like
   ``IntegrationFailure`` the first time each workflow calls it (NOT_FOUND escalates at once:
   the ``IntegrationWorkflow`` pauses) and succeeds after. ``n + 1`` workflows per path are
   paused, then decided ``retry`` one at a time, the three paths interleaved (the first round
   is a warm-up and not counted), each timed from just before the decision is sent to the
   workflow's result:

   - CLI: ``healing decide WF retry`` as a subprocess (TEMPORAL_ADDRESS set): interpreter
     start-up, imports, connect, poller check, status query, ``decide_escalation`` update;
   - HTTP: ``POST /api/workflows/{id}/decision`` to ``healing serve --port 0`` (a subprocess,
     HEALING_API_TOKEN set, one keep-alive connection): describe, status query, update;
   - signal: the ``escalation_decision`` signal from a connected client, what the Temporal
     Web UI's "Send a Signal" sends (not validated, no answer).

2. Worker RSS with ``--paused`` workflows paused on it. The worker is a subprocess (a small
   inline script: ``Worker(HealingPlugin, always-404 activity, IntegrationWorkflow)``), run
   twice in turn: with the SDK's default ``max_cached_workflows`` (1000) and with ``--cache``
   (100), where the sticky cache evicts all but the last 100 paused workflows. VmRSS and VmHWM
   come from ``/proc/<pid>/status``: idle (connected and polling, no workflow yet), right after
   all are paused, and after a short settle.

Tables go to stdout, progress to stderr. Everything this script starts (dev server, worker,
``healing serve``, CLI runs) it stops itself, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from harness import pct, table  # benchmarks/harness.py
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

import healing
from activities.integration import CALL_INTEGRATION, CallRequest
from healing.client import AWAITING_QUERY
from healing.devserver import DevServer
from healing.errors import IntegrationFailure
from healing.names import DECISION_SIGNAL
from workflows import IntegrationWorkflow

ROOT = Path(__file__).resolve().parent.parent
HEALING = str(Path(sys.executable).parent / "healing")
TOKEN = uuid.uuid4().hex  # HEALING_API_TOKEN of the `healing serve` this script starts
SDK_DEFAULT_CACHE = 1000  # temporalio Worker(max_cached_workflows=1000)

_failed_once: set[str] = set()


@activity.defn(name=CALL_INTEGRATION)
@healing.integration(connector="crm", operation="get_contact")
async def not_found_once(req: CallRequest) -> dict[str, Any]:
    """404 on a workflow's first call (it pauses), the contact on every call after."""
    workflow_id = activity.info().workflow_id or ""
    if workflow_id not in _failed_once:
        _failed_once.add(workflow_id)
        raise IntegrationFailure(
            f"crm answered 404 for {req.params.get('id')}",
            status_code=404,
            body={"message": "contact not found", "category": "OBJECT_NOT_FOUND"},
            connector=req.connector,
            operation=req.operation,
        )
    return {"result": {"id": req.params.get("id")}, "status": 200, "connector": req.connector}


# The RSS worker: its own interpreter, nothing of this script imported (no httpx client,
# no harness), so its memory is a worker's. argv: address, task queue, max_cached_workflows
# (-1: the SDK default). Prints "READY <pid>" once polling; runs until SIGTERM.
CHILD_WORKER = r"""
import asyncio, logging, os, sys
from typing import Any
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker
import healing
from activities.integration import CALL_INTEGRATION, CallRequest
from healing.errors import IntegrationFailure
from workflows import IntegrationWorkflow

@activity.defn(name=CALL_INTEGRATION)
@healing.integration(connector="crm", operation="get_contact")
async def always_not_found(req: CallRequest) -> dict[str, Any]:
    raise IntegrationFailure(
        f"crm answered 404 for {req.params.get('id')}", status_code=404,
        body={"message": "contact not found", "category": "OBJECT_NOT_FOUND"},
        connector=req.connector, operation=req.operation,
    )

async def main(address: str, task_queue: str, cached: int) -> None:
    client = await Client.connect(address, plugins=[healing.HealingPlugin(healing.HealingConfig())])
    kw = {} if cached < 0 else {"max_cached_workflows": cached}
    worker = Worker(client, task_queue=task_queue, workflows=[IntegrationWorkflow],
                    activities=[always_not_found], **kw)
    async with worker:
        print(f"READY {os.getpid()}", flush=True)
        await asyncio.Event().wait()

logging.basicConfig(level=logging.ERROR)
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def step(key: str) -> dict[str, Any]:
    return {"steps": [{"connector": "crm", "operation": "get_contact", "params": {"id": key}}]}


async def pause(client: Client, task_queue: str, ids: Sequence[str]) -> float:
    """Start one workflow per id and wait until visibility lists every one as paused."""
    started = time.monotonic()
    gate = asyncio.Semaphore(50)

    async def start(wf_id: str) -> None:
        async with gate:
            await client.start_workflow(
                "IntegrationWorkflow", step(wf_id), id=wf_id, task_queue=task_queue
            )

    await asyncio.gather(*(start(wf_id) for wf_id in ids))
    query = f'TaskQueue = "{task_queue}" AND {AWAITING_QUERY}'
    shown = time.monotonic()
    while (paused := (await client.count_workflows(query)).count) < len(ids):
        if time.monotonic() - shown >= 5:
            say(f"  {paused}/{len(ids)} paused after {time.monotonic() - started:.0f}s")
            shown = time.monotonic()
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the child this script started (by its pid), SIGKILL after 10 s."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


# -- 1. decision-to-resume latency ----------------------------------------------------------

Decide = Callable[[str], Awaitable[None]]


class Paths:
    """The three ways to send ``retry``; each returns once its sender is done."""

    def __init__(self, client: Client, address: str, serve_url: str) -> None:
        self.client = client
        self.env = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "default"}
        self.http = httpx.AsyncClient(
            base_url=serve_url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}
        )

    async def cli(self, wf_id: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            HEALING, "decide", wf_id, "retry", "--by", "bench", env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"healing decide {wf_id} exited {proc.returncode}: {out!r}")

    async def http_post(self, wf_id: str) -> None:
        body = {"option": "retry", "decided_by": "bench"}
        response = await self.http.post(f"/api/workflows/{wf_id}/decision", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"POST decision {wf_id}: {response.status_code} {response.text}")

    async def signal(self, wf_id: str) -> None:
        handle = self.client.get_workflow_handle(wf_id)
        await handle.signal(DECISION_SIGNAL, {"option": "retry", "decided_by": "bench"})


async def timed_decision(client: Client, wf_id: str, decide: Decide) -> tuple[float, float]:
    """(seconds until the sender returned, seconds until the workflow's result)."""
    handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(wf_id)
    done: list[float] = []

    async def result() -> Any:
        value = await handle.result()
        done.append(time.perf_counter())
        return value

    waiter = asyncio.create_task(result())
    await asyncio.sleep(0.05)  # the result long-poll is in flight before the decision
    t0 = time.perf_counter()
    await decide(wf_id)
    sent = time.perf_counter() - t0
    value = await asyncio.wait_for(waiter, 60)
    assert value["steps"][0]["status"] == "ok", value
    return sent, done[0] - t0


async def start_serve(address: str, workdir: Path) -> tuple[asyncio.subprocess.Process, str]:
    """``healing serve --port 0`` as a child; its URL from the line it prints."""
    out_file = workdir / "serve.out"
    env = {**os.environ, "HEALING_API_TOKEN": TOKEN}
    with out_file.open("wb") as out:  # uvicorn's access log goes to stdout: a file, not a pipe
        proc = await asyncio.create_subprocess_exec(
            HEALING, "serve", "--port", "0", "--host", "127.0.0.1", "--address", address,
            env=env, stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = out_file.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("healing serve: inbox http://"):
                return proc, line.split("inbox ", 1)[1].split("/ ", 1)[0]
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.2)
    await stop_process(proc)
    raise RuntimeError(f"healing serve did not start: {out_file.read_text()[-2000:]}")


async def latency(server: DevServer, n: int, workdir: Path) -> str:
    client = await server.connect(plugins=[healing.HealingPlugin(healing.HealingConfig())])
    task_queue = f"bench-decide-{uuid.uuid4()}"
    worker = Worker(
        client, task_queue=task_queue, workflows=[IntegrationWorkflow], activities=[not_found_once]
    )
    names = ("cli", "http", "signal")
    ids = {
        p: [f"bench-decide-{p}-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(n + 1)] for p in names
    }
    serve, url = await start_serve(server.address, workdir)
    paths = Paths(client, server.address, url)
    senders: dict[str, Decide] = {"cli": paths.cli, "http": paths.http_post, "signal": paths.signal}
    sent: dict[str, list[float]] = {p: [] for p in names}
    resumed: dict[str, list[float]] = {p: [] for p in names}
    try:
        async with worker:
            total = sum(len(v) for v in ids.values())
            say(f"latency: pausing {total} workflows; healing serve at {url}")
            took = await pause(client, task_queue, [i for p in names for i in ids[p]])
            say(f"  all {total} paused in {took:.0f}s; deciding {n} + 1 warm-up per path")
            for i in range(n + 1):
                for p in names:
                    s, r = await timed_decision(client, ids[p][i], senders[p])
                    if i > 0:  # round 0 warms up (first subprocess, first connection)
                        sent[p].append(s)
                        resumed[p].append(r)
                if i % 10 == 0:
                    say(f"  round {i}/{n} done")
    finally:
        await paths.http.aclose()
        await stop_process(serve)

    def ms(values: list[float], p: float) -> str:
        v = pct(values, p)
        return "-" if v is None else f"{v * 1000:.0f}"

    labels = {
        "cli": "CLI: healing decide WF retry (subprocess)",
        "http": "HTTP: POST /api/workflows/{id}/decision",
        "signal": f"signal: {DECISION_SIGNAL} (client)",
    }
    rows = [
        ["path (decision -> workflow result)", "n", "p50 ms", "p95 ms", "max ms", "sent p50 ms"]
    ]
    for p in names:
        r = resumed[p]
        rows.append([labels[p], str(len(r)), ms(r, 0.5), ms(r, 0.95), ms(r, 1.0), ms(sent[p], 0.5)])
    return table(rows)


# -- 2. worker RSS with paused workflows ----------------------------------------------------


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB, from /proc/<pid>/status."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


async def worker_rss(
    client: Client, address: str, paused: int, cached: int, settle_s: float, workdir: Path
) -> dict[str, Any]:
    """One subprocess worker (``cached`` -1: the SDK default), ``paused`` workflows on it."""
    task_queue = f"bench-rss-{uuid.uuid4()}"
    log = workdir / f"worker-{task_queue}.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD_WORKER, address, task_queue, str(cached),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line.startswith(b"READY "):
            raise RuntimeError(f"worker did not start: {line!r}; see {log}")
        pid = int(line.split()[1])
        assert pid == proc.pid
        await asyncio.sleep(2)  # pollers up, start-up garbage settled
        idle = memory(pid)
        ids = [f"bench-rss-{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(paused)]
        took = await pause(client, task_queue, ids)
        at_pause = memory(pid)
        await asyncio.sleep(settle_s)
        settled = memory(pid)
        say(f"  {paused} paused in {took:.0f}s; RSS {idle[0]} -> {at_pause[0]} KiB")
        return {"idle": idle, "paused": at_pause, "settled": settled, "took": took}
    finally:
        await stop_process(proc)


async def rss(server: DevServer, paused: int, cache: int, settle_s: float, workdir: Path) -> str:
    client = await server.connect(plugins=[healing.HealingPlugin(healing.HealingConfig())])
    runs: list[tuple[str, int, dict[str, Any]]] = []
    for cached, label in ((-1, f"default ({SDK_DEFAULT_CACHE})"), (cache, str(cache))):
        say(f"rss: worker subprocess, max_cached_workflows={label}, pausing {paused}")
        runs.append(
            (
                label,
                cached,
                await worker_rss(client, server.address, paused, cached, settle_s, workdir),
            )
        )

    def mib(kib: int) -> str:
        return f"{kib / 1024:.1f}"

    rows = [["worker subprocess, max_cached_workflows"] + [label for label, _, _ in runs]]
    rows.append(["idle RSS MiB (polling, no workflow)"] + [mib(r["idle"][0]) for *_, r in runs])
    rows.append([f"RSS MiB with {paused} paused"] + [mib(r["paused"][0]) for *_, r in runs])
    rows.append([f"RSS MiB {settle_s:.0f} s later"] + [mib(r["settled"][0]) for *_, r in runs])
    rows.append(["peak RSS MiB (VmHWM)"] + [mib(r["settled"][1]) for *_, r in runs])
    growth = [r["paused"][0] - r["idle"][0] for *_, r in runs]
    rows.append(["per paused workflow KiB"] + [f"{g / paused:.0f}" for g in growth])
    cached_n = [min(paused, SDK_DEFAULT_CACHE if c < 0 else c) for _, c, _ in runs]
    rows.append(["workflows in the sticky cache"] + [str(c) for c in cached_n])
    rows.append(
        ["per cached workflow KiB"]
        + [f"{g / c:.0f}" if c else "-" for g, c in zip(growth, cached_n, strict=True)]
    )
    rows.append([f"time to pause {paused} s"] + [f"{r['took']:.0f}" for *_, r in runs])
    return table(rows)


# -- main ---------------------------------------------------------------------------------


async def run(opts: argparse.Namespace) -> list[str]:
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-decide-") as tmp:
        workdir = Path(tmp)
        async with DevServer(state_dir=workdir, ui=False, db=False) as server:
            say(f"dev server on {server.address}")
            if not opts.skip_latency:
                table_text = await latency(server, opts.n, workdir)
                out.append(
                    f"Decision-to-resume latency, retry, {opts.n} decisions per path (after one "
                    "warm-up), paths interleaved, in-process worker, dev server on 127.0.0.1\n\n"
                    + table_text
                    + "\n\nsent: until the sender is done (CLI exit, HTTP 200 after the update is "
                    "accepted, signal RPC); the rest is the workflow task, the activity's retry "
                    "and the result long-poll."
                )
            if not opts.skip_rss:
                table_text = await rss(server, opts.paused, opts.cache, opts.settle, workdir)
                out.append(
                    f"Worker RSS with {opts.paused} paused workflows (worker in a subprocess, "
                    "/proc/<pid>/status)\n\n"
                    + table_text
                    + "\n\nper paused workflow: (RSS with all paused - idle) / paused; per cached "
                    "workflow: the same growth over the workflows the sticky cache holds at the "
                    "end. With the small cache the growth also holds what evictions leave behind "
                    "(memory Python's allocator keeps), so its per-cached figure overstates one "
                    "cached workflow."
                )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=None, help="timed decisions per path (30)")
    p.add_argument("--paused", type=int, default=None, help="paused workflows for RSS (1000)")
    p.add_argument("--cache", type=int, default=100, help="small max_cached_workflows (100)")
    p.add_argument("--settle", type=float, default=None, help="seconds before the last RSS (10)")
    p.add_argument("--quick", action="store_true", help="-n 5, --paused 200, --settle 3")
    p.add_argument("--skip-latency", action="store_true", help="only the RSS table")
    p.add_argument("--skip-rss", action="store_true", help="only the latency table")
    opts = p.parse_args(argv)
    opts.n = opts.n if opts.n is not None else 5 if opts.quick else 30
    opts.paused = opts.paused if opts.paused is not None else 200 if opts.quick else 1000
    opts.settle = opts.settle if opts.settle is not None else 3.0 if opts.quick else 10.0
    logging.basicConfig(level=logging.ERROR)  # one warning per pause otherwise
    began = time.monotonic()
    for block in asyncio.run(run(opts)):
        print(block + "\n")
    say(f"(one run, {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the Temporal client's Rust threads can abort it
    # (temporalio/sdk-python#300).
    os._exit(code)
