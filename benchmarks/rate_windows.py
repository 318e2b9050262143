"""Rate windows in every header form: 429s, escalations and time for 300 calls per form.

    .venv/bin/python benchmarks/rate_windows.py                     # every form, ~6-8 min
    .venv/bin/python benchmarks/rate_windows.py --groups ietf --calls 100

One table from one run (issue 8's rate-limit table). Each form of
``healing.testing.ratelimits.RATE_FORMS``, plus ``catalog`` (the limit in the connector's
catalog entry, the server answering in the ``retry-after`` shape), gets its own ChaosAPI with a
20 requests / 5 s window and its own connector; ``--calls`` calls per form go out as workflows
of 10 parallel steps, run by ``--workers`` processes of ``tests/chaos/worker_proc.py`` sharing
one SQLite store. Forms run in groups of two or three at a time (``--groups``), as in
``tests/chaos/test_fleet_flow.py``. Columns: the 429s the upstream sent; escalations (workflows
that did not complete by themselves before the deadline); seconds from the upstream's first
call to the last completion; that time over the window's own minimum (calls / 20 * 5 s).
Nothing listens on a fixed port; the dev server, chaos servers and workers are stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402
from temporalio.service import RPCError  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    dev_server_client,
    start_worker_procs,
    stop_procs,
    table,
)
from healing.devserver import DevServer  # noqa: E402
from healing.testing import ChaosAPI, FaultPlan  # noqa: E402
from healing.testing.ratelimits import RATE_FORMS, RateForm, RateWindow  # noqa: E402
from workflows import IntegrationInput, IntegrationWorkflow, Step  # noqa: E402

WINDOW = (20, 5.0)  # requests per seconds
BATCH = 10  # parallel steps per workflow: fewer workflows to schedule
# Two or three forms at once: five or ten at once outrun a 2-core machine, and the time
# measured is then the machine's, not the window's.
FORM_GROUPS = {
    "retry-after": ("retry-after", "retry-after-date"),
    "x-ratelimit": ("x-ratelimit", "github", "hubspot"),
    "ietf": ("ietf-03", "ietf-07", "ietf-10"),
    "policy-and-catalog": ("ietf-policy", "catalog"),
}
assert sorted(f for g in FORM_GROUPS.values() for f in g) == sorted([*RATE_FORMS, "catalog"])


def _connector(form: str) -> str:
    return "rl_" + form.replace("-", "_")


def _catalog(path: Path, urls: dict[str, str]) -> Path:
    text = []
    for name, url in urls.items():
        text.append(f'[connectors.{name}]\nbase_url = "{url}"\ntimeout_s = 5\n')
        if name == _connector("catalog"):
            text.append(f"rate_limit = {{ requests = {WINDOW[0]}, per_s = {WINDOW[1]} }}\n")
        text.append(f'[connectors.{name}.operations.get_contact]\nmethod = "GET"\n')
        text.append('path = "/contacts/{id}"\n')
    path.write_text("".join(text))
    return path


async def _group(
    server: DevServer, client: Client, args: argparse.Namespace, group: str, tmp: Path
) -> list[list[str]]:
    forms = list(FORM_GROUPS[group])
    print(f"group: {group} ({', '.join(forms)})", file=sys.stderr, flush=True)
    minimum = args.calls / WINDOW[0] * WINDOW[1]
    apis, threads = {}, {}
    try:
        for form in forms:
            # The catalog case: the server says nothing until the 429 (Retry-After only).
            shape: RateForm = "retry-after" if form == "catalog" else form  # type: ignore[assignment]
            window = RateWindow(requests=WINDOW[0], per_s=WINDOW[1], form=shape)
            apis[form] = ChaosAPI(FaultPlan(rate_limits=(window,)))
            threads[form] = apis[form].start_in_thread()
        queue = f"rates-{group}-{time.time_ns()}"
        catalog = _catalog(tmp / f"{group}.toml", {_connector(f): threads[f].url for f in forms})
        store = f"sqlite:///{tmp / f'{group}.db'}"
        running = f'TaskQueue = "{queue}" AND ExecutionStatus = "Running"'
        procs = await start_worker_procs(args.workers, server.address, queue, catalog, store, tmp)
        try:
            for form, thread in threads.items():
                thread.set_plan(apis[form].plan)  # windows count from now
            gate = asyncio.Semaphore(32)

            async def start_one(form: str, batch: int) -> None:
                steps = [
                    Step(connector=_connector(form), operation="get_contact", params={"id": str(i)})
                    for i in range(batch * BATCH, min((batch + 1) * BATCH, args.calls))
                ]
                async with gate:
                    await client.start_workflow(
                        IntegrationWorkflow.run,
                        IntegrationInput(steps=steps, start_to_close_s=10.0, parallel=True),
                        id=f"{queue}-{forms.index(form)}-{batch}",
                        task_queue=queue,
                    )

            # Interleaved, so every form's calls start at the same pace.
            batches = range(-(-args.calls // BATCH))
            await asyncio.gather(*(start_one(f, b) for b in batches for f in forms))
            # Nobody plays the human: an escalated workflow waits until the deadline. Counting
            # (not awaiting every result) keeps the namespace's long polls few.
            deadline = time.monotonic() + minimum * args.deadline_x
            while time.monotonic() < deadline:
                if not (await client.count_workflows(running)).count:
                    break
                await asyncio.sleep(2)
            closed: dict[str, list[tuple[str, float | None]]] = {f: [] for f in forms}
            async for wf in client.list_workflows(f'TaskQueue = "{queue}"'):
                form = forms[int(wf.id.removeprefix(f"{queue}-").split("-")[0])]
                status = wf.status.name if wf.status else "?"
                closed[form].append((status, wf.close_time.timestamp() if wf.close_time else None))
            rates = {f: threads[f].call(apis[f].rate_stats) for f in forms}
        finally:
            try:
                async for wf in client.list_workflows(running):
                    with contextlib.suppress(RPCError):  # it may have finished meanwhile
                        await client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate()
            finally:
                await stop_procs(procs)
    finally:
        for thread in threads.values():
            thread.stop()
    rows = []
    for form in forms:
        done = [c for s, c in closed[form] if s == "COMPLETED" and c is not None]
        # The window's minimum counts from the first call the upstream saw.
        took = max(done) - (rates[form].first_at or 0.0) if done else float("nan")
        escalated = len(closed[form]) - len(done)
        rows.append(
            [
                form,
                str(rates[form].throttled),
                str(escalated),
                f"{took:.1f}",
                f"{took / minimum:.2f}",
            ]
        )
    return rows


async def main_async(args: argparse.Namespace) -> None:
    groups = args.groups.split(",") if args.groups else list(FORM_GROUPS)
    async with dev_server_client() as (server, client, tmp):
        rows = [["form", "429s", "escalations", "seconds", "x minimum"]]
        for group in groups:
            rows.extend(await _group(server, client, args, group, tmp))
    minimum = args.calls / WINDOW[0] * WINDOW[1]
    print(
        f"rate windows: {args.calls} calls per form, {WINDOW[0]} requests / {WINDOW[1]:g} s "
        f"(minimum {minimum:g} s), {args.workers} workers on one SQLite store"
    )
    print(table(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300, help="calls per form")
    parser.add_argument("--groups", default="", help=f"comma list of {', '.join(FORM_GROUPS)}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--deadline-x", type=float, default=2.5, help="wait at most this x the minimum"
    )
    args = parser.parse_args(argv)
    if unknown := set(filter(None, args.groups.split(","))) - set(FORM_GROUPS):
        parser.error(f"unknown groups: {', '.join(sorted(unknown))}")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
