"""Metrics on the real dev server: what ``/metrics`` counts agrees with what happened.

1. ``python worker.py`` with ``HEALING_METRICS`` on a free port runs a chaos run (a seeded
   ChaosAPI plan of 503/500/429/resets, plus calls that always 404 and escalate, decided by
   the test) with a SQLite store and a webhook notifier; the scraped counters (failures by
   type, healing attempts by outcome, heals, escalations opened and closed, notifications)
   must equal the store's event log and the chaos server's own fault count.
2. An in-process worker on a Prometheus runtime covers the workflow side: a token refresh, a
   schema adaptation, a circuit that opens and closes, an escalation decided by a human;
   again checked against the event log.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from healing import BreakerPolicy, HealingConfig, HealingPlugin, SchemaMismatch
from healing.client import decide
from healing.credentials import Credential
from healing.devserver import DevServer, find_free_port
from healing.metrics import prometheus_runtime
from healing.names import NOTIFY_ACTIVITY, STATUS_QUERY
from healing.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from healing.store import connect_store
from healing.store.base import EventFilter
from healing.testing import ChaosAPI, FaultPlan, FaultRule, ResetFault, StatusFault
from healing.types import HealingEvent, HealingStatus
from tests.e2e.helpers import ROOT, get_contact
from tests.receiver import Receiver
from tests.temporal.harness import Call, Scripted, fail
from tests.temporal.wf import CallWorkflow

WORKER = str(ROOT / "worker.py")
SECRET = "whsec_metrics"
_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$"
)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Samples:
    """Prometheus text format -> (name, labels, value) samples."""
    samples: Samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m is not None, line
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        samples.append((m.group("name"), labels, float(m.group("value"))))
    return samples


def total(samples: Samples, name: str, **match: str) -> int:
    return round(
        sum(
            v
            for n, labels, v in samples
            if n == name and all(labels.get(k) == w for k, w in match.items())
        )
    )


def by_label(samples: Samples, name: str, label: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for n, labels, v in samples:
        if n == name and v:
            out[labels[label]] += round(v)
    return out


async def scrape(address: str) -> Samples:
    async with httpx.AsyncClient(timeout=5) as http:
        resp = await http.get(f"http://{address}/metrics")
    resp.raise_for_status()
    return parse(resp.text)


async def events_of(store_url: str) -> list[HealingEvent]:
    store = await connect_store(store_url)
    try:
        return await store.recent_events(EventFilter(limit=10_000))
    finally:
        await store.close()


def kinds(events: list[HealingEvent]) -> Counter[str]:
    return Counter(e.kind for e in events)


async def status(handle: WorkflowHandle[Any, Any]) -> HealingStatus:
    return HealingStatus.model_validate(await handle.query(STATUS_QUERY))


async def until_paused(handle: WorkflowHandle[Any, Any], within_s: float = 60) -> None:
    for _ in range(int(within_s / 0.2)):
        if (await status(handle)).open_escalations:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{handle.id} did not pause within {within_s}s")


async def until_notified(handle: WorkflowHandle[Any, Any], within_s: float = 30) -> None:
    """Until the notifier's activity has completed. Deciding while it completes lets the
    server fail the decision's workflow task (UNHANDLED_COMMAND when the decision ends the
    workflow) and abort the update with WorkflowNotReady: a client concern, not the
    notifier's (see the closing report); these tests decide once it is done."""
    for _ in range(int(within_s / 0.1)):
        scheduled: set[int] = set()
        async for e in handle.fetch_history_events():
            kind = e.event_type
            if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                name = e.activity_task_scheduled_event_attributes.activity_type.name
                if name == NOTIFY_ACTIVITY:
                    scheduled.add(e.event_id)
            elif (
                kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                and e.activity_task_completed_event_attributes.scheduled_event_id in scheduled
            ):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.id}: the notifier did not complete within {within_s}s")


def check_against_event_log(samples: Samples, events: list[HealingEvent]) -> None:
    """The counters that have an event-log twin equal it (see healing.metrics)."""
    k = kinds(events)
    classified = Counter(str(e.error_type) for e in events if e.kind == "classified")
    assert by_label(samples, "healing_failures", "error_type") == classified
    retries = total(samples, "healing_attempts", outcome="retry")
    assert retries + total(samples, "healing_attempts", outcome="held") == k["attempt"]
    healed = total(samples, "healing_attempts", outcome="healed")
    healed += total(samples, "healing_attempts", outcome="resolved")
    assert healed == k["healed"]
    assert total(samples, "healing_time_to_heal_seconds_count") == k["healed"]
    assert total(samples, "healing_attempts", outcome="rerouted") == k["rerouted"]
    assert total(samples, "healing_escalations_opened") == k["escalated"]
    assert total(samples, "healing_attempts", outcome="escalated") == k["escalated"]
    assert total(samples, "healing_escalations_closed") == k["decided"]
    assert total(samples, "healing_token_refreshes", outcome="ok") == k["refreshed"]
    assert total(samples, "healing_schema_adaptations", outcome="ok") == k["adapted"]


