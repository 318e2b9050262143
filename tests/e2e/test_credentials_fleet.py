"""Credentials for a fleet, deployed the way a user deploys: ``python worker.py`` processes in
separate directories ("hosts") sharing nothing but a PostgreSQL ``HEALING_STORE``, a real dev
server, and the chaos API's OAuth vendor (rotation, reuse detection, revocation, PKCE).

Every test ends by scanning what it left behind (every workflow history with payloads decoded,
every worker log, every row of every store table) for every token the vendor minted and the
client secret: none may appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import psycopg
import pytest
from psycopg import sql
from temporalio.client import Client, WorkflowHandle

from healing.client import list_escalations
from healing.credentials import Credential, FleetCredentialStore, generate_secret_key
from healing.devserver import DevServer
from healing.plugin import HealingPlugin
from healing.store import connect_store
from healing.testing import ChaosAPI, FaultPlan, FaultRule, LatencyFault, StatusFault
from tests.e2e.helpers import ROOT, healing_command, one_line, run
from tests.secrets_scan import find_secrets

WORKER = str(ROOT / "worker.py")
CLIENT_SECRET = "crm-client-secret-e2e-7f3a9c"


def _catalog(chaos: ChaosAPI, auth_extra: str = "") -> str:
    return f"""
[connectors.crm]
base_url = "{chaos.url}"
timeout_s = 5
[connectors.crm.auth]
kind = "oauth2"
token_url = "{chaos.url}/oauth/token"
authorize_url = "{chaos.url}/oauth/authorize"
client_id = "healing-e2e"
client_secret_env = "CRM_CLIENT_SECRET"
auth_method = "client_secret_basic"
scopes = ["contacts.read"]
{auth_extra}
[connectors.crm.operations.get_contact]
path = "/contacts/{{id}}"
"""


@dataclass
class Fleet:
    """``n`` worker.py processes, each in its own directory, sharing only ``store_url``."""

    dev: DevServer
    root: Path
    store_url: str
    chaos: ChaosAPI
    key: str = field(default_factory=generate_secret_key)
    task_queue: str = field(default_factory=lambda: f"creds-{uuid.uuid4()}")
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    workflow_ids: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    auth_extra: str = ""
    """More lines of the connector's [auth] section."""
    _files: list[TextIO] = field(default_factory=list)

    def env(self, home: Path) -> dict[str, str]:
        catalog = home / "connectors.toml"
        catalog.write_text(_catalog(self.chaos, self.auth_extra))
        return {
            **os.environ,
            "TEMPORAL_ADDRESS": self.dev.address,
            "HEALING_TASK_QUEUE": self.task_queue,
            "HEALING_CONNECTORS": str(catalog),
            "HEALING_STORE": self.store_url,
            "HEALING_SECRET_KEY": self.key,
            "HEALING_CREDENTIALS_FILE": str(home / "credentials.enc"),
            "CRM_CLIENT_SECRET": CLIENT_SECRET,
            "HEALING_BACKOFF__INITIAL_S": "0.2",
            "HEALING_BACKOFF__MAX_S": "1",
            "HEALING_MAX_CONCURRENT_ACTIVITIES": "60",
            **self.extra_env,
        }

    async def start(self, n: int = 2) -> None:
        for i in range(n):
            home = self.root / f"host{i}"
            home.mkdir(parents=True, exist_ok=True)
            log = home / "worker.log"
            out = log.open("w")
            self._files.append(out)
            self.logs.append(log)
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, WORKER, cwd=home, env=self.env(home), stdout=out, stderr=out
                )
            )
        deadline = time.monotonic() + 60
        for log in self.logs:
            while "healing worker:" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                assert all(p.returncode is None for p in self.procs), log.read_text()
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for out in self._files:
            out.close()

    async def seed(self, connection: str = "default", *, expires_in: float = 3600) -> Credential:
        """Store the vendor's first grant for ``connection``, as `credentials set` would."""
        tokens = self.chaos.issue_tokens(connection)
        store = await connect_store(self.store_url)
        try:
            creds = FleetCredentialStore(store, self.key)
            now = time.time()
            cred = Credential(
                connector="crm",
                connection=connection,
                access_token=tokens.access_token,
                refresh_token=tokens.refresh_token,
                expires_at=now + min(expires_in, tokens.expires_in),
                issued_at=now,
            )
            current = await creds.get("crm", connection)
            assert await creds.put(cred, expected_version=current.version if current else None)
            stored = await creds.get("crm", connection)
            assert stored is not None
            return stored
        finally:
            await store.close()

    async def start_workflows(
        self, client: Client, count: int, *, connection: str = "default", steps: int = 1
    ) -> list[WorkflowHandle[Any, Any]]:
        step = {"connector": "crm", "operation": "get_contact", "connection": connection}
        starts = []
        for i in range(count):
            wid = f"{self.task_queue}-{connection}-{len(self.workflow_ids)}"
            self.workflow_ids.append(wid)
            body = {
                "steps": [{**step, "params": {"id": f"{i}-{s}"}} for s in range(steps)],
                "start_to_close_s": 10,
            }
            starts.append(
                client.start_workflow(
                    "IntegrationWorkflow", body, id=wid, task_queue=self.task_queue
                )
            )
        return list(await asyncio.gather(*starts))  # at once, as a burst of traffic arrives


