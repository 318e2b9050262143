"""The healing command: dev server, worker, demo, and deciding escalations.

Every command that talks to Temporal takes --address (env TEMPORAL_ADDRESS, default
localhost:7233) and --namespace (env TEMPORAL_NAMESPACE, default default). Listing and reading
escalations need no running worker; decisions check for one first and never wait unbounded.
Problems print one line naming what is wrong and exit non-zero: 1 for most, 2 for a rejected
decision or bad arguments, 3 when no worker polls and nothing was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, get_args

from rich.console import Console
from rich.table import Table
from rich.text import Text
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from healing import runner
from healing.cli_drift import cmd_drift, drift_arguments
from healing.client import (
    DecisionUnconfirmed,
    NoWorker,
    PausedWorkflow,
    StatusReport,
    WorkerCheck,
    check_address,
    check_worker,
    decide_checked,
    default_decider,
    healing_status,
    list_escalations,
)
from healing.credentials import Credential, check_connection, credential_name
from healing.errors import ConfigError, DecisionError, HealingError, WorkflowClosed
from healing.escalation import format_duration
from healing.names import DECISION_SIGNAL, MEMO_KEY, STATUS_QUERY
from healing.store import connect_store
from healing.types import DecisionOptionName, Escalation, EscalationBrief

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
OPTIONS: tuple[str, ...] = get_args(DecisionOptionName)
EXIT_NO_WORKER = 3
_PREVIEW_ROWS = 20
_TABLE_ROWS = 200
"""Longer listings are laid out by hand (same columns): rich's Table is slow to measure."""
_DECIDE_USAGE = (
    "healing decide WORKFLOW_ID OPTION [options]\n"
    "       healing decide --query QUERY OPTION [--yes] [options]"
)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f'must be a JSON object like {{"params": {{...}}}}: {text!r}'
        )
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("temporal-healing")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (package temporal-healing is not installed)"


def _console(file: TextIO | None = None) -> Console:
    """Rich output: as wide as the terminal; 200 columns when piped, so ids never wrap."""
    out = file or sys.stdout
    width = None if out.isatty() or os.environ.get("COLUMNS") else 200
    return Console(file=out, width=width, highlight=False)


def _fail(args: argparse.Namespace, message: str) -> None:
    """One line on stderr, ``healing COMMAND: message``."""
    print(f"healing {args.command}: {' '.join(message.split())}", file=sys.stderr)


def _ago(at: datetime, now: datetime) -> str:
    return f"{format_duration((now - at).total_seconds())} ago"


def _until(at: datetime, now: datetime) -> str:
    left = (at - now).total_seconds()
    return f"in {format_duration(left)}" if left >= 0 else f"overdue by {format_duration(-left)}"


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _call(connector: str | None, operation: str | None, fallback: str = "-") -> str:
    return ".".join(p for p in (connector, operation) if p) or fallback


def _worker_json(check: WorkerCheck | None) -> dict[str, Any] | None:
    if check is None:
        return None
    return {
        "task_queue": check.task_queue,
        "polling": check.polling,
        "pollers": check.pollers,
        "last_poll_s": check.last_poll_s,
        "answered": check.answered,
        "detail": check.describe(),
    }


def _report_json(rep: StatusReport) -> dict[str, Any]:
    return {
        "workflow_id": rep.workflow_id,
        "run_status": rep.run_status,
        "task_queue": rep.task_queue,
        "worker": _worker_json(rep.worker),
        "memo": rep.memo.model_dump(mode="json") if rep.memo else None,
        "healing": rep.healing.model_dump(mode="json") if rep.healing else None,
        "problem": rep.problem,
        "pending": [vars(p) for p in rep.pending],
    }


def _print_report(rep: StatusReport, console: Console) -> None:
    now = datetime.now(UTC)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("workflow", Text(f"{rep.workflow_id} ({rep.run_status})"))
    if rep.worker is not None:
        colour = "green" if rep.worker.polling else "yellow"
        grid.add_row("worker", Text(rep.worker.describe(), style=colour))
    st = rep.healing
    if st is not None:
        counts = ", ".join(f"{k} x{n}" for k, n in sorted(st.counts_by_error_type.items()))
        grid.add_row("state", Text(st.state, style="bold"))
        grid.add_row("attempts", f"{st.attempts}" + (f" ({counts})" if counts else ""))
        if st.drift:  # schema drift the calls met, also when nothing failed
            grid.add_row("schema drift", Text("; ".join(st.drift[:10])))
    elif rep.worker is not None and rep.worker.polling:
        grid.add_row("state", Text(f"unknown: {rep.problem or 'no answer'}"))
    for call in rep.pending:
        nxt = f", next try in {call.next_attempt_in_s:.1f}s" if call.next_attempt_in_s else ""
        grid.add_row(
            "retrying",
            Text(f"{call.activity_type} attempt {call.attempt}{nxt}: {call.last_failure or '-'}"),
        )
    console.print(grid)
    if st is not None:
        for esc in st.open_escalations:
            _print_escalation(esc, rep.workflow_id, console, now)
        return
    if rep.memo is not None:
        polling = rep.worker is not None and rep.worker.polling
        why = f"gave no answer ({rep.problem})" if polling else "needs a worker"
        console.print(
            Text(
                f"\nthe {STATUS_QUERY} query {why}; the workflow's {MEMO_KEY!r} memo "
                "(recorded when it paused) holds:"
            )
        )
        _print_brief(rep.memo, console, now, queue=not (rep.worker and rep.worker.polling))
    elif rep.run_status == "RUNNING":
        console.print(
            Text(f"\nno open escalation in the {MEMO_KEY!r} memo: not paused for a human")
        )