# --- 1. python worker.py with HEALING_METRICS: a chaos run ----------------------------------


async def test_worker_py_metrics_agree_with_the_event_log_after_a_chaos_run(
    dev_server: DevServer, tmp_path: Path
) -> None:
    gone = [f"gone-{i}" for i in range(3)]
    chaotic = [f"r-{i}" for i in range(16)]
    plan = FaultPlan.random(
        seed=11,
        rate=0.4,
        kinds=[
            StatusFault(status=503),
            StatusFault(status=500),
            StatusFault(status=429, retry_after=1),
            ResetFault(),
        ],
        max_consecutive=2,  # within every budget: each of these calls heals by retries
        paths_prefix="/contacts/r-",
        rules=[FaultRule(path="/contacts/gone-*", always=StatusFault(status=404))],
    )
    address = f"127.0.0.1:{find_free_port()}"
    store_url = f"sqlite:///{tmp_path}/healing.db"
    task_queue = f"e2e-metrics-{uuid.uuid4()}"
    async with ChaosAPI(plan) as chaos, Receiver() as rx:
        catalog = tmp_path / "connectors.toml"
        catalog.write_text(
            f'[connectors.crm]\nbase_url = "{chaos.url}"\ntimeout_s = 5\n'
            '[connectors.crm.operations.get_contact]\npath = "/contacts/{id}"\n'
        )
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": dev_server.address,
            "HEALING_TASK_QUEUE": task_queue,
            "HEALING_CONNECTORS": str(catalog),
            "HEALING_STORE": store_url,
            "HEALING_METRICS": address,
            "HEALING_NOTIFY_WEBHOOK": rx.url,
            "HEALING_NOTIFY_SECRET": SECRET,
            "HEALING_BACKOFF__INITIAL_S": "0.2",
            "HEALING_BACKOFF__MAX_S": "1",
            "HEALING_BREAKER__ENABLED": "false",
        }
        log = tmp_path / "worker.log"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            WORKER,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log.open("wb"),
        )
        try:
            assert proc.stdout is not None
            banner = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert f"metrics on http://{address}/metrics" in banner, banner
            client = await Client.connect(dev_server.address, plugins=[HealingPlugin()])

            async def start(contact: str) -> WorkflowHandle[Any, Any]:
                return await client.start_workflow(
                    "IntegrationWorkflow",
                    get_contact(contact),
                    id=f"e2e-metrics-{contact}-{uuid.uuid4()}",
                    task_queue=task_queue,
                    result_type=dict,
                )

            handles = [await start(c) for c in chaotic]
            paused = [await start(c) for c in gone]
            for handle in paused:
                await until_paused(handle)
                await until_notified(handle)
                await decide(client, handle.id, "skip", decided_by="test")
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles + paused)), 120
            )
            assert [r["steps"][0]["status"] for r in results] == ["ok"] * 16 + ["skipped"] * 3
            for _ in range(50):  # the notifications are POSTed beside the pauses
                if len(rx.requests) >= len(gone):
                    break
                await asyncio.sleep(0.1)
            samples = await scrape(address)
            stats = chaos.stats()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)  # the worker flushes its event log on the way out
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            print(log.read_text()[-20_000:])  # shown when the test fails
    events = await events_of(store_url)
    # What happened: every fault the chaos server served was one classified failure.
    faults = sum(stats.faults_by_kind.values())
    assert faults > len(gone), "the plan injected no chaos"
    assert total(samples, "healing_failures") == faults
    assert total(samples, "healing_failures", error_type="NOT_FOUND") == len(gone)
    failing = by_label(samples, "healing_failures", "error_type")
    assert {"SERVICE_DOWN", "INTERNAL_ERROR", "RATE_LIMITED", "NETWORK_ERROR"} <= set(failing)
    assert total(samples, "healing_escalations_opened", error_type="NOT_FOUND") == len(gone)
    assert total(samples, "healing_escalations_closed", option="skip") == len(gone)
    assert total(samples, "healing_attempts", outcome="gave_up") == len(gone)
    healed_calls = sum(1 for c in chaotic if stats.calls_to("GET", f"/contacts/{c}") > 1)
    assert total(samples, "healing_attempts", outcome="healed") == healed_calls
    # The notifier told the receiver once per pause, signed.
    assert total(samples, "healing_notifications", format="json", outcome="sent") == len(gone)
    assert len(rx.requests) == len(gone)
    for req in rx.requests:
        assert verify_signature(
            SECRET,
            req.headers[TIMESTAMP_HEADER.lower()],
            req.body,
            req.headers[SIGNATURE_HEADER.lower()],
        )
    # And the endpoint agrees with the store's event log, counter by counter.
    assert {e.workflow_id for e in events} >= {h.id for h in paused}
    check_against_event_log(samples, events)
    assert any(n.startswith("temporal_") for n, _, _ in samples)  # the SDK's own metrics too


