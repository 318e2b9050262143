"""Plumbing for the benchmarks: the chaos server as a process, the baseline activity and
retry-policy interceptor, a breaker-transition counter, and plain-text tables."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from temporalio import activity
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import (
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential_jitter

from activities.integration import CALL_INTEGRATION, CallRequest
from healing import HealingConfig, HealingPlugin
from healing.catalog import ConnectorCatalog
from healing.devserver import DevServer
from healing.testing import ChaosStats, FaultPlan

TENACITY = "stop_after_attempt(4), wait_exponential_jitter(initial=1, max=30, jitter=1)"


# -- the chaos CRM in its own process -------------------------------------------------------


class ChaosProcess:
    """`python -m healing.testing.chaos` as a child; controlled over its /__chaos endpoints."""

    def __init__(self, plan: FaultPlan, workdir: Path) -> None:
        self._plan_file = workdir / "plan.json"
        self._plan_file.write_text(plan.model_dump_json())
        self._log = workdir / "chaos.log"
        self._proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ChaosProcess:
        args = ["-m", "healing.testing.chaos", "--port", "0", "--plan", str(self._plan_file)]
        with self._log.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # a Ctrl-C reaches us only; we stop it ourselves
            )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 20)
        if not line.startswith(b"CHAOS_URL="):
            raise RuntimeError(f"chaos server did not start: {line!r}; see {self._log}")
        self.url = line.decode().strip().split("=", 1)[1]
        self._http = httpx.AsyncClient(base_url=self.url, timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        assert self._http is not None
        response = await self._http.request(method, f"/__chaos{path}", **kw)
        response.raise_for_status()
        return response

    async def reset(self) -> None:
        await self._send("POST", "/reset")

    async def set_plan(self, plan: FaultPlan) -> None:
        await self._send("PUT", "/plan", content=plan.model_dump_json())

    async def stats(self) -> ChaosStats:
        return ChaosStats.model_validate((await self._send("GET", "/stats")).json())


# -- the baselines: a plain activity and a retry policy set on every activity ----------------


class PlainActivities:
    """The same HTTP call as `call_integration`, written the way most users write it."""

    def __init__(self, catalog: ConnectorCatalog, *, tenacity: bool = False) -> None:
        self.catalog = catalog
        self.tenacity = tenacity
        spec = catalog.connector("crm")  # both connectors live on the chaos server
        self.http = httpx.AsyncClient(base_url=spec.base_url, timeout=spec.timeout_s)

    @activity.defn(name=CALL_INTEGRATION)
    async def call_integration(self, req: CallRequest) -> dict[str, Any]:
        if not self.tenacity:
            return await self._get(req)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(4),
            wait=wait_exponential_jitter(initial=1, max=30, jitter=1),
            reraise=True,
        )
        result: dict[str, Any] = await retrying(self._get, req)
        return result

    async def _get(self, req: CallRequest) -> dict[str, Any]:
        op = self.catalog.operation(req.connector, req.operation)
        path = op.path.format(**{k: quote(str(v), safe="") for k, v in req.params.items()})
        response = await self.http.request(op.method, path)
        response.raise_for_status()
        body = response.json()
        return {"result": body, "status": response.status_code, "connector": req.connector}


class RetryPolicyInterceptor(Interceptor):
    """Gives every activity a workflow schedules `policy`, as `retry_policy=` would."""

    def __init__(self, policy: RetryPolicy) -> None:
        outbound = type("RetryOutbound", (_RetryOutbound,), {"policy": policy})
        self._inbound = type("RetryInbound", (_RetryInbound,), {"outbound": outbound})

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return self._inbound


class _RetryOutbound(WorkflowOutboundInterceptor):
    policy: RetryPolicy

    def start_activity(self, input: StartActivityInput) -> Any:
        return self.next.start_activity(dataclasses.replace(input, retry_policy=self.policy))


class _RetryInbound(WorkflowInboundInterceptor):
    outbound: type[_RetryOutbound]

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(self.outbound(outbound))


# -- counting circuit transitions and printing tables ---------------------------------------


class BreakerLog(logging.Handler):
    """Counts the circuit transitions the healing interceptor logs ("circuit for X: a -> b")."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.opened: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if record.msg == "circuit for %s: %s -> %s" and isinstance(args, tuple) and len(args) == 3:
            self.opened[str(args[0])] += args[2] == "open"


def not_circuit_news(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("circuit for ")


def pct(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(p * len(ordered)) - 1, 0)]


def p50_95(values: Sequence[float]) -> str:
    a, b = pct(values, 0.5), pct(values, 0.95)
    return "-" if a is None or b is None else f"{a:.1f} / {b:.1f}"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


WORKER_PROC = Path(__file__).resolve().parents[1] / "tests" / "chaos" / "worker_proc.py"
"""A healing worker in its own process (run as a script; benchmarks import nothing from tests)."""


async def start_worker_procs(
    n: int, address: str, queue: str, catalog: Path, store: str, logs: Path
) -> list[asyncio.subprocess.Process]:
    """``n`` healing worker processes on ``queue`` sharing ``store``, each ready when returned;
    one after the other, so the first migrates the store. Their stderr goes to ``logs``."""
    root = WORKER_PROC.parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALING_")}
    env["PYTHONPATH"] = str(root)
    procs: list[asyncio.subprocess.Process] = []
    try:
        for i in range(n):
            log_path = logs / f"{queue}-w{i}.log"
            with log_path.open("ab") as log:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, str(WORKER_PROC), "--address", address, "--task-queue", queue,
                    "--connectors", str(catalog), "--store", store, "--max-activities", "200",
                    cwd=root, env=env, stdout=asyncio.subprocess.PIPE, stderr=log,
                )  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line.startswith(b"READY"):
                raise RuntimeError(f"worker {i} did not start; see {log_path}")
    except BaseException:
        await stop_procs(procs)
        raise
    return procs


async def stop_procs(procs: Sequence[asyncio.subprocess.Process]) -> None:
    """Stop processes this benchmark started (by their handle), waiting for each."""
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def dev_server_client() -> AsyncIterator[tuple[DevServer, Client, Path]]:
    """A fresh dev server in a temporary directory, a healing client on it, and the directory."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmpdir:
        tmp = Path(tmpdir)
        server = DevServer(state_dir=tmp / "dev")
        server.start(timeout=60)
        try:
            client = await Client.connect(server.address, plugins=[HealingPlugin(HealingConfig())])
            yield server, client, tmp
        finally:
            server.stop()
