"""Helpers for the end-to-end tests: run the real commands as subprocesses, wait for states."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from temporalio.client import Client

from healing.catalog import ConnectorCatalog
from healing.client import healing_status

ROOT = Path(__file__).resolve().parents[2]


def healing_command() -> list[str]:
    """The installed ``healing`` console script, else ``python -m healing.cli``."""
    script = Path(sys.executable).parent / "healing"
    return [str(script)] if script.exists() else [sys.executable, "-m", "healing.cli"]


async def run(
    *cmd: str, env: Mapping[str, str] | None = None, within: float = 60.0
) -> tuple[int, str, str]:
    """Run a command without blocking the event loop (an in-process worker shares it)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(stderr: str) -> str:
    """The only line of ``stderr``; fails when the error took more than one."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]


async def healing(*args: str, within: float = 60.0) -> tuple[int, str, str]:
    return await run(*healing_command(), *args, within=within)


async def wait_until_awaiting(client: Client, workflow_id: str, within: float = 30.0) -> Any:
    """The workflow's HealingStatus once an escalation is open."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        report = await healing_status(client, workflow_id)
        if report.healing is not None and report.healing.open_escalations:
            return report.healing
        await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id} opened no escalation within {within}s")


def crm_catalog(url: str, *, timeout_s: float = 5) -> ConnectorCatalog:
    """``crm`` with ``get_contact`` at ``url`` (a ChaosAPI)."""
    operations = {"get_contact": {"method": "GET", "path": "/contacts/{id}"}}
    return ConnectorCatalog.from_dict(
        {"connectors": {"crm": {"base_url": url, "timeout_s": timeout_s, "operations": operations}}}
    )


def get_contact(contact_id: str) -> dict[str, Any]:
    """IntegrationWorkflow input: one get_contact step."""
    step = {"connector": "crm", "operation": "get_contact", "params": {"id": contact_id}}
    return {"steps": [step]}


async def healing_piped(
    *args: str, stdin: bytes = b"", env: Mapping[str, str] | None = None, within: float = 60.0
) -> tuple[int, str, str, float]:
    """``healing ARGS`` with ``stdin`` piped (so not a terminal); also returns its wall time."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *healing_command(),
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


async def wait_listed(
    client: Client, query: str, expected: set[str], within: float = 20.0
) -> set[str]:
    """Workflow ids ``query`` lists, once they are ``expected`` (visibility lags a little)."""
    deadline = time.monotonic() + within
    found: set[str] = set()
    while time.monotonic() < deadline:
        found = {wf.id async for wf in client.list_workflows(query)}
        if found == expected:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{query!r} listed {sorted(found)}, not {sorted(expected)}")
