"""``python worker.py``: clear start-up errors, and a real run against a dev server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from healing.devserver import DevServer, find_free_port
from healing.plugin import HealingPlugin
from healing.testing import ChaosAPI, FaultPlan, FaultRule, StatusFault
from tests.e2e.helpers import ROOT, get_contact, healing_command, one_line, run

WORKER = str(ROOT / "worker.py")
COMMANDS = ["worker.py", "healing worker"]


def worker_command(command: str) -> list[str]:
    return [sys.executable, WORKER] if command == "worker.py" else [*healing_command(), "worker"]


def startable_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A worker environment that gets as far as connecting (catalog and store in tmp_path)."""
    catalog = tmp_path / "connectors.toml"
    catalog.write_text('[connectors.crm]\nbase_url = "http://127.0.0.1:9"\n')
    store = f"sqlite:///{tmp_path}/healing.db"
    return {"HEALING_CONNECTORS": str(catalog), "HEALING_STORE": store, **extra}


@pytest.mark.parametrize("command", ["worker.py", "healing worker"])
async def test_missing_catalog_names_healing_connectors(tmp_path: Path, command: str) -> None:
    cmd = [sys.executable, WORKER] if command == "worker.py" else [*healing_command(), "worker"]
    missing = tmp_path / "nope.toml"
    code, _, err = await run(*cmd, env={"HEALING_CONNECTORS": str(missing)})
    assert code != 0
    assert "HEALING_CONNECTORS" in err and str(missing) in err
    assert "Traceback" not in err


async def test_invalid_catalog_names_healing_connectors(tmp_path: Path) -> None:
    catalog = tmp_path / "connectors.toml"
    catalog.write_text('[connectors.crm]\nbase_url = "not a url"\n')
    code, _, err = await run(sys.executable, WORKER, env={"HEALING_CONNECTORS": str(catalog)})
    assert code != 0
    assert "HEALING_CONNECTORS" in err and "base_url" in err
    assert "Traceback" not in err


async def test_oauth2_connector_needs_the_secret_key(tmp_path: Path) -> None:
    catalog = tmp_path / "connectors.toml"
    catalog.write_text(
        '[connectors.crm]\nbase_url = "http://127.0.0.1:9"\n'
        '[connectors.crm.auth]\nkind = "oauth2"\ntoken_url = "http://127.0.0.1:9/t"\n'
        'client_id = "id"\n'
    )
    env = {"HEALING_CONNECTORS": str(catalog), "HEALING_SECRET_KEY": ""}
    code, _, err = await run(sys.executable, WORKER, env=env)
    assert code != 0
    assert "HEALING_SECRET_KEY" in err and "Traceback" not in err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("address", ["not a host:xx", "localhost:notaport", "localhost:99999"])
async def test_unparsable_address_is_one_line_naming_temporal_address(
    tmp_path: Path, command: str, address: str
) -> None:
    env = startable_env(tmp_path, TEMPORAL_ADDRESS=address)
    code, _, err = await run(*worker_command(command), env=env)
    assert code == 2, err
    assert "Traceback" not in err
    assert "TEMPORAL_ADDRESS" in one_line(err) and repr(address) in err


@pytest.mark.parametrize("command", COMMANDS)
async def test_refused_connection_is_one_line_naming_the_address(
    tmp_path: Path, command: str
) -> None:
    address = f"127.0.0.1:{find_free_port()}"
    code, _, err = await run(
        *worker_command(command), env=startable_env(tmp_path, TEMPORAL_ADDRESS=address)
    )
    assert code == 1, err
    assert "Traceback" not in err
    assert f"cannot connect to Temporal at {address}" in one_line(err)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("HEALING_MAX_CACHED_WORKFLOWS", "lots"),
        ("HEALING_MAX_CONCURRENT_ACTIVITIES", "0"),
        ("HEALING_MAX_CONCURRENT_WORKFLOW_TASKS", "-3"),
        ("HEALING_MAX_CONCURRENT_WORKFLOW_TASKS", "1"),  # the SDK needs 2 with a cache
    ],
)
async def test_invalid_worker_tuning_names_the_variable(
    tmp_path: Path, command: str, var: str, value: str
) -> None:
    # A refused address: the old code, which ignored these variables, ends there instead.
    address = f"127.0.0.1:{find_free_port()}"
    env = startable_env(tmp_path, TEMPORAL_ADDRESS=address, **{var: value})
    code, _, err = await run(*worker_command(command), env=env)
    assert code == 1, err
    assert "Traceback" not in err
    line = one_line(err)
    assert f"{var}={value!r}" in line or f"{var}={value} " in line


async def test_worker_py_runs_workflows_and_stops_on_sigint(
    dev_server: DevServer, tmp_path: Path
) -> None:
    plan = FaultPlan(rules=(FaultRule(path="/contacts/w-*", faults=(StatusFault(status=503),)),))
    async with ChaosAPI(plan) as chaos:
        catalog = tmp_path / "connectors.toml"
        catalog.write_text(
            f'[connectors.crm]\nbase_url = "{chaos.url}"\ntimeout_s = 5\n'
            '[connectors.crm.operations.get_contact]\npath = "/contacts/{id}"\n'
        )
        task_queue = f"e2e-worker-{uuid.uuid4()}"
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": dev_server.address,
            "HEALING_TASK_QUEUE": task_queue,
            "HEALING_CONNECTORS": str(catalog),
            "HEALING_BACKOFF__INITIAL_S": "0.2",
            "HEALING_MAX_CACHED_WORKFLOWS": "10",
            "HEALING_MAX_CONCURRENT_ACTIVITIES": "3",
            "HEALING_MAX_CONCURRENT_WORKFLOW_TASKS": "2",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            WORKER,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            banner = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert task_queue in banner.decode()
            # The banner reads the Worker's own config: the env reached the Worker.
            assert "max_cached_workflows=10, max_concurrent_activities=3" in banner.decode()
            assert "max_concurrent_workflow_tasks=2" in banner.decode()
            client = await Client.connect(dev_server.address, plugins=[HealingPlugin()])
            result = await client.execute_workflow(
                "IntegrationWorkflow",
                get_contact("w-1"),
                id=f"e2e-worker-{uuid.uuid4()}",
                task_queue=task_queue,
                result_type=dict,
            )
            assert result["steps"][0]["status"] == "ok"
            assert result["steps"][0]["healing"]["counts_by_type"] == {"SERVICE_DOWN": 1}
            assert chaos.stats().calls_to("GET", "/contacts/w-1") == 2
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
