"""The ``healing`` command with the worker stopped: it answers fast and never misleads.

Each test pauses real workflows with a real healing worker in this process (IntegrationWorkflow
over a chaos CRM: ``/contacts/missing-*`` always answer 404, ``/contacts/flaky-*`` answer 404
once), STOPS the worker, and then runs the ``healing`` console script as a subprocess, as an
operator would during a deploy or after a crash. Every workflow has its own uuid task queue, so
``TaskQueue = "..."`` picks exactly a test's workflows out of the shared dev server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from healing.catalog import ConnectorCatalog
from healing.client import AWAITING_QUERY, DecisionUnconfirmed, decide, healing_status
from healing.config import BackoffPolicy, HealingConfig
from healing.devserver import DevServer
from healing.names import DECISION_SIGNAL, MEMO_KEY
from healing.plugin import HealingPlugin
from healing.runner import build_worker, connect
from healing.testing import ChaosAPI, FaultPlan, FaultRule, StatusFault
from tests.e2e.helpers import (
    crm_catalog,
    get_contact,
    healing_piped,
    one_line,
    wait_listed,
    wait_until_awaiting,
)

NOT_FOUND = StatusFault(status=404, vendor="hubspot")
SIGNALED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
TASK_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
LIST_S = 8.0
"""Listing answers in about a second (benchmarks/escalations_listing.py); the bound leaves room
for a shared CI machine and the interpreter's start-up."""
ANSWER_S = 10.0
"""Status and decide answer within 10 s with no worker (the issue's bound)."""
UPDATE_ACCEPTED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
UPDATE_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ADMITTED,
    UPDATE_ACCEPTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
}


@dataclass
class Rig:
    server: DevServer
    client: Client
    chaos: ChaosAPI
    catalog: ConnectorCatalog
    config: HealingConfig

    @property
    def address(self) -> str:
        return self.server.address

    def plugin(self) -> HealingPlugin:
        return HealingPlugin(self.config, alternatives=self.catalog.alternatives())

    @contextlib.asynccontextmanager
    async def worker(self, task_queue: str, client: Client | None = None) -> AsyncIterator[None]:
        """A healing worker on ``task_queue`` until the block ends (then it is STOPPED)."""
        worker, acts = build_worker(
            client or self.client, self.config, self.catalog, task_queue=task_queue
        )
        try:
            async with worker:
                yield
        finally:
            await acts.aclose()

    async def start(self, contact: str, task_queue: str, client: Client | None = None) -> str:
        workflow_id = f"nw-{contact}-{uuid.uuid4().hex[:8]}"
        await (client or self.client).start_workflow(
            "IntegrationWorkflow", get_contact(contact), id=workflow_id, task_queue=task_queue
        )
        return workflow_id

    async def paused(
        self, contacts: Sequence[str], task_queue: str, client: Client | None = None
    ) -> list[str]:
        """Start a workflow per contact and wait until each is paused (a worker must run)."""
        ids = [await self.start(c, task_queue, client) for c in contacts]
        for wf in ids:
            await wait_until_awaiting(client or self.client, wf)
        return ids

    async def paused_then_stopped(self, contacts: Sequence[str]) -> tuple[str, list[str]]:
        """A new task queue, workflows paused on it, and its worker stopped."""
        task_queue = f"e2e-no-worker-{uuid.uuid4()}"
        async with self.worker(task_queue):
            ids = await self.paused(contacts, task_queue)
        return task_queue, ids


@pytest.fixture(scope="module")
async def rig(dev_server: DevServer) -> AsyncIterator[Rig]:
    plan = FaultPlan(
        rules=(
            FaultRule(path="/contacts/missing-*", always=NOT_FOUND),
            FaultRule(path="/contacts/flaky-*", faults=(NOT_FOUND,)),
        )
    )
    config = HealingConfig.load(backoff=BackoffPolicy(initial_s=0.2, max_s=1.0))
    async with ChaosAPI(plan) as chaos:
        catalog = crm_catalog(chaos.url)
        plugin = HealingPlugin(config, alternatives=catalog.alternatives())
        client = await connect(dev_server.address, dev_server.namespace, plugin)
        yield Rig(dev_server, client, chaos, catalog, config)


def only(task_queue: str) -> str:
    return f'TaskQueue = "{task_queue}"'


def line_with(out: str, *needles: str) -> str:
    """The first line of ``out`` holding every needle (fails showing ``out``)."""
    for line in out.splitlines():
        if all(n in line for n in needles):
            return line
    raise AssertionError(f"no line with {needles} in:\n{out}")


