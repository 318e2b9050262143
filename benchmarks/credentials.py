"""Credentials for a fleet: token calls per expiry, escalations, dead-grant fan-out, refresh
latency with the lease.

    .venv/bin/python benchmarks/credentials.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/credentials.py --quick    # 40 workflows per arm

Everything is real and started here: a Temporal dev server, the chaos OAuth vendor (refresh-
token rotation with reuse detection on, short-lived tokens), PostgreSQL (a throwaway cluster
from the machine's binaries, or ``--pg-url``), and ``python worker.py`` processes configured
only through the environment, as a user deploys them. Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402

from healing.client import list_escalations  # noqa: E402
from healing.credentials import (  # noqa: E402
    Credential,
    FleetCredentialStore,
    OAuthClient,
    generate_secret_key,
)
from healing.devserver import DevServer  # noqa: E402
from healing.oauth import TokenRefresher  # noqa: E402
from healing.plugin import HealingPlugin  # noqa: E402
from healing.store import connect_store  # noqa: E402
from healing.testing import ChaosAPI  # noqa: E402

WORKER = str(ROOT / "worker.py")
TTL_S = 3.0
KEY = generate_secret_key()  # one for the run: the arms share the store databases


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def catalog(chaos: ChaosAPI) -> str:
    return f"""
