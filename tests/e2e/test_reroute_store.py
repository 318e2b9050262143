"""Reroute as a user deploys it: ``python worker.py`` with a store, a POST, two real HTTP APIs.

The primary region answers 503 for good; the alternative works. The workflow must complete,
``served_by`` must name the alternative, the POST must reach it once under one idempotency key,
and the store must hold the reroute as a typed event (a recording failure once failed the
workflow after the alternative had answered, and a retried workflow then repeated the POST).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from healing.devserver import DevServer
from healing.plugin import HealingPlugin
from healing.store import connect_store
from healing.testing import ChaosAPI, FaultPlan, FaultRule, StatusFault
from tests.e2e.helpers import ROOT

WORKER = str(ROOT / "worker.py")


def _catalog(path: Path, primary: str, alternative: str) -> Path:
    op = '[connectors.{name}.operations.create_contact]\nmethod = "POST"\npath = "/contacts"\n'
    path.write_text(
        f'[connectors.crm]\nbase_url = "{primary}"\ntimeout_s = 5\nalternatives = ["crm_eu"]\n'
        + op.format(name="crm")
        + "idempotent = false\n"
        + f'[connectors.crm_eu]\nbase_url = "{alternative}"\ntimeout_s = 5\n'
        + op.format(name="crm_eu")
        + "idempotent = false\n"
    )
    return path


async def _reroute_with_store(dev_server: DevServer, tmp_path: Path, store_url: str) -> None:
    down = FaultPlan(rules=(FaultRule(path="/contacts*", always=StatusFault(status=503)),))
    async with ChaosAPI(down) as primary, ChaosAPI(FaultPlan()) as alternative:
        catalog = _catalog(tmp_path / "connectors.toml", primary.url, alternative.url)
        task_queue = f"reroute-store-{uuid.uuid4()}"
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": dev_server.address,
            "HEALING_TASK_QUEUE": task_queue,
            "HEALING_CONNECTORS": str(catalog),
            "HEALING_STORE": store_url,
            "HEALING_BACKOFF__INITIAL_S": "0.1",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            WORKER,
            cwd=tmp_path,  # the default store path is relative: keep it out of the checkout
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            await asyncio.wait_for(proc.stdout.readline(), 30)  # the banner: polling
            client = await Client.connect(dev_server.address, plugins=[HealingPlugin()])
            body = {"email": "ada@example.com", "name": "Ada"}
            result = await client.execute_workflow(
                "IntegrationWorkflow",
                {"steps": [{"connector": "crm", "operation": "create_contact", "body": body}]},
                id=f"reroute-store-{uuid.uuid4()}",
                task_queue=task_queue,
                result_type=dict,
                execution_timeout=timedelta(seconds=60),
            )
            step = result["steps"][0]
            assert step["status"] == "ok", result
            assert step["served_by"] == "crm_eu", step
            assert step["healing"]["rerouted_to"] == ["crm_eu"]
            sent, answered = primary.stats(), alternative.stats()
            assert answered.calls_to("POST", "/contacts") == 1
            assert answered.creations == 1 and answered.duplicate_creations == 0
            # Every attempt, on both regions, carried the one key of this logical call.
            keys = set(sent.idempotency_keys) | set(answered.idempotency_keys)
            assert len(keys) == 1, keys
            assert sent.calls_to("POST", "/contacts") == 4  # 1 call + 3 retries, then reroute
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        err = (await proc.stderr.read()).decode() if proc.stderr else ""
        assert "healing events not recorded" not in err, err
        store = await connect_store(store_url)
        try:
            kinds = {e.kind for e in await store.recent_events()}
        finally:
            await store.close()
        assert {"rerouted", "healed"} <= kinds, kinds


async def test_reroute_with_the_sqlite_store(dev_server: DevServer, tmp_path: Path) -> None:
    await _reroute_with_store(dev_server, tmp_path, f"sqlite:///{tmp_path}/healing.db")


@pytest.mark.usefixtures("pg_server")
async def test_reroute_with_the_postgres_store(
    dev_server: DevServer, tmp_path: Path, pg_url: str
) -> None:
    await _reroute_with_store(dev_server, tmp_path, pg_url)


async def test_two_workers_skip_a_second_region_the_fleet_found_down(
    dev_server: DevServer, tmp_path: Path
) -> None:
    # Three regions: the primary and the EU region answer 503 for good, the US one works.
    # Two `python worker.py` processes on their default store share the breakers, so once
    # EU's circuit is open for the fleet, calls reroute from the primary straight to the US.
    down = FaultPlan(rules=(FaultRule(path="/contacts*", always=StatusFault(status=503)),))
    async with (
        ChaosAPI(down) as primary,
        ChaosAPI(down) as eu,
        ChaosAPI(FaultPlan()) as us,
    ):
        op = '[connectors.{0}.operations.get_contact]\nmethod = "GET"\npath = "/contacts/{{id}}"\n'
        catalog = tmp_path / "connectors.toml"
        catalog.write_text(
            f'[connectors.crm]\nbase_url = "{primary.url}"\ntimeout_s = 5\n'
            'alternatives = ["crm_eu", "crm_us"]\n'
            + op.format("crm")
            + f'[connectors.crm_eu]\nbase_url = "{eu.url}"\ntimeout_s = 5\n'
            + op.format("crm_eu")
            + f'[connectors.crm_us]\nbase_url = "{us.url}"\ntimeout_s = 5\n'
            + op.format("crm_us")
        )
        task_queue = f"regions-{uuid.uuid4()}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HEALING_")},
            "TEMPORAL_ADDRESS": dev_server.address,
            "HEALING_TASK_QUEUE": task_queue,
            "HEALING_CONNECTORS": str(catalog),
            "HEALING_BACKOFF__INITIAL_S": "0.1",
        }
        procs = []
        try:
            for _ in range(2):  # the default store: .healing/healing.db under the cwd
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    WORKER,
                    cwd=tmp_path,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                procs.append(proc)
                assert proc.stdout is not None
                await asyncio.wait_for(proc.stdout.readline(), 30)  # the banner: polling
            client = await Client.connect(dev_server.address, plugins=[HealingPlugin()])

            async def wave(n: int, tag: str) -> list[dict[str, Any]]:
                step = {"connector": "crm", "operation": "get_contact", "params": {"id": "1"}}
                return await asyncio.gather(
                    *(
                        client.execute_workflow(
                            "IntegrationWorkflow",
                            {"steps": [step]},
                            id=f"regions-{tag}-{i}-{uuid.uuid4()}",
                            task_queue=task_queue,
                            result_type=dict,
                            execution_timeout=timedelta(seconds=120),
                        )
                        for i in range(n)
                    )
                )

            first = await wave(12, "first")  # finds both regions down
            later = await wave(8, "later")  # meets EU's circuit held by the fleet
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGINT)
                    try:
                        await asyncio.wait_for(proc.wait(), 30)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        steps = [r["steps"][0] for r in first + later]
        assert all(s["status"] == "ok" and s["served_by"] == "crm_us" for s in steps), steps
        routes = [tuple(r["steps"][0]["healing"]["rerouted_to"]) for r in later]
        # The EU region cost the fleet its breaker threshold (and a probe), not a call per
        # workflow, and the later calls went straight to the US region.
        eu_calls = eu.stats().total_calls
        print(f"EU region: {eu_calls} calls; later routes: {sorted(set(routes))}")
        assert eu_calls <= 8, (eu_calls, routes)
        assert routes == [("crm_us",)] * len(later), routes
