"""IntegrationWorkflow input that does not fit fails the workflow at once, naming the field.

Before, the typed ``run`` parameter failed to decode inside the SDK ("Failed decoding
arguments"): a workflow-task failure that the server retries forever while the workflow stays
Running. Each case runs on a real dev server with the real integration worker in this process.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from healing.config import HealingConfig
from healing.devserver import DevServer
from healing.plugin import HealingPlugin
from healing.runner import build_worker, connect
from healing.testing import ChaosAPI, FaultPlan
from tests.e2e.helpers import crm_catalog, get_contact
from workflows import IntegrationInput, IntegrationWorkflow, Step

STEP = {"connector": "crm", "operation": "get_contact", "params": {"id": "42"}}


@dataclass
class Stack:
    client: Client
    task_queue: str
    chaos: ChaosAPI

    async def failure_of(self, *args: Any) -> ApplicationError:
        """Start the workflow with ``args`` and return the error it failed with."""
        handle = await self.client.start_workflow(
            "IntegrationWorkflow",
            args=list(args),
            id=f"bad-input-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )
        try:
            with pytest.raises(WorkflowFailureError) as info:
                # Seconds, not minutes: the old code never ends (workflow-task retries).
                await asyncio.wait_for(handle.result(), 20)
        finally:
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("test cleanup")
        assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED
        events = [e.event_type async for e in handle.fetch_history_events()]
        assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in events
        cause = info.value.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == "InvalidInput" and cause.non_retryable
        assert cause.message.startswith("invalid IntegrationWorkflow input: ")
        return cause


@pytest.fixture(scope="module")
async def stack(dev_server: DevServer) -> AsyncIterator[Stack]:
    config = HealingConfig.load()
    async with ChaosAPI(FaultPlan()) as chaos:
        catalog = crm_catalog(chaos.url)
        client = await connect(dev_server.address, dev_server.namespace, HealingPlugin(config))
        task_queue = f"wf-input-{uuid.uuid4()}"
        worker, acts = build_worker(client, config, catalog, task_queue=task_queue)
        async with worker:
            yield Stack(client, task_queue, chaos)
        await acts.aclose()


async def test_misspelt_step_key_names_both_fields(stack: Stack) -> None:
    bad = {"conector": "crm", "operation": "get_contact", "params": {"id": "42"}}
    err = await stack.failure_of({"steps": [bad]})
    assert "steps.0.connector: Field required" in err.message
    assert "steps.0.conector: Extra inputs are not permitted" in err.message
    assert stack.chaos.stats().calls_to("GET", "/contacts/42") == 0


async def test_no_steps_is_named(stack: Stack) -> None:
    err = await stack.failure_of({"steps": []})
    assert "steps: List should have at least 1 item" in err.message


async def test_wrong_types_are_named_without_their_values(stack: Stack) -> None:
    step = {**STEP, "params": "id=42-secretish"}
    err = await stack.failure_of({"steps": [step], "start_to_close_s": "soon"})
    assert "steps.0.params: Input should be a valid dictionary" in err.message
    assert "start_to_close_s: Input should be a valid number" in err.message
    assert "secretish" not in err.message  # values stay out of failure messages


@pytest.mark.parametrize("args", [(["crm"],), ("steps",), ()], ids=["list", "string", "none"])
async def test_input_that_is_not_an_object_is_named(stack: Stack, args: tuple[Any, ...]) -> None:
    err = await stack.failure_of(*args)
    assert "input: Input should be a valid dictionary" in err.message


async def test_typed_input_and_connection_still_run(stack: Stack) -> None:
    # Callers passing the model keep working; "connection" (DESIGN s3) is accepted.
    typed = IntegrationInput(steps=[Step(**STEP, connection="acme")])
    result = await stack.client.execute_workflow(
        IntegrationWorkflow.run, typed, id=f"typed-{uuid.uuid4()}", task_queue=stack.task_queue
    )
    assert result["steps"][0]["status"] == "ok"
    raw = get_contact("43")
    raw["steps"][0]["connection"] = "acme"
    result = await stack.client.execute_workflow(
        "IntegrationWorkflow", raw, id=f"raw-{uuid.uuid4()}", task_queue=stack.task_queue
    )
    assert result["steps"][0]["result"]["id"] == "43"
