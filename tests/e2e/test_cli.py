"""The ``healing`` command: argument errors in-process, decisions against a real dev server.

The real tests run a healing worker in this process (IntegrationWorkflow over a chaos CRM whose
``/contacts/missing-*`` always answer 404 and ``/contacts/flaky-*`` answer 404 once), then drive
the paused workflows with the ``healing`` console script and the ``temporal`` CLI as
subprocesses, exactly as a user would.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from healing.cli import _console, _escalations_table, build_parser, main
from healing.client import PausedWorkflow, _query_status, decide
from healing.config import BackoffPolicy, HealingConfig
from healing.devserver import DevServer, find_free_port, find_temporal_cli
from healing.errors import WorkflowClosed
from healing.plugin import HealingPlugin
from healing.runner import build_worker, connect
from healing.store import connect_store
from healing.testing import ChaosAPI, FaultPlan, FaultRule, StatusFault
from healing.types import ErrorPattern, ErrorType, EscalationBrief, HealingEvent
from tests.e2e.helpers import (
    crm_catalog,
    get_contact,
    healing,
    healing_command,
    one_line,
    run,
    wait_until_awaiting,
)

NOT_FOUND = StatusFault(status=404, vendor="hubspot")

# -- argument handling, in process ----------------------------------------------------------


def test_bad_patch_json_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decide", "wf-1", "edit_and_retry", "--patch", "{not json"]) == 2
    err = capsys.readouterr().err
    assert "argument --patch: not valid JSON" in err
    assert "Traceback" not in err


def test_patch_must_be_an_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decide", "wf-1", "edit_and_retry", "--patch", "[1, 2]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err


def test_unknown_option_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decide", "wf-1", "explode"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'explode'" in err
    assert "edit_and_retry" in err


def test_missing_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"healing {importlib.metadata.version('temporal-healing')}"
    )


async def test_version_from_the_console_script() -> None:
    code, out, err = await healing("--version")
    assert code == 0, err
    assert out.strip() == f"healing {importlib.metadata.version('temporal-healing')}"


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.extend(_parsers(child))
    return found


def test_every_option_has_help_and_no_help_shows_markup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) > 10
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{parser.prog}: {action.dest} has no help"
        parser.print_help()
        text = capsys.readouterr().out
        assert "``" not in text, f"{parser.prog} --help shows RST markup"
        assert ":func:" not in text and ":class:" not in text


def test_decide_takes_a_workflow_or_a_query(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decide", "--query", 'TaskQueue = "q"']) == 2
    assert "required: OPTION" in capsys.readouterr().err
    assert main(["decide", "wf-1", "retry", "--query", 'TaskQueue = "q"']) == 2
    assert "either WORKFLOW_ID or --query" in capsys.readouterr().err
    assert main(["decide", "--query", "x", "retry", "--escalation-id", "e"]) == 2
    assert "does not go with --query" in capsys.readouterr().err


@pytest.mark.parametrize("rows", [3, 300])
def test_escalations_table_keeps_every_id_whole(rows: int) -> None:
    """Small listings use rich's Table, long ones the same columns laid out by hand."""
    now = datetime.now(UTC)
    found = [
        PausedWorkflow(
            f"order-sync-{i:04d}-{uuid.uuid4().hex}",
            None,
            "IntegrationWorkflow",
            "integrations",
            now,
            EscalationBrief(
                escalation_id=uuid.uuid4().hex,
                workflow_id=f"order-sync-{i:04d}",
                error_type=ErrorType.NOT_FOUND,
                connector="crm",
                operation="get_contact",
                opened_at=now - timedelta(minutes=5),
                timeout_at=now + timedelta(days=7),
                options=["retry", "skip", "abort"],
                default_option="abort",
                explanation="The call `crm.get_contact` got HTTP 404 " + "and more words " * 20,
            ),
        )
        for i in range(rows)
    ]
    out = io.StringIO()
    console = _console(out)
    console.print(_escalations_table(found, "t", 160), soft_wrap=True)
    lines = out.getvalue().splitlines()
    assert lines[1].split() == [
        "WORKFLOW", "ERROR", "CALL", "OPENED", "DEFAULT", "OPTIONS", "EXPLANATION"
    ]  # fmt: skip
    assert len(lines) == rows + 2
    for wf, line in zip(found, lines[2:], strict=True):
        assert len(line.rstrip()) <= 160
        cells = line.split()
        assert cells[:6] == [wf.workflow_id, "NOT_FOUND", "crm.get_contact", "5m", "ago", "abort"]
        assert (
            "retry,skip,abort" in line and "HTTP 404" in line and line.rstrip().endswith("\u2026")
        )


