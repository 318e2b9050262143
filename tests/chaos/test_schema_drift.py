"""Schema drift, done right: adapt the response already received, remember it for the fleet,
never re-send, never guess silently.

Everything is real: the Temporal dev server, the chaos HTTP API (``SchemaDriftFault``, which
counts every request), the SQLite healing store, and for the fleet proof two ``python
worker.py`` processes and a restart. Per test a new store and task queue: mappings are per
(connector, operation), so cases stay apart.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer, Worker

from activities import IntegrationActivities
from healing import HealingConfig, HealingPlugin
from healing.catalog import ConnectorCatalog
from healing.cli import main as cli_main
from healing.client import decide, list_escalations
from healing.devserver import DevServer
from healing.drift import DriftBook
from healing.names import STATUS_QUERY
from healing.store import Store, connect_store
from healing.testing import ChaosAPI, FaultPlan, FaultRule, SchemaDriftFault
from healing.testing.drift import DriftKind
from healing.types import HealingStatus
from workflows import IntegrationWorkflow

ROOT = Path(__file__).resolve().parents[2]
MODELS = "tests.chaos.drift_models"
CONFIG = HealingConfig.load(backoff={"initial_s": 0.2, "max_s": 1.0})


def catalog_text(url: str) -> str:
    ops = {
        "get_hubspot_contact": ("GET", "/hubspot/contacts/{id}", "HubSpotContact", None),
        "get_person": ("GET", "/people/{id}", "Person", None),
        "create_contact": ("POST", "/contacts", "Contact", None),  # a write: review
        "create_contact_adapt": ("POST", "/contacts", "Contact", "adapt"),
        "get_person_pause": ("GET", "/people/{id}", "Person", "pause"),
        "get_person_lite": ("GET", "/people/{id}", "PersonLite", None),
    }
    text = f'[connectors.crm]\nbase_url = "{url}"\ntimeout_s = 5\n'
    for name, (method, path, model, policy) in ops.items():
        text += (
            f'[connectors.crm.operations.{name}]\nmethod = "{method}"\npath = "{path}"\n'
            f'response_model = "{MODELS}:{model}"\n'
        )
        if policy:
            text += f'schema_drift = "{policy}"\n'
    return text


def drifting(*rules: tuple[str, str, DriftKind]) -> FaultPlan:
    return FaultPlan(
        rules=[FaultRule(method=m, path=p, always=SchemaDriftFault(change=k)) for m, p, k in rules]
    )


@dataclass
class Rig:
    client: Client
    chaos: ChaosAPI
    store: Store
    task_queue: str

    @property
    def drift(self) -> DriftBook:
        return DriftBook(self.store, cache_s=0)

    async def start(self, *steps: dict[str, Any]) -> WorkflowHandle[Any, Any]:
        return await self.client.start_workflow(
            "IntegrationWorkflow",
            {"steps": list(steps), "start_to_close_s": 10},
            id=f"drift-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )

    async def run(self, *steps: dict[str, Any]) -> dict[str, Any]:
        handle = await self.start(*steps)
        result: dict[str, Any] = await handle.result()
        return result

    async def status(self, handle: WorkflowHandle[Any, Any]) -> HealingStatus:
        return HealingStatus.model_validate(await handle.query(STATUS_QUERY))

    async def awaiting(self, handle: WorkflowHandle[Any, Any]) -> HealingStatus:
        # Polls the query, as `healing status` and the Web UI do: healing decides its patches
        # before any local activity, so queries landing meanwhile leave the history replayable.
        for _ in range(300):
            status = await self.status(handle)
            if status.open_escalations:
                return status
            await asyncio.sleep(0.1)
        raise AssertionError(f"{handle.id} opened no escalation")


def get(operation: str, ident: str) -> dict[str, Any]:
    return {"connector": "crm", "operation": operation, "params": {"id": ident}}


def post(operation: str, name: str, email: str) -> dict[str, Any]:
    return {"connector": "crm", "operation": operation, "body": {"name": name, "email": email}}


@pytest.fixture
async def rig(dev_server: DevServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with ChaosAPI() as chaos:
        store = await connect_store(f"sqlite:///{tmp_path}/healing.db")
        plugin = HealingPlugin(CONFIG, store=store)
        client = await Client.connect(dev_server.address, plugins=[plugin])
        task_queue = f"drift-{uuid.uuid4()}"
        catalog = ConnectorCatalog.from_toml(catalog_text(chaos.url))
        try:
            async with IntegrationActivities(catalog) as acts:
                worker = Worker(
                    client,
                    task_queue=task_queue,
                    workflows=[IntegrationWorkflow],
                    activities=[acts.call_integration],
                )
                async with worker:
                    yield Rig(client, chaos, store, task_queue)
        finally:
            await store.close()


# --- adapted with no human ------------------------------------------------------------------


async def test_hubspot_change_heals_with_no_human_keeps_the_new_field_and_records_it(
    rig: Rig,
) -> None:
    rig.chaos.set_plan(drifting(("GET", "/hubspot/contacts/*", "hubspot")))
    handle = await rig.start(get("get_hubspot_contact", "123"))
    result = await handle.result()
    step = result["steps"][0]
    assert step["result"] == {
        "id": "123",
        "properties": {"email": "c123@example.com", "amount": "1000.5"},
    }
    assert step["extra"] == {"properties.hs_new_prop": "x"}  # kept, beside the model
    assert step["healing"]["schema"]["evidence"] == [
        "properties.email_address -> properties.email: unique format"
    ]
    assert step["healing"]["counts_by_type"] == {}  # no failed attempt
    assert rig.chaos.stats().calls_to("GET", "/hubspot/contacts/123") == 1
    status = await rig.status(handle)
    assert status.state == "healed" and not status.open_escalations
    assert [(a.strategy, a.outcome) for a in status.history][:1] == [("schema_adapt", "healed")]
    assert "added properties.hs_new_prop (string)" in status.drift
    records = {(r.change, r.path) for r in await rig.drift.records()}
    assert records == {
        ("renamed", "properties.email"),
        ("added", "properties.hs_new_prop"),
        ("retyped", "properties.amount"),
    }
    [mapping] = await rig.drift.mappings(fresh=True)
    assert (mapping.status, mapping.decided_by) == ("active", "healing")


async def test_drift_that_fails_nothing_is_recorded_and_shown(rig: Rig) -> None:
    handle = await rig.start(get("get_person_lite", "2"))  # no fault: the model knows less
    step = (await handle.result())["steps"][0]
    assert step["result"] == {"id": "2", "email": "p2@example.com"}
    assert step["extra"]["last_name"] == "Lovelace2"
    status = await rig.status(handle)
    assert status.state == "idle" and status.history == []  # nothing failed, nothing healed
    assert "added last_name (string)" in status.drift
    records = {(r.change, r.path, r.to_type) for r in await rig.drift.records()}
    assert ("added", "amount", "string") in records
    assert await rig.drift.mappings(fresh=True) == []


@pytest.mark.parametrize("envelope", ["data", "results", "items", "list"])
async def test_envelope_changes_are_unwrapped_with_no_human(rig: Rig, envelope: DriftKind) -> None:
    rig.chaos.set_plan(drifting(("GET", "/people/*", envelope)))
    handle = await rig.start(get("get_person", "1"))
    step = (await handle.result())["steps"][0]
    assert step["result"]["last_name"] == "Lovelace1"
    assert step["healing"]["schema"]["envelope"] == envelope
    assert rig.chaos.stats().calls_to("GET", "/people/1") == 1
    assert (await rig.status(handle)).state == "healed"


@pytest.mark.parametrize("run", range(3))
async def test_an_adapted_history_replays_under_a_stream_of_queries(rig: Rig, run: int) -> None:
    # The adapted step flushes the journal (a local activity) before the next step escalates:
    # healing's patches must be decided before that flush, or a query landing meanwhile moves
    # them to a later workflow task and the replay fails.
    rig.chaos.set_plan(
        drifting(("GET", "/hubspot/contacts/*", "hubspot"), ("GET", "/people/*", "remove"))
    )
    handle = await rig.start(get("get_hubspot_contact", str(run)), get("get_person", str(run)))
    for _ in range(1000):  # the Web UI and `healing status` poll like this
        if (await rig.status(handle)).open_escalations:
            break
        await asyncio.sleep(0)
    else:
        pytest.fail("the second step never escalated")
    await decide(rig.client, handle.id, "skip", decided_by="ada")
    steps = (await handle.result())["steps"]
    assert steps[0]["healing"]["schema"]["adapted"] is True
    await replay(handle)
    # Deterministically: every patch marker precedes the first local activity's marker.
    markers = [
        e.marker_recorded_event_attributes
        for e in (await handle.fetch_history()).events
        if e.HasField("marker_recorded_event_attributes")
    ]
    kinds = ["local" if m.marker_name == "core_local_activity" else m.marker_name for m in markers]
    assert "local" in kinds and "core_patch" in kinds
    first_local = kinds.index("local")
    assert "core_patch" not in kinds[first_local:], kinds


# --- a POST's drifted answer: exactly one POST ------------------------------------------------


async def test_drift_on_a_post_answer_never_resends_the_post(rig: Rig) -> None:
    rig.chaos.set_plan(drifting(("POST", "/contacts", "hubspot")))
    step = (await rig.run(post("create_contact_adapt", "Ada", "ada@example.com")))["steps"][0]
    assert step["result"]["email"] == "ada@example.com"
    assert step["extra"] == {"hs_new_prop": "x"}
    stats = rig.chaos.stats()
    assert stats.calls_to("POST", "/contacts") == 1 and stats.creations == 1


async def test_a_write_waits_for_review_and_accepting_uses_the_answer_already_received(
    rig: Rig,
) -> None:
    rig.chaos.set_plan(drifting(("POST", "/contacts", "rename")))
    handle = await rig.start(post("create_contact", "Ada Lovelace", "ada@example.com"))
    status = await rig.awaiting(handle)
    [esc] = status.open_escalations
    assert esc.error_type.value == "SCHEMA_MISMATCH"
    assert [o.option for o in esc.options][:1] == ["accept_mapping"]
    assert esc.proposal is not None and esc.proposal["renames"] == {"full_name": "name"}
    assert "full_name for name: request value" in esc.explanation
    assert 'schema_drift = "review"' in esc.explanation
    assert await rig.drift.active("crm", "create_contact") is None  # nothing applied yet
    await decide(rig.client, handle.id, "accept_mapping", decided_by="ada")
    step = (await handle.result())["steps"][0]
    assert step["result"]["name"] == "Ada Lovelace"
    stats = rig.chaos.stats()
    assert stats.calls_to("POST", "/contacts") == 1 and stats.creations == 1  # never re-sent
    assert (await rig.status(handle)).state == "resolved"
    # Later writes read their answers with the accepted mapping: no human, one POST each.
    later = (await rig.run(post("create_contact", "Grace", "g@example.com")))["steps"][0]
    assert later["result"]["name"] == "Grace"
    assert rig.chaos.stats().calls_to("POST", "/contacts") == 2
    await replay(handle)


async def test_healing_drift_approve_resumes_the_calls_paused_on_that_proposal(
    rig: Rig, dev_server: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.chaos.set_plan(drifting(("POST", "/contacts", "rename")))
    handle = await rig.start(post("create_contact", "Ada Lovelace", "ada@example.com"))
    [esc] = (await rig.awaiting(handle)).open_escalations
    assert esc.proposal is not None
    assert [o.option for o in esc.options] == ["accept_mapping", "skip", "abort"]  # a write
    wanted = esc.proposal["mapping_id"]
    for _ in range(100):  # visibility lists the pause a moment later
        listing = await list_escalations(rig.client, query=f'WorkflowId = "{handle.id}"')
        if any(w.brief and w.brief.mapping_id == wanted for w in listing.workflows):
            break
        await asyncio.sleep(0.1)
    monkeypatch.setenv("HEALING_STORE", f"sqlite:///{tmp_path}/healing.db")
    args = ["--address", dev_server.address, "drift", "approve", wanted, "--by", "ada"]
    assert await asyncio.to_thread(cli_main, args) == 0
    done = await asyncio.wait_for(handle.result(), 30)  # resumed by the approval, no timeout
    step = done["steps"][0]
    assert step["result"]["name"] == "Ada Lovelace"
    assert step["healing"]["decisions"] and rig.chaos.stats().calls_to("POST", "/contacts") == 1


async def replay(handle: WorkflowHandle[Any, Any]) -> None:
    """The history replays on the code that wrote it (raises on nondeterminism)."""
    replayer = Replayer(workflows=[IntegrationWorkflow], plugins=[HealingPlugin(CONFIG)])
    history = await handle.fetch_history()
    await replayer.replay_workflow(history)


# --- wrong candidates and an ambiguous pair: a human decides ---------------------------------


@pytest.mark.parametrize(
    ("kind", "candidates", "field"),
    [
        ("merge_name", ["name"], "last_name"),
        ("home_currency", ["amount_in_home_currency"], "amount"),
        ("ambiguous", ["email_address", "work_email"], "email"),
    ],
)
async def test_wrong_or_ambiguous_candidates_are_never_applied_silently(
    rig: Rig, kind: DriftKind, candidates: list[str], field: str
) -> None:
    rig.chaos.set_plan(drifting(("GET", "/people/*", kind)))
    handle = await rig.start(get("get_person", "7"))
    status = await rig.awaiting(handle)
    [esc] = status.open_escalations
    assert "accept_mapping" in [o.option for o in esc.options]
    assert f"missing fields: {field};" in esc.explanation
    for name in candidates:
        assert f"candidate {name} for {field}" in esc.explanation
    assert await rig.drift.active("crm", "get_person") is None
    [proposal] = await rig.drift.mappings(fresh=True)
    assert proposal.status == "proposed"
    assert rig.chaos.stats().calls_to("GET", "/people/7") == 1

    await decide(rig.client, handle.id, "accept_mapping", decided_by="ada")
    step = (await handle.result())["steps"][0]
    assert step["result"][field] is not None
    assert rig.chaos.stats().calls_to("GET", "/people/7") == 1  # resumed on the held answer
    active = await rig.drift.active("crm", "get_person")
    assert active is not None and active.decided_by == "ada"

    again = await rig.start(get("get_person", "8"))
    later = (await again.result())["steps"][0]
    assert later["healing"]["schema"] == {"mapping_id": active.mapping_id}
    assert (await rig.status(again)).state == "idle"  # no escalation, no failure
    assert rig.chaos.stats().calls_to("GET", "/people/8") == 1
    await replay(handle)


async def test_a_removed_required_field_escalates_with_a_field_level_explanation(
    rig: Rig,
) -> None:
    rig.chaos.set_plan(drifting(("GET", "/people/*", "remove")))
    handle = await rig.start(get("get_person", "3"))
    [esc] = (await rig.awaiting(handle)).open_escalations
    assert esc.error_type.value == "SCHEMA_MISMATCH"
    assert "required field email (string) is missing" in esc.explanation
    assert "no mapping with enough evidence" in esc.explanation
    assert "accept_mapping" not in [o.option for o in esc.options]
    assert "p3@example.com" not in esc.explanation  # names, never values
    assert rig.chaos.stats().calls_to("GET", "/people/3") == 1  # not retried, not re-sent
    await decide(rig.client, handle.id, "skip", decided_by="ada")
    assert (await handle.result())["steps"][0]["status"] == "skipped"
    await replay(handle)


async def test_pause_escalates_even_a_confident_mapping_and_applies_nothing(rig: Rig) -> None:
    rig.chaos.set_plan(drifting(("GET", "/people/*", "data")))
    handle = await rig.start(get("get_person_pause", "4"))
    [esc] = (await rig.awaiting(handle)).open_escalations
    assert 'schema_drift = "pause"' in esc.explanation
    assert "accept_mapping" in [o.option for o in esc.options]  # the proposal, stored
    [proposal] = await rig.drift.mappings(fresh=True)
    assert proposal.status == "proposed" and proposal.envelope == "data"  # nothing applied
    assert rig.chaos.stats().calls_to("GET", "/people/4") == 1
    records = {(r.change, r.path) for r in await rig.drift.records()}
    assert ("envelope", "data") in records  # recorded all the same
    await decide(rig.client, handle.id, "accept_mapping", decided_by="ada")
    step = (await handle.result())["steps"][0]
    assert step["result"]["last_name"] == "Lovelace4"  # the held answer, read with it
    # Approved by a human, the mapping now applies under pause too: no escalation, 1 call.
    again = await rig.start(get("get_person_pause", "5"))
    later = (await again.result())["steps"][0]
    assert later["result"]["last_name"] == "Lovelace5"
    assert (await rig.status(again)).state == "idle"
    assert rig.chaos.stats().calls_to("GET", "/people/5") == 1
    await replay(handle)


# --- the fleet: two `python worker.py` processes, then a restart -------------------------------


class WorkerPy:
    """``python worker.py`` as a user runs it: env only, default SQLite HEALING_STORE."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> WorkerPy:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "worker.py"),
                cwd=ROOT,
                env=self.env,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        banner = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert b"healing worker" in banner, self.log.read_text(errors="replace")[-2000:]
        return self

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _identities(history: Any) -> set[str]:
    return {
        e.activity_task_started_event_attributes.identity
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    }