[connectors.crm]
base_url = "{chaos.url}"
timeout_s = 5
[connectors.crm.auth]
kind = "oauth2"
token_url = "{chaos.url}/oauth/token"
authorize_url = "{chaos.url}/oauth/authorize"
client_id = "bench"
client_secret_env = "CRM_CLIENT_SECRET"
[connectors.crm.operations.get_contact]
path = "/contacts/{{id}}"
"""


async def start_workers(
    dev: DevServer, chaos: ChaosAPI, homes: list[Path], store_url: str, key: str, queue: str
) -> list[asyncio.subprocess.Process]:
    procs = []
    for home in homes:
        home.mkdir(parents=True, exist_ok=True)
        (home / "connectors.toml").write_text(catalog(chaos))
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": dev.address,
            "HEALING_TASK_QUEUE": queue,
            "HEALING_CONNECTORS": str(home / "connectors.toml"),
            "HEALING_STORE": store_url,
            "HEALING_SECRET_KEY": key,
            "HEALING_CREDENTIALS_FILE": str(home / "none.enc"),
            "CRM_CLIENT_SECRET": "bench-secret",
            "HEALING_BACKOFF__INITIAL_S": "0.2",
            "HEALING_MAX_CONCURRENT_ACTIVITIES": "60",
        }
        out = (home / f"worker-{len(procs)}.log").open("w")
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, WORKER, cwd=home, env=env, stdout=out, stderr=out
            )
        )
    deadline = time.monotonic() + 60
    for i, home in enumerate(homes):
        path = home / f"worker-{i}.log"
        while "healing worker:" not in path.read_text():
            if time.monotonic() > deadline or procs[i].returncode is not None:
                raise RuntimeError(f"worker did not start:\n{path.read_text()}")
            await asyncio.sleep(0.2)
    return procs


async def stop_workers(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()


async def seed(store_url: str, key: str, chaos: ChaosAPI, expires_in: float) -> float:
    """Store a first grant; returns when its token was issued, on the chaos server's clock
    (``time.monotonic``, its default)."""
    tokens = chaos.issue_tokens()
    store = await connect_store(store_url)
    try:
        creds = FleetCredentialStore(store, key)
        now = time.time()
        cred = Credential(
            connector="crm",
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            expires_at=now + expires_in,
            issued_at=now,
        )
        current = await creds.get("crm")
        await creds.put(cred, expected_version=current.version if current else None)
    finally:
        await store.close()
    return time.monotonic() - (time.time() - now)


def count_expiries(call_times: list[float], issued_at: float, ttl_s: float) -> int:
    """Refresh points the traffic crossed, counted from the vendor's log of accepted calls: a
    token is due at 90% of its lifetime (the default leeway); the first call past that needs
    a new token, which is due 90% of a lifetime later. The fewest token calls that traffic can
    take."""
    expiries, due = 0, issued_at + 0.9 * ttl_s
    for at in sorted(call_times):
        if at >= due:
            expiries += 1
            due = at + 0.9 * ttl_s
    return expiries


async def settle(
    client: Client, queue: str, handles: list[Any], within_s: float
) -> tuple[list[Any], int, int]:
    """Wait up to ``within_s`` for the workflows; returns (results of the finished ones, how
    many are paused on an escalation, how many neither finished nor escalated). Unfinished
    ones are terminated: an escalation waits for a human for days."""
    tasks = {asyncio.ensure_future(h.result()): h for h in handles}
    done, pending = await asyncio.wait(tasks, timeout=within_s)
    results = [t.result() for t in done if t.exception() is None]
    failed = sum(t.exception() is not None for t in done)
    listing = await list_escalations(client, query=f'TaskQueue = "{queue}"', limit=10_000)
    waiting = {tasks[t].id for t in pending}
    paused = sum(w.workflow_id in waiting and w.brief is not None for w in listing.workflows)
    for t in pending:
        t.cancel()
        with contextlib.suppress(Exception):
            await tasks[t].terminate("benchmark over")
    return results, paused + failed, len(pending) - paused


async def start(client: Client, queue: str, n: int, steps: int) -> list[Any]:
    handles = []
    for i in range(n):
        body = {
            "steps": [
                {"connector": "crm", "operation": "get_contact", "params": {"id": f"{i}-{s}"}}
                for s in range(steps)
            ],
            "start_to_close_s": 10,
        }
        handles.append(
            await client.start_workflow(
                "IntegrationWorkflow", body, id=f"{queue}-{uuid.uuid4().hex[:8]}", task_queue=queue
            )
        )
    return handles


async def expiry_arm(
    name: str, dev: DevServer, client: Client, homes: list[Path], store_url: str, count: int
) -> dict[str, Any]:
    key, queue = KEY, f"bench-creds-{uuid.uuid4().hex[:8]}"
    async with ChaosAPI(require_token=True) as chaos:
        chaos.set_refresh_policy(reuse_detection=True, token_ttl_s=TTL_S)
        issued_at = await seed(store_url, key, chaos, TTL_S)
        procs = await start_workers(dev, chaos, homes, store_url, key, queue)
        try:
            log(f"{name}: {count} workflows x 3 calls in 5 waves, tokens live {TTL_S:.0f} s")
            began = time.monotonic()
            handles = []
            for _ in range(5):
                handles += await start(client, queue, count // 5, 3)
                await asyncio.sleep(1.5)
            results, escalated_runs, stuck = await settle(client, queue, handles, 120)
            elapsed = time.monotonic() - began
        finally:
            await stop_workers(procs)
        stats = chaos.stats()
        expiries = count_expiries(chaos.accepted_call_times(), issued_at, TTL_S)
    # A workflow counts once: paused on an escalation, failed, or finished with a step that
    # did not end ok.
    escalated = escalated_runs + sum(any(s["status"] != "ok" for s in r["steps"]) for r in results)
    return {
        "arm": name,
        "workflows": len(handles),
        "elapsed_s": elapsed,
        "expiries": expiries,
        "token_calls": stats.token_calls,
        "per_expiry": stats.token_calls / expiries if expiries else math.nan,
        "escalations_per_100": 100 * escalated / len(handles),
        "stuck": stuck,
        "reuses": stats.refresh_token_reuses,
        "revocations": stats.reuse_revocations,
    }


async def dead_grant_arm(
    dev: DevServer, client: Client, homes: list[Path], store_url: str, count: int
) -> dict[str, Any]:
    key, queue = KEY, f"bench-dead-{uuid.uuid4().hex[:8]}"
    log(f"dead grant: {count} workflows on a revoked grant")
    async with ChaosAPI(require_token=True) as chaos:
        await seed(store_url, key, chaos, 3600)
        procs = await start_workers(dev, chaos, homes, store_url, key, queue)
        try:
            revoked_at = time.time()
            chaos.revoke_grant()
            handles = await start(client, queue, count, 1)
            ids = {h.id for h in handles}
            paused: list[Any] = []
            deadline = time.monotonic() + 120
            while len(paused) < count and time.monotonic() < deadline:
                listing = await list_escalations(client, query=f'TaskQueue = "{queue}"')
                paused = [w for w in listing.workflows if w.workflow_id in ids and w.brief]
                await asyncio.sleep(0.3)
            for h in handles:
                await h.terminate("benchmark over")
        finally:
            await stop_workers(procs)
        stats = chaos.stats()
    opened = sorted(w.brief.opened_at.timestamp() for w in paused)
    return {
        "waiting": count,
        "escalated": len(paused),
        "token_calls": stats.token_calls,
        "to_first_s": opened[0] - revoked_at if opened else math.nan,
        "to_last_s": opened[-1] - revoked_at if opened else math.nan,
        "spread_s": opened[-1] - opened[0] if opened else math.nan,
    }


async def latency_arm(store_url: str, rounds: int, callers: int) -> dict[str, Any]:
    """Stampedes of ``callers`` on two refreshers (two workers' worth) sharing ``store_url``:
    the latency of the lease holder's refresh and of the waiters who take its token."""
    key = KEY
    log(f"refresh latency: {rounds} stampedes of {callers} callers on {store_url.split(':')[0]}")
    async with ChaosAPI(require_token=True) as chaos:
        chaos.set_refresh_policy(reuse_detection=True)
        stores = [await connect_store(store_url) for _ in range(2)]
        client = OAuthClient(token_url=f"{chaos.url}/oauth/token", client_id="b", client_secret="s")
        workers = [TokenRefresher(FleetCredentialStore(s, key), {"crm": client}) for s in stores]
        creds = FleetCredentialStore(stores[0], key)
        tokens = chaos.issue_tokens()
        before = await creds.get("crm")
        await creds.put(
            Credential(
                connector="crm",
                access_token=tokens.access_token,
                refresh_token=tokens.refresh_token,
                expires_at=0,
            ),
            expected_version=before.version if before else None,
        )
        all_s: list[float] = []
        for _ in range(rounds):
            current = await creds.get("crm")
            assert current is not None

            async def one(w: TokenRefresher, version: int) -> float:
                began = time.perf_counter()
                await w.refresh("crm", seen_version=version)
                return time.perf_counter() - began

            all_s += await asyncio.gather(
                *(one(workers[i % 2], current.version) for i in range(callers))
            )
        stats = chaos.stats()
        for w in workers:
            await w.aclose()
        for s in stores:
            await s.close()
    all_s.sort()
    return {
        "rounds": rounds,
        "callers": callers,
        "token_calls": stats.token_calls,
        "reuses": stats.refresh_token_reuses,
        "p50_ms": 1000 * statistics.median(all_s),
        "p95_ms": 1000 * all_s[int(0.95 * (len(all_s) - 1))],
        "max_ms": 1000 * all_s[-1],
    }


def table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    widths = [max(len(h), 10) for _, h in columns]
    print("  ".join(h.rjust(w) for (_, h), w in zip(columns, widths, strict=True)))
    for row in rows:
        cells = []
        for (key, _), w in zip(columns, widths, strict=True):
            value = row[key]
            text = f"{value:.2f}" if isinstance(value, float) else str(value)
            cells.append(text.rjust(w))
        print("  ".join(cells))


async def main(args: argparse.Namespace) -> None:
    from tests.store.pgcluster import PgCluster, find_bin_dir

    count = 40 if args.quick else 100
    cluster = None
    pg_url = args.pg_url
    if not pg_url:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise SystemExit("no PostgreSQL binaries (initdb) here: pass --pg-url")
        cluster = PgCluster(bin_dir)
        cluster.init()
        cluster.start()
        pg_url = cluster.url()
    with tempfile.TemporaryDirectory(prefix="bench-creds-") as tmp:
        root = Path(tmp)
        dev = DevServer(state_dir=root / "dev")
        dev.start(timeout=60)
        try:
            client = await Client.connect(dev.address, plugins=[HealingPlugin()])
            sqlite = f"sqlite:///{root}/one-host/healing.db"
            (root / "one-host").mkdir()
            arms = [
                await expiry_arm("1 worker", dev, client, [root / "w1"], sqlite, count),
                await expiry_arm(
                    "2 processes", dev, client, [root / "one-host"] * 2, sqlite, count
                ),
                await expiry_arm(
                    "2 hosts (PG)", dev, client, [root / "hostA", root / "hostB"], pg_url, count
                ),
            ]
            dead = await dead_grant_arm(dev, client, [root / "hA", root / "hB"], pg_url, 30)
            latency = [
                {"store": "sqlite", **await latency_arm(f"sqlite:///{root}/lat.db", 20, 20)},
                {"store": "postgres", **await latency_arm(pg_url, 20, 20)},
            ]
        finally:
            dev.stop()
            if cluster is not None:
                cluster.destroy()
    table(
        f"Token calls per expiry and escalations per 100 workflows (tokens live {TTL_S:.0f} s, "
        "rotation with reuse detection; expiries = refresh points the vendor's log of accepted "
        "calls crossed; escalated = paused on an escalation or not ok; stuck = neither within "
        "120 s)",
        arms,
        [
            ("arm", "arm"),
            ("workflows", "workflows"),
            ("elapsed_s", "run s"),
            ("expiries", "expiries"),
            ("token_calls", "token calls"),
            ("per_expiry", "per expiry"),
            ("escalations_per_100", "escal./100"),
            ("stuck", "stuck"),
            ("reuses", "RT reuses"),
            ("revocations", "revoked"),
        ],
    )
    table(
        "Dead grant: workflows waiting on one revoked grant (2 hosts, PG)",
        [dead],
        [
            ("waiting", "waiting"),
            ("escalated", "escalated"),
            ("token_calls", "token calls"),
            ("to_first_s", "to first s"),
            ("to_last_s", "to last s"),
            ("spread_s", "spread s"),
        ],
    )
    table(
        "Refresh latency with the lease (stampedes of 20 callers on 2 refreshers, per caller)",
        latency,
        [
            ("store", "store"),
            ("rounds", "rounds"),
            ("token_calls", "token calls"),
            ("reuses", "RT reuses"),
            ("p50_ms", "p50 ms"),
            ("p95_ms", "p95 ms"),
            ("max_ms", "max ms"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="40 workflows per arm")
    parser.add_argument("--pg-url", help="an empty PostgreSQL database (default: a temp cluster)")
    asyncio.run(main(parser.parse_args()))
