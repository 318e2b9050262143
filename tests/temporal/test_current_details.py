"""What a person reads about a paused workflow: its Current Details (the Web UI's User
Metadata tab, served by the ``__temporal_workflow_metadata`` query) and the worker's log.

Current Details use human durations, render "Tried" as a markdown list, and show the last
rejected decision signal (with who sent it) until a valid decision arrives. The worker log has
one line per healing step and one per pause (with the Web UI link), and no tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

import pytest
from pydantic import SecretStr
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle
from temporalio.worker import Replayer

from healing import BackoffPolicy, HealingConfig, HealingPlugin
from healing.client import decide
from healing.names import DECISION_SIGNAL
from tests.temporal.harness import Harness, Scripted, fail, plugin
from tests.temporal.wf import CallWorkflow, TwoCallsWorkflow
from tests.unit.test_call_integration import RecordingServer

METADATA_QUERY = "__temporal_workflow_metadata"
REJECTED = "**Last decision rejected:**"
RAW_SECONDS = re.compile(r"\b\d{3,}(\.\d+)?\s?s\b")
"""Three or more digits of seconds ("604800s", "120s"): a person should not have to divide."""
TRIED_ITEM = re.compile(r"- \d\d:\d\d:\d\d UTC · ")
FAST = HealingConfig(backoff=BackoffPolicy(initial_s=0.2, max_s=1.0))


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    meta = await handle.query(METADATA_QUERY, result_type=WorkflowMetadata)
    return meta.current_details


async def test_current_details_are_readable_and_show_a_rejected_signal_until_a_valid_one(
    harness: Harness,
) -> None:
    # Two 503s healed by retries, a 404 that escalates; after "retry", another 404.
    acts = Scripted([fail(503), fail(503), fail(404), fail(404)], then=None)
    async with harness.worker(acts.activity, plugin=plugin(FAST)):
        handle = await harness.start()
        first = (await harness.escalated(handle)).open_escalations[0]
        details = await current_details(handle)
        assert details.startswith("## Needs a decision: NOT_FOUND"), details
        assert "without a decision in 7d, **abort** applies" in details
        assert not RAW_SECONDS.search(details), details
        # "Tried" is a list: a blank line before it, one item per line, time first.
        assert "\nTried:\n\n- " in details, details
        items = [
            line for line in details.splitlines() if re.match(r"- \d\d:\d\d:\d\d UTC · ", line)
        ]
        assert len(items) == len(first.attempts) >= 1, details
        assert "· NOT_FOUND · escalate · **failed**: 3 call(s) in " in items[-1], items
        assert "(NOT_FOUND x1, SERVICE_DOWN x2); NOT_FOUND is not retryable" in items[-1]
        assert REJECTED not in details

        # An invalid signal: today's only answer was "Workflow signaled." in the Web UI.
        await handle.signal(DECISION_SIGNAL, {"option": "reroute", "decided_by": "alice"})
        details = await current_details(handle)
        first_line = details.splitlines()[0]
        assert first_line.startswith(
            f"{REJECTED} option 'reroute' is not offered for NOT_FOUND; choose one of retry"
        ), details
        assert "sent by alice at " in first_line
        assert "## Needs a decision: NOT_FOUND" in details  # the escalation is still shown
        # A body that does not parse is shown too; the latest rejection replaces the last.
        await handle.signal(DECISION_SIGNAL, "garbage")
        details = await current_details(handle)
        assert details.count(REJECTED) == 1 and "invalid escalation decision" in details
        assert "sent by unknown" in details

        # A valid decision clears it: the retry fails again and a new escalation opens.
        await decide(harness.client, handle.id, "retry", via="signal", decided_by="bob")
        await harness.wait_for(
            handle,
            lambda s: (
                bool(s.open_escalations)
                and s.open_escalations[0].escalation_id != first.escalation_id
            ),
            "the second escalation",
        )
        details = await current_details(handle)
        assert details.startswith("## Needs a decision: NOT_FOUND") and REJECTED not in details
        assert "· decision · **decided**: retry by bob\n" in details, details
        await decide(harness.client, handle.id, "skip")
        assert (await handle.result())["skipped"] is True
        assert (await current_details(handle)).startswith("Healing: ")

    # Recording a rejection writes nothing to history: the run replays as it ran.
    replayer = Replayer(workflows=[CallWorkflow, TwoCallsWorkflow], plugins=[HealingPlugin(FAST)])
    await replayer.replay_workflow(await handle.fetch_history())


@pytest.mark.parametrize("webhook", [False, True], ids=["log-notifier", "webhook"])
async def test_the_worker_logs_one_line_per_healing_step_and_per_pause(
    harness: Harness, caplog: pytest.LogCaptureFixture, webhook: bool
) -> None:
    acts = Scripted([fail(503), fail(503), fail(404)], then=None)
    async with contextlib.AsyncExitStack() as stack:
        config = FAST
        if webhook:  # the notifier posts (and logs nothing): the workflow side logs the pause
            hook = await stack.enter_async_context(RecordingServer())
            config = FAST.model_copy(update={"notify_webhook": SecretStr(f"{hook.url}/hook")})
        with caplog.at_level(logging.INFO):
            async with harness.worker(acts.activity, plugin=plugin(config)):
                handle = await harness.start()
                await harness.escalated(handle)
                await decide(harness.client, handle.id, "skip")
                await handle.result()
        if webhook:
            assert [seen.path for seen in hook.seen] == ["/hook"]
    ours = [r for r in caplog.records if r.name.startswith(("temporalio", "healing"))]
    messages = [r.getMessage() for r in ours]
    assert not [r for r in ours if r.exc_info], messages
    assert "Traceback" not in caplog.text
    steps = [m for m in messages if m.startswith("healing crm.get_contact: ")]
    assert len(steps) == 3, messages  # one per failed attempt
    assert steps[0].startswith("healing crm.get_contact: SERVICE_DOWN (HTTP 503), retry in ")
    assert "(attempt 1, workflow " in steps[0] and "(attempt 2, workflow " in steps[1]
    assert steps[2].startswith(
        "healing crm.get_contact: NOT_FOUND (HTTP 404), handed to the workflow: "
    )
    link = f"http://localhost:8233/namespaces/{harness.client.namespace}/workflows/{handle.id}"
    pauses = [m for m in messages if "paused" in m and handle.id in m]
    assert len(pauses) == 1 and link in pauses[0], messages
    if webhook:
        assert pauses[0] == (
            f"healing paused workflow {handle.id}: crm.get_contact NOT_FOUND (HTTP 404) needs a "
            f"decision (retry, edit_and_retry, skip, abort; abort in 7d): {link}"
        )