def _print_escalation(esc: Escalation, workflow_id: str, console: Console, now: datetime) -> None:
    call = _call(esc.connector, esc.operation, esc.activity)
    head = f"\nescalation {esc.escalation_id} ({esc.error_type.value}) on {call}, opened "
    console.print(Text(head + f"{_stamp(esc.opened_at)} ({_ago(esc.opened_at, now)})"))
    console.print(Text("  " + esc.explanation.replace("\n", "\n  ")))
    options = Table.grid(padding=(0, 2))
    options.add_column(no_wrap=True, style="bold")
    options.add_column()
    for opt in esc.options:
        options.add_row(Text("    " + opt.option), Text(opt.effect))
    console.print(Text("  options:"))
    console.print(options)
    due = esc.timeout_at
    console.print(
        Text(f"  without a decision by {_stamp(due)} ({_until(due, now)}): {esc.default_option}")
    )
    console.print(Text(f"  decide: healing decide {workflow_id} <option>"))


def _print_brief(brief: EscalationBrief, console: Console, now: datetime, *, queue: bool) -> None:
    call = _call(brief.connector, brief.operation)
    head = f"escalation {brief.escalation_id} ({brief.error_type.value}) on {call}, opened "
    console.print(Text(head + f"{_stamp(brief.opened_at)} ({_ago(brief.opened_at, now)})"))
    if brief.open_escalations > 1:
        console.print(Text(f"  (1 of {brief.open_escalations} open escalations)"))
    console.print(Text("  " + brief.explanation))
    console.print(Text(f"  options: {', '.join(brief.options)}"))
    due = brief.timeout_at
    console.print(
        Text(f"  without a decision by {_stamp(due)} ({_until(due, now)}): {brief.default_option}")
    )
    how = f"healing decide {brief.workflow_id} <option>"
    if queue:
        how += f" --queue  (sent as the {DECISION_SIGNAL} signal, applied when a worker returns)"
    console.print(Text(f"  decide: {how}"))


def _escalations_table(found: Sequence[PausedWorkflow], title: str, width: int) -> Table | Text:
    """One row per paused workflow; the explanation gets what the other columns leave."""
    now = datetime.now(UTC)
    heads = ("WORKFLOW", "ERROR", "CALL", "OPENED", "DEFAULT", "OPTIONS")
    rows: list[tuple[Text, ...]] = []
    for wf in found:
        b = wf.brief
        if b is None:
            rows.append(
                (
                    Text(wf.workflow_id),
                    *(Text("-") for _ in heads[1:]),
                    Text(f"(no {MEMO_KEY!r} memo yet: visibility may lag; see healing status)"),
                )
            )
            continue
        rows.append(
            (
                Text(wf.workflow_id),
                Text(b.error_type.value, style="red"),
                Text(_call(b.connector, b.operation)),
                Text(_ago(b.opened_at, now)),
                Text(f"{b.default_option} {_until(b.timeout_at, now)}"),
                Text(",".join(b.options)),
                Text(b.explanation),
            )
        )
    widths = [max([len(h), *(len(r[i].plain) for r in rows)]) for i, h in enumerate(heads)]
    left = max(width - sum(w + 2 for w in widths) - 2, 20)  # for the explanation
    if len(rows) > _TABLE_ROWS:
        return _aligned(title, (*heads, "EXPLANATION"), rows, [*widths, left])
    table = Table(title=title, title_justify="left", header_style="bold", box=None)
    for name in heads:
        table.add_column(name, no_wrap=True)
    table.add_column("EXPLANATION", no_wrap=True, overflow="ellipsis", max_width=left)
    for row in rows:
        table.add_row(*row)
    return table


