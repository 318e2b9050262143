"""Escalations and human decisions, end to end on the time-skipping server.

Each decision option must resume the paused call as its escalation promised, through the
``decide_escalation`` update and the ``escalation_decision`` signal alike; invalid decisions
are rejected (update) or ignored (signal) and leave the workflow paused; the handlers exist on
every workflow; and every history replays deterministically.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Replayer

from healing import BackoffPolicy, BreakerPolicy, DecisionError, HealingConfig, HealingPlugin
from healing.client import decide
from healing.names import ABORTED_TYPE
from healing.names import DECISION_SIGNAL as SIGNAL
from healing.names import DECISION_UPDATE as UPDATE
from healing.names import STATUS_QUERY as QUERY
from tests.temporal.harness import Harness, Scripted, fail, plugin
from tests.temporal.wf import CallWorkflow, TwoCallsWorkflow

Via = Literal["update", "signal"]
VIAS: list[Via] = ["update", "signal"]
ACCEPTED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
NOT_FOUND = fail(404, {"message": "no contact 42"})
SLACK_INVALID_AUTH = {"ok": False, "error": "invalid_auth"}
HUBSPOT_DAILY = fail(
    429,
    {"status": "error", "message": "You have reached your daily limit.", "policyName": "DAILY"},
    {"x-hubspot-ratelimit-max": "100", "x-hubspot-ratelimit-remaining": "0"},
)


async def _decide(h: Harness, handle: WorkflowHandle[Any, Any], via: Via, **kwargs: Any) -> None:
    option = kwargs.pop("option")
    out = await decide(h.client, handle.id, option, via=via, decided_by="test", **kwargs)
    if via == "update":
        assert out["accepted"] is True and out["option"] == option


# --- 4. each option resumes as promised, via update and via signal ---------------------------


@pytest.mark.parametrize("via", VIAS)
async def test_retry_runs_the_call_again(harness: Harness, via: Via) -> None:
    acts = Scripted([NOT_FOUND])
    async with harness.worker(acts.activity):
        handle = await harness.start()
        st = await harness.escalated(handle)
        assert acts.count == 1
        await _decide(harness, handle, via, option="retry")
        out = await handle.result()
        st = await harness.status(handle)
    assert acts.count == 2
    assert out["result"]["ok"] is True
    assert st.state == "resolved" and st.open_escalations == []
    assert any(a.outcome == "decided" and "retry by test" in a.detail for a in st.history)
    assert await harness.search_attributes(handle) == ("resolved", "NOT_FOUND")


async def test_retry_gets_a_fresh_budget(harness: Harness) -> None:
    # 500 forever: 3 calls, escalate; retry -> 3 more calls (fresh budget), escalate again.
    # (Breaker off: its wall clock does not move while the server skips time.)
    acts = Scripted(then=fail(500))
    cfg = HealingConfig(breaker=BreakerPolicy(enabled=False))
    async with harness.worker(acts.activity, plugin=plugin(cfg)):
        handle = await harness.start()
        first = (await harness.escalated(handle)).open_escalation
        assert first is not None and acts.count == 3
        await decide(harness.client, handle.id, "retry")
        st = await harness.wait_for(
            handle,
            lambda s: (
                bool(s.open_escalations)
                and s.open_escalations[0].escalation_id != first.escalation_id
            ),
            "a second escalation",
        )
        assert acts.count == 6
        assert st.open_escalation is not None
        assert st.open_escalation.error_type == "INTERNAL_ERROR"
        await decide(harness.client, handle.id, "skip")
        assert (await handle.result())["skipped"] is True


@pytest.mark.parametrize("via", VIAS)
async def test_skip_returns_none(harness: Harness, via: Via) -> None:
    acts = Scripted(then=NOT_FOUND)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        await harness.escalated(handle)
        await _decide(harness, handle, via, option="skip")
        out = await handle.result()
        st = await harness.status(handle)
    assert out == {"result": None, "skipped": True}
    assert acts.count == 1
    assert st.open_escalations == [] and st.state == "resolved"


@pytest.mark.parametrize("via", VIAS)
async def test_abort_fails_with_the_explanation(harness: Harness, via: Via) -> None:
    acts = Scripted(then=NOT_FOUND)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        esc = (await harness.escalated(handle)).open_escalation
        assert esc is not None
        await _decide(harness, handle, via, option="abort")
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == ABORTED_TYPE == "HealingAborted"
    assert cause.non_retryable
    assert cause.message == esc.explanation
    assert "NOT_FOUND" in cause.message and "crm.get_contact" in cause.message
    assert acts.count == 1
    assert await harness.search_attributes(handle) == ("failed", "NOT_FOUND")


@pytest.mark.parametrize("via", VIAS)
async def test_edit_and_retry_patches_the_input(harness: Harness, via: Via) -> None:
    acts = Scripted(then=lambda c: NOT_FOUND if c.arg["id"] == "42" else {"id": c.arg["id"]})
    async with harness.worker(acts.activity):
        handle = await harness.start({"input": {"id": "42", "fields": {"a": 1, "b": 2}}})
        await harness.escalated(handle)
        patch = {"id": "43", "fields": {"b": 3}}
        await _decide(harness, handle, via, option="edit_and_retry", input_patch=patch)
        out = await handle.result()
    assert out["result"] == {"id": "43"}
    assert [c.arg for c in acts.calls] == [
        {"id": "42", "fields": {"a": 1, "b": 2}},
        {"id": "43", "fields": {"a": 1, "b": 3}},  # deep-merged
    ]


@pytest.mark.parametrize("via", VIAS)
async def test_reroute_sends_the_call_to_the_alternative(harness: Harness, via: Via) -> None:
    acts = Scripted(then=lambda c: HUBSPOT_DAILY if c.connector == "crm" else None)
    async with harness.worker(acts.activity, plugin=plugin(alternatives={"crm": ["crm_eu"]})):
        handle = await harness.start()
        esc = (await harness.escalated(handle)).open_escalation
        assert esc is not None and esc.alternatives == ["crm_eu"]
        assert "reroute" in [o.option for o in esc.options]
        assert acts.count == 1  # a spent daily quota does not reroute by itself
        await _decide(harness, handle, via, option="reroute", alternative="crm_eu")
        out = await handle.result()
    assert [c.connector for c in acts.calls] == ["crm", "crm_eu"]
    assert out["result"]["connector"] == "crm_eu"


@pytest.mark.parametrize("via", VIAS)
async def test_reauthorized_retries_after_a_human_fixed_the_credentials(
    harness: Harness, via: Via
) -> None:
    acts = Scripted([SLACK_INVALID_AUTH])
    async with harness.worker(acts.activity):
        handle = await harness.start()
        esc = (await harness.escalated(handle)).open_escalation
        assert esc is not None and esc.error_type == "AUTH_INVALID"
        assert acts.count == 1
        await _decide(harness, handle, via, option="reauthorized")
        out = await handle.result()
    assert out["result"]["ok"] is True
    assert acts.count == 2


@pytest.mark.parametrize("via", VIAS)
async def test_wait_retries_after_wait_s_of_workflow_time(harness: Harness, via: Via) -> None:
    acts = Scripted([fail(429, headers={"Retry-After": "600"})])
    async with harness.worker(acts.activity):
        handle = await harness.start()
        esc = (await harness.escalated(handle)).open_escalation
        assert esc is not None and "wait" in [o.option for o in esc.options]
        await _decide(harness, handle, via, option="wait", wait_s=30)
        out = await handle.result()
    assert out["result"]["ok"] is True
    assert acts.count == 2
    gap = acts.gaps()[0]
    assert 30 <= gap < 600, gap  # wait_s wins over the service's Retry-After
    timers = [
        e.timer_started_event_attributes.start_to_fire_timeout.ToSeconds()
        for e in await harness.events(handle)
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]
    assert 30 in timers


# --- 5. escalation timeout applies the configured default -----------------------------------


async def test_escalation_timeout_applies_default_skip(harness: Harness) -> None:
    acts = Scripted(then=NOT_FOUND)
    cfg = HealingConfig(escalation_timeout_s=60, escalation_default="skip")
    async with harness.worker(acts.activity, plugin=plugin(cfg)):
        handle = await harness.start()
        esc = (await harness.escalated(handle)).open_escalation
        assert esc is not None and esc.default_option == "skip" and esc.timeout_s == 60
        out = await handle.result()  # time skips to the escalation timer
        st = await harness.status(handle)
    assert out == {"result": None, "skipped": True}
    assert acts.count == 1
    assert any("skip by timeout" in a.detail for a in st.history)
    assert await harness.count_events(handle, ACCEPTED) == 0
    signals = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    assert await harness.count_events(handle, signals) == 0


async def test_escalation_timeout_default_is_abort(harness: Harness) -> None:
    acts = Scripted(then=NOT_FOUND)
    async with harness.worker(acts.activity, plugin=plugin(HealingConfig(escalation_timeout_s=60))):
        handle = await harness.start()
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    assert isinstance(info.value.cause, ApplicationError)
    assert info.value.cause.type == "HealingAborted"


# --- 6. invalid decisions -------------------------------------------------------------------


async def test_invalid_updates_are_rejected_and_nothing_is_written(harness: Harness) -> None:
    acts = Scripted([NOT_FOUND])
    async with harness.worker(acts.activity):
        handle = await harness.start()
        esc = (await harness.escalated(handle)).open_escalation
        assert esc is not None

        async def rejected(call: Callable[[], Awaitable[Any]], *words: str) -> None:
            with pytest.raises(DecisionError) as info:
                await call()
            for word in words:
                assert word in str(info.value), (word, str(info.value))

        c, wid = harness.client, handle.id
        await rejected(lambda: decide(c, wid, "reroute"), "'reroute' is not offered", "NOT_FOUND")
        await rejected(
            lambda: decide(c, wid, "reroute", alternative="crm_eu"), "'reroute' is not offered"
        )
        await rejected(
            lambda: decide(c, wid, "edit_and_retry"), "edit_and_retry needs", "input_patch"
        )
        await rejected(lambda: decide(c, wid, "retry", escalation_id="nope"), "'nope'")
        # Garbage straight through the update (the client helper would refuse to build it).
        for garbage, field in (
            ({"option": "explode"}, "option: Input should be 'retry'"),
            ({"opt": "retry"}, "opt: Extra inputs are not permitted"),
            ("retry", "decision: Input should be a valid dictionary"),
        ):
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await handle.execute_update(UPDATE, garbage)
            message = str(getattr(info.value.cause, "message", info.value.cause))
            assert message.startswith("invalid escalation decision (") and field in message

        st = await harness.status(handle)
        assert [e.escalation_id for e in st.open_escalations] == [esc.escalation_id]
        assert st.state == "awaiting_decision"
        assert await harness.count_events(handle, ACCEPTED) == 0
        assert acts.count == 1

        await decide(c, wid, "retry", escalation_id=esc.escalation_id)
        assert (await handle.result())["result"]["ok"] is True
    assert await harness.count_events(handle, ACCEPTED) == 1


async def test_decide_with_unknown_option_raises_decision_error(harness: Harness) -> None:
    acts = Scripted([NOT_FOUND])
    async with harness.worker(acts.activity):
        handle = await harness.start()
        await harness.escalated(handle)
        with pytest.raises(DecisionError, match="explode"):
            await decide(harness.client, handle.id, "explode")  # type: ignore[arg-type]


async def test_invalid_signals_are_logged_and_ignored(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    acts = Scripted([NOT_FOUND])
    async with harness.worker(acts.activity):
        handle = await harness.start()
        esc = (await harness.escalated(handle)).open_escalation
        assert esc is not None
        with caplog.at_level(logging.WARNING):
            for body in (
                {"option": "explode"},
                {"option": "reroute"},
                {"option": "edit_and_retry"},
                {"option": "retry", "escalation_id": "nope"},
                "garbage",
            ):
                await handle.signal(SIGNAL, body)
            await harness.env.sleep(1)
            st = await harness.status(handle)
        assert [e.escalation_id for e in st.open_escalations] == [esc.escalation_id]
        assert st.state == "awaiting_decision"
        assert acts.count == 1
        ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
        assert len(ignored) == 5, ignored
        assert any("invalid escalation decision (option:" in m for m in ignored)
        assert any("'nope'" in m for m in ignored)
        await decide(harness.client, handle.id, "skip", via="signal")
        assert (await handle.result())["skipped"] is True


# --- 7. two parallel calls escalate at once -------------------------------------------------


async def test_two_parallel_escalations_are_decided_by_id(harness: Harness) -> None:
    a = Scripted([NOT_FOUND], name="crm_a")
    b = Scripted([NOT_FOUND], name="crm_b")
    async with harness.worker(a.activity, b.activity):
        handle = await harness.start(["crm_a", "crm_b"], workflow=TwoCallsWorkflow.run)
        st = await harness.escalated(handle, 2)
        by_activity = {e.activity: e.escalation_id for e in st.open_escalations}
        assert set(by_activity) == {"crm_a", "crm_b"}
        assert st.state == "awaiting_decision"

        with pytest.raises(DecisionError) as info:
            await decide(harness.client, handle.id, "retry")
        for esc_id in by_activity.values():
            assert esc_id in str(info.value)
        assert "escalation_id" in str(info.value)

        await decide(harness.client, handle.id, "retry", escalation_id=by_activity["crm_a"])
        st = await harness.wait_for(handle, lambda s: len(s.open_escalations) == 1, "one left")
        assert st.open_escalations[0].escalation_id == by_activity["crm_b"]
        assert st.state == "awaiting_decision"  # the other call still waits
        await decide(harness.client, handle.id, "skip", escalation_id=by_activity["crm_b"])
        out = await handle.result()
    assert out[0]["ok"] is True and out[1] is None
    assert (a.count, b.count) == (2, 1)


# --- 8. cancellation while paused -----------------------------------------------------------


async def test_cancel_while_paused_ends_cancelled_cleanly(harness: Harness) -> None:
    acts = Scripted(then=NOT_FOUND)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        await harness.escalated(handle)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    assert isinstance(info.value.cause, CancelledError)
    events = await harness.events(handle)
    kinds = [e.event_type for e in events]
    assert kinds[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds
    assert acts.count == 1


# --- 11. replay -----------------------------------------------------------------------------


async def test_histories_replay_deterministically(harness: Harness) -> None:
    cfg = HealingConfig(
        escalation_timeout_s=60,
        escalation_default="skip",
        backoff=BackoffPolicy(initial_s=0.05, max_s=0.2),
    )
    alternatives = {"crm": ["crm_eu"]}
    down = Scripted(then=lambda c: fail(503) if c.connector == "crm" else None, name="down")
    lost = Scripted([NOT_FOUND, NOT_FOUND], name="lost")
    slack = Scripted([SLACK_INVALID_AUTH], name="slack")
    timeout = Scripted(then=NOT_FOUND, name="timeout")
    # Own connector: crm's breaker has seen 4 failures already, and a local activity's
    # retry wait is a real in-worker sleep.
    local = Scripted([fail(503)], name="local", connector="crm_local")
    two_a, two_b = Scripted([NOT_FOUND], name="two_a"), Scripted([NOT_FOUND], name="two_b")
    acts = [down, lost, slack, timeout, local, two_a, two_b]
    handles: list[WorkflowHandle[Any, Any]] = []
    async with harness.worker(
        *(a.activity for a in acts), plugin=plugin(cfg, alternatives=alternatives)
    ):
        # Reroute after SERVICE_DOWN, healed by server retries and the workflow side.
        handles.append(h := await harness.start({"activity": "down"}))
        await h.result()
        # Escalation, update "edit_and_retry", second escalation, signal "retry".
        handles.append(h := await harness.start({"activity": "lost", "input": {"id": "1"}}))
        first = (await harness.escalated(h)).open_escalations[0].escalation_id
        await decide(harness.client, h.id, "edit_and_retry", input_patch={"id": "2"})
        await harness.wait_for(
            h,
            lambda s: bool(s.open_escalations) and s.open_escalations[0].escalation_id != first,
            "a second escalation",
        )
        await decide(harness.client, h.id, "retry", via="signal")
        await h.result()
        # AUTH_INVALID, reauthorized via update.
        handles.append(h := await harness.start({"activity": "slack"}))
        await harness.escalated(h)
        await decide(harness.client, h.id, "reauthorized")
        await h.result()
        # Escalation timeout default.
        handles.append(h := await harness.start({"activity": "timeout"}))
        await h.result()
        # Local activity.
        handles.append(h := await harness.start({"activity": "local", "local": True}))
        await h.result()
        # Two escalations, decided by id; then one aborted workflow and one cancelled.
        handles.append(h := await harness.start(["two_a", "two_b"], workflow=TwoCallsWorkflow.run))
        st = await harness.escalated(h, 2)
        esc_id = st.open_escalations[0].escalation_id
        await decide(harness.client, h.id, "abort", escalation_id=esc_id)
        with pytest.raises(WorkflowFailureError):
            await h.result()
        handles.append(h := await harness.start({"activity": "timeout"}))
        await harness.escalated(h)
        await h.cancel()
        with pytest.raises(WorkflowFailureError):
            await h.result()

    histories = [await h.fetch_history() for h in handles]
    replayer = Replayer(
        workflows=[CallWorkflow, TwoCallsWorkflow],
        plugins=[HealingPlugin(cfg, alternatives=alternatives)],
    )
    for history in histories:
        await replayer.replay_workflow(history)  # raises on nondeterminism
    assert len(histories) == 7


async def test_replay_does_not_depend_on_the_search_attribute_check(harness: Harness) -> None:
    acts = Scripted([NOT_FOUND])
    # Upserts off, as when the namespace lacks the attributes (or the check failed).
    worker_plugin = plugin(HealingConfig(search_attributes=False))
    async with harness.worker(acts.activity, plugin=worker_plugin):
        handle = await harness.start()
        await harness.escalated(handle)
        await decide(harness.client, handle.id, "retry")
        await handle.result()
    # Later the attributes are registered (`healing setup`) and the worker restarts, or CI
    # replays production histories with the default plugin.
    replayer = Replayer(workflows=[CallWorkflow], plugins=[HealingPlugin(HealingConfig())])
    await replayer.replay_workflow(await handle.fetch_history())


# --- 12. handlers exist on every workflow ---------------------------------------------------


async def test_handlers_exist_on_a_workflow_that_never_failed(harness: Harness) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(call: Any) -> Any:
        started.set()
        await release.wait()
        return {"ok": True}

    acts = Scripted(then=slow)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        await asyncio.wait_for(started.wait(), 10)
        st = await harness.status(handle)
        assert st.state == "idle"
        assert st.attempts == 0 and st.open_escalations == [] and st.history == []
        meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        definition = meta.definition
        assert definition.type == "CallWorkflow"
        assert SIGNAL in [s.name for s in definition.signal_definitions]
        assert UPDATE in [u.name for u in definition.update_definitions]
        assert QUERY in [q.name for q in definition.query_definitions]
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await handle.execute_update(UPDATE, {"option": "retry"})
        assert "no escalation is open" in str(getattr(info.value.cause, "message", ""))
        release.set()
        assert (await handle.result())["result"]["ok"] is True
        assert (await harness.status(handle)).state == "idle"
    assert await harness.search_attributes(handle) == (None, None)
