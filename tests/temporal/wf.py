"""Workflows used by the Temporal tests (kept apart so the sandbox imports little)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy


@workflow.defn(name="CallWorkflow")
class CallWorkflow:
    """Calls one activity and returns what came back (None for a skipped call)."""

    @workflow.run
    async def run(self, arg: dict[str, Any]) -> dict[str, Any]:
        policy = None
        if arg.get("max_attempts"):
            policy = RetryPolicy(maximum_attempts=int(arg["max_attempts"]))
        kwargs: dict[str, Any] = {
            "start_to_close_timeout": timedelta(seconds=float(arg.get("start_to_close_s", 10))),
            "retry_policy": policy,
        }
        name = arg.get("activity", "crm_call")
        if arg.get("local"):
            result = await workflow.execute_local_activity(name, arg.get("input", {}), **kwargs)
        else:
            result = await workflow.execute_activity(name, arg.get("input", {}), **kwargs)
        return {"result": result, "skipped": result is None}


@workflow.defn(name="TwoCallsWorkflow")
class TwoCallsWorkflow:
    """Two calls in parallel, to see two escalations open at once."""

    @workflow.run
    async def run(self, names: list[str]) -> list[Any]:
        calls = [
            workflow.execute_activity(n, {}, start_to_close_timeout=timedelta(seconds=10))
            for n in names
        ]
        return list(await asyncio.gather(*calls))