def _aligned(
    title: str, heads: Sequence[str], rows: Sequence[Sequence[Text]], widths: Sequence[int]
) -> Text:
    """The same columns as the borderless Table, laid out here: rich's Table measures every
    cell, about 0.7 s for 1,000 rows, most of the command's time. Print with soft_wrap."""
    out = Text(title + "\n")
    lines: list[Sequence[Text]] = [[Text(h, style="bold") for h in heads], *rows]
    for line in lines:
        out.append(" ")
        for i, (cell, w) in enumerate(zip(line, widths, strict=True)):
            if len(cell.plain) > w:
                cell = cell[: w - 1] + Text("\u2026")
            out.append_text(cell)
            if i < len(widths) - 1:
                out.append(" " * (w - len(cell.plain) + 2))
        out.append("\n")
    out.rstrip()
    return out


async def _client(args: argparse.Namespace) -> Client:
    return await runner.connect(args.address, args.namespace)


async def cmd_status(args: argparse.Namespace) -> int:
    rep = await healing_status(await _client(args), args.workflow_id)
    if args.json:
        print(json.dumps(_report_json(rep), indent=2))
    else:
        _print_report(rep, _console())
    return 0


async def cmd_watch(args: argparse.Namespace) -> int:
    client = await _client(args)
    console = _console()
    while True:
        rep = await healing_status(client, args.workflow_id)
        if console.is_terminal:
            console.clear()
        _print_report(rep, console)
        if rep.run_status != "RUNNING":
            return 0
        console.print(Text(f"-- {time.strftime('%H:%M:%S')}, Ctrl-C stops watching"))
        await asyncio.sleep(args.interval)


async def cmd_escalations(args: argparse.Namespace) -> int:
    listing = await list_escalations(await _client(args), query=args.query, limit=args.limit)
    for note in listing.notes:
        _fail(args, f"note: {note}")
    if listing.truncated:
        _fail(args, f"showing {len(listing.workflows)} of {listing.total}; --limit shows more")
    if args.json:
        print(json.dumps([wf.to_json() for wf in listing.workflows], indent=2))
        return 0
    console = _console()
    if not listing.workflows:
        console.print(Text(f"no open escalations (visibility: {listing.query})"))
        return 0
    n = len(listing.workflows)
    title = f"{n} open escalation{'s' if n != 1 else ''} (running workflows paused for a human)"
    console.print(_escalations_table(listing.workflows, title, console.width), soft_wrap=True)
    return 0


def _decision_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "alternative": args.alternative,
        "input_patch": args.patch,
        "wait_s": args.wait_s,
        "mapping_id": args.mapping_id,
        "note": args.note,
        "decided_by": args.by or default_decider(),
        "queue": args.queue,
        "signal": args.signal,
    }


async def cmd_decide(args: argparse.Namespace) -> int:
    client = await _client(args)
    if args.query is not None:
        return await _decide_bulk(client, args)
    kwargs = _decision_kwargs(args)
    try:
        outcome = await decide_checked(
            client, args.workflow_id, args.option, escalation_id=args.escalation_id, **kwargs
        )
    except NoWorker as exc:
        _fail(args, str(exc))
        return EXIT_NO_WORKER
    except (WorkflowClosed, DecisionUnconfirmed) as exc:
        _fail(args, str(exc))
        return 1
    except DecisionError as exc:
        _fail(args, f"{args.workflow_id} refused {args.option}: {exc}")
        return 2
    print(f"{outcome.describe()} (decided by {kwargs['decided_by']})")
    return 0


