"""``healing serve`` over a real dev server: decisions need the token, SSE is ordered and resumes.

A healing worker runs in this process (IntegrationWorkflow over a chaos CRM whose
``/contacts/missing-*`` always answer 404, so each such step pauses for a human at once), and
the ASGI app runs under uvicorn on a free 127.0.0.1 port, as ``healing serve`` runs it.
The browser test of the inbox (tests/e2e/test_inbox_browser.py) reuses :func:`serve_stack`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from healing.config import BackoffPolicy, HealingConfig
from healing.devserver import DevServer
from healing.names import STATUS_QUERY
from healing.plugin import HealingPlugin
from healing.runner import build_worker, connect
from healing.serve import HistoryCursor, ServeOptions, create_app, listen
from healing.testing import ChaosAPI, FaultPlan, FaultRule, StatusFault
from healing.types import HealingStatus
from tests.e2e.helpers import ROOT, crm_catalog, get_contact, healing_command, wait_until_awaiting

WEB = Path(__file__).resolve().parents[2] / "healing" / "web"
_DECISION_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ADMITTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
}


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free 127.0.0.1 port until the block ends."""
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
            assert time.monotonic() < deadline, "uvicorn did not start within 10s"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()


@dataclass
class ServeStack:
    client: Client
    task_queue: str
    base_url: str
    token: str
    started: list[str] = field(default_factory=list)

    async def start(self, *contacts: str, prefix: str = "serve") -> str:
        """Start an IntegrationWorkflow with one get_contact step per contact id."""
        wf = f"e2e-{prefix}-{uuid.uuid4().hex[:10]}"
        steps = [step for c in contacts for step in get_contact(c)["steps"]]
        await self.client.start_workflow(
            "IntegrationWorkflow", {"steps": steps}, id=wf, task_queue=self.task_queue
        )
        self.started.append(wf)
        return wf

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.asynccontextmanager
async def serve_stack(dev_server: DevServer, **options: Any) -> AsyncIterator[ServeStack]:
    """Chaos CRM, a healing worker on a fresh task queue, and the app under uvicorn."""
    plan = FaultPlan(
        rules=(
            FaultRule(path="/contacts/missing-*", always=StatusFault(status=404, vendor="hubspot")),
        )
    )
    config = HealingConfig.load(backoff=BackoffPolicy(initial_s=0.2, max_s=1.0))
    token = secrets.token_urlsafe(24)
    opts = ServeOptions(**{"token": token, "poll_s": 0.25, "query_timeout_s": 2.0, **options})
    async with ChaosAPI(plan) as chaos:
        catalog = crm_catalog(chaos.url)
        plugin = HealingPlugin(config, alternatives=catalog.alternatives())
        client = await connect(dev_server.address, dev_server.namespace, plugin)
        task_queue = f"e2e-serve-{uuid.uuid4()}"
        worker, acts = build_worker(client, config, catalog, task_queue=task_queue)
        stack = ServeStack(client, task_queue, "", token)
        try:
            async with worker, serving(create_app(client, opts)) as base_url:
                stack.base_url = base_url
                yield stack
                for wf in stack.started:  # nothing of ours stays paused on the shared server
                    handle = client.get_workflow_handle(wf)
                    if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                        await handle.terminate("test over")
        finally:
            await acts.aclose()


@pytest.fixture(scope="module")
async def stack(dev_server: DevServer) -> AsyncIterator[ServeStack]:
    async with serve_stack(dev_server) as s:
        yield s


async def query(client: Client, wf: str) -> HealingStatus:
    return HealingStatus.model_validate(await client.get_workflow_handle(wf).query(STATUS_QUERY))


async def decision_events(client: Client, wf: str) -> list[str]:
    """Signals and updates in the workflow's history (a refused request adds none)."""
    history = await client.get_workflow_handle(wf).fetch_history()
    return [
        EventType.Name(e.event_type) for e in history.events if e.event_type in _DECISION_EVENTS
    ]


