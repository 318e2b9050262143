"""IntegrationWorkflow: run catalog operations as steps, healed by the healing interceptor.

Input ``{"steps": [{"connector": "crm", "operation": "get_contact", "params": {"id": "42"}}]}``;
result ``{"steps": [{"status": "ok" | "skipped", "result": ..., "served_by": ..., "healing":
{...}, "extra": {...}}]}`` (``served_by``: the connector that answered; ``extra``, when the
response drifted: keys its model does not know, by path). A step a human aborts fails the
workflow with the escalation's explanation (the interceptor raises it). Input that does not
fit fails the workflow at once (non-retryable ``InvalidInput``), naming the field.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

    from activities.integration import CALL_INTEGRATION, CallRequest
    from healing.credentials import check_connection
    from healing.errors import validation_problems

DEFAULT_TASK_QUEUE = "integrations"


class Step(BaseModel):
    """One catalog call."""

    model_config = ConfigDict(extra="forbid")

    connector: str
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)
    body: Any = None
    connection: str = Field(default="default", min_length=1)
    """The account/tenant whose credentials the call uses (DESIGN s3)."""

    _connection = field_validator("connection")(check_connection)


class IntegrationInput(BaseModel):
    """The steps to run, sequentially unless ``parallel``."""

    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(min_length=1)
    start_to_close_s: float = Field(default=30.0, gt=0)
    """Timeout of one attempt of one step."""
    parallel: bool = False


def parse_input(raw: Any) -> IntegrationInput:
    """Validate the workflow input; raises a non-retryable ``InvalidInput`` naming each field."""
    if isinstance(raw, IntegrationInput):
        return raw
    try:
        return IntegrationInput.model_validate(raw)
    except ValidationError as exc:
        # Input values stay out of the message: failures must not echo params (secrets).
        problems = validation_problems(exc, root="input", show_input=False)
        raise ApplicationError(
            f"invalid IntegrationWorkflow input: {problems}",
            type="InvalidInput",
            non_retryable=True,
        ) from None


@workflow.defn(name="IntegrationWorkflow")
class IntegrationWorkflow:
    @workflow.run
    async def run(self, raw: Any = None) -> dict[str, Any]:
        """``raw`` is an ``IntegrationInput`` or its JSON. Typed ``Any`` on purpose: a typed
        parameter fails decoding before this code runs, and the SDK then retries the workflow
        task forever instead of failing the workflow."""
        input = parse_input(raw)
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
            connection=step.connection,
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
                "served_by": None,
                "healing": {"connector": step.connector, "decision": "skip"},
            }
        step_result = {
            "status": "ok",
            "result": result.get("result"),
            "served_by": result.get("connector"),  # the alternative, after a reroute
            "healing": {**result.get("healing", {}), "connector": result.get("connector")},
        }
        if result.get("extra"):  # keys the response model does not know (schema drift)
            step_result["extra"] = result["extra"]
        return step_result