@pytest.fixture
async def fleet(dev_server: DevServer, tmp_path: Path, pg_url: str) -> AsyncIterator[Fleet]:
    async with ChaosAPI(require_token=True, token_ttl_s=3600) as chaos:
        f = Fleet(dev_server, tmp_path, pg_url, chaos)
        try:
            yield f
        finally:
            await f.stop()


@pytest.fixture
async def client(dev_server: DevServer) -> Client:
    return await Client.connect(dev_server.address, plugins=[HealingPlugin()])


async def _results(handles: Sequence[WorkflowHandle[Any, Any]], within: float) -> list[Any]:
    return list(await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), within))


def _escalated(results: Sequence[Any]) -> int:
    return sum(
        bool(s["healing"].get("escalated")) or s["status"] != "ok"
        for r in results
        for s in r["steps"]
    )


async def _no_secrets_anywhere(
    fleet: Fleet,
    client: Client,
    *,
    outputs: Sequence[str] = (),
    secrets: Sequence[str] = (),
) -> None:
    """Histories (payloads decoded), worker logs, every store row and ``outputs`` (what CLI
    commands printed) hold no secret: no minted token, authorization code, PKCE verifier,
    client secret, HEALING_SECRET_KEY, nor one of ``secrets``."""
    needles = [
        *fleet.chaos.minted_tokens(),
        *fleet.chaos.pkce_secrets(),
        CLIENT_SECRET,
        fleet.key,
        *secrets,
    ]
    needles = [n for n in needles if n]
    assert len(needles) > 3
    for text in outputs:
        assert [n for n in needles if n in text] == [], text
    for wid in fleet.workflow_ids:
        history = await client.get_workflow_handle(wid).fetch_history()
        assert find_secrets(history, needles) == [], wid
    for log in fleet.logs:
        text = log.read_text()
        assert text  # the workers did log
        assert [n for n in needles if n in text] == [], log
    rows = await asyncio.to_thread(_all_rows, fleet.store_url)
    assert any("sealed" in row for row in rows)  # the credential rows are there...
    assert [n for n in needles if any(n in row for row in rows)] == []  # ...sealed


def _all_rows(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_schema not in ('pg_catalog', 'information_schema') "
            "and table_type = 'BASE TABLE'"
        ).fetchall()
        rows: list[str] = []
        for schema, table in tables:
            query = sql.SQL("select t::text from {}.{} t").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            rows += [r[0] for r in conn.execute(query).fetchall()]
        return rows


@pytest.mark.parametrize("reuse_detection", [False, True], ids=["rotation", "reuse-detection"])
async def test_two_hosts_share_refresh_100_workflows_over_several_expiries(
    fleet: Fleet, client: Client, reuse_detection: bool
) -> None:
    ttl = 3.0
    # Short-lived tokens: several expiries in the run.
    fleet.chaos.set_refresh_policy(reuse_detection=reuse_detection, token_ttl_s=ttl)
    await fleet.seed(expires_in=ttl)
    await fleet.start(2)
    started = time.monotonic()
    handles = []
    for _ in range(5):  # five waves of 20, 1.5 s apart, 3 sequential calls each
        handles += await fleet.start_workflows(client, 20, steps=3)
        await asyncio.sleep(1.5)
    results = await _results(handles, 120)
    elapsed = time.monotonic() - started
    stats = fleet.chaos.stats()
    assert _escalated(results) == 0
    assert stats.refresh_token_reuses == 0 and stats.reuse_revocations == 0
    assert stats.invalid_grants == 0
    # One token call per expiry: a token lives ttl, refreshed at 90% of it.
    expiries = math.ceil(elapsed / (0.9 * ttl))
    assert 2 <= stats.token_calls <= expiries + 1, (stats.token_calls, elapsed)
    assert stats.token_calls == stats.token_refreshes  # every call rotated, none was wasted
    await _no_secrets_anywhere(fleet, client)