class _Handle:
    """A workflow handle whose query raises ``error`` (or answers ``answer``)."""

    def __init__(self, error: Exception | None = None, answer: object = None) -> None:
        self.error, self.answer = error, answer

    async def query(self, name: str, **_: object) -> object:
        if self.error is not None:
            raise self.error
        return self.answer


@pytest.mark.parametrize(
    ("error", "answered"),
    [
        (RPCError("Timeout expired", RPCStatusCode.CANCELLED, b""), False),
        (RPCError("deadline", RPCStatusCode.DEADLINE_EXCEEDED, b""), False),
        (
            RPCError(
                "no poller seen for task queue recently, worker may be down",
                RPCStatusCode.FAILED_PRECONDITION,
                b"",
            ),
            False,
        ),
        (RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b""), False),
        (WorkflowQueryFailedError("unknown queryType healing_status"), True),
    ],
)
async def test_only_a_worker_answer_counts_as_a_worker(error: Exception, answered: bool) -> None:
    """The server's own errors (it says "worker may be down" a while after the last poll)
    must never pass for a live worker: decide would then send an update that waits."""
    got, status, _ = await _query_status(_Handle(error), 1.0)  # type: ignore[arg-type]
    assert (got, status) == (answered, None)
    got, status, problem = await _query_status(_Handle(answer={"state": "idle"}), 1.0)  # type: ignore[arg-type]
    assert got and status is not None and status.state == "idle" and problem is None


def test_global_options_go_before_or_after_the_command() -> None:
    parser = build_parser()
    after = parser.parse_args(["status", "wf", "--address", "h:1", "--namespace", "ns"])
    before = parser.parse_args(["--address", "h:2", "status", "wf"])
    assert (after.address, after.namespace) == ("h:1", "ns")
    assert (before.address, before.namespace) == ("h:2", "default")


def test_address_and_namespace_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "prod")
    args = build_parser().parse_args(["escalations"])
    assert (args.address, args.namespace) == ("temporal.internal:7233", "prod")


def test_unreachable_server_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{find_free_port()}"
    assert main(["status", "wf-1", "--address", address]) == 1
    err = capsys.readouterr().err
    assert f"cannot connect to Temporal at {address}" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("address", ["not a host:xx", "localhost:notaport", "http://h:7233"])
async def test_unparsable_temporal_address_is_one_line(address: str) -> None:
    code, _, err = await run(
        *healing_command(), "status", "wf-1", env={"TEMPORAL_ADDRESS": address}
    )
    assert code == 2, err
    assert "Traceback" not in err
    assert f"TEMPORAL_ADDRESS={address!r}" in one_line(err)


def test_unparsable_address_flag_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decide", "wf-1", "retry", "--address", "localhost:notaport"]) == 2
    assert "--address='localhost:notaport'" in one_line(capsys.readouterr().err)


def test_broken_config_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEALING_BACKOFF__MAX_S", "soon")
    assert main(["escalations", "--address", f"127.0.0.1:{find_free_port()}"]) == 1
    err = capsys.readouterr().err
    assert "backoff.max_s" in err
    assert "Traceback" not in err