async def history(handle: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
    return list((await handle.fetch_history()).events)


def decisions_in(events: list[HistoryEvent]) -> list[dict[str, Any]]:
    """Bodies of the escalation_decision signals in a history."""
    found = []
    for ev in events:
        attrs = ev.workflow_execution_signaled_event_attributes
        if ev.event_type == SIGNALED and attrs.signal_name == DECISION_SIGNAL:
            found.append(json.loads(attrs.input.payloads[0].data))
    return found


async def after_a_workflow_task(handle: WorkflowHandle[Any, Any], within: float = 60) -> None:
    """Signal the workflow (a name it has no handler for) and wait until a worker completed a
    workflow task after it: anything sent earlier and still pending would have come with it."""
    await handle.signal("e2e_barrier")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        events = await history(handle)
        barrier = max(
            i
            for i, ev in enumerate(events)
            if ev.event_type == SIGNALED
            and ev.workflow_execution_signaled_event_attributes.signal_name == "e2e_barrier"
        )
        if any(ev.event_type == TASK_COMPLETED for ev in events[barrier:]):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no workflow task completed on {handle.id} within {within}s")


async def test_escalations_and_status_answer_fast_with_the_worker_stopped(rig: Rig) -> None:
    task_queue, ids = await rig.paused_then_stopped(["missing-a1", "missing-a2", "missing-a3"])
    await wait_listed(rig.client, f"{only(task_queue)} AND {AWAITING_QUERY}", set(ids))

    code, out, err, took = await healing_piped(
        "escalations", "--json", "--query", only(task_queue), "--address", rig.address
    )
    assert code == 0, err
    assert took < LIST_S, f"healing escalations took {took:.1f}s with no worker"
    listed = json.loads(out)
    assert sorted(e["workflow_id"] for e in listed) == sorted(ids)
    for e in listed:
        assert e["memo"] is True and e["task_queue"] == task_queue
        assert (e["error_type"], e["connector"], e["operation"]) == (
            "NOT_FOUND",
            "crm",
            "get_contact",
        )
        assert "skip" in e["options"] and e["default_option"] == "abort"
        assert "404" in e["explanation"] and e["escalation_id"]

    code, out, err, took = await healing_piped("escalations", "--address", rig.address)
    assert code == 0, err
    assert took < LIST_S
    assert "open escalation" in out
    for wf in ids:
        line = line_with(out, wf)
        assert "NOT_FOUND" in line and "crm.get_contact" in line and "abort in" in line

    wf = ids[0]
    code, out, err, took = await healing_piped("status", wf, "--address", rig.address)
    assert code == 0, err
    assert took < ANSWER_S, f"healing status took {took:.1f}s with no worker"
    assert f"no worker is polling task queue {task_queue}" in out
    assert f"{MEMO_KEY!r} memo" in out
    assert "NOT_FOUND" in out and "crm.get_contact" in out and "skip" in out
    assert f"healing decide {wf} <option> --queue" in out
    assert "{" not in out  # a summary, not raw dicts

    code, out, err, _ = await healing_piped("status", wf, "--json", "--address", rig.address)
    assert code == 0, err
    report = json.loads(out)
    assert report["run_status"] == "RUNNING" and report["healing"] is None
    assert report["worker"]["polling"] is False and report["task_queue"] == task_queue
    assert report["memo"]["workflow_id"] == wf and report["memo"]["error_type"] == "NOT_FOUND"


async def test_decide_with_no_worker_answers_fast_and_sends_nothing(rig: Rig) -> None:
    task_queue, (wf, control) = await rig.paused_then_stopped(["flaky-b1", "flaky-b2"])

    code, out, err, took = await healing_piped("decide", wf, "retry", "--address", rig.address)
    assert code == 3, (out, err)
    assert took < ANSWER_S, f"healing decide took {took:.1f}s with no worker"
    line = one_line(err)
    assert f"no worker is polling task queue {task_queue}; the decision would wait for one" in line
    assert "Nothing was sent" in line and "--queue" in line

    await wait_listed(rig.client, f"{only(task_queue)} AND {AWAITING_QUERY}", {wf, control})
    code, out, err, took = await healing_piped(
        "decide", "--query", only(task_queue), "retry", "--yes", "--address", rig.address
    )
    assert code == 3, (out, err)
    assert took < ANSWER_S
    assert "Nothing was sent" in one_line(err)

    # The control: an update sent now (what `decide` used to do) waits for a worker and is
    # applied when one returns. It shows this test would see a decision applied late.
    with pytest.raises(DecisionUnconfirmed, match="may still be applied"):
        await decide(rig.client, control, "retry", decided_by="control", timeout_s=2)

    handle = rig.client.get_workflow_handle(wf)
    async with rig.worker(task_queue):
        late = await asyncio.wait_for(rig.client.get_workflow_handle(control).result(), 60)
        assert late["steps"][0]["status"] == "ok"
        await after_a_workflow_task(handle)
        events = await history(handle)
        assert not decisions_in(events)
        assert not [ev for ev in events if ev.event_type in UPDATE_EVENTS]
        report = await healing_status(rig.client, wf)
        assert report.healing is not None and report.healing.state == "awaiting_decision"
        assert report.healing.open_escalations
    assert rig.chaos.stats().calls_to("GET", "/contacts/flaky-b1") == 1  # never retried


async def test_queued_decision_applies_when_a_worker_returns(rig: Rig) -> None:
    task_queue, (wf,) = await rig.paused_then_stopped(["flaky-c1"])
    handle = rig.client.get_workflow_handle(wf)
    memo = (await (await handle.describe()).memo())[MEMO_KEY]

    # No worker validates a queued signal, so the memo's options do: nothing is sent.
    code, out, err, took = await healing_piped(
        "decide", wf, "wait", "--queue", "--address", rig.address
    )
    assert code == 2, (out, err)
    assert "'wait' is not offered for NOT_FOUND" in one_line(err)

    code, out, err, took = await healing_piped(
        "decide", wf, "retry", "--queue", "--address", rig.address, env={"USER": "alice"}
    )
    assert code == 0, err
    assert took < ANSWER_S
    assert f"no worker is polling task queue {task_queue}" in out
    assert "queued 'retry' as a signal" in out and "applied when a worker returns" in out
    (queued,) = decisions_in(await history(handle))
    assert queued["option"] == "retry"
    assert queued["decided_by"] == f"alice@{socket.gethostname()}"
    assert queued["escalation_id"] == memo["escalation_id"]

    async with rig.worker(task_queue):
        result = await asyncio.wait_for(handle.result(), 60)
    assert result["steps"][0]["status"] == "ok"
    assert result["steps"][0]["result"]["id"] == "flaky-c1"
    assert rig.chaos.stats().calls_to("GET", "/contacts/flaky-c1") == 2


async def test_bulk_decide_counts_confirms_and_reports_each(rig: Rig) -> None:
    task_queue = f"e2e-bulk-{uuid.uuid4()}"
    query = only(task_queue)
    async with rig.worker(task_queue):
        ids = await rig.paused(["missing-d1", "missing-d2", "missing-d3"], task_queue)
        await wait_listed(rig.client, f"{query} AND {AWAITING_QUERY}", set(ids))

        # stdin is a pipe, not a terminal: without --yes it refuses, even to a piped "y".
        code, out, err, _ = await healing_piped(
            "decide", "--query", query, "skip", "--address", rig.address, stdin=b"y\n"
        )
        assert code == 2, (out, err)
        assert "refusing to decide 3 workflows without confirmation" in one_line(err)
        assert "3 paused workflows match" in out

        code, out, err, took = await healing_piped(
            "decide",
            "--query",
            query,
            "skip",
            "--yes",
            "--by",
            "ops-bulk",
            "--address",
            rig.address,
        )
        assert code == 0, (out, err)
        assert took < 20
        assert "skip for 3 workflows: 3 applied, 0 sent as signals, 0 refused, 0 failed" in out
        for wf in ids:
            line = line_with(out, wf, "applied")
            assert "accepted and applied by the worker" in line
        for wf in ids:
            handle = rig.client.get_workflow_handle(wf)
            result = await asyncio.wait_for(handle.result(), 30)
            assert result["steps"][0]["status"] == "skipped"
            (accepted,) = [ev for ev in await history(handle) if ev.event_type == UPDATE_ACCEPTED]
            request = accepted.workflow_execution_update_accepted_event_attributes.accepted_request
            body = json.loads(request.input.args.payloads[0].data)
            assert (body["option"], body["decided_by"]) == ("skip", "ops-bulk")

    code, out, err, _ = await healing_piped(
        "decide", "--query", query, "skip", "--yes", "--address", rig.address
    )
    assert code == 0, err
    assert "no paused workflow matches" in out


async def test_escalations_list_by_memo_when_the_search_attribute_is_missing(rig: Rig) -> None:
    namespace = f"e2e-no-sa-{uuid.uuid4().hex[:8]}"
    await rig.client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    client = await connect(rig.address, namespace, rig.plugin())
    task_queue = f"e2e-no-sa-{uuid.uuid4()}"
    async with rig.worker(task_queue, client):
        (wf,) = await rig.paused(["missing-e1"], task_queue, client)
    await wait_listed(client, only(task_queue), {wf})

    code, out, err, took = await healing_piped(
        "escalations", "--json", "--namespace", namespace, "--address", rig.address
    )
    assert code == 0, err
    assert took < LIST_S
    assert [e["workflow_id"] for e in json.loads(out)] == [wf]
    assert "search attribute HealingStatus is not registered" in one_line(err)


async def test_escalations_never_claim_none_when_visibility_fails(rig: Rig) -> None:
    with pytest.raises(RPCError):  # what the command meets: no such namespace
        await (await connect(rig.address, "no-such-namespace", rig.plugin())).count_workflows()
    code, out, err, took = await healing_piped(
        "escalations", "--namespace", "no-such-namespace", "--address", rig.address
    )
    assert code == 1, (out, err)
    assert "no open escalations" not in out
    assert "Temporal at" in one_line(err) and "Traceback" not in err
    assert took < LIST_S