async def _decide_bulk(client: Client, args: argparse.Namespace) -> int:
    listing = await list_escalations(client, query=args.query, limit=args.limit)
    for note in listing.notes:
        _fail(args, f"note: {note}")
    found, n = listing.workflows, len(listing.workflows)
    if listing.truncated:
        _fail(
            args,
            f"{listing.total} paused workflows match, more than --limit {args.limit}: narrow "
            "--query or raise --limit; nothing was decided",
        )
        return 2
    console = _console()
    if not found:
        console.print(
            Text(f"no paused workflow matches {args.query} (visibility: {listing.query})")
        )
        return 0
    checks: dict[str, WorkerCheck] = {}
    for wf in found:  # one check per task queue, probing with its first workflow
        if wf.task_queue not in checks:
            checks[wf.task_queue] = (await check_worker(client, wf.task_queue, wf.workflow_id))[0]
    console.print(
        _escalations_table(found[:_PREVIEW_ROWS], f"{n} paused workflows match", console.width)
    )
    if n > _PREVIEW_ROWS:
        console.print(Text(f"... and {n - _PREVIEW_ROWS} more"))
    for check in checks.values():
        console.print(Text(check.describe(), style="green" if check.polling else "yellow"))
    idle = [q for q, c in checks.items() if not c.polling]
    if idle and not (args.queue or args.signal):
        waiting = sum(wf.task_queue in idle for wf in found)
        _fail(
            args,
            f"no worker is polling task queue {', '.join(idle)} ({waiting} of the {n} "
            "workflows); the decisions would wait for one. Nothing was sent; --queue sends "
            "them as durable signals applied when a worker returns",
        )
        return EXIT_NO_WORKER
    if not args.yes:
        if not sys.stdin.isatty():
            _fail(
                args,
                f"refusing to decide {n} workflows without confirmation: stdin is not a "
                "terminal (pass --yes)",
            )
            return 2
        prompt = f"decide {args.option} for these {n} workflows? [y/N] "
        answer = await asyncio.to_thread(input, prompt)
        if answer.strip().lower() not in ("y", "yes"):
            console.print(Text("nothing was decided"))
            return 1
    kwargs = _decision_kwargs(args)
    limit = asyncio.Semaphore(8)

    async def one(wf: PausedWorkflow) -> tuple[str, str, str]:
        async with limit:
            try:
                out = await decide_checked(
                    client, wf.workflow_id, args.option, worker=checks[wf.task_queue], **kwargs
                )
            except (WorkflowClosed, NoWorker, DecisionUnconfirmed) as exc:
                return wf.workflow_id, "failed", str(exc)
            except DecisionError as exc:
                return wf.workflow_id, "refused", str(exc)
            except RPCError as exc:
                return wf.workflow_id, "failed", f"{exc.status.name}: {exc.message}"
            if out.applied:
                return wf.workflow_id, "applied", "accepted and applied by the worker"
            if out.worker.polling:
                return wf.workflow_id, "signalled", "sent as a signal (not validated)"
            return wf.workflow_id, "queued", "queued as a signal: applied when a worker returns"

    results = await asyncio.gather(*(one(wf) for wf in found))
    table = Table(header_style="bold", box=None)
    table.add_column("WORKFLOW", no_wrap=True)
    table.add_column("RESULT", no_wrap=True)
    table.add_column("DETAIL", overflow="fold")
    colours = {"applied": "green", "queued": "yellow", "signalled": "yellow"}
    for wf_id, result, detail in results:
        table.add_row(Text(wf_id), Text(result, style=colours.get(result, "red")), Text(detail))
    console.print(table)
    kinds = ("applied", "queued", "signalled", "refused", "failed")
    tally = {k: sum(r[1] == k for r in results) for k in kinds}
    console.print(
        Text(
            f"{args.option} for {n} workflows: {tally['applied']} applied, "
            f"{tally['queued'] + tally['signalled']} sent as signals, {tally['refused']} "
            f"refused, {tally['failed']} failed (decided by {kwargs['decided_by']})"
        )
    )
    return 0 if tally["refused"] + tally["failed"] == 0 else 1


async def cmd_dev(args: argparse.Namespace) -> int:
    from healing.devserver import DevServer

    server = DevServer(state_dir=args.state_dir, port=args.port, ui_port=args.ui_port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with server:
        print(f"Temporal dev server on {server.address}, Web UI {server.ui_url}")
        print(f"state in {server.state_dir}, log {server.log_file}; Ctrl-C stops", flush=True)
        await stop.wait()
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    await runner.run_worker(args.address, args.namespace)
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from healing.demo import DemoOptions, run_demo

    if args.count < 1 or not 0 <= args.rate < 1:
        raise HealingError("--count must be at least 1 and --rate at least 0 and below 1")
    opts = DemoOptions(
        count=args.count, seed=args.seed, rate=args.rate, keep=args.keep, state_dir=args.state_dir
    )
    return await run_demo(opts)


async def cmd_setup(args: argparse.Namespace) -> int:
    from healing.devserver import DEFAULT_SEARCH_ATTRIBUTES, ensure_search_attributes

    added = await ensure_search_attributes(
        await _client(args), args.namespace, DEFAULT_SEARCH_ATTRIBUTES
    )
    names = ", ".join(DEFAULT_SEARCH_ATTRIBUTES)
    print(f"registered {', '.join(added)}" if added else f"{names} were already registered")
    store = await connect_store(runner.load_config().store)  # applies pending migrations
    await store.close()
    print(f"store {store.url_for_display} is migrated")
    return 0


async def cmd_credentials(args: argparse.Namespace) -> int:
    config = runner.load_config()
    store = await connect_store(config.store)
    try:
        creds = runner.credential_store(config, store)
        if args.action == "set":
            return await _credentials_set(args, creds, store.url_for_display)
        if args.action == "authorize":
            return await _credentials_authorize(args, config, creds)
        if args.action == "rotate-key":
            done = await creds.rotate()  # raises, naming them, if rows stay on an old key
            print(
                f"re-encrypted {done} credential(s) in {store.url_for_display} with key id "
                f"{creds.box.primary_id}; every row now uses it, so older keys can leave "
                "HEALING_SECRET_KEY once every worker runs with the new one"
            )
            return 0
        if args.action == "import":
            path = Path(args.file) if args.file else runner.credentials_path()
            copied = await runner.import_credential_file(creds, config, path)
            print(f"imported {copied} credential(s) from {path} into {store.url_for_display}")
            return 0
        if args.action == "list":
            rows = await creds.list()
            for connector, connection, version, kid in rows:
                print(f"{connector}  connection={connection}  version={version}  key={kid}")
            if not rows:
                print(f"no credentials stored in {store.url_for_display}")
            return 0
        where = credential_name(args.connector, args.connection)
        if args.action == "delete":
            await creds.delete(args.connector, args.connection)
            print(f"deleted the credential of {where} (if there was one)")
            return 0
        cred = await creds.get(args.connector, args.connection)
        if cred is None:
            raise HealingError(f"no credential stored for {where} in {store.url_for_display}")
    finally:
        await store.close()
    expiry = "unknown (used until a 401)"
    if cred.expires_at is not None:
        left = cred.expires_at - time.time()
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cred.expires_at))
        expiry = f"{when} ({f'in {left:.0f}s' if left > 0 else 'expired'})"
    refresh = "stored" if cred.refresh_token else "none"
    print(f"connector      {cred.connector}\nconnection     {cred.connection}")
    print(f"version        {cred.version}\ntoken type     {cred.token_type}")
    print(f"expires        {expiry}\nrefresh token  {refresh}")
    if cred.revoked:
        print(f"grant          DEAD: {cred.revoked}")
    print(f"store          {store.url_for_display}")
    return 0