# --- 2. in process: refresh, schema adaptation, circuit breaker, a human ------------------


class Tokens:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def refresh(
        self, connector: str, *, seen_version: int | None = None, reason: str = ""
    ) -> Any:
        self.calls.append(connector)
        return Credential(connector=connector, access_token="fresh", version=len(self.calls) + 1)


def _contact(call: Call) -> Any:
    if call.mapping != {"email_address": "email"}:
        return SchemaMismatch(
            "Contact: field email missing, email_address unexpected",
            missing=["email"],
            unexpected=["email_address"],
            mapping={"email_address": "email"},
            connector="crm",
            operation="get_contact",
        )
    return {"email": "ada@example.com"}


SALESFORCE_401 = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


async def test_workflow_side_metrics_agree_with_the_event_log(
    dev_server: DevServer, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{find_free_port()}"
    runtime = prometheus_runtime(address)
    store_url = f"sqlite:///{tmp_path}/healing.db"
    store = await connect_store(store_url)
    cfg = HealingConfig(
        # One failure opens the "flaky" circuit; it half-opens at once for the next attempt.
        breaker=BreakerPolicy(failure_threshold=1, ratio_confidence=0.5, open_s=0.2),
    )
    tokens = Tokens()
    healing = HealingPlugin(cfg, tokens=tokens, store=store)
    client = await Client.connect(
        dev_server.address, runtime=runtime, data_converter=pydantic_data_converter
    )
    auth = Scripted([fail(401, SALESFORCE_401)], name="auth_call")
    schema = Scripted(then=_contact, name="schema_call")
    gone = Scripted([fail(404, {"message": "no contact 42"})], name="gone_call")
    flaky = Scripted([fail(503, connector="flaky")], name="flaky_call", connector="flaky")
    task_queue = f"e2e-metrics-{uuid.uuid4()}"
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[CallWorkflow],
        activities=[auth.activity, schema.activity, gone.activity, flaky.activity],
        plugins=[healing],
    )
    try:
        async with worker:

            async def start(name: str) -> WorkflowHandle[Any, Any]:
                return await client.start_workflow(
                    CallWorkflow.run,
                    {"activity": name},
                    id=f"e2e-metrics-{name}-{uuid.uuid4()}",
                    task_queue=task_queue,
                )

            handles = [await start(n) for n in ("auth_call", "schema_call", "flaky_call")]
            human = await start("gone_call")
            await until_paused(human)  # told by a log line: no notify activity to wait for
            await decide(client, human.id, "retry", decided_by="test")
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in [*handles, human])), 60
            )
            samples = await scrape(address)
    finally:
        await store.close()
    assert all(r["result"] for r in results)
    assert tokens.calls == ["crm"]
    events = await events_of(store_url)
    assert total(samples, "healing_token_refreshes", connector="crm", outcome="ok") == 1
    assert total(samples, "healing_attempts", strategy="refresh_token", outcome="refreshed") == 1
    assert total(samples, "healing_schema_drift", connector="crm", operation="get_contact") >= 1
    assert total(samples, "healing_schema_adaptations", outcome="ok") == 1
    assert total(samples, "healing_escalations_opened", error_type="NOT_FOUND") == 1
    assert total(samples, "healing_escalations_closed", option="retry") == 1
    assert total(samples, "healing_attempts", strategy="decision", outcome="resolved") == 1
    assert total(samples, "healing_time_to_heal_seconds_count", healed_by="human") == 1
    assert total(samples, "healing_time_to_heal_seconds_count", healed_by="workflow") == 2
    assert total(samples, "healing_notifications", format="log", outcome="sent") == 1
    assert total(samples, "healing_breaker_transitions", connector="flaky", to_state="open") == 1
    assert total(samples, "healing_breaker_transitions", connector="flaky", to_state="closed") == 1
    assert total(samples, "healing_breaker_state", connector="flaky") == 0  # closed again
    check_against_event_log(samples, events)
