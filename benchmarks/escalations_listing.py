"""How fast `healing escalations` answers with 1,000 paused workflows, with a worker and without.

    .venv/bin/python benchmarks/escalations_listing.py [--workflows 1000] [--repeat 5]

Starts a Temporal dev server (free ports, temp dir, search attributes registered) and a healing
worker whose only activity is a tiny ``@healing.integration`` stand-in for ``call_integration``
that always fails with a 404-like ``IntegrationFailure``: every ``IntegrationWorkflow`` pauses
at its first step (NOT_FOUND escalates at once). Once all are paused it times, with the worker
running and again after stopping it:

- ``list_escalations``: the function the command calls (one visibility list call, memos decoded
  from the list response), on a connected client;
- ``healing escalations`` in process (``healing.cli`` main: connect, list, render the table);
- ``healing escalations`` as a subprocess, once (adds interpreter start-up and imports);
- ``healing status WF`` and ``healing decide WF retry`` as subprocesses, once (no worker: they
  must answer within seconds, and decide must send nothing).

Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from harness import table  # benchmarks/harness.py
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

import healing
from activities.integration import CALL_INTEGRATION, CallRequest
from healing import cli
from healing.client import AWAITING_QUERY, list_escalations
from healing.devserver import DevServer
from healing.errors import IntegrationFailure
from workflows import IntegrationWorkflow

HEALING = [str(Path(sys.executable).parent / "healing")]


@activity.defn(name=CALL_INTEGRATION)
@healing.integration(connector="crm", operation="get_contact")
async def always_not_found(req: CallRequest) -> dict[str, Any]:
    """The CRM says the contact does not exist, every time: the workflow pauses at once."""
    raise IntegrationFailure(
        f"crm answered 404 for {req.params.get('id')}",
        status_code=404,
        body={"message": "contact not found", "category": "OBJECT_NOT_FOUND"},
        connector=req.connector,
        operation=req.operation,
    )


def step(i: int) -> dict[str, Any]:
    return {"steps": [{"connector": "crm", "operation": "get_contact", "params": {"id": str(i)}}]}


async def pause_all(client: Client, task_queue: str, n: int) -> float:
    """Start ``n`` workflows and wait until visibility lists every one as paused."""
    started = time.monotonic()
    gate = asyncio.Semaphore(50)

    async def start(i: int) -> None:
        async with gate:
            await client.start_workflow(
                "IntegrationWorkflow", step(i), id=f"bench-esc-{i:04d}-{uuid.uuid4().hex[:6]}",
                task_queue=task_queue,
            )  # fmt: skip

    await asyncio.gather(*(start(i) for i in range(n)))
    await wait_paused(client, task_queue, n, started)
    return time.monotonic() - started


async def wait_paused(client: Client, task_queue: str, n: int, started: float) -> None:
    """Until visibility lists ``n`` paused workflows on ``task_queue``."""
    query = f'TaskQueue = "{task_queue}" AND {AWAITING_QUERY}'
    last = -1
    while (paused := (await client.count_workflows(query)).count) < n:
        if paused != last:
            print(f"  {paused}/{n} paused after {time.monotonic() - started:.0f}s", file=sys.stderr)
            last = paused
        await asyncio.sleep(0.5)


async def time_function(client: Client, n: int, repeat: int) -> list[float]:
    """Wall times of ``list_escalations`` (asserting it lists all ``n``)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        listing = await list_escalations(client)
        times.append(time.perf_counter() - t)
        assert len(listing.workflows) == n and all(w.brief for w in listing.workflows), listing
    return times


def time_in_process(address: str, n: int, repeat: int) -> list[float]:
    """Wall times of the command in process (``healing.cli`` main, output to a buffer)."""
    times = []
    for _ in range(repeat):
        out = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stdout(out):
            code = cli.main(["escalations", "--address", address])
        times.append(time.perf_counter() - t)
        assert code == 0 and out.getvalue().startswith(f"{n} open escalations"), out.getvalue()
    return times


def time_command(*args: str) -> tuple[float, int, str]:
    """One subprocess run: wall time, exit code, first line of its output."""
    t = time.perf_counter()
    proc = subprocess.run([*HEALING, *args], capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - t
    first = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[:1]
    return took, proc.returncode, first[0] if first else ""


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} / {max(values) * 1000:.0f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workflows", type=int, default=1000, help="paused workflows (1000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per in-process row")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # one warning per pause otherwise
    with tempfile.TemporaryDirectory(prefix="bench-escalations-") as tmp:
        server = DevServer(state_dir=Path(tmp))
        server.start(timeout=60)
        try:
            await run(server, opts.workflows, opts.repeat)
        finally:
            server.stop()


async def run(server: DevServer, n: int, repeat: int) -> None:
    plugin = healing.HealingPlugin(healing.HealingConfig())
    client = await Client.connect(server.address, namespace=server.namespace, plugins=[plugin])
    task_queue = f"bench-escalations-{uuid.uuid4()}"
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[IntegrationWorkflow],
        activities=[always_not_found],
    )
    rows = [["healing escalations, 1 visibility call", "with a worker", "worker stopped"]]
    results: dict[str, list[str]] = {}
    print(f"pausing {n} workflows on {server.address} ...", file=sys.stderr)
    async with worker:
        took = await pause_all(client, task_queue, n)
        print(f"  all {n} paused in {took:.0f}s", file=sys.stderr)
        some = (await list_escalations(client, limit=1)).workflows[0].workflow_id
        results["with"] = await measure(client, server.address, n, repeat, some)
        # The decided one retries, fails again and pauses anew: wait for it before stopping.
        await wait_paused(client, task_queue, n, time.monotonic())
    results["without"] = await measure(client, server.address, n, repeat, some)
    labels = [
        f"list_escalations(), {n} rows: median / max ms",
        "healing escalations in process: median / max ms",
        "healing escalations subprocess: ms",
        "healing escalations --json subprocess: ms",
        "healing status WF subprocess: ms (exit)",
        "healing decide WF retry subprocess: ms (exit)",
    ]
    for i, label in enumerate(labels):
        rows.append([label, results["with"][i], results["without"][i]])
    print(f"\n{n} paused workflows, dev server on 127.0.0.1, {repeat} runs per in-process row\n")
    print(table(rows))
    print(
        "\nWith the worker stopped `healing decide` exits 3 (nothing sent) after asking the "
        "server for pollers and one bounded query; with a worker it applies the update."
    )


async def measure(client: Client, address: str, n: int, repeat: int, some: str) -> list[str]:
    function = await time_function(client, n, repeat)
    in_process = await asyncio.to_thread(time_in_process, address, n, repeat)
    table_run = await asyncio.to_thread(time_command, "escalations", "--address", address)
    json_run = await asyncio.to_thread(time_command, "escalations", "--json", "--address", address)
    status = await asyncio.to_thread(time_command, "status", some, "--address", address)
    # With a worker this really decides (retry: the call fails again and pauses anew).
    decide = await asyncio.to_thread(time_command, "decide", some, "retry", "--address", address)
    return [
        ms(function),
        ms(in_process),
        f"{table_run[0] * 1000:.0f}",
        f"{json_run[0] * 1000:.0f}",
        f"{status[0] * 1000:.0f} ({status[1]})",
        f"{decide[0] * 1000:.0f} ({decide[1]})",
    ]


if __name__ == "__main__":
    asyncio.run(main())
