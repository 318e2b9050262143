"""Schema drift: upstream calls and failures per 100 drifted calls, and what each drift kind
of the chaos API ends as, for this code and (with ``--old``) for an older checkout.

    .venv/bin/python benchmarks/schema_drift.py                  # this code only, ~30 s
    git worktree add /tmp/old9 087d3b1                          # the code before issue 9
    .venv/bin/python benchmarks/schema_drift.py --old /tmp/old9  # before / after, ~1 min

Starts a Temporal dev server (free ports, temp dir) and a chaos API (127.0.0.1, free port) in
this process; each code tree runs as ``python worker.py`` from its own directory (env only:
``HEALING_CONNECTORS``, default SQLite ``HEALING_STORE`` in a temp dir, its own task queue).
Nothing is written to the repository.

Table 1, per arm: ``--calls`` (100) GETs whose answer has VENDOR-FAULTS #10's HubSpot change,
after one call that meets it first, and ``--posts`` (10) POSTs whose answer drifts the same
way (``schema_drift = "adapt"``): upstream requests and failed activity attempts
(``ActivityTaskFailed`` in history), per 100 calls; POSTs also count records created.

Table 2: each drift kind of ``healing.testing.drift`` once, on a GET (and ``rename`` on a POST,
where the request's value is evidence), with what the call ended as: ``adapted`` (no human),
``review`` (escalated with a proposed mapping, ``accept_mapping``), ``escalated`` (no mapping
offered), and whether the value the workflow got is right. Then the shares.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import table  # benchmarks/harness.py
from temporalio.client import Client, WorkflowHandle

from healing import HealingPlugin
from healing.devserver import DevServer
from healing.names import STATUS_QUERY
from healing.testing import ChaosAPI, FaultPlan, FaultRule, SchemaDriftFault
from healing.testing.drift import DRIFT_KINDS

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(__file__).resolve().parents[1] / "tests" / "chaos"
KIND_TIMEOUT_S = 20.0


def catalog(url: str, policy: bool) -> str:
    """One connector per drift case, so mappings learned for one never touch another."""
    cases = {"hub": ("GET", "/hubspot/contacts/{id}", "HubSpotContact")}
    cases |= {"post": ("POST", "/contacts", "Contact")}
    cases |= {f"k_{kind}": ("GET", "/people/{id}", "Person") for kind in DRIFT_KINDS}
    cases |= {"k_rename_get": ("GET", "/contacts/{id}", "Contact")}
    cases |= {"k_rename_post": ("POST", "/contacts", "Contact")}
    text = ""
    for name, (method, path, model) in cases.items():
        text += f'[connectors.{name}]\nbase_url = "{url}"\ntimeout_s = 5\n'
        text += f'[connectors.{name}.operations.call]\nmethod = "{method}"\npath = "{path}"\n'
        text += f'response_model = "drift_models:{model}"\n'
        if policy and method == "POST":
            text += 'schema_drift = "adapt"\n'  # the old catalog has no such key
    return text


@dataclass
class Arm:
    name: str
    root: Path
    task_queue: str
    proc: asyncio.subprocess.Process | None = None

    async def start(self, address: str, catalog_file: Path, tmp: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALING_")}
        env |= {
            # drift_models: the tests' response models (only pydantic: old code imports them too)
            "PYTHONPATH": f"{self.root}{os.pathsep}{MODELS_DIR}",
            "TEMPORAL_ADDRESS": address,
            "HEALING_TASK_QUEUE": self.task_queue,
            "HEALING_CONNECTORS": str(catalog_file),
            "HEALING_STORE": f"sqlite:///{tmp / (self.name + '.db')}",
            "HEALING_MAX_CONCURRENT_ACTIVITIES": "20",
            "HEALING_ESCALATION_TIMEOUT_S": "600",
        }
        log = (tmp / f"{self.name}.log").open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(self.root / "worker.py"),
            cwd=self.root,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        assert self.proc.stdout is not None
        banner = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if b"healing worker" not in banner:
            raise SystemExit(f"{self.name} worker did not start; see {tmp / self.name}.log")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 20)


async def run_steps(
    client: Client, arm: Arm, steps: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """Run steps in one parallel workflow; its result and the failed attempts in history."""
    handle = await client.start_workflow(
        "IntegrationWorkflow",
        {"steps": steps, "parallel": True, "start_to_close_s": 10},
        id=f"drift-bench-{uuid.uuid4()}",
        task_queue=arm.task_queue,
    )
    result = await handle.result()
    history = await handle.fetch_history()
    failed = sum(1 for e in history.events if e.HasField("activity_task_failed_event_attributes"))
    return result["steps"], failed


async def drifted_calls(
    client: Client, chaos: ChaosAPI, arm: Arm, calls: int, posts: int
) -> list[str]:
    chaos.reset()
    get = [{"connector": "hub", "operation": "call", "params": {"id": f"{arm.name}-first"}}]
    await run_steps(client, arm, get)  # meets the drift first (learns, in the new code)
    before = chaos.stats()
    steps = [
        {"connector": "hub", "operation": "call", "params": {"id": f"{arm.name}-{i}"}}
        for i in range(calls)
    ]
    _, failed = await run_steps(client, arm, steps)
    gets = chaos.stats().total_calls - before.total_calls
    body = [{"name": f"n{i}", "email": f"{arm.name}{i}@example.com"} for i in range(posts)]
    start = chaos.stats()
    _, post_failed = await run_steps(
        client, arm, [{"connector": "post", "operation": "call", "body": b} for b in body]
    )
    end = chaos.stats()
    per = 100 / calls
    per_post = 100 / posts
    sent = end.calls_to("POST", "/contacts") - start.calls_to("POST", "/contacts")
    return [
        arm.name,
        f"{gets * per:.0f}",
        f"{failed * per:.0f}",
        f"{sent * per_post:.0f}",
        f"{post_failed * per_post:.0f}",
        f"{(end.creations - start.creations) * per_post:.0f}",
    ]


def _right(kind: str, result: Any) -> str:
    """Whether the value the workflow got is the vendor's real one (not a guess)."""
    if not isinstance(result, dict):
        return "-"
    if kind == "merge_name":
        return "yes" if str(result.get("last_name", "")).startswith("Lovelace") else "NO"
    if kind == "home_currency":
        return "yes" if result.get("amount") == 1000.5 else "NO"
    if kind == "ambiguous":
        return "yes" if str(result.get("email", "")).startswith("p") else "NO"
    return "yes"