async def test_token_endpoint_500_and_slow_answer_at_proactive_refresh(
    fleet: Fleet, client: Client
) -> None:
    ttl = 12.0
    fleet.chaos.set_refresh_policy(reuse_detection=True, token_ttl_s=ttl)
    # The first proactive refresh gets a 500, the next one an answer 2.5 s late.
    fleet.chaos.set_plan(
        FaultPlan(
            rules=(
                FaultRule(
                    path="/oauth/token",
                    faults=(StatusFault(status=500), LatencyFault(delay_ms=2500)),
                ),
            )
        )
    )
    # Refresh with 7.2 s to spare: the 500, the 2 s back-off and the late answer all fit
    # before the old token expires, so it must serve every call meanwhile.
    fleet.extra_env["HEALING_TOKEN_LEEWAY_FRACTION"] = "0.6"
    await fleet.seed(expires_in=ttl)
    await fleet.start(2)
    handles = []
    for _ in range(12):
        handles += await fleet.start_workflows(client, 4, steps=2)
        await asyncio.sleep(0.8)
    results = await _results(handles, 120)
    stats = fleet.chaos.stats()
    assert _escalated(results) == 0
    assert stats.calls_to("POST", "/oauth/token") >= 2  # both faults were met
    assert stats.faults_by_status.get("500") == 1
    assert stats.auth_rejections == 0  # the still-valid token served every call meanwhile
    assert stats.refresh_token_reuses == 0 and stats.invalid_grants == 0
    await _no_secrets_anywhere(fleet, client)


@pytest.mark.parametrize("reuse_interval_s", [10.0, 0.0], ids=["reuse-interval", "no-interval"])
async def test_a_token_answer_that_rotates_after_the_client_gave_up(
    fleet: Fleet, client: Client, reuse_interval_s: float
) -> None:
    """The first proactive refresh is answered 2.5 s late, after the 1 s token timeout: the
    vendor rotated the refresh token, the answer is lost, and the fleet's next attempt sends
    the old refresh token again. With the vendor's reuse interval that heals (0 escalations);
    without it, reuse detection revokes the grant and the calls escalate once, as a dead grant
    (README "A token call the client gave up on")."""
    ttl = 12.0
    fleet.chaos.set_refresh_policy(
        reuse_detection=True, reuse_interval_s=reuse_interval_s, token_ttl_s=ttl
    )
    fleet.chaos.set_plan(
        FaultPlan(rules=(FaultRule(path="/oauth/token", faults=(LatencyFault(delay_ms=2500),)),))
    )
    fleet.auth_extra = "token_timeout_s = 1"
    fleet.extra_env["HEALING_TOKEN_LEEWAY_FRACTION"] = "0.6"
    await fleet.seed(expires_in=ttl)
    await fleet.start(2)
    handles = []
    for wave in range(40):  # traffic until the resend has happened (and 8 s at least)
        handles += await fleet.start_workflows(client, 3)
        await asyncio.sleep(0.8)
        if wave >= 10 and fleet.chaos.stats().refresh_token_reuses:
            break
    stats = fleet.chaos.stats()
    assert stats.calls_to("POST", "/oauth/token") >= 2  # the late answer, then the resend
    assert stats.refresh_token_reuses == 1  # the resend of the token the late answer rotated
    if reuse_interval_s:
        results = await _results(handles, 120)
        stats = fleet.chaos.stats()
        assert _escalated(results) == 0
        assert stats.reuses_in_grace == 1 and stats.reuse_revocations == 0
        assert stats.auth_rejections == 0  # the still-valid token served meanwhile
        await _no_secrets_anywhere(fleet, client)
        return
    assert stats.reuse_revocations == 1 and stats.reuses_in_grace == 0
    late = await fleet.start_workflows(client, 5)  # after the revocation
    ids = {h.id for h in late}
    deadline = time.monotonic() + 60
    paused: list[Any] = []
    while time.monotonic() < deadline and len(paused) < len(ids):
        listing = await list_escalations(client, query=f'TaskQueue = "{fleet.task_queue}"')
        paused = [w for w in listing.workflows if w.workflow_id in ids and w.brief]
        await asyncio.sleep(0.3)
    assert len(paused) == len(ids)
    for w in paused:
        assert w.brief.error_type.value == "AUTH_INVALID" and "reauthorized" in w.brief.options
    assert fleet.chaos.stats().token_calls == 2  # the verdict is shared: no third call
    for h in [*handles, *late]:
        with contextlib.suppress(Exception):
            await h.terminate("test over")
    await _no_secrets_anywhere(fleet, client)


