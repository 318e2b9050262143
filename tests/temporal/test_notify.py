"""The notifier on the time-skipping server, against a real HTTP receiver on 127.0.0.1.

When a workflow pauses for a decision a human is told at once: the receiver gets a signed
JSON notification (it verifies with ``verify_signature``) carrying the explanation, options,
Web UI link and decide command; a 500 is retried and the notification still arrives; a
receiver that always fails, or never answers, neither blocks nor fails the workflow: it
pauses as before and a decision completes it. Without a webhook the notification is a log
line. Histories replay with the notifier in them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from healing import HealingConfig
from healing.client import decide
from healing.devserver import DevServer
from healing.names import NOTIFY_ACTIVITY
from healing.notify import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)
from tests.receiver import Receiver
from tests.temporal.harness import Harness, Scripted, fail, plugin
from tests.temporal.wf import CallWorkflow, TwoCallsWorkflow

SECRET = "whsec_notify_test"
NOT_FOUND = fail(404, {"message": "no contact 42"})


def webhook_config(url: str, **extra: Any) -> HealingConfig:
    return HealingConfig(
        notify_webhook=SecretStr(url),
        notify_secret=SecretStr(SECRET),
        web_ui_url="http://ui.example:8233",
        **extra,
    )


async def until(
    h: Harness, predicate: Any, what: str, *, step_s: float = 1, max_polls: int = 120
) -> None:
    """Poll in server time (the time-skipping server skips the notifier's retry backoff)."""
    for _ in range(max_polls):
        if predicate():
            return
        await h.env.sleep(step_s)
    raise AssertionError(f"timed out waiting for {what}")


def notify_events(events: Sequence[HistoryEvent]) -> dict[str, list[HistoryEvent]]:
    """The healing_notify activity's scheduled/started/completed/failed events."""
    ids = {
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == NOTIFY_ACTIVITY
    }
    kinds = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: ("started", "activity_task_started"),
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: ("completed", "activity_task_completed"),
        EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: ("failed", "activity_task_failed"),
    }
    out: dict[str, list[HistoryEvent]] = {
        k: [] for k in ("scheduled", "started", "completed", "failed")
    }
    for e in events:
        if e.event_id in ids:
            out["scheduled"].append(e)
        elif e.event_type in kinds:
            key, attrs = kinds[e.event_type]
            if getattr(e, f"{attrs}_event_attributes").scheduled_event_id in ids:
                out[key].append(e)
    return out


def workflow_task_failures(events: Sequence[HistoryEvent]) -> int:
    return sum(1 for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)


async def replays(h: Harness, handle: WorkflowHandle[Any, Any], cfg: HealingConfig) -> None:
    replayer = Replayer(workflows=[CallWorkflow, TwoCallsWorkflow], plugins=[plugin(cfg)])
    await replayer.replay_workflow(await handle.fetch_history())


async def test_receiver_gets_a_signed_notification_retried_after_a_500(harness: Harness) -> None:
    acts = Scripted([NOT_FOUND])
    async with Receiver([500], then=200) as rx:
        cfg = webhook_config(rx.url)
        async with harness.worker(acts.activity, plugin=plugin(cfg)):
            handle = await harness.start()
            st = await harness.escalated(handle)
            await until(harness, lambda: len(rx.requests) >= 2, "the retried notification")

            async def delivered() -> bool:
                return bool(notify_events(await harness.events(handle))["completed"])

            for _ in range(30):  # the 200 reached the receiver; its completion is next
                if await delivered():
                    break
                await asyncio.sleep(0.1)
            assert await delivered()
            assert (await harness.status(handle)).state == "awaiting_decision"
            await decide(harness.client, handle.id, "retry", decided_by="test")
            out = await handle.result()
    assert out["result"]["ok"] is True
    assert rx.statuses() == [500, 200]
    first, second = rx.requests
    esc = st.open_escalation
    assert esc is not None
    for req in rx.requests:
        assert req.path == "/hooks/healing"
        assert verify_signature(
            SECRET,
            req.headers[TIMESTAMP_HEADER.lower()],
            req.body,
            req.headers[SIGNATURE_HEADER.lower()],
        ), req.headers
        assert not verify_signature(
            "wrong",
            req.headers[TIMESTAMP_HEADER.lower()],
            req.body,
            req.headers[SIGNATURE_HEADER.lower()],
        )
        assert req.headers[DELIVERY_HEADER.lower()] == esc.escalation_id  # dedup key
    body = second.json()
    assert body == first.json()  # the same notification, re-signed
    assert body["workflow_id"] == handle.id and body["escalation_id"] == esc.escalation_id
    assert body["error_type"] == "NOT_FOUND" and body["call"] == "crm.get_contact"
    assert body["explanation"] == esc.explanation
    assert [o["option"] for o in body["options"]] == [o.option for o in esc.options]
    assert body["link"] == f"http://ui.example:8233/namespaces/default/workflows/{handle.id}"
    assert body["decide_command"] == f"healing decide {handle.id} <option>"
    assert {o["command"] for o in body["options"]} >= {f"healing decide {handle.id} retry"}
    events = await harness.events(handle)
    notes = notify_events(events)
    assert len(notes["scheduled"]) == 1 and len(notes["completed"]) == 1
    assert notes["started"][-1].activity_task_started_event_attributes.attempt == 2
    assert workflow_task_failures(events) == 0
    await replays(harness, handle, cfg)
    await replays(harness, handle, HealingConfig())  # a worker without a webhook replays it


