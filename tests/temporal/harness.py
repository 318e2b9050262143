"""Scripted integration activities and a small harness for the Temporal tests.

A :class:`Scripted` activity plays a list of steps, one per call: an exception to raise, a
dict to return (Slack's ``200 ok:false`` is a *result*), ``None`` for a success, or a function
of the :class:`Call` record (sync or async) that returns or raises. Every call is recorded with
what healing told it (connector, schema mapping) and when the server scheduled it, so tests
assert on call counts and workflow-time gaps instead of sleeping.
"""

from __future__ import annotations

import inspect
import itertools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from healing import HealingConfig, HealingPlugin, IntegrationFailure, current_call, integration
from healing.interceptor._state import ERROR_TYPE_KEY, STATUS_KEY
from healing.names import STATUS_QUERY as QUERY
from healing.types import HealingStatus
from tests.temporal.wf import CallWorkflow, TwoCallsWorkflow


@dataclass(frozen=True)
class Call:
    """One call of a scripted activity, as the activity saw it."""

    n: int
    attempt: int
    scheduled: datetime
    """``current_attempt_scheduled_time``: the retry's due time on a real server, but the
    time the retry was *decided* (the previous failure) on the time-skipping test server."""
    started: datetime
    """``started_time``: when this attempt started, server time, on both servers."""
    connector: str | None
    mapping: dict[str, str]
    arg: Any
    local: bool


Step = BaseException | dict[str, Any] | Callable[[Call], Any] | None


class Scripted:
    """An integration activity that fails (or answers) as scripted, then ``then`` forever."""

    def __init__(
        self,
        script: Sequence[Step] = (),
        *,
        then: Step = None,
        name: str = "crm_call",
        connector: str = "crm",
        operation: str = "get_contact",
        mark: bool = True,
    ) -> None:
        self.script = list(script)
        self.then = then
        self.calls: list[Call] = []

        async def call(arg: dict[str, Any]) -> Any:
            return await self._run(arg)

        if mark:
            call = integration(connector=connector, operation=operation)(call)
        self.activity = activity.defn(name=name)(call)

    async def _run(self, arg: Any) -> Any:
        info = activity.info()
        ctx = current_call()
        record = Call(
            n=len(self.calls) + 1,
            attempt=info.attempt,
            scheduled=info.current_attempt_scheduled_time,
            started=info.started_time,
            connector=ctx.connector if ctx else None,
            mapping=dict(ctx.hints.schema_mapping) if ctx else {},
            arg=arg,
            local=info.is_local,
        )
        self.calls.append(record)
        step = self.script[record.n - 1] if record.n <= len(self.script) else self.then
        if callable(step):
            step = step(record)
            if inspect.isawaitable(step):
                step = await step
        if isinstance(step, BaseException):
            raise step
        if step is None:
            return {"ok": True, "calls": record.n, "connector": record.connector}
        return step

    @property
    def count(self) -> int:
        return len(self.calls)

    def gaps(self) -> list[float]:
        """Workflow-time seconds between consecutive calls' start times."""
        times = [c.started for c in self.calls]
        return [(b - a).total_seconds() for a, b in itertools.pairwise(times)]


def fail(
    status: int,
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    connector: str = "crm",
    operation: str = "get_contact",
) -> IntegrationFailure:
    """What an HTTP connector raises for a non-2xx answer."""
    return IntegrationFailure(
        f"{connector} answered {status}",
        status_code=status,
        body=body,
        headers=headers or {},
        connector=connector,
        operation=operation,
    )


class ErrorRecorder(Interceptor):
    """Outermost activity interceptor: keeps the ApplicationErrors healing hands the server."""

    def __init__(self) -> None:
        self.errors: list[ApplicationError] = []

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Recording(next, self)


class _Recording(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: ErrorRecorder) -> None:
        super().__init__(next)
        self.root = root

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await self.next.execute_activity(input)
        except ApplicationError as err:
            self.root.errors.append(err)
            raise


def server_clock() -> float:
    """The server's time of this attempt: time skipping moves it, so breakers follow."""
    return activity.info().started_time.timestamp()


def plugin(
    config: HealingConfig | None = None,
    *,
    alternatives: dict[str, list[str]] | None = None,
    tokens: Any = None,
    clock: Callable[[], float] | None = None,
) -> HealingPlugin:
    """The real HealingPlugin. On the time-skipping server its start-up check cannot list
    search attributes (UNIMPLEMENTED) and trusts that conftest registered them."""
    extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return HealingPlugin(
        config or HealingConfig(), alternatives=alternatives, tokens=tokens, **extra
    )


class Harness:
    """One test's worker, workflows and polling; terminates what it started at teardown."""

    def __init__(self, env: WorkflowEnvironment, task_queue: str) -> None:
        self.env = env
        self.client = env.client
        self.task_queue = task_queue
        self.handles: list[WorkflowHandle[Any, Any]] = []

    def worker(
        self,
        *activities: Callable[..., Any],
        plugin: HealingPlugin | None = None,
        workflows: Sequence[type] = (CallWorkflow, TwoCallsWorkflow),
        interceptors: Sequence[Interceptor] = (),
    ) -> Worker:
        # Plugin interceptors are appended: ours (first) wrap the healing interceptor.
        return Worker(
            self.client,
            task_queue=self.task_queue,
            workflows=list(workflows),
            activities=list(activities),
            interceptors=list(interceptors),
            plugins=[plugin or HealingPlugin(HealingConfig())],
        )

    async def start(
        self, arg: Any = None, *, workflow: Any = CallWorkflow.run
    ) -> WorkflowHandle[Any, Any]:
        handle = await self.client.start_workflow(
            workflow,
            {} if arg is None else arg,
            id=f"wf-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )
        self.handles.append(handle)
        return handle

    async def status(self, handle: WorkflowHandle[Any, Any]) -> HealingStatus:
        return HealingStatus.model_validate(await handle.query(QUERY))

    async def wait_for(
        self,
        handle: WorkflowHandle[Any, Any],
        predicate: Callable[[HealingStatus], bool],
        what: str,
        *,
        max_s: int = 300,
    ) -> HealingStatus:
        """Poll the status query; time only skips while we wait, so sleep 1 s between polls."""
        st = await self.status(handle)
        for _ in range(max_s):
            if predicate(st):
                return st
            await self.env.sleep(1)
            st = await self.status(handle)
        raise AssertionError(f"timed out waiting for {what}; last status: {st}")

    async def escalated(self, handle: WorkflowHandle[Any, Any], n: int = 1) -> HealingStatus:
        return await self.wait_for(
            handle, lambda s: len(s.open_escalations) >= n, f"{n} open escalation(s)"
        )

    async def search_attributes(self, handle: WorkflowHandle[Any, Any]) -> tuple[Any, Any]:
        desc = await handle.describe()
        attrs = desc.typed_search_attributes
        return attrs.get(STATUS_KEY), attrs.get(ERROR_TYPE_KEY)

    async def events(self, handle: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
        return [e async for e in handle.fetch_history_events()]

    async def count_events(
        self, handle: WorkflowHandle[Any, Any], kind: EventType.ValueType
    ) -> int:
        return sum(1 for e in await self.events(handle) if e.event_type == kind)

    async def cleanup(self) -> None:
        for handle in self.handles:
            try:
                desc = await handle.describe()
                if desc.status == WorkflowExecutionStatus.RUNNING:
                    await handle.terminate("test over")
            except Exception:  # best effort: the server may be gone
                pass
