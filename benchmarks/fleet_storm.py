"""Retry storms: upstream calls during an outage, and time to heal after it, for a fleet.

    .venv/bin/python benchmarks/fleet_storm.py                      # 60 s outage, 1/3/10 workers
    .venv/bin/python benchmarks/fleet_storm.py --outage-s 20 --workers 1,3 --workflows 100

One table from one run. Each arm: a fresh ChaosAPI (a 503 outage of ``--outage-s`` from the
arm's start on ``GET /contacts/*``), ``--workflows`` IntegrationWorkflows arriving over the
outage's first ``--spread-s`` seconds, on one task queue. Healing arms run N worker processes
(``tests/chaos/worker_proc.py``) sharing one SQLite store (the default store kind) with the
spec's breaker (5 failures / 60 s, first open 5 s, then 30 s). The baseline is Temporal's
default ``RetryPolicy()`` (1 s x2, cap 100 s, unlimited) on a plain activity, one worker.
Columns: upstream calls during the outage (the 503s the chaos server sent), calls per workflow,
seconds from the outage's end to the last workflow's completion. Nothing listens on a fixed
port; the dev server and chaos servers are started and stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402
from temporalio.common import RetryPolicy  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    PlainActivities,
    RetryPolicyInterceptor,
    dev_server_client,
    start_worker_procs,
    stop_procs,
    table,
)
from healing.catalog import ConnectorCatalog  # noqa: E402
from healing.devserver import DevServer  # noqa: E402
from healing.testing import ChaosAPI, FaultPlan, FaultRule  # noqa: E402
from healing.testing.plan import Outage  # noqa: E402
from workflows import IntegrationInput, IntegrationWorkflow, Step  # noqa: E402


def _catalog(url: str, path: Path) -> Path:
    path.write_text(
        f'[connectors.crm]\nbase_url = "{url}"\ntimeout_s = 2\n'
        '[connectors.crm.operations.get_contact]\nmethod = "GET"\npath = "/contacts/{id}"\n'
    )
    return path


async def _arm(
    server: DevServer, client: Client, args: argparse.Namespace, workers: int, tmp: Path
) -> list[str]:
    """One arm; ``workers == 0`` is the default-RetryPolicy baseline."""
    name = f"healing, {workers} worker(s)" if workers else "default RetryPolicy, 1 worker"
    print(f"arm: {name}", file=sys.stderr, flush=True)
    async with ChaosAPI() as chaos:
        catalog = _catalog(chaos.url, tmp / f"connectors-{workers}.toml")
        queue = f"storm-{workers}-{time.time_ns()}"
        procs: list[Any] = []
        plain: PlainActivities | None = None
        worker: Worker | None = None
        if workers:
            store = f"sqlite:///{tmp / f'healing-{workers}.db'}"
            procs = await start_worker_procs(workers, server.address, queue, catalog, store, tmp)
        else:
            plain = PlainActivities(ConnectorCatalog.from_toml(catalog.read_text()))
            worker = Worker(
                client, task_queue=queue, workflows=[IntegrationWorkflow],
                activities=[plain.call_integration],
                interceptors=[RetryPolicyInterceptor(RetryPolicy())],
                max_concurrent_activities=200,
            )  # fmt: skip
        try:
            run = asyncio.create_task(worker.run()) if worker else None
            outage = Outage(duration_s=args.outage_s, status=503, vendor="salesforce")
            chaos.set_plan(FaultPlan(rules=(FaultRule(path="/contacts/*", outage=outage),)))
            t0 = time.monotonic()
            handles = []
            for i in range(args.workflows):
                step = Step(connector="crm", operation="get_contact", params={"id": str(i)})
                handles.append(
                    await client.start_workflow(
                        IntegrationWorkflow.run,
                        IntegrationInput(steps=[step], start_to_close_s=10),
                        id=f"{queue}-{i}",
                        task_queue=queue,
                    )
                )
                await asyncio.sleep(
                    max(t0 + i * args.spread_s / args.workflows - time.monotonic(), 0)
                )
            done: list[float] = []

            async def wait(h: Any) -> None:
                await h.result()
                done.append(time.monotonic() - t0)

            await asyncio.wait_for(asyncio.gather(*(wait(h) for h in handles)), args.deadline_s)
            during = chaos.stats().faults_by_status.get("503", 0)
        finally:
            await stop_procs(procs)
            if worker is not None:
                await worker.shutdown()
                if run is not None:
                    await run
            if plain is not None:
                await plain.http.aclose()
    heal = max(done) - args.outage_s
    return [name, str(during), f"{during / args.workflows:.2f}", f"{heal:.1f}"]


async def main_async(args: argparse.Namespace) -> None:
    async with dev_server_client() as (server, client, tmp):
        rows = [["arm", "upstream calls in outage", "per workflow", "heal after recovery (s)"]]
        for n in [int(x) for x in args.workers.split(",")]:
            rows.append(await _arm(server, client, args, n, tmp))
        rows.append(await _arm(server, client, args, 0, tmp))
    print(f"storm: {args.workflows} workflows over {args.spread_s:g} s, {args.outage_s:g} s outage")
    print(table(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--spread-s", type=float, default=10.0)
    parser.add_argument("--workers", default="1,3,10")
    parser.add_argument("--deadline-s", type=float, default=240.0)
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