def test_patterns_and_events_read_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/healing.db"
    monkeypatch.setenv("HEALING_STORE", url)
    assert main(["patterns"]) == 0
    assert "no error patterns learned yet" in capsys.readouterr().out

    async def seed() -> None:
        store = await connect_store(url)
        pattern = ErrorPattern(
            fingerprint="fp-dead-crm",
            connector="crm",
            operation="get_contact",
            error_type=ErrorType.SERVICE_DOWN,
            status_code=503,
        )
        for healed in (False, False, True):
            await store.record_outcome(pattern, "retry_then_reroute", healed=healed, heal_s=2.0)
        await store.record_events(
            [
                HealingEvent(
                    at=datetime.now(UTC),
                    kind="gave_up",
                    workflow_id="wf-seeded",
                    connector="crm",
                    operation="get_contact",
                    error_type=ErrorType.SERVICE_DOWN,
                    fingerprint="fp-dead-crm",
                    outcome="the retry budget for SERVICE_DOWN is spent",
                )
            ]
        )
        await store.close()

    asyncio.run(seed())
    assert main(["patterns"]) == 0
    out = capsys.readouterr().out
    assert "fp-dead-crm" in out and "crm.get_contact" in out and "retry_then_reroute 1/3" in out
    assert main(["patterns", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["seen"] == 3 and listed["strategies"][0]["tries"] == 3
    assert main(["events", "--workflow-id", "wf-seeded"]) == 0
    assert "retry budget for SERVICE_DOWN is spent" in capsys.readouterr().out
    assert main(["events", "--workflow-id", "nobody"]) == 0
    assert "no healing events match" in capsys.readouterr().out


def test_credentials_never_print_or_store_tokens_in_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "healing.db"
    access, refresh = f"at-{uuid.uuid4().hex}", f"rt-{uuid.uuid4().hex}"
    old_key = Fernet.generate_key().decode()
    monkeypatch.setenv("HEALING_SECRET_KEY", old_key)
    monkeypatch.setenv("HEALING_STORE", f"sqlite:///{db}")
    monkeypatch.setenv("CRM_AT", access)
    monkeypatch.setenv("CRM_RT", refresh)
    set_args = ["credentials", "set", "crm", "--access-token-env", "CRM_AT"]
    assert main([*set_args, "--refresh-token-env", "CRM_RT", "--expires-in", "3600"]) == 0
    assert main(["credentials", "show", "crm"]) == 0
    out = capsys.readouterr().out
    assert "version        1" in out and "connection     default" in out
    assert "Bearer" in out
    assert "refresh token  stored" in out
    assert access not in out and refresh not in out
    blob = db.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("healing.db-*"))
    assert access.encode() not in blob and refresh.encode() not in blob
    assert main(set_args) == 0  # a second write bumps the version
    assert main(["credentials", "show", "crm"]) == 0
    assert "version        2" in capsys.readouterr().out
    # Another account of the same connector is another row.
    assert main([*set_args, "--connection", "acme"]) == 0
    assert main(["credentials", "show", "crm", "--connection", "acme"]) == 0
    assert "version        1" in capsys.readouterr().out
    # Key rotation: the new key first, the old one still opening the rows, then alone.
    new_key = Fernet.generate_key().decode()
    monkeypatch.setenv("HEALING_SECRET_KEY", f"{new_key},{old_key}")
    assert main(["credentials", "rotate-key"]) == 0
    assert "re-encrypted 2 credential(s)" in capsys.readouterr().out
    monkeypatch.setenv("HEALING_SECRET_KEY", new_key)
    assert main(["credentials", "show", "crm", "--connection", "acme"]) == 0
    assert main(["credentials", "delete", "crm", "--connection", "acme"]) == 0
    capsys.readouterr()
    assert main(["credentials", "show", "crm", "--connection", "acme"]) == 1
    assert "no credential stored for 'crm' connection 'acme'" in capsys.readouterr().err
    monkeypatch.setenv("HEALING_SECRET_KEY", old_key)  # the old key alone no longer opens them
    assert main(["credentials", "show", "crm"]) == 1
    assert "HEALING_SECRET_KEY does not match" in capsys.readouterr().err


def test_credentials_authorize_needs_an_authorize_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = tmp_path / "connectors.toml"
    catalog.write_text(
        '[connectors.crm]\nbase_url = "http://127.0.0.1:9"\n[connectors.crm.auth]\n'
        'kind = "oauth2"\ntoken_url = "http://127.0.0.1:9/token"\nclient_id = "app"\n'
    )
    monkeypatch.setenv("HEALING_SECRET_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("HEALING_STORE", f"sqlite:///{tmp_path}/healing.db")
    monkeypatch.setenv("HEALING_CONNECTORS", str(catalog))
    assert main(["credentials", "authorize", "crm", "--no-decide"]) == 1
    assert "no authorize_url" in capsys.readouterr().err
    assert main(["credentials", "authorize", "nope", "--no-decide"]) == 1
    assert "'nope' has no oauth2 [auth]" in capsys.readouterr().err


def test_credentials_need_the_secret_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HEALING_SECRET_KEY", raising=False)
    monkeypatch.setenv("HEALING_STORE", f"sqlite:///{tmp_path}/healing.db")
    monkeypatch.setenv("CRM_AT", "x")
    assert main(["credentials", "set", "crm", "--access-token-env", "CRM_AT"]) == 1
    assert "HEALING_SECRET_KEY is not set" in capsys.readouterr().err


def test_credentials_name_an_unset_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEALING_SECRET_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("HEALING_STORE", f"sqlite:///{tmp_path}/healing.db")
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    assert main(["credentials", "set", "crm", "--access-token-env", "NO_SUCH_TOKEN_VAR"]) == 1
    assert "NO_SUCH_TOKEN_VAR" in capsys.readouterr().err


# -- against a real dev server ----------------------------------------------------------------


@dataclass
class Stack:
    server: DevServer
    client: Client
    task_queue: str
    chaos: ChaosAPI

    @property
    def address(self) -> str:
        return self.server.address

    async def start(self, contact_id: str) -> str:
        workflow_id = f"e2e-{contact_id}-{uuid.uuid4().hex[:8]}"
        await self.client.start_workflow(
            "IntegrationWorkflow",
            get_contact(contact_id),
            id=workflow_id,
            task_queue=self.task_queue,
        )
        return workflow_id


@pytest.fixture(scope="module")
async def stack(dev_server: DevServer) -> AsyncIterator[Stack]:
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
        task_queue = f"e2e-cli-{uuid.uuid4()}"
        worker, acts = build_worker(client, config, catalog, task_queue=task_queue)
        async with worker:
            yield Stack(dev_server, client, task_queue, chaos)
        await acts.aclose()


async def test_status_escalations_and_decide_skip_from_the_command_line(stack: Stack) -> None:
    wf = await stack.start("missing-1")
    await wait_until_awaiting(stack.client, wf)

    code, out, err = await healing("status", wf, "--json", "--address", stack.address)
    assert code == 0, err
    status = json.loads(out)
    assert status["run_status"] == "RUNNING"
    assert status["healing"]["state"] == "awaiting_decision"
    (esc,) = status["healing"]["open_escalations"]
    assert esc["error_type"] == "NOT_FOUND"
    assert esc["connector"] == "crm"
    assert "skip" in [o["option"] for o in esc["options"]]

    code, out, err = await healing("status", wf, "--address", stack.address)
    assert code == 0, err
    assert "awaiting_decision" in out and "NOT_FOUND" in out and "skip" in out
    assert "HTTP 404" in out  # the explanation is shown

    listed: list[dict[str, object]] = []
    deadline = time.monotonic() + 20  # visibility (the HealingStatus attribute) lags a little
    while not any(e["workflow_id"] == wf for e in listed) and time.monotonic() < deadline:
        code, out, err = await healing("escalations", "--json", "--address", stack.address)
        assert code == 0, err
        listed = json.loads(out)
        await asyncio.sleep(0.3)
    mine = [e for e in listed if e["workflow_id"] == wf]
    assert mine and mine[0]["error_type"] == "NOT_FOUND"
    code, out, err = await healing("escalations", "--address", stack.address)
    assert code == 0, err
    assert wf in out and "NOT_FOUND" in out

    code, out, err = await healing("decide", wf, "wait", "--address", stack.address)
    assert code == 2  # not offered for NOT_FOUND: the workflow's validator says why
    assert "not offered for NOT_FOUND" in err
    assert "Traceback" not in err

    code, out, err = await healing(
        "decide", wf, "skip", "--note", "gone", "--address", stack.address
    )
    assert code == 0, err
    assert "skip accepted" in out
    result = await asyncio.wait_for(stack.client.get_workflow_handle(wf).result(), 30)
    assert result["steps"][0]["status"] == "skipped"
    assert stack.chaos.stats().calls_to("GET", "/contacts/missing-1") == 1


async def test_temporal_cli_signal_resumes_with_retry(stack: Stack) -> None:
    wf = await stack.start("flaky-1")
    await wait_until_awaiting(stack.client, wf)
    signal = [find_temporal_cli(), "workflow", "signal", "--workflow-id", wf]
    signal += ["--name", "escalation_decision", "--input", '{"option": "retry"}']
    code, out, err = await run(*signal, "--address", stack.address)
    assert code == 0, err
    result = await asyncio.wait_for(stack.client.get_workflow_handle(wf).result(), 30)
    assert result["steps"][0]["status"] == "ok"
    assert result["steps"][0]["result"]["id"] == "flaky-1"
    assert stack.chaos.stats().calls_to("GET", "/contacts/flaky-1") == 2

    code, out, err = await healing("status", wf, "--json", "--address", stack.address)
    assert code == 0, err
    assert json.loads(out)["run_status"] == "COMPLETED"


async def test_signal_flag_sends_a_signal(stack: Stack) -> None:
    wf = await stack.start("missing-2")
    await wait_until_awaiting(stack.client, wf)
    code, out, err = await healing("decide", wf, "abort", "--signal", "--address", stack.address)
    assert code == 0, err
    assert "as a signal" in out
    with pytest.raises(Exception, match="Workflow execution failed"):
        await asyncio.wait_for(stack.client.get_workflow_handle(wf).result(), 30)


async def test_unknown_workflow_is_named(stack: Stack) -> None:
    code, _, err = await healing("status", "no-such-workflow", "--address", stack.address)
    assert code == 1
    assert "workflow 'no-such-workflow' not found in namespace 'default'" in err
    assert "Traceback" not in err
    code, _, err = await healing("decide", "no-such-workflow", "skip", "--address", stack.address)
    assert code == 1
    assert "not found" in err and "Traceback" not in err


async def test_decide_on_a_closed_workflow_says_it_completed(stack: Stack) -> None:
    done = await stack.start("ok-1")
    await asyncio.wait_for(stack.client.get_workflow_handle(done).result(), 30)
    failed = await stack.start("missing-3")
    await wait_until_awaiting(stack.client, failed)
    await stack.client.get_workflow_handle(failed).terminate("test")
    for wf, status in ((done, "COMPLETED"), (failed, "TERMINATED")):
        for extra in ((), ("--signal",)):
            code, _, err = await healing("decide", wf, "retry", *extra, "--address", stack.address)
            assert code == 1, err
            assert "Traceback" not in err
            assert f"workflow {wf} already completed ({status})" in one_line(err)
        with pytest.raises(WorkflowClosed, match=rf"already completed \({status}\)"):
            await decide(stack.client, wf, "retry")


async def test_setup_registers_search_attributes_idempotently(stack: Stack) -> None:
    code, out, err = await healing("setup", "--address", stack.address)
    assert code == 0, err
    assert "already registered" in out