def _connection_arg(value: str) -> str:
    try:
        return check_connection(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _credentials_set(args: argparse.Namespace, store: Any, where: str) -> int:
    tokens: dict[str, str | None] = {"access_token": None, "refresh_token": None}
    for name, var in (
        ("access_token", args.access_token_env),
        ("refresh_token", args.refresh_token_env),
    ):
        if var is not None:
            tokens[name] = os.environ.get(var) or None
            if tokens[name] is None:
                raise HealingError(f"environment variable {var} ({name}) is not set or empty")
    now = time.time()
    expires = now + args.expires_in if args.expires_in else None
    cred = Credential.model_validate(
        {
            "connector": args.connector,
            "connection": args.connection,
            "expires_at": expires,
            "issued_at": now,
            **tokens,
        }
    )
    current = await store.get(args.connector, args.connection)
    expected = current.version if current is not None else None
    if not await store.put(cred, expected_version=expected):
        raise HealingError(f"the credential of {args.connector!r} changed meanwhile; try again")
    stored = await store.get(args.connector, args.connection)
    name = credential_name(args.connector, args.connection)
    print(f"stored credential for {name} (version {stored.version if stored else '?'}) in {where}")
    return 0


async def _credentials_authorize(args: argparse.Namespace, config: Any, creds: Any) -> int:
    from healing.authorize import authorize

    clients = runner.oauth_clients(runner.load_connectors(config))
    client = clients.get(args.connector)
    if client is None:
        raise HealingError(f"connector {args.connector!r} has no oauth2 [auth] in the catalog")
    name = credential_name(args.connector, args.connection)

    def show(url: str) -> None:
        print(f"open this URL to authorize {name}:\n{url}", flush=True)

    done = await authorize(
        client,
        creds,
        connector=args.connector,
        connection=args.connection,
        show_url=show,
        timeout_s=args.timeout,
    )
    print(f"stored new tokens for {name} (version {done.credential.version})", flush=True)
    if args.no_decide:
        return 0
    try:
        client_ = await _client(args)
        listing = await list_escalations(client_, limit=10_000)
    except (HealingError, RPCError) as exc:
        print(f"could not list the waiting workflows ({exc}); send `reauthorized` yourself")
        return 0
    waiting = [
        wf
        for wf in listing.workflows
        if wf.brief is not None
        and wf.brief.connector == args.connector
        and (wf.brief.connection or "default") == args.connection
        and "reauthorized" in wf.brief.options
    ]
    if not waiting:
        print(f"no paused workflow waits on {name}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                f"{len(waiting)} workflows wait on {name}: pass --yes to send them `reauthorized`"
            )
            return 0
        answer = await asyncio.to_thread(
            input, f"send reauthorized to the {len(waiting)} workflows waiting on {name}? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    limit = asyncio.Semaphore(8)
    by = args.by or default_decider()

    async def one(wf: PausedWorkflow) -> bool:
        async with limit:
            try:
                await decide_checked(client_, wf.workflow_id, "reauthorized", decided_by=by)
            except (DecisionError, NoWorker, DecisionUnconfirmed) as exc:
                _fail(args, f"{wf.workflow_id}: {exc}")
                return False
            return True

    sent = sum(await asyncio.gather(*(one(wf) for wf in waiting)))
    print(f"sent reauthorized to {sent} of {len(waiting)} workflows waiting on {name}")
    return 0 if sent == len(waiting) else 1


async def cmd_patterns(args: argparse.Namespace) -> int:
    from healing.stats import wilson_lower

    config = runner.load_config()
    store = await connect_store(config.store)
    try:
        found = await store.patterns(limit=args.limit)
    finally:
        await store.close()
    if args.json:
        print(json.dumps([p.model_dump(mode="json") for p in found], indent=2))
        return 0
    if not found:
        print(f"no error patterns learned yet in {store.url_for_display}")
        return 0
    level = config.learning.min_confidence
    table = Table(
        title=f"{len(found)} error patterns in {store.url_for_display}",
        title_justify="left",
        header_style="bold",
        box=None,
    )
    for name in ("PATTERN", "CALL", "TYPE"):
        table.add_column(name, no_wrap=True)
    table.add_column("SEEN", justify="right", no_wrap=True)
    table.add_column(
        f"BEST STRATEGY (healed/tries, {level:.0%} lower bound, median heal)", no_wrap=True
    )
    for stats in found:
        pat = stats.pattern
        best = max(
            stats.strategies,
            key=lambda st: wilson_lower(st.successes, st.tries, level),
            default=None,
        )
        text = "-"
        if best is not None:
            low = wilson_lower(best.successes, best.tries, level)
            median = f"{best.median_heal_s:.1f}s" if best.median_heal_s is not None else "-"
            text = f"{best.strategy} {best.successes}/{best.tries} ({low:.0%}, {median})"
        status = f" {pat.status_code}" if pat.status_code else ""
        table.add_row(
            Text(pat.fingerprint),
            Text(f"{pat.connector}.{pat.operation}"),
            Text(pat.error_type.value + status),
            str(stats.seen),
            Text(text),
        )
    _console().print(table)
    return 0


async def cmd_events(args: argparse.Namespace) -> int:
    from healing.store import EventFilter

    store = await connect_store(runner.load_config().store)
    try:
        events = await store.recent_events(
            EventFilter(
                limit=args.limit,
                workflow_id=args.workflow_id,
                connector=args.connector,
                error_type=args.error_type,
                kind=args.kind,
            )
        )
    finally:
        await store.close()
    if args.json:
        print(json.dumps([e.model_dump(mode="json") for e in events], indent=2))
        return 0
    console = _console()
    if not events:
        console.print(Text("no healing events match"))
        return 0
    table = Table(header_style="bold", box=None)
    for name in ("AT", "KIND", "WORKFLOW", "CALL", "ERROR", "STRATEGY"):
        table.add_column(name, no_wrap=True)
    table.add_column("OUTCOME", overflow="fold")
    table.add_column("TOOK", justify="right", no_wrap=True)
    for e in events:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.kind,
            Text(e.workflow_id),
            Text(_call(e.connector, e.operation)),
            e.error_type or "-",
            e.strategy or "-",
            Text(e.outcome or ""),
            f"{e.duration_s:.2f}s" if e.duration_s is not None else "",
        )
    console.print(table)
    return 0


async def cmd_serve(args: argparse.Namespace) -> int:
    from healing.serve import main as serve_main  # lazily: starlette, uvicorn

    return await serve_main(args, await _client(args))


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    address = env.get("TEMPORAL_ADDRESS") or runner.DEFAULT_ADDRESS
    namespace = env.get("TEMPORAL_NAMESPACE") or runner.DEFAULT_NAMESPACE
    address_help = f"Temporal host:port (env TEMPORAL_ADDRESS; now {address})"
    namespace_help = f"Temporal namespace (env TEMPORAL_NAMESPACE; now {namespace})"
    parser = argparse.ArgumentParser(
        prog="healing",
        description="Self-healing Temporal integrations: run the dev server, a worker or the "
        "demo; read and decide escalations (no worker needed to read them).",
        epilog="Exit codes: 0 done, 1 failed, 2 refused or bad arguments, 3 no worker polls "
        "(nothing sent). `healing COMMAND --help` shows a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"healing {_version()}")
    parser.add_argument("--address", default=address, help=address_help)
    parser.add_argument("--namespace", default=namespace, help=namespace_help)
    common = argparse.ArgumentParser(add_help=False)  # also accepted after the subcommand
    common.add_argument("--address", default=argparse.SUPPRESS, help=address_help)
    common.add_argument("--namespace", default=argparse.SUPPRESS, help=namespace_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Handler, text: str, remote: bool = True, **kw: Any
    ) -> argparse.ArgumentParser:
        parents = [common] if remote else []
        p = sub.add_parser(name, parents=parents, help=text, description=text, **kw)
        p.set_defaults(handler=handler, remote=remote)
        return p

    p = add("dev", cmd_dev, "run the Temporal dev server with its Web UI until Ctrl-C", False)
    p.add_argument("--state-dir", type=Path, default=Path(".healing"), help="state (.healing)")
    p.add_argument("--port", type=int, default=7233, help="gRPC port (7233)")
    p.add_argument("--ui-port", type=int, default=8233, help="Web UI port (8233)")
    add("worker", cmd_worker, "run the integration worker (same as python worker.py)")
    p = add("demo", cmd_demo, "run a batch of workflows against a chaos CRM and summarize", False)
    p.add_argument("--count", type=int, default=60, help="workflows to run (default 60)")
    p.add_argument("--seed", type=int, default=7, help="fault plan seed (default 7)")
    p.add_argument("--rate", type=float, default=0.3, help="random fault share (0.3)")
    p.add_argument("--keep", action="store_true", help="keep server, worker and UI up after")
    p.add_argument(
        "--state-dir", type=Path, default=Path(".healing/demo"), help="state (.healing/demo)"
    )
    p = add(
        "status",
        cmd_status,
        "show a workflow's healing state, escalation and retries; with no worker polling, "
        f"says so and shows its {MEMO_KEY!r} memo",
    )
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", help="the workflow to show")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p = add("watch", cmd_watch, "re-print status every second until the workflow closes")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", help="the workflow to watch")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p = add(
        "escalations",
        cmd_escalations,
        "list running workflows paused for a human, from visibility (no worker needed)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--limit", type=int, default=1000, help="list at most this many (1000)")
    p.add_argument(
        "--query",
        metavar="QUERY",
        help="narrow the list with a visibility query, e.g. "
        "'WorkflowType = \"IntegrationWorkflow\"'",
    )
    p = add(
        "decide",
        cmd_decide,
        "answer a workflow's open escalation, or every paused workflow a query matches; "
        "checks first that a worker polls, and never waits unbounded",
        usage=_DECIDE_USAGE,
    )
    p.add_argument("workflow_id", nargs="?", metavar="WORKFLOW_ID", help="the paused workflow")
    p.add_argument("option", nargs="?", metavar="OPTION", help=f"one of {', '.join(OPTIONS)}")
    p.add_argument(
        "--query",
        metavar="QUERY",
        help="decide every paused running workflow this visibility query matches (shows the "
        "count and asks first)",
    )
    p.add_argument("--yes", action="store_true", help="with --query: do not ask to confirm")
    p.add_argument("--limit", type=int, default=1000, help="with --query: at most this many")
    p.add_argument(
        "--queue",
        action="store_true",
        help=f"when no worker polls, send the decision as the {DECISION_SIGNAL} signal: kept "
        "in history and applied when a worker returns (without it nothing is sent)",
    )
    p.add_argument(
        "--signal",
        action="store_true",
        help=f"always send the {DECISION_SIGNAL} signal, not the validated update",
    )
    p.add_argument("--escalation-id", help="which escalation, when several are open")
    p.add_argument("--alternative", help="connector for reroute")
    p.add_argument("--patch", type=_json_object, help="input_patch for edit_and_retry (JSON)")
    p.add_argument("--wait-s", type=float, help="seconds to wait for the wait option")
    p.add_argument("--mapping-id", help="for accept_mapping: another stored mapping to accept")
    p.add_argument("--note", default="", help="a note kept with the decision")
    p.add_argument("--by", help="who decided, recorded with it (default $USER@hostname)")
    p = add(
        "credentials", cmd_credentials, "store, show or authorize tokens (in HEALING_STORE)", False
    )
    creds = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def credential(c: argparse.ArgumentParser) -> None:
        c.add_argument("connector", metavar="CONNECTOR", help="connector name in the catalog")
        c.add_argument(
            "--connection",
            default="default",
            type=_connection_arg,
            help="the account/tenant (default: default)",
        )

    c = creds.add_parser("set", help="store tokens read from environment variables")
    credential(c)
    c.add_argument(
        "--access-token-env", required=True, metavar="VAR", help="variable with the access token"
    )
    c.add_argument("--refresh-token-env", metavar="VAR", help="variable with the refresh token")
    c.add_argument("--expires-in", type=float, metavar="S", help="access token lifetime")
    c = creds.add_parser("show", help="version, expiry, grant state (never the tokens)")
    credential(c)
    c = creds.add_parser("delete", help="forget a stored credential")
    credential(c)
    c = creds.add_parser(
        "authorize",
        parents=[common],  # it reaches Temporal to find the workflows waiting on the grant
        help="authorization code + PKCE in a browser; stores the tokens, then offers to send "
        "reauthorized to the workflows waiting on them",
    )
    credential(c)
    c.add_argument("--yes", action="store_true", help="send reauthorized without asking")
    c.add_argument("--no-decide", action="store_true", help="only store the tokens")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the browser")
    c.add_argument("--by", help="who decided, recorded with it (default $USER@hostname)")
    creds.add_parser(
        "rotate-key",
        help='re-encrypt every credential with the first of HEALING_SECRET_KEY="NEW,OLD"',
    )
    c = creds.add_parser("import", help="copy a legacy credential file into HEALING_STORE")
    c.add_argument(
        "file", nargs="?", help="default HEALING_CREDENTIALS_FILE or .healing/credentials.enc"
    )
    creds.add_parser("list", help="stored credentials (names, versions, key ids)")
    p = add(
        "drift",
        cmd_drift,
        "schema drift records and mappings (HEALING_STORE); `drift approve|reject ID`, "
        "`drift export` (the proposed response_model change)",
        False,
    )
    drift_arguments(p)
    p = add("patterns", cmd_patterns, "show learned error patterns and strategies", False)
    p.add_argument("--limit", type=int, default=50, help="show at most this many (50)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p = add("events", cmd_events, "show recent healing events (HEALING_STORE)", False)
    p.add_argument("--limit", type=int, default=50, help="show at most this many (50)")
    p.add_argument("--workflow-id", help="only this workflow's events")
    p.add_argument("--connector", help="only this connector's events")
    p.add_argument("--error-type", help="only this error type, e.g. NOT_FOUND")
    p.add_argument("--kind", help="only this kind, e.g. escalated, healed, decided")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    add("setup", cmd_setup, "register the search attributes and migrate HEALING_STORE")
    p = add("serve", cmd_serve, "serve the HTTP API, live healing events and the inbox page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    p.add_argument(
        "--cors-origin", action="append", metavar="URL", help="origin of an app using the API"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code. ``argv=None`` (the ``healing`` command) reads
    ``sys.argv`` and ends the process itself, skipping interpreter teardown: the Temporal
    client's Rust threads can abort it (temporalio/sdk-python#300)."""
    code = _run(argv)
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def _check_decide_args(args: argparse.Namespace) -> str | None:
    """``decide WF OPTION`` or ``decide --query Q OPTION``: the problem, or None."""
    if args.query is not None and args.option is None:
        args.workflow_id, args.option = None, args.workflow_id
    if args.query is not None and args.workflow_id is not None:
        return "give either WORKFLOW_ID or --query, not both"
    if args.query is not None and args.escalation_id is not None:
        return "--escalation-id names one workflow's escalation; it does not go with --query"
    if args.option is None:
        return "the following arguments are required: " + (
            "OPTION" if args.workflow_id or args.query is not None else "WORKFLOW_ID, OPTION"
        )
    if args.option not in OPTIONS:
        choices = ", ".join(repr(o) for o in OPTIONS)
        return f"argument OPTION: invalid choice: {args.option!r} (choose from {choices})"
    return None


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the problem (or --help, --version)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "decide" and (problem := _check_decide_args(args)):
        print(f"usage: {_DECIDE_USAGE}\nhealing decide: error: {problem}", file=sys.stderr)
        return 2
    handler: Handler = args.handler
    if args.remote:
        # The SDK would raise a bare ValueError (a traceback) for an address it cannot parse.
        from_env = args.address == os.environ.get("TEMPORAL_ADDRESS")
        try:
            check_address(args.address, source="TEMPORAL_ADDRESS" if from_env else "--address")
        except ConfigError as exc:
            _fail(args, str(exc))
            return 2
    try:
        return asyncio.run(handler(args))
    except KeyboardInterrupt:
        return 130
    except HealingError as exc:
        _fail(args, str(exc))
        return 1
    except RPCError as exc:
        wf = getattr(args, "workflow_id", None)
        if exc.status == RPCStatusCode.NOT_FOUND and wf:
            problem = f"workflow {wf!r} not found in namespace {args.namespace!r} at {args.address}"
        else:
            problem = f"Temporal at {args.address} answered {exc.status.name}: {exc.message}"
        _fail(args, problem)
        return 1
    except Exception as exc:  # one line, never a traceback (HEALING_DEBUG=1 shows it)
        if os.environ.get("HEALING_DEBUG"):
            raise
        _fail(args, f"unexpected {type(exc).__name__}: {exc} (HEALING_DEBUG=1 shows where)")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