async def wait_until_listed(http: httpx.AsyncClient, wf: str, within: float = 20.0) -> Any:
    """The /api/escalations entry of ``wf`` (visibility lags the workflow a little)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        body = (await http.get("/api/escalations")).json()
        for item in body["escalations"]:
            if item["workflow_id"] == wf and item["escalation"] is not None:
                return item
        await asyncio.sleep(0.2)
    raise AssertionError(f"{wf} is not in /api/escalations within {within}s")


# --- (a) decisions need the token ---------------------------------------------------------------


async def test_a_decision_without_the_token_gets_401_and_changes_nothing(
    stack: ServeStack,
) -> None:
    wf = await stack.start("missing-auth")
    (esc,) = (await wait_until_awaiting(stack.client, wf)).open_escalations
    before = await query(stack.client, wf)
    url = f"/api/workflows/{wf}/decision"
    body = {"option": "skip", "escalation_id": esc.escalation_id}
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=20) as http:
        refusals = {
            "no header": {},
            "wrong token": {"Authorization": "Bearer not-the-token"},
            "token prefix": {"Authorization": f"Bearer {stack.token[:-1]}"},
            "wrong scheme": {"Authorization": f"Basic {stack.token}"},
            "bare token": {"Authorization": stack.token},
        }
        for case, headers in refusals.items():
            resp = await http.post(url, json=body, headers=headers)
            assert resp.status_code == 401, (case, resp.status_code, resp.text)
            assert resp.headers["www-authenticate"].startswith("Bearer"), case
            assert stack.token not in resp.text, f"{case}: the token was echoed"

        # Nothing reached the workflow: still paused on the same escalation, no signal/update.
        after = await query(stack.client, wf)
        assert after.state == "awaiting_decision"
        assert [e.escalation_id for e in after.open_escalations] == [esc.escalation_id]
        assert after.history == before.history
        assert await decision_events(stack.client, wf) == []
        desc = await stack.client.get_workflow_handle(wf).describe()
        assert desc.status == WorkflowExecutionStatus.RUNNING

        # The same request with the token is accepted, so the 401s above were the token's doing.
        resp = await http.post(url, json=body, headers=stack.auth())
        assert resp.status_code == 200, resp.text
        assert resp.json()["decided_by"] == "web"
        result = await asyncio.wait_for(stack.client.get_workflow_handle(wf).result(), 20)
        assert result["steps"][0]["status"] == "skipped"
        assert (await query(stack.client, wf)).state == "resolved"

        # A closed workflow: 409, and it says so.
        resp = await http.post(url, json=body, headers=stack.auth())
        assert resp.status_code == 409
        assert "already completed (COMPLETED)" in resp.json()["error"]


async def test_a_no_token_configured_refuses_every_decision(
    stack: ServeStack,
) -> None:
    wf = await stack.start("missing-notoken")
    await wait_until_awaiting(stack.client, wf)
    app = create_app(stack.client, ServeOptions(token=None))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
            resp = await http.post(
                f"/api/workflows/{wf}/decision", json={"option": "skip"}, headers=headers
            )
            assert resp.status_code == 403, resp.text
            assert "HEALING_API_TOKEN" in resp.json()["error"]
        # Reading still works without a token.
        status = (await http.get(f"/api/workflows/{wf}/status")).json()
        assert status["healing"]["state"] == "awaiting_decision"
    assert (await query(stack.client, wf)).state == "awaiting_decision"
    assert await decision_events(stack.client, wf) == []


async def test_a_invalid_decisions_get_400_with_the_workflows_reason(stack: ServeStack) -> None:
    wf = await stack.start("missing-invalid")
    await wait_until_awaiting(stack.client, wf)
    url = f"/api/workflows/{wf}/decision"
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=20) as http:
        resp = await http.post(url, json={"option": "explode"}, headers=stack.auth())
        assert resp.status_code == 400
        assert "option" in resp.json()["error"]
        resp = await http.post(url, content=b"{not json", headers=stack.auth())
        assert resp.status_code == 400
        # The update's validator (in the workflow) refuses this one; its message comes back.
        resp = await http.post(
            url, json={"option": "skip", "escalation_id": "nope"}, headers=stack.auth()
        )
        assert resp.status_code == 400
        assert resp.json()["error"] == "no open escalation has id 'nope'"
        resp = await http.post(
            "/api/workflows/no-such-wf/decision", json={"option": "skip"}, headers=stack.auth()
        )
        assert resp.status_code == 404
    assert (await query(stack.client, wf)).state == "awaiting_decision"


async def test_escalations_and_status_come_from_visibility_and_the_query(
    stack: ServeStack,
) -> None:
    wf = await stack.start("missing-list")
    (esc,) = (await wait_until_awaiting(stack.client, wf)).open_escalations
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=20) as http:
        item = await wait_until_listed(http, wf)
        assert item["error_type"] == "NOT_FOUND"
        brief = item["escalation"]
        assert brief["escalation_id"] == esc.escalation_id
        assert (brief["connector"], brief["operation"]) == ("crm", "get_contact")
        assert brief["options"] == [o.option for o in esc.options]
        status = (await http.get(f"/api/workflows/{wf}/status")).json()
        assert status["run_status"] == "RUNNING"
        assert status["source"] == "query"
        assert status["healing"]["open_escalations"][0]["escalation_id"] == esc.escalation_id
        assert status["escalation"]["escalation_id"] == esc.escalation_id  # the memo too
        missing = await http.get("/api/workflows/no-such-wf/status")
        assert missing.status_code == 404
        page = await http.get("/")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert (await http.get("/static/healing-hooks.js")).status_code == 200


async def test_with_the_worker_stopped_listing_and_status_still_answer(
    dev_server: DevServer,
) -> None:
    """Visibility and the memo answer for a paused workflow whose worker is gone."""
    async with serve_stack(dev_server, query_timeout_s=1.0) as s:
        wf = await s.start("missing-noworker")
        (esc,) = (await wait_until_awaiting(s.client, wf)).open_escalations
        async with httpx.AsyncClient(base_url=s.base_url, timeout=20) as http:
            await wait_until_listed(http, wf)
        s.started.remove(wf)  # keep it paused past the stack (terminated below)
    # The worker and server of that stack are gone; a new app over a client with no worker.
    client = await connect(dev_server.address, dev_server.namespace)
    app = create_app(client, ServeOptions(token="t", query_timeout_s=1.0))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            started = time.monotonic()
            item = await wait_until_listed(http, wf)
            assert item["escalation"]["escalation_id"] == esc.escalation_id
            status = (await http.get(f"/api/workflows/{wf}/status")).json()
            took = time.monotonic() - started
            assert status["source"] == "memo"
            assert status["healing"] is None
            assert "no worker answered" in status["problem"]
            assert status["escalation"]["options"] == [o.option for o in esc.options]
            assert took < 8, f"listing and status took {took:.1f}s without a worker"
            # A decision now would wait for a worker: refused at once, and nothing is sent.
            started = time.monotonic()
            resp = await http.post(
                f"/api/workflows/{wf}/decision",
                json={"option": "skip"},
                headers={"Authorization": "Bearer t"},
            )
            took = time.monotonic() - started
            assert resp.status_code == 503, resp.text
            assert "nothing was sent" in resp.json()["error"]
            assert took < 5, f"the refusal took {took:.1f}s"
        assert await decision_events(client, wf) == []
    finally:
        await client.get_workflow_handle(wf).terminate("test over")


async def test_healing_serve_command_serves_and_stops_on_ctrl_c(
    stack: ServeStack, dev_server: DevServer
) -> None:
    """The real ``healing serve`` (port 0: the kernel picks one, the command prints it)."""
    token = secrets.token_urlsafe(24)
    proc = await asyncio.create_subprocess_exec(
        *healing_command(),
        "serve",
        "--address",
        dev_server.address,
        "--namespace",
        dev_server.namespace,
        "--port",
        "0",
        cwd=ROOT,
        env={**os.environ, "HEALING_API_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r"inbox (http://127\.0\.0\.1:\d+)/", line)
        assert match, line
        assert "decisions need the bearer token" in line and token not in line
        wf = await stack.start("missing-cli")
        await wait_until_awaiting(stack.client, wf)
        async with httpx.AsyncClient(base_url=match.group(1), timeout=20) as http:
            assert (await http.get("/")).status_code == 200
            await wait_until_listed(http, wf)
            resp = await http.post(f"/api/workflows/{wf}/decision", json={"option": "skip"})
            assert resp.status_code == 401
            resp = await http.post(
                f"/api/workflows/{wf}/decision",
                json={"option": "skip"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert resp.status_code == 200, resp.text
        await asyncio.wait_for(stack.client.get_workflow_handle(wf).result(), 20)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        logs = out.decode() + err.decode()
        assert proc.returncode == 0, logs
        assert "POST /api/workflows" in logs  # the access log ...
        assert token not in logs  # ... never shows the token
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- (c) SSE: in order, live, and resumed with Last-Event-ID ------------------------------------


@dataclass
class Sse:
    event: str
    data: Any
    id: str | None
    at: float


async def read_sse(resp: httpx.Response, into: list[Sse]) -> None:
    """Parse an event stream into ``into`` until the server ends it."""
    event, data, event_id = "message", [], None
    async for line in resp.aiter_lines():
        if line == "":
            if data:
                into.append(Sse(event, json.loads("\n".join(data)), event_id, time.monotonic()))
            event, data, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value


async def until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_c_sse_streams_healing_events_live_in_order_and_resumes(stack: ServeStack) -> None:
    wf = await stack.start("missing-sse-1", "missing-sse-2")
    (first,) = (await wait_until_awaiting(stack.client, wf)).open_escalations
    got: list[Sse] = []
    url = f"/api/workflows/{wf}/events"
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        async with http.stream("GET", url) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            reader = asyncio.create_task(read_sse(resp, got))
            healing = lambda: [e for e in got if e.event == "healing"]  # noqa: E731
            await until(
                lambda: any(e.data["outcome"] == "escalated" for e in healing()),
                15,
                "the first escalation event",
            )
            sent_first = time.monotonic()
            live_before = len(healing())
            r = await http.post(
                f"{url[:-7]}/decision", json={"option": "skip"}, headers=stack.auth()
            )
            assert r.status_code == 200, r.text
            # Step 2 pauses: its escalation arrives on the same, still open stream.
            await until(
                lambda: sum(e.data["outcome"] == "escalated" for e in healing()) == 2,
                15,
                "the second escalation event",
            )
            (second,) = (await wait_until_awaiting(stack.client, wf)).open_escalations
            assert second.escalation_id != first.escalation_id
            r = await http.post(
                f"{url[:-7]}/decision",
                json={"option": "skip", "escalation_id": second.escalation_id},
                headers=stack.auth(),
            )
            assert r.status_code == 200, r.text
            await asyncio.wait_for(reader, 15)  # the stream ends once the workflow closes

        events = [e for e in got if e.event == "healing"]
        final = await query(stack.client, wf)
        expected = [h.model_dump(mode="json") for h in final.history]
        # Every entry, once, in order, numbered 0..n-1, and live: the first ones came before
        # the first decision was even sent.
        assert [e.data["index"] for e in events] == list(range(len(expected)))
        assert [
            {k: v for k, v in e.data.items() if k not in ("index", "workflow_id")} for e in events
        ] == expected
        assert all(e.id is not None and e.id.startswith(f"{e.data['index']}.") for e in events)
        assert 0 < live_before < len(events)
        assert all(e.at < sent_first for e in events[:live_before])
        decided = [e.data for e in events if e.data["outcome"] == "decided"]
        assert len(decided) == 2
        assert got[-1].event == "end" and got[-1].data["run_status"] == "COMPLETED"
        statuses = [e.data for e in got if e.event == "status"]
        assert statuses[0]["state"] == "awaiting_decision"
        assert statuses[-1]["run_status"] == "COMPLETED"

        # Reconnect after entry 1 (as EventSource does, with Last-Event-ID): the rest only.
        for last in (events[1].id, "1"):
            again: list[Sse] = []
            async with http.stream("GET", url, headers={"Last-Event-ID": str(last)}) as resp:
                await asyncio.wait_for(read_sse(resp, again), 15)
            resumed = [e for e in again if e.event == "healing"]
            assert [e.data["index"] for e in resumed] == list(range(2, len(expected)))
            assert [e.id for e in resumed] == [e.id for e in events[2:]]
            assert again[-1].event == "end"
        # After the last entry: nothing more, just the end.
        done: list[Sse] = []
        async with http.stream("GET", url, headers={"Last-Event-ID": str(events[-1].id)}) as resp:
            await asyncio.wait_for(read_sse(resp, done), 15)
        assert [e.event for e in done if e.event == "healing"] == []
        assert done[-1].event == "end"
        missing = await http.get("/api/workflows/no-such-wf/events")
        assert missing.status_code == 404


def test_c_history_cursor_follows_a_bounded_history_that_drops_its_oldest() -> None:
    cap = 5
    log = [f"e{i}" for i in range(12)]
    cursor = HistoryCursor()
    seen: list[tuple[int, str]] = []
    for n in (1, 3, 5, 6, 9, 9, 12):  # snapshots of the last `cap` entries as the log grows
        seen += cursor.advance(log[:n][-cap:])
    assert seen == list(enumerate(log))
    # Resuming: the digest finds the entry even after it moved in the window.
    from healing.serve import _digest

    resumed = HistoryCursor(f"8.{_digest(log[8])}")
    assert resumed.advance(log[-cap:]) == [(9, "e9"), (10, "e10"), (11, "e11")]
    gone = HistoryCursor(f"2.{_digest(log[2])}")  # fell off: all we have, numbered on
    assert [i for i, _ in gone.advance(log[-cap:])] == [3, 4, 5, 6, 7]
    assert HistoryCursor("junk").advance(["a", "b"]) == [(0, "a"), (1, "b")]


# --- (d) the hooks module runs in node with a tiny fake React -----------------------------------

_FAKE_REACT = """
let slots = [], cursor = 0, pending = [];
export function useState(init) {
  const i = cursor++;
  if (!(i in slots)) slots[i] = typeof init === "function" ? init() : init;
  return [slots[i], (v) => { slots[i] = typeof v === "function" ? v(slots[i]) : v; }];
}
export function useRef(init) {
  const i = cursor++;
  if (!(i in slots)) slots[i] = { current: init };
  return slots[i];
}
export function useCallback(fn) { cursor++; return fn; }
export function useEffect(fn, deps) {
  const i = cursor++, prev = slots[i];
  if (!prev || deps.some((d, k) => d !== prev.deps[k])) {
    slots[i] = { deps, cleanup: prev && prev.cleanup };
    pending.push(() => { if (prev && prev.cleanup) prev.cleanup(); slots[i].cleanup = fn(); });
  }
}
export function __render(component) {
  cursor = 0; const out = component(); const run = pending; pending = []; run.forEach((f) => f());
  return out;
}
export function __reset() { slots = []; cursor = 0; pending = []; }
"""

_HOOKS_TEST = """
import assert from "node:assert/strict";
import * as React from "react";
import { useSelfHealing, useHealingProgress, HealingApiError } from "./healing-hooks.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function settle(component, done) {
  for (let i = 0; i < 400; i++) {
    const out = React.__render(component);
    if (done(out)) return out;
    await sleep(2);
  }
  throw new Error("hook never settled");
}
const reply = (status, body) => ({ ok: status < 300, status, json: async () => body });

