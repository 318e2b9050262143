"""A healing integration worker in its own process, for chaos tests that kill it.

    python tests/chaos/worker_proc.py --address 127.0.0.1:7233 --task-queue tq \
        --connectors connectors.toml [--config-json '{"backoff": {"initial_s": 0.2}}'] \
        [--store sqlite:///path/healing.db]

Runs a `Worker` with `HealingPlugin`, `IntegrationWorkflow` and `IntegrationActivities` over the
catalog file; prints `READY pid=<pid>` on stdout once the worker polls, and stops cleanly on
SIGTERM or SIGINT. A test that wants a crash sends SIGKILL instead: nothing gets to clean up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from activities import IntegrationActivities  # noqa: E402
from healing import HealingConfig, HealingPlugin  # noqa: E402
from healing.catalog import ConnectorCatalog  # noqa: E402
from healing.store import connect_store  # noqa: E402
from workflows import IntegrationWorkflow  # noqa: E402


async def run(args: argparse.Namespace, config: HealingConfig, catalog: ConnectorCatalog) -> None:
    # --store: the fleet's breakers, rate windows and retry budget live there (DESIGN s5b).
    store = await connect_store(args.store) if args.store else None
    plugin = HealingPlugin(config, alternatives=catalog.alternatives(), store=store)
    client = await Client.connect(args.address, namespace=args.namespace, plugins=[plugin])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with IntegrationActivities(catalog, fleet=store, rate_limit=config.rate_limit) as acts:
        worker = Worker(
            client,
            task_queue=args.task_queue,
            workflows=[IntegrationWorkflow],
            activities=[acts.call_integration],
            max_concurrent_activities=args.max_activities,
            # A killed worker's sticky queue is abandoned: let the server give up on it soon.
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=args.sticky_timeout_s),
        )
        async with worker:
            print(f"READY pid={os.getpid()}", flush=True)
            await stop.wait()
    if store is not None:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default=os.environ.get("TEMPORAL_ADDRESS"), required=False)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--connectors", required=True, help="connector catalog TOML file")
    parser.add_argument("--config-json", default="{}", help="HealingConfig fields as JSON")
    parser.add_argument("--max-activities", type=int, default=50)
    parser.add_argument("--sticky-timeout-s", type=float, default=2.0)
    parser.add_argument("--store", default="", help="HEALING_STORE URL shared by the workers")
    args = parser.parse_args()
    if not args.address:
        parser.error("--address (or TEMPORAL_ADDRESS) is required")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    config = HealingConfig.load(**json.loads(args.config_json))
    path = Path(args.connectors)
    catalog = ConnectorCatalog.from_toml(path.read_text(), source=str(path))
    asyncio.run(run(args, config, catalog))


if __name__ == "__main__":
    main()
