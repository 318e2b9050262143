"""The history secret scan can fail: it finds planted secrets where ``to_json()`` cannot."""

from __future__ import annotations

import json
import uuid

from temporalio.api.common.v1 import Memo, Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import (
    ActivityTaskFailedEventAttributes,
    History,
    HistoryEvent,
    WorkflowExecutionStartedEventAttributes,
)

from tests.secrets_scan import find_secrets
from tests.temporal.harness import Harness, Scripted

SECRET_IN = f"fake-access-{uuid.uuid4().hex}"
SECRET_OUT = f"fake-refresh-{uuid.uuid4().hex}"
UNICODE = f"t\u00f6ken-{uuid.uuid4().hex}"  # json.dumps writes it as t\u00f6ken-...


async def test_scan_finds_secrets_in_activity_input_and_result(harness: Harness) -> None:
    # Unmarked, so healing passes it through: the secrets reach history as they are.
    acts = Scripted(then=lambda call: {"echo": SECRET_OUT}, mark=False)
    async with harness.worker(acts.activity):
        handle = await harness.start({"input": {"note": SECRET_IN}})
        await handle.result()
    history = await handle.fetch_history()

    # The old scan is blind to both: payload data is base64 in the JSON form.
    old = history.to_json()
    assert SECRET_IN not in old and SECRET_OUT not in old

    found = {(f.needle, f.path) for f in find_secrets(history, [SECRET_IN, SECRET_OUT])}
    assert (
        SECRET_IN,
        "workflow_execution_started_event_attributes.input.payloads[0].data",
    ) in found
    assert (SECRET_IN, "activity_task_scheduled_event_attributes.input.payloads[0].data") in found
    assert (SECRET_OUT, "activity_task_completed_event_attributes.result.payloads[0].data") in found
    assert (
        SECRET_OUT,
        "workflow_execution_completed_event_attributes.result.payloads[0].data",
    ) in found
    assert find_secrets(history, ["no-such-value-" + uuid.uuid4().hex]) == []


def test_scan_reads_memo_keys_escaped_json_and_nested_failures() -> None:
    escaped = json.dumps({"token": UNICODE}).encode()
    started = HistoryEvent(
        event_id=1,
        event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
            memo=Memo(fields={SECRET_OUT: Payload(metadata={"encoding": b"json/plain"})}),
        ),
    )
    started.workflow_execution_started_event_attributes.memo.fields["brief"].CopyFrom(
        Payload(metadata={"encoding": b"json/plain"}, data=escaped)
    )
    failed = HistoryEvent(
        event_id=2,
        event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
        activity_task_failed_event_attributes=ActivityTaskFailedEventAttributes(
            failure=Failure(message="outer", cause=Failure(stack_trace=f"Bearer {SECRET_IN}"))
        ),
    )
    assert UNICODE.encode() not in started.SerializeToString()  # a raw byte search misses it
    needles = [SECRET_IN, SECRET_OUT, UNICODE]
    found = {
        (f.event_id, f.path, f.needle)
        for f in find_secrets(History(events=[started, failed]), needles)
    }
    memo = "workflow_execution_started_event_attributes.memo.fields"
    assert found == {
        (1, f"{memo}<key>", SECRET_OUT),
        (1, f"{memo}['brief'].data", UNICODE),
        (2, "activity_task_failed_event_attributes.failure.cause.stack_trace", SECRET_IN),
    }