// useSelfHealing: polls until the workflow closes, decide() sends the token and refreshes.
const calls = [];
const states = ["RUNNING", "RUNNING", "COMPLETED"];
let n = 0;
const fetch = async (url, init = {}) => {
  calls.push({ url, method: init.method || "GET", headers: init.headers || {}, body: init.body });
  if (url.endsWith("/decision")) {
    return init.headers.Authorization === "Bearer s3cret"
      ? reply(200, { option: "skip", decided_by: "web" })
      : reply(401, { error: "a decision needs Authorization: Bearer <HEALING_API_TOKEN>" });
  }
  return reply(200, { run_status: states[Math.min(n++, states.length - 1)] });
};
let token = "wrong";
const opts = { baseUrl: "http://api.test/", intervalMs: 5, token: () => token, fetch };
const Status = () => useSelfHealing("wf/1", opts);
let hook = await settle(Status, (h) => h.status && h.status.run_status === "COMPLETED");
assert.equal(hook.loading, false);
assert.equal(hook.error, null);
const polls = calls.length;
assert.equal(polls, 3);
assert.equal(calls[0].url, "http://api.test/api/workflows/wf%2F1/status");
await sleep(30);
React.__render(Status);
assert.equal(calls.length, polls, "polling goes on after the workflow closed");