async def one_kind(
    client: Client, arm: Arm, connector: str, kind: str, step: dict[str, Any]
) -> tuple[str, str]:
    handle: WorkflowHandle[Any, Any] = await client.start_workflow(
        "IntegrationWorkflow",
        {"steps": [{"connector": connector, "operation": "call", **step}], "start_to_close_s": 10},
        id=f"drift-kind-{uuid.uuid4()}",
        task_queue=arm.task_queue,
    )
    deadline = asyncio.get_running_loop().time() + KIND_TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        desc = await handle.describe()
        if desc.status is not None and desc.status.name != "RUNNING":
            try:
                result = await handle.result()
            except Exception:
                return "failed", "-"
            return "adapted", _right(kind, result["steps"][0]["result"])
        status = await handle.query(STATUS_QUERY)
        if status.get("open_escalations"):
            esc = status["open_escalations"][0]
            await handle.terminate("benchmark: case recorded")
            options = [o["option"] for o in esc["options"]]
            return ("review" if "accept_mapping" in options else "escalated"), "-"
        await asyncio.sleep(0.2)
    await handle.terminate("benchmark: no outcome")
    return "timeout", "-"


async def kinds_table(client: Client, chaos: ChaosAPI, arms: list[Arm]) -> list[list[str]]:
    cases: list[tuple[str, str, str, dict[str, Any]]] = []
    for kind in DRIFT_KINDS:
        if kind == "hubspot":
            cases.append((kind, "GET", "hub", {"params": {"id": "k"}}))
        elif kind == "rename":
            cases.append((kind, "GET", "k_rename_get", {"params": {"id": "k"}}))
            body = {"name": "Ada Lovelace", "email": "ada@example.com"}
            cases.append((kind, "POST", "k_rename_post", {"body": body}))
        else:
            cases.append((kind, "GET", f"k_{kind}", {"params": {"id": "k"}}))
    rows = [["drift kind", *[f"{a.name}: outcome / right value" for a in arms]]]
    shares: dict[str, dict[str, int]] = {a.name: {} for a in arms}
    for kind, method, connector, step in cases:
        path = {"hub": "/hubspot/contacts/*", "k_rename_post": "/contacts"}.get(connector)
        path = path or ("/contacts/*" if connector == "k_rename_get" else "/people/*")
        chaos.set_plan(
            FaultPlan(rules=[FaultRule(path=path, always=SchemaDriftFault(change=kind))])
        )  # type: ignore[arg-type]
        row = [f"{kind} ({method})"]
        for arm in arms:
            outcome, right = await one_kind(client, arm, connector, kind, step)
            shares[arm.name][outcome] = shares[arm.name].get(outcome, 0) + 1
            row.append(f"{outcome} / {right}")
        rows.append(row)
    total = len(cases)
    for outcome in ("adapted", "review", "escalated"):
        rows.append(
            [f"share {outcome}", *[f"{shares[a.name].get(outcome, 0) / total:.0%}" for a in arms]]
        )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="drifted GETs per arm (100)")
    parser.add_argument("--posts", type=int, default=10, help="drifted POSTs per arm (10)")
    parser.add_argument("--old", type=Path, help="an older checkout to compare (git worktree)")
    args = parser.parse_args()
    if args.old is not None and not (args.old / "worker.py").exists():
        raise SystemExit(f"--old {args.old}: no worker.py there (git worktree add {args.old} REV)")
    plan = FaultPlan(
        rules=[
            FaultRule(path="/hubspot/contacts/*", always=SchemaDriftFault()),
            FaultRule(method="POST", path="/contacts", always=SchemaDriftFault()),
        ]
    )
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        async with DevServer(state_dir=tmp, ui=False, db=False) as server, ChaosAPI(plan) as chaos:
            arms = [Arm("after", ROOT, f"drift-after-{uuid.uuid4()}")]
            if args.old is not None:
                arms.insert(0, Arm("before", args.old.resolve(), f"drift-before-{uuid.uuid4()}"))
            try:
                for arm in arms:
                    file = tmp / f"{arm.name}.toml"
                    file.write_text(catalog(chaos.url, policy=arm.name == "after"))
                    await arm.start(server.address, file, tmp)
                client = await Client.connect(server.address, plugins=[HealingPlugin()])
                await report(client, chaos, plan, arms, args.calls, args.posts)
            finally:
                for arm in arms:
                    await arm.stop()


async def report(
    client: Client, chaos: ChaosAPI, plan: FaultPlan, arms: list[Arm], calls: int, posts: int
) -> None:
    rows = [["arm", "GET calls", "GET failures", "POSTs", "POST failures", "records"]]
    for arm in arms:
        print(f"{arm.name}: {calls} drifted GETs, {posts} POSTs", file=sys.stderr)
        chaos.set_plan(plan)
        rows.append(await drifted_calls(client, chaos, arm, calls, posts))
    print("Per 100 drifted calls (after one call that met the drift first):\n")
    print(table(rows))
    print("\nEach chaos drift kind once (a connector of its own: nothing learned before):\n")
    print(table(await kinds_table(client, chaos, arms)))


if __name__ == "__main__":
    asyncio.run(main())
