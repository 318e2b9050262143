"""IntegrationWorkflow: run catalog operations as steps, healed by the healing interceptor.

Input ``{"steps": [{"connector": "crm", "operation": "get_contact", "params": {"id": "42"}}]}``;
result ``{"steps": [{"status": "ok" | "skipped", "result": ..., "healing": {...}}]}``. A step a
human aborts fails the workflow with the escalation's explanation (the interceptor raises it).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ConfigDict, Field

    from activities.integration import CALL_INTEGRATION, CallRequest

DEFAULT_TASK_QUEUE = "integrations"


class Step(BaseModel):
    """One catalog call."""

    model_config = ConfigDict(extra="forbid")

    connector: str
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)
    body: Any = None


class IntegrationInput(BaseModel):
    """The steps to run, sequentially unless ``parallel``."""

    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(min_length=1)
    start_to_close_s: float = Field(default=30.0, gt=0)
    """Timeout of one attempt of one step."""
    parallel: bool = False


@workflow.defn(name="IntegrationWorkflow")
class IntegrationWorkflow:
    @workflow.run
    async def run(self, input: IntegrationInput) -> dict[str, Any]:
        steps = list(enumerate(input.steps))
        if input.parallel:
            results = list(await asyncio.gather(*(self._step(i, s, input) for i, s in steps)))
        else:
            results = [await self._step(i, s, input) for i, s in steps]
        return {"steps": results}

    async def _step(self, index: int, step: Step, input: IntegrationInput) -> dict[str, Any]:
        request = CallRequest(
            connector=step.connector,
            operation=step.operation,
            params=step.params,
            body=step.body,
        )
        # A fixed activity id per step: healing restarts (reroute, refresh, edit) reuse it, so
        # the Idempotency-Key derived from it stays the same for the whole logical call.
        result: dict[str, Any] | None = await workflow.execute_activity(
            CALL_INTEGRATION,
            request,
            activity_id=f"step-{index}",
            start_to_close_timeout=timedelta(seconds=input.start_to_close_s),
            result_type=dict,
        )
        if result is None:  # a human chose to skip this step
            return {
                "status": "skipped",
                "result": None,
                "healing": {"connector": step.connector, "decision": "skip"},
            }
        return {
            "status": "ok",
            "result": result.get("result"),
            "healing": {**result.get("healing", {}), "connector": result.get("connector")},
        }