const unauthorized = (err) => err instanceof HealingApiError && err.status === 401;
await assert.rejects(hook.decide("skip"), unauthorized);
token = "s3cret";
const answer = await hook.decide("skip", { escalation_id: "e1" });
assert.deepEqual(answer, { option: "skip", decided_by: "web" });
const post = calls.filter((c) => c.method === "POST").at(-1);
assert.equal(post.url, "http://api.test/api/workflows/wf%2F1/decision");
assert.deepEqual(JSON.parse(post.body), { escalation_id: "e1", option: "skip" });
await settle(Status, () => calls.length > polls + 2);  // the status is fetched again

// useHealingProgress: events in order, duplicates dropped, closed at "end".
React.__reset();
const sources = [];
class FakeEventSource {
  constructor(url) { this.url = url; this.listeners = {}; this.closed = false; sources.push(this); }
  addEventListener(name, fn) { (this.listeners[name] ||= []).push(fn); }
  emit(name, data) {
    for (const fn of this.listeners[name] || []) fn({ data: JSON.stringify(data) });
  }
  close() { this.closed = true; }
}
const progressOpts = { baseUrl: "http://api.test", EventSource: FakeEventSource };
const Progress = () => useHealingProgress("wf-2", progressOpts);
let progress = React.__render(Progress);
assert.equal(sources.length, 1);
const es = sources[0];
assert.equal(es.url, "http://api.test/api/workflows/wf-2/events");
es.onopen();
es.emit("healing", { index: 0, outcome: "escalated" });
es.emit("healing", { index: 1, outcome: "decided" });
es.emit("healing", { index: 1, outcome: "decided" });
progress = React.__render(Progress);
assert.equal(progress.connected, true);
assert.deepEqual(progress.events.map((e) => e.outcome), ["escalated", "decided"]);
es.emit("end", { run_status: "COMPLETED" });
progress = React.__render(Progress);
assert.equal(progress.connected, false);
assert.equal(progress.done, true);
assert.equal(progress.status.run_status, "COMPLETED");
assert.equal(es.closed, true);
console.log("hooks ok");
"""


def test_d_hooks_module_runs_in_node_with_a_fake_react(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    for name in ("healing-hooks.js", "healing-core.js", "inbox.js"):
        check = subprocess.run([node, "--check", str(WEB / name)], capture_output=True, text=True)
        assert check.returncode == 0, f"{name}: {check.stderr}"
    app = tmp_path / "app"
    react = app / "node_modules" / "react"
    react.mkdir(parents=True)
    (app / "package.json").write_text('{"type": "module"}')
    (react / "package.json").write_text('{"name": "react", "type": "module", "main": "index.js"}')
    (react / "index.js").write_text(_FAKE_REACT)
    for name in ("healing-hooks.js", "healing-core.js"):
        shutil.copy(WEB / name, app / name)
    (app / "test.js").write_text(_HOOKS_TEST)
    run = subprocess.run(
        [node, "test.js"], cwd=app, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "hooks ok"
