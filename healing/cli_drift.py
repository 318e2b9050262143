"""``healing drift``: schema drift records and mappings in ``HEALING_STORE``, and decisions.

- ``healing drift`` lists the mappings (id, call, status, renames, evidence) and the drift
  records (change, path, types, count, first/last seen); ``--json`` for scripts.
- ``healing drift approve ID [--pin]`` makes a mapping active (pinned: automatic adaptation
  never replaces it) for every worker within about a second; ``healing drift reject ID``.
- ``healing drift export`` prints the proposed ``response_model`` change per operation (JSON),
  for a catalog or model update.

Needs only the store, no Temporal server and no worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from temporalio.client import Client

from healing.client import decide, default_decider, list_escalations
from healing.config import HealingConfig
from healing.drift import DriftBook, MappingStatus, export_model_change
from healing.errors import HealingError
from healing.names import ERROR_TYPE_ATTRIBUTE
from healing.plugin import HealingPlugin
from healing.store import connect_store


def drift_arguments(p: argparse.ArgumentParser) -> None:
    """The ``drift`` command's arguments."""
    p.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=("list", "approve", "reject", "export"),
        help="list (default), approve ID, reject ID, export",
    )
    p.add_argument("mapping_id", nargs="?", metavar="ID", help="the mapping, for approve/reject")
    p.add_argument("--pin", action="store_true", help="with approve: pin the mapping")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="with approve: do not resume the calls paused on this proposal (accept_mapping)",
    )
    p.add_argument("--by", default=None, help="who decided (default $USER)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


async def cmd_drift(args: argparse.Namespace) -> int:
    """Run ``healing drift`` (see the module docstring)."""
    config = HealingConfig.load()  # HEALING_STORE
    store = await connect_store(config.store)
    try:
        book = DriftBook(store)
        if args.action in ("approve", "reject"):
            return await _decide(book, args)
        mappings, records = await book.mappings(fresh=True), await book.records()
    finally:
        await store.close()
    if args.action == "export":
        print(json.dumps(export_model_change(mappings, records), indent=2, sort_keys=True))
        return 0
    if args.json:
        out = {
            "mappings": [m.model_dump(mode="json") for m in mappings],
            "drift": [r.model_dump(mode="json") for r in records],
        }
        print(json.dumps(out, indent=2))
        return 0
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    console = Console(width=200 if piped else None, highlight=False)  # ids never wrap
    where = store.url_for_display
    if not mappings and not records:
        console.print(f"no schema drift recorded in {where}")
        return 0
    console.print(_mappings_table(mappings, where))
    console.print(_records_table(records))
    return 0


async def _decide(book: DriftBook, args: argparse.Namespace) -> int:
    if not args.mapping_id:
        raise HealingError(f"healing drift {args.action} needs a mapping ID (see `healing drift`)")
    status: MappingStatus = (
        "rejected" if args.action == "reject" else "pinned" if args.pin else "active"
    )
    by = args.by or default_decider()
    try:
        mapping = await book.decide(args.mapping_id, status, decided_by=by)
    except KeyError:
        known = ", ".join(m.mapping_id for m in await book.mappings(fresh=True)) or "none"
        raise HealingError(
            f"no schema mapping has id {args.mapping_id!r} (known: {known})"
        ) from None
    print(
        f"mapping {mapping.mapping_id} of {mapping.connector}.{mapping.operation} is now "
        f"{mapping.status}: {mapping.describe()} (workers use it within a second)"
    )
    if status != "rejected" and not getattr(args, "no_resume", False):
        await _resume(args, mapping.mapping_id, by)
    return 0


async def _resume(args: argparse.Namespace, mapping_id: str, by: str) -> None:
    """Send ``accept_mapping`` to the calls paused on this proposal: approving it is the
    human's answer to them too (else they wait for their timeout's default)."""
    try:
        plugin = HealingPlugin(HealingConfig.load())  # the pydantic converter
        client = await Client.connect(args.address, namespace=args.namespace, plugins=[plugin])
        listing = await list_escalations(client, query=_REVIEWS)
    except Exception as exc:  # no Temporal reachable: the store part is done all the same
        print(
            f"paused calls not resumed ({type(exc).__name__}: {exc}); resume them with "
            f"`healing decide --query '{_REVIEWS}' accept_mapping --mapping-id {mapping_id}`"
        )
        return
    waiting = [w for w in listing.workflows if w.brief and w.brief.mapping_id == mapping_id]
    resumed, failed = [], []
    for wf in waiting:
        assert wf.brief is not None
        try:
            await decide(
                client, wf.workflow_id, "accept_mapping", escalation_id=wf.brief.escalation_id,
                mapping_id=mapping_id, decided_by=by, note="healing drift approve",
            )  # fmt: skip
            resumed.append(wf.workflow_id)
        except Exception as exc:
            failed.append(f"{wf.workflow_id} ({exc})")
    if resumed:
        print(f"resumed {len(resumed)} paused call(s) with accept_mapping: {', '.join(resumed)}")
    for line in failed:
        print(f"not resumed: {line}")


_REVIEWS = f'{ERROR_TYPE_ATTRIBUTE} = "SCHEMA_MISMATCH"'


def _mappings_table(mappings: list[Any], where: str) -> Table:
    table = Table(
        title=f"{len(mappings)} schema mappings in {where}", title_justify="left", box=None
    )
    for name in ("ID", "CALL", "STATUS", "REV"):
        table.add_column(name, no_wrap=True)
    for name in ("MAPPING", "CONFIDENCE", "EVIDENCE / CANDIDATES"):
        table.add_column(name)
    for m in sorted(mappings, key=lambda m: (m.connector, m.operation, -m.revision)):
        why = "; ".join(m.evidence) or "; ".join(
            f"{c.observed}->{c.expected}: {c.evidence} ({c.why})" for c in m.candidates
        )
        table.add_row(
            m.mapping_id,
            f"{m.connector}.{m.operation}",
            m.status,
            str(m.revision),
            m.describe(),
            f"{m.confidence:.2f}",
            why,
        )
    return table


def _records_table(records: list[Any]) -> Table:
    table = Table(title=f"{len(records)} drift records", title_justify="left", box=None)
    for name in ("CALL", "CHANGE", "COUNT", "FIRST SEEN", "LAST SEEN"):
        table.add_column(name)
    for r in sorted(records, key=lambda r: (r.connector, r.operation, r.change, r.path)):
        table.add_row(
            f"{r.connector}.{r.operation}",
            r.describe(),
            str(r.count),
            _stamp(r.first_seen),
            _stamp(r.last_seen),
        )
    return table


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