async def test_the_fleet_learns_once_then_100_calls_on_two_workers_and_after_a_restart(
    dev_server: DevServer, tmp_path: Path
) -> None:
    async with ChaosAPI(drifting(("GET", "/hubspot/contacts/*", "hubspot"))) as chaos:
        catalog = tmp_path / "connectors.toml"
        catalog.write_text(catalog_text(chaos.url))
        task_queue = f"drift-fleet-{uuid.uuid4()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALING_")}
        env |= {
            "PYTHONPATH": str(ROOT),
            "TEMPORAL_ADDRESS": dev_server.address,
            "HEALING_TASK_QUEUE": task_queue,
            "HEALING_CONNECTORS": str(catalog),
            "HEALING_STORE": f"sqlite:///{tmp_path}/healing.db",
            "HEALING_MAX_CONCURRENT_ACTIVITIES": "10",
        }
        client = await Client.connect(dev_server.address, plugins=[HealingPlugin(CONFIG)])
        workers = [WorkerPy(env, tmp_path / f"w{i}.log") for i in range(3)]

        async def batch(first: int, n: int) -> list[dict[str, Any]]:
            steps = [get("get_hubspot_contact", str(i)) for i in range(first, first + n)]
            handle = await client.start_workflow(
                "IntegrationWorkflow",
                {"steps": steps, "parallel": True, "start_to_close_s": 10},
                id=f"drift-fleet-{uuid.uuid4()}",
                task_queue=task_queue,
            )
            result = await handle.result()
            history = await handle.fetch_history()
            failed = [
                e for e in history.events if e.HasField("activity_task_failed_event_attributes")
            ]
            assert failed == []  # no SCHEMA_MISMATCH (nor any failure) in the whole batch
            return [{**s, "identities": _identities(history)} for s in result["steps"]]

        try:
            await workers[0].start()
            await workers[1].start()
            [learned] = await batch(0, 1)
            assert learned["healing"]["schema"]["adapted"] is True
            mapping_id = learned["healing"]["schema"]["mapping_id"]
            await asyncio.sleep(1.2)  # the other worker's mapping cache (about a second)

            steps = await batch(1, 100)
            assert len(steps[0]["identities"]) == 2, "both workers ran calls"
            for n in range(1, 101):
                assert chaos.stats().calls_to("GET", f"/hubspot/contacts/{n}") == 1
            for step in steps:
                assert step["healing"]["attempt"] == 1  # no failed attempt before it
                assert step["healing"]["counts_by_type"] == {}  # 0 SCHEMA_MISMATCH
                assert step["healing"]["schema"] == {"mapping_id": mapping_id}
                assert step["extra"] == {"properties.hs_new_prop": "x"}

            await workers[0].stop()
            await workers[1].stop()
            await workers[2].start()  # a restart: the mapping comes from the store
            after = await batch(101, 100)
            for n in range(101, 201):
                assert chaos.stats().calls_to("GET", f"/hubspot/contacts/{n}") == 1
            assert all(s["healing"]["counts_by_type"] == {} for s in after)
            assert all(s["healing"]["attempt"] == 1 for s in after)
            assert all(s["healing"]["schema"] == {"mapping_id": mapping_id} for s in after)
            assert chaos.stats().total_calls == 201
        finally:
            for w in workers:
                await w.stop()