async def test_dead_grant_escalates_30_together_then_pkce_authorize_resumes_them(
    fleet: Fleet, client: Client
) -> None:
    await fleet.seed()
    await fleet.start(2)
    fleet.chaos.revoke_grant()  # the human revoked the app at the vendor
    handles = await fleet.start_workflows(client, 30)
    ids = {h.id for h in handles}
    deadline = time.monotonic() + 60
    paused: list[Any] = []
    while time.monotonic() < deadline:
        listing = await list_escalations(client, query=f'TaskQueue = "{fleet.task_queue}"')
        paused = [w for w in listing.workflows if w.workflow_id in ids and w.brief]
        if len(paused) == 30:
            break
        await asyncio.sleep(0.3)
    assert len(paused) == 30
    stats = fleet.chaos.stats()
    assert stats.token_calls == 1 and stats.invalid_grants == 1  # one call for a dead grant
    opened = sorted(w.brief.opened_at for w in paused)
    spread = [round((o - opened[0]).total_seconds(), 2) for o in opened]
    assert spread[-1] <= 5, spread  # together, within seconds
    for w in paused:
        assert w.brief.error_type.value == "AUTH_INVALID"
        assert "reauthorized" in w.brief.options
    status = await handles[0].query("healing_status")
    explanation = str(status)
    assert "healing credentials authorize crm" in explanation

    # The human runs the printed command and logs in (an HTTP client following the redirect).
    home = fleet.root / "host0"
    proc = await asyncio.create_subprocess_exec(
        *healing_command(),
        "credentials",
        "authorize",
        "crm",
        "--yes",
        "--timeout",
        "60",
        "--address",
        fleet.dev.address,
        cwd=home,
        env=fleet.env(home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    url = ""
    while not url.startswith("http"):
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, (await proc.stderr.read()).decode() if proc.stderr else ""
        url = line.strip()
    async with httpx.AsyncClient(follow_redirects=True) as browser:
        page = await browser.get(url)
    assert page.status_code == 200 and "Authorized" in page.text
    code = httpx.URL(page.history[0].headers["location"]).params["code"]
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    assert "sent reauthorized to 30 of 30" in out.decode(), out.decode()
    results = await _results(handles, 60)
    assert all(r["steps"][0]["status"] == "ok" for r in results)
    assert fleet.chaos.stats().authorizations == 1
    assert code in fleet.chaos.pkce_secrets()  # the scan below looks for code and verifier
    await _no_secrets_anywhere(fleet, client, outputs=(out.decode(), err.decode()), secrets=(code,))


async def test_two_connections_keep_separate_tokens_a_revoked_one_leaves_the_other_healing(
    fleet: Fleet, client: Client
) -> None:
    acme = await fleet.seed("acme")
    globex = await fleet.seed("globex")
    assert acme.access_token != globex.access_token
    await fleet.start(2)
    fleet.chaos.expire_tokens()  # both accounts' tokens expire: both need a refresh...
    fleet.chaos.revoke_grant("acme")  # ...and acme's grant is dead
    acme_runs = await fleet.start_workflows(client, 10, connection="acme")
    globex_runs = await fleet.start_workflows(client, 10, connection="globex")
    results = await _results(globex_runs, 60)
    assert _escalated(results) == 0
    assert fleet.chaos.stats().calls_by_grant.get("globex", 0) >= 10
    assert fleet.chaos.stats().calls_by_grant.get("acme", 0) == 0
    ids = {h.id for h in acme_runs}
    deadline = time.monotonic() + 60
    paused: list[Any] = []
    while time.monotonic() < deadline and len(paused) < 10:
        listing = await list_escalations(client, query=f'TaskQueue = "{fleet.task_queue}"')
        paused = [w for w in listing.workflows if w.workflow_id in ids and w.brief]
        await asyncio.sleep(0.3)
    assert len(paused) == 10
    assert {(w.brief.error_type.value, w.brief.connection) for w in paused} == {
        ("AUTH_INVALID", "acme")
    }
    stats = fleet.chaos.stats()
    assert stats.token_calls == 2  # one refresh for globex, one verdict for acme
    for h in acme_runs:
        with contextlib.suppress(Exception):
            await h.terminate("test over")
    await _no_secrets_anywhere(fleet, client)


async def test_worker_py_refuses_a_wrong_secret_key_at_start_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/healing.db"
    store = await connect_store(url)
    try:
        creds = FleetCredentialStore(store, generate_secret_key())
        await creds.put(Credential(connector="crm", access_token="x"), expected_version=None)
    finally:
        await store.close()
    async with ChaosAPI() as chaos:
        catalog = tmp_path / "connectors.toml"
        catalog.write_text(_catalog(chaos))
        env = {
            "HEALING_CONNECTORS": str(catalog),
            "HEALING_STORE": url,
            "HEALING_SECRET_KEY": generate_secret_key(),  # valid, but not the one used
            "CRM_CLIENT_SECRET": CLIENT_SECRET,
            "TEMPORAL_ADDRESS": "127.0.0.1:9",  # never reached: the key check comes first
        }
        code, _, err = await run(sys.executable, WORKER, env=env)
    assert code == 1, err
    line = one_line(err)
    assert "HEALING_SECRET_KEY" in line and "cannot decrypt 1 of the 1" in line
    assert "reauthoriz" not in line and "Traceback" not in err
