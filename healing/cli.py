"""The ``healing`` command: dev server, worker, demo, and deciding escalations.

Every command that talks to Temporal takes ``--address`` (env ``TEMPORAL_ADDRESS``, default
``localhost:7233``) and ``--namespace`` (env ``TEMPORAL_NAMESPACE``, default ``default``).
Problems print one line naming what is wrong and exit non-zero; a rejected decision and an
address that is not host:port exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, get_args

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from healing import runner
from healing.client import StatusReport, check_address, decide, healing_status, list_escalations
from healing.credentials import Credential, FileCredentialStore
from healing.errors import ConfigError, DecisionError, HealingError, WorkflowClosed
from healing.store import connect_store
from healing.types import DecisionOptionName, Escalation

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


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


def _report_json(rep: StatusReport) -> dict[str, Any]:
    return {
        "workflow_id": rep.workflow_id,
        "run_status": rep.run_status,
        "healing": rep.healing.model_dump(mode="json") if rep.healing else None,
        "pending": [vars(p) for p in rep.pending],
    }


def _print_report(rep: StatusReport) -> None:
    print(f"workflow   {rep.workflow_id} ({rep.run_status})")
    st = rep.healing
    if st is None:
        print("healing    unknown (no healing worker answered the healing_status query)")
    else:
        counts = ", ".join(f"{k} x{n}" for k, n in sorted(st.counts_by_error_type.items()))
        print(f"state      {st.state}")
        print(f"attempts   {st.attempts}" + (f" ({counts})" if counts else ""))
        for esc in st.open_escalations:
            print(f"\nescalation {esc.escalation_id} ({esc.error_type.value}), opened {_when(esc)}")
            print("  " + esc.explanation.replace("\n", "\n  "))
            print("  options:")
            for opt in esc.options:
                print(f"    {opt.option:<15} {opt.effect}")
            default = f"without a decision: {esc.default_option}"
            print(f"  decide: healing decide {rep.workflow_id} <option> ({default})")
    for call in rep.pending:
        nxt = f", next try in {call.next_attempt_in_s:.1f}s" if call.next_attempt_in_s else ""
        print(f"retrying   {call.activity_type} attempt {call.attempt}{nxt}: {call.last_failure}")


def _when(esc: Escalation) -> str:
    return esc.opened_at.strftime("%Y-%m-%d %H:%M:%S")


async def _client(args: argparse.Namespace) -> Client:
    return await runner.connect(args.address, args.namespace)


async def cmd_status(args: argparse.Namespace) -> int:
    rep = await healing_status(await _client(args), args.workflow_id)
    if args.json:
        print(json.dumps(_report_json(rep), indent=2))
    else:
        _print_report(rep)
    return 0


async def cmd_watch(args: argparse.Namespace) -> int:
    client = await _client(args)
    while True:
        rep = await healing_status(client, args.workflow_id)
        if sys.stdout.isatty():
            print("\x1b[2J\x1b[H", end="")
        _print_report(rep)
        if rep.run_status != "RUNNING":
            return 0
        print(f"-- {time.strftime('%H:%M:%S')}, Ctrl-C stops watching", flush=True)
        await asyncio.sleep(args.interval)


async def cmd_escalations(args: argparse.Namespace) -> int:
    found = await list_escalations(await _client(args), limit=args.limit)
    if args.json:
        print(json.dumps([e.model_dump(mode="json") for e in found], indent=2))
        return 0
    if not found:
        print("no open escalations")
        return 0
    rows = [("WORKFLOW", "ERROR", "CALL", "OPENED", "OPTIONS")]
    for e in found:
        call = ".".join(p for p in (e.connector, e.operation) if p) or e.activity
        opts = ",".join(o.option for o in e.options)
        rows.append((e.workflow_id, e.error_type.value, call, _when(e), opts))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4])
    return 0


async def cmd_decide(args: argparse.Namespace) -> int:
    client = await _client(args)
    try:
        result = await decide(
            client,
            args.workflow_id,
            args.option,
            escalation_id=args.escalation_id,
            alternative=args.alternative,
            input_patch=args.patch,
            wait_s=args.wait_s,
            note=args.note,
            decided_by=args.by,
            via="signal" if args.signal else "update",
        )
    except WorkflowClosed as exc:
        print(f"healing decide: {exc}", file=sys.stderr)
        return 1
    except DecisionError as exc:
        print(f"healing decide: {args.workflow_id} refused {args.option}: {exc}", file=sys.stderr)
        return 2
    if args.signal:
        print(f"sent {args.option!r} to {args.workflow_id} as a signal (not checked; see status)")
    else:
        print(f"{args.workflow_id}: {args.option} accepted ({json.dumps(result)})")
    return 0


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
    store = runner.credential_store(runner.load_config())
    if args.action == "set":
        return await _credentials_set(args, store)
    cred = await store.get(args.connector)
    if cred is None:
        raise HealingError(f"no credential stored for {args.connector!r} in {store.path}")
    expiry = "unknown (used until a 401)"
    if cred.expires_at is not None:
        left = cred.expires_at - time.time()
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cred.expires_at))
        expiry = f"{when} ({f'in {left:.0f}s' if left > 0 else 'expired'})"
    refresh = "stored" if cred.refresh_token else "none"
    print(f"connector      {cred.connector}\nversion        {cred.version}")
    print(f"token type     {cred.token_type}\nexpires        {expiry}")
    print(f"refresh token  {refresh}\nstore          {store.path}")
    return 0


async def _credentials_set(args: argparse.Namespace, store: FileCredentialStore) -> int:
    tokens: dict[str, str | None] = {"access_token": None, "refresh_token": None}
    for name, var in (
        ("access_token", args.access_token_env),
        ("refresh_token", args.refresh_token_env),
    ):
        if var is not None:
            tokens[name] = os.environ.get(var) or None
            if tokens[name] is None:
                raise HealingError(f"environment variable {var} ({name}) is not set or empty")
    expires = time.time() + args.expires_in if args.expires_in else None
    cred = Credential.model_validate({"connector": args.connector, "expires_at": expires, **tokens})
    current = await store.get(args.connector)
    expected = current.version if current is not None else None
    if not await store.put(cred, expected_version=expected):
        raise HealingError(f"the credential of {args.connector!r} changed meanwhile; try again")
    version = 0 if expected is None else expected + 1
    print(f"stored credential for {args.connector!r} (version {version}) in {store.path}")
    return 0


async def cmd_patterns(args: argparse.Namespace) -> int:
    from healing.learning import wilson_interval

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
    print(
        f"{'pattern':<18} {'call':<28} {'type':<16} {'seen':>5}  best strategy (healed/tries, "
        f"{level:.0%} lower bound, median heal)"
    )
    for stats in found:
        pat = stats.pattern
        best = max(
            stats.strategies,
            key=lambda st: wilson_interval(st.successes, st.tries, 2 * level - 1)[0],
            default=None,
        )
        text = "-"
        if best is not None:
            low = wilson_interval(best.successes, best.tries, 2 * level - 1)[0]
            median = f"{best.median_heal_s:.1f}s" if best.median_heal_s is not None else "-"
            text = f"{best.strategy} {best.successes}/{best.tries} ({low:.0%}, {median})"
        call = f"{pat.connector}.{pat.operation}"
        status = f" {pat.status_code}" if pat.status_code else ""
        print(
            f"{pat.fingerprint:<18} {call:<28} {pat.error_type.value + status:<16} "
            f"{stats.seen:>5}  {text}"
        )
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
    for e in events:
        call = f"{e.connector or '-'}.{e.operation or '-'}"
        took = f" {e.duration_s:.2f}s" if e.duration_s is not None else ""
        print(
            f"{e.at:%Y-%m-%d %H:%M:%S} {e.kind:<10} {e.workflow_id:<24} {call:<24} "
            f"{(e.error_type or '-'):<16} {e.strategy or '-'}: {e.outcome or ''}{took}"
        )
    if not events:
        print("no healing events match")
    return 0


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(prog="healing", description=__doc__.split("\n")[0])
    parser.add_argument("--address", default=env.get("TEMPORAL_ADDRESS") or runner.DEFAULT_ADDRESS)
    parser.add_argument(
        "--namespace", default=env.get("TEMPORAL_NAMESPACE") or runner.DEFAULT_NAMESPACE
    )
    common = argparse.ArgumentParser(add_help=False)  # also accepted after the subcommand
    common.add_argument("--address", default=argparse.SUPPRESS, help="Temporal host:port")
    common.add_argument("--namespace", default=argparse.SUPPRESS, help="Temporal namespace")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, text: str, remote: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common] if remote else [], help=text, description=text)
        p.set_defaults(handler=handler, remote=remote)
        return p

    p = add("dev", cmd_dev, "run the Temporal dev server with its Web UI until Ctrl-C", False)
    p.add_argument("--state-dir", type=Path, default=Path(".healing"))
    p.add_argument("--port", type=int, default=7233)
    p.add_argument("--ui-port", type=int, default=8233)
    add("worker", cmd_worker, "run the integration worker (same as python worker.py)")
    p = add("demo", cmd_demo, "run a batch of workflows against a chaos CRM and summarize", False)
    p.add_argument("--count", type=int, default=60, help="workflows to run (default 60)")
    p.add_argument("--seed", type=int, default=7, help="fault plan seed (default 7)")
    p.add_argument("--rate", type=float, default=0.3, help="random fault share (0.3)")
    p.add_argument("--keep", action="store_true", help="keep server, worker and UI up after")
    p.add_argument("--state-dir", type=Path, default=Path(".healing/demo"))
    p = add("status", cmd_status, "show a workflow's healing state, escalations and retries")
    p.add_argument("workflow_id")
    p.add_argument("--json", action="store_true")
    p = add("watch", cmd_watch, "re-print status every second until the workflow closes")
    p.add_argument("workflow_id")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p = add("escalations", cmd_escalations, "list open escalations of running workflows")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=100)
    p = add("decide", cmd_decide, "answer a workflow's open escalation")
    p.add_argument("workflow_id")
    p.add_argument("option", choices=get_args(DecisionOptionName))
    p.add_argument("--escalation-id", help="which escalation, when several are open")
    p.add_argument("--alternative", help="connector for reroute")
    p.add_argument("--patch", type=_json_object, help="input_patch for edit_and_retry (JSON)")
    p.add_argument("--wait-s", type=float, help="seconds to wait for the wait option")
    p.add_argument("--note", default="")
    p.add_argument("--by", default=env.get("USER") or "cli", help="who decided (default $USER)")
    p.add_argument("--signal", action="store_true", help="send a signal instead of an update")
    p = add("credentials", cmd_credentials, "store or show a connector's tokens (encrypted)", False)
    creds = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = creds.add_parser("set", help="store tokens read from environment variables")
    c.add_argument("connector")
    c.add_argument("--access-token-env", required=True, metavar="VAR")
    c.add_argument("--refresh-token-env", metavar="VAR")
    c.add_argument("--expires-in", type=float, metavar="S", help="access token lifetime")
    c = creds.add_parser("show", help="version, expiry and type (never the tokens)")
    c.add_argument("connector")
    p = add("patterns", cmd_patterns, "show learned error patterns and strategies", False)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p = add("events", cmd_events, "show recent healing events (HEALING_STORE)", False)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--workflow-id")
    p.add_argument("--connector")
    p.add_argument("--error-type")
    p.add_argument("--kind")
    p.add_argument("--json", action="store_true")
    add("setup", cmd_setup, "register the search attributes and migrate HEALING_STORE")
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


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the problem (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    handler: Handler = args.handler
    if args.remote:
        # The SDK would raise a bare ValueError (a traceback) for an address it cannot parse.
        from_env = args.address == os.environ.get("TEMPORAL_ADDRESS")
        try:
            check_address(args.address, source="TEMPORAL_ADDRESS" if from_env else "--address")
        except ConfigError as exc:
            print(f"healing {args.command}: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(handler(args))
    except KeyboardInterrupt:
        return 130
    except HealingError as exc:
        print(f"healing {args.command}: {exc}", file=sys.stderr)
        return 1
    except RPCError as exc:
        wf = getattr(args, "workflow_id", None)
        if exc.status == RPCStatusCode.NOT_FOUND and wf:
            problem = f"workflow {wf!r} not found in namespace {args.namespace!r} at {args.address}"
        else:
            problem = f"Temporal at {args.address} answered {exc.status.name}: {exc.message}"
        print(f"healing {args.command}: {problem}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