async def test_a_receiver_that_always_fails_never_fails_the_workflow(harness: Harness) -> None:
    acts = Scripted([NOT_FOUND])
    async with Receiver(then=500) as rx:
        cfg = webhook_config(rx.url)
        async with harness.worker(acts.activity, plugin=plugin(cfg)):
            handle = await harness.start()
            await harness.escalated(handle)
            # Five attempts (2 s, 4 s, 8 s, 16 s apart, in server time), then it gives up.
            await until(
                harness, lambda: len(rx.requests) >= 5, "five notification attempts", step_s=5
            )

            async def given_up() -> bool:
                return bool(notify_events(await harness.events(handle))["failed"])

            for _ in range(30):
                if await given_up():
                    break
                await harness.env.sleep(1)
            assert await given_up(), "the notifier never gave up"
            st = await harness.status(handle)
            assert st.state == "awaiting_decision" and len(st.open_escalations) == 1
            await decide(harness.client, handle.id, "retry", decided_by="test")
            out = await handle.result()
    assert out["result"]["ok"] is True
    assert rx.statuses() == [500] * 5
    events = await harness.events(handle)
    assert workflow_task_failures(events) == 0
    assert len(notify_events(events)["scheduled"]) == 1
    await replays(harness, handle, cfg)


async def test_a_receiver_that_never_answers_does_not_delay_the_decision(
    dev_server: DevServer, task_queue: str
) -> None:
    # The real dev server: the time-skipping one never releases its time lock for an activity
    # still running when its workflow completes (temporalio/sdk-java#1138), which is the point.
    client = await dev_server.connect(data_converter=pydantic_data_converter)
    h = Harness(cast(Any, SimpleNamespace(client=client, sleep=asyncio.sleep)), task_queue)
    acts = Scripted([NOT_FOUND])
    try:
        async with Receiver(then="hang") as rx:
            cfg = webhook_config(rx.url, notify_timeout_s=60)
            async with h.worker(acts.activity, plugin=plugin(cfg)):
                handle = await h.start()
                st = await h.wait_for(handle, lambda s: bool(s.open_escalations), "a pause")
                assert st.state == "awaiting_decision"
                for _ in range(100):  # the activity's POST is in flight, unanswered
                    if rx.requests:
                        break
                    await asyncio.sleep(0.05)
                assert len(rx.requests) == 1
                await decide(client, handle.id, "retry", decided_by="test")
                out = await asyncio.wait_for(handle.result(), 30)
                # Completed while the notification still hangs: nothing waited for it.
                notes = notify_events(await h.events(handle))
                assert notes["scheduled"] and not notes["completed"] and not notes["failed"]
    finally:
        await h.cleanup()
    assert out["result"]["ok"] is True
    assert acts.count == 2


async def test_without_a_webhook_the_notification_is_one_log_line(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="healing.notify")
    acts = Scripted([NOT_FOUND])
    async with harness.worker(acts.activity):
        handle = await harness.start()
        await harness.escalated(handle)

        def logged() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "healing.notify"]

        await until(harness, lambda: bool(logged()), "the notification log line")
        await decide(harness.client, handle.id, "skip", decided_by="test")
        await handle.result()
    (line,) = logged()
    # Written by the workflow side: no activity, nothing added to history.
    assert notify_events(await harness.events(handle))["scheduled"] == []
    await replays(harness, handle, webhook_config("http://127.0.0.1:9/never"))
    assert "\n" not in line
    assert handle.id in line and "NOT_FOUND" in line and "crm.get_contact" in line
    assert f"http://localhost:8233/namespaces/default/workflows/{handle.id}" in line
    assert f"healing decide {handle.id} <option>" in line
    assert "retry, edit_and_retry, skip, abort" in line
