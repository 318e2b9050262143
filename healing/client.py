"""Client-side helpers: read a workflow's healing status, list and decide escalations.

Used by the CLI and by users' own code; the same operations exist as plain Temporal calls
(query ``healing_status``, signal ``escalation_decision``, update ``decide_escalation``).

Nothing here waits on a worker without a bound. Listing reads visibility (the
``HealingStatus`` search attribute and the ``healing`` memo) and needs no worker; status and
decisions first ask the server whether a worker polls the workflow's task queue
(:func:`check_worker`) and only then query or update, each with a timeout.
"""

from __future__ import annotations

import asyncio
import getpass
import ipaddress
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

from healing.errors import ConfigError, DecisionError, WorkflowClosed, validation_problems
from healing.names import DECISION_SIGNAL as SIGNAL
from healing.names import DECISION_UPDATE as UPDATE
from healing.names import MEMO_KEY, STATUS_ATTRIBUTE
from healing.names import STATUS_QUERY as QUERY
from healing.types import DecisionOptionName, EscalationBrief, EscalationDecision, HealingStatus

AWAITING_QUERY = f'{STATUS_ATTRIBUTE} = "awaiting_decision" AND ExecutionStatus = "Running"'
RUNNING_QUERY = 'ExecutionStatus = "Running"'
PROBE_TIMEOUT_S = 4.0
"""How long a query may take before the worker it was meant for counts as gone."""
DECIDE_TIMEOUT_S = 10.0
"""How long ``decide`` waits for the worker to apply an update before saying so."""
POLL_FRESH_S = 75.0
"""A live idle worker polls again at least this often: the server ends a long poll after about
a minute. The server keeps listing a poller for minutes after its worker stopped, so a poll
older than this means no worker, and a younger one is checked with a query."""
_HOST = re.compile(r"[\w.-]+")


class NoWorker(DecisionError):
    """No worker polls the workflow's task queue: a decision would wait for one. Nothing was
    sent (``queue=True`` sends it as a durable signal instead)."""

    def __init__(self, message: str, *, task_queue: str) -> None:
        super().__init__(message)
        self.task_queue = task_queue


class DecisionUnconfirmed(DecisionError):
    """The update was sent but the worker did not answer in time: it may still be applied."""


def check_address(address: str, *, source: str = "TEMPORAL_ADDRESS") -> tuple[str, int]:
    """``(host, port)`` of a Temporal ``host:port``; ConfigError naming ``source`` otherwise.

    Checked before connecting: the SDK raises a bare ValueError for these at connect time.
    """
    host, sep, port = address.strip().rpartition(":")
    problem = None
    if not sep or not host:
        problem = "expected host:port, e.g. localhost:7233"
    elif not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        problem = f"port {port!r} is not a number from 1 to 65535"
    elif host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
            valid = "%" not in host  # the SDK takes no zone id
        except ValueError:
            valid = False
        if not valid:
            problem = f"{host} is not an IPv6 address"
    elif not _HOST.fullmatch(host):
        problem = f"host {host!r} is not a host name or IP address (no scheme, no spaces)"
    if problem:
        raise ConfigError(f"{source}={address!r} is not a valid Temporal address: {problem}")
    return host, int(port)


def default_decider() -> str:
    """Who decides when nobody says: ``$USER@hostname``."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (containers)
            user = "unknown"
    return f"{user}@{socket.gethostname()}"


# -- is a worker there? ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerCheck:
    """Whether a worker polls a task queue, as far as the server and a probe tell."""

    task_queue: str
    pollers: int | None
    """Pollers the server remembers (None: it could not say)."""
    last_poll_s: float | None
    """Seconds since the most recent poll (None: no poller remembered)."""
    answered: bool | None = None
    """Whether a worker answered a query on the queue (None: not probed)."""
    problem: str | None = None
    """Why the server could not list pollers, when it could not."""
    probe: str | None = None
    """Why the query meant to reach a worker got no answer, when it got none."""

    @property
    def recent(self) -> bool:
        """A poll recent enough that a live worker may be behind it (or pollers unknown)."""
        if self.pollers is None:
            return True
        return self.last_poll_s is not None and self.last_poll_s <= POLL_FRESH_S

    @property
    def polling(self) -> bool:
        """A worker is there: it answered, or (not probed) it polled recently."""
        if self.answered is not None:
            return self.answered
        return self.pollers is not None and self.recent

    def describe(self) -> str:
        """One line for people: ``worker polling task queue Q (...)`` or why not."""
        queue = f"task queue {self.task_queue}"
        if self.polling:
            return f"worker polling {queue} ({self.detail})"
        if self.pollers is None:
            return f"no worker answered on {queue} ({self.detail})"
        return f"no worker is polling {queue}" + (f" ({self.detail})" if self.detail else "")

    @property
    def detail(self) -> str:
        """What the server and the probe said: ``last poll 14s ago; a query got no answer``."""
        no_answer = f"a query got no answer: {self.probe}" if self.probe else ""
        if self.polling:
            if self.pollers is None:
                return "it answered a query"
            return f"{self.pollers} poller(s), last poll {self._ago()}"
        if self.pollers is None:
            return f"{no_answer}; pollers unknown: {self.problem}"
        if self.last_poll_s is None:
            return ""
        if self.answered is False:
            return f"last poll {self._ago()}; {no_answer}"
        return f"last poll {self._ago()}"

    def _ago(self) -> str:
        return "now" if not self.last_poll_s else f"{self.last_poll_s:.0f}s ago"


async def task_queue_pollers(client: Client, task_queue: str) -> WorkerCheck:
    """What the server knows of the workflow pollers of ``task_queue`` (no probe)."""
    try:
        resp = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            timeout=timedelta(seconds=PROBE_TIMEOUT_S),
        )
    except RPCError as exc:
        return WorkerCheck(task_queue, None, None, problem=f"{exc.status.name}: {exc.message}")
    now = datetime.now(UTC)
    ages = [
        max((now - p.last_access_time.ToDatetime(UTC)).total_seconds(), 0.0)
        for p in resp.pollers
        if p.HasField("last_access_time")
    ]
    return WorkerCheck(task_queue, len(resp.pollers), min(ages) if ages else None)


async def check_worker(
    client: Client, task_queue: str, workflow_id: str, *, probe_s: float = PROBE_TIMEOUT_S
) -> tuple[WorkerCheck, HealingStatus | None, str | None]:
    """Whether a worker polls ``task_queue``; with a recent poller, the workflow is queried
    (``probe_s`` bounds it), so a worker that stopped a moment ago is not taken for a live one.

    Returns the check, the workflow's HealingStatus when a healing worker answered, and why
    there is none when a worker answered without one (not a healing worker, say).
    """
    check = await task_queue_pollers(client, task_queue)
    if not check.recent:
        return check, None, None
    answered, status, problem = await _query_status(
        client.get_workflow_handle(workflow_id), probe_s
    )
    if not answered:
        return replace(check, answered=False, probe=problem), None, None
    return replace(check, answered=True), status, problem


async def _query_status(
    handle: WorkflowHandle[Any, Any], within_s: float
) -> tuple[bool, HealingStatus | None, str | None]:
    """``(a worker answered, its HealingStatus, why there is none)``, within ``within_s``.

    Only an answer or an error raised by the worker's query handler counts as a worker; any
    error from the server (a timeout, "no poller seen recently") means none answered.
    """
    try:
        raw = await asyncio.wait_for(
            handle.query(QUERY, rpc_timeout=timedelta(seconds=within_s)), within_s + 1
        )
    except TimeoutError:
        return False, None, f"no answer within {within_s:g}s"
    except RPCError as exc:
        if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            return False, None, f"no answer within {within_s:g}s"
        return False, None, f"{exc.status.name}: {exc.message}"
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as exc:
        return True, None, f"the worker answered the {QUERY} query with an error: {exc}"
    try:
        return True, HealingStatus.model_validate(raw), None
    except ValidationError as exc:
        return (
            True,
            None,
            f"the {QUERY} answer does not fit HealingStatus ({exc.error_count()} problems)",
        )


# -- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingCall:
    """An activity the server is retrying right now (healing the workflow cannot see yet)."""

    activity_type: str
    attempt: int
    last_failure: str | None
    next_attempt_in_s: float | None


@dataclass(frozen=True)
class StatusReport:
    workflow_id: str
    run_status: str
    healing: HealingStatus | None
    """The ``healing_status`` query's answer (None: no healing worker answered)."""
    pending: list[PendingCall]
    task_queue: str = ""
    worker: WorkerCheck | None = None
    memo: EscalationBrief | None = None
    """The ``healing`` memo: the open escalation in brief, readable with no worker."""
    problem: str | None = None
    """Why ``healing`` is None when a worker did answer (or the memo is unreadable)."""


async def _memo_brief(
    execution: WorkflowExecution,
) -> tuple[EscalationBrief | None, str | None]:
    try:
        raw = await execution.memo_value(MEMO_KEY, None)
        return (EscalationBrief.model_validate(raw) if raw else None), None
    except (ValidationError, ValueError, TypeError) as exc:
        return None, f"the {MEMO_KEY} memo is not an EscalationBrief: {type(exc).__name__}"


async def healing_status(
    client: Client, workflow_id: str, *, probe_s: float = PROBE_TIMEOUT_S
) -> StatusReport:
    """The server's view (run status, memo, activities being retried) and, when a worker
    polls the task queue, the ``healing_status`` query (bounded by ``probe_s``).

    Answers within seconds with no worker: ``report.worker`` says none polls and
    ``report.memo`` holds what the workflow recorded when it paused.
    """
    handle = client.get_workflow_handle(workflow_id)
    desc = await handle.describe()
    memo, memo_problem = await _memo_brief(desc)
    worker, status, problem = await check_worker(
        client, desc.task_queue, workflow_id, probe_s=probe_s
    )
    run_status = desc.status.name if desc.status else "UNKNOWN"
    return StatusReport(
        workflow_id,
        run_status,
        status,
        _pending(desc),
        task_queue=desc.task_queue,
        worker=worker,
        memo=memo,
        problem=problem or memo_problem,
    )


def _pending(desc: WorkflowExecutionDescription) -> list[PendingCall]:
    pending = []
    for act in desc.raw_description.pending_activities:
        failure = act.last_failure.message if act.HasField("last_failure") else None
        next_in: float | None = None
        if act.HasField("next_attempt_schedule_time") and act.HasField(
            "last_attempt_complete_time"
        ):
            nxt = act.next_attempt_schedule_time.ToDatetime()
            last = act.last_attempt_complete_time.ToDatetime()
            next_in = max((nxt - last).total_seconds(), 0.0)
        pending.append(PendingCall(act.activity_type.name, act.attempt, failure or None, next_in))
    return pending


# -- listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PausedWorkflow:
    """A running workflow waiting for a human, as visibility lists it."""

    workflow_id: str
    run_id: str | None
    workflow_type: str
    task_queue: str
    start_time: datetime
    brief: EscalationBrief | None
    """The ``healing`` memo (None: missing or unreadable; visibility may lag a moment)."""

    def to_json(self) -> dict[str, Any]:
        brief = self.brief.model_dump(mode="json") if self.brief else {}
        return {
            **{k: None for k in EscalationBrief.model_fields},
            **brief,
            "workflow_id": self.workflow_id,
            "run_id": self.run_id,
            "workflow_type": self.workflow_type,
            "task_queue": self.task_queue,
            "memo": self.brief is not None,
        }


@dataclass(frozen=True)
class EscalationListing:
    """What :func:`list_escalations` found, and how."""

    workflows: list[PausedWorkflow]
    query: str
    """The visibility query that was run."""
    source: Literal["search_attribute", "memo"]
    """``memo``: HealingStatus is not registered, so running workflows were filtered by memo."""
    total: int | None = None
    """How many match in all, when ``limit`` cut the list short (else None)."""
    notes: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return self.total is not None and self.total > len(self.workflows)


async def list_escalations(
    client: Client, *, query: str | None = None, limit: int = 1000
) -> EscalationListing:
    """Running workflows paused for a human, with their memo, from visibility alone: one
    list call per 1,000 workflows, no per-workflow call, no worker needed.

    ``query`` narrows the list (visibility syntax, e.g. ``WorkflowType = "IntegrationWorkflow"``).
    Without the HealingStatus search attribute, running workflows are filtered by memo instead
    (slower: it reads every running workflow) and a note says so. RPCError when visibility
    cannot answer: an empty list always means none.
    """
    extra = f"({query}) AND " if query else ""
    full = extra + AWAITING_QUERY
    try:
        found = await _list(client, full, limit, need_memo=False)
    except RPCError as exc:
        if exc.status != RPCStatusCode.INVALID_ARGUMENT or await _has_status_attribute(client):
            raise
        fallback = extra + RUNNING_QUERY
        note = (
            f"search attribute {STATUS_ATTRIBUTE} is not registered in namespace "
            f"{client.namespace} (`healing setup` registers it): listed every running workflow "
            f"and kept those with a {MEMO_KEY!r} memo"
        )
        found = await _list(client, fallback, limit, need_memo=True)
        listing = EscalationListing(found, fallback, "memo", notes=[note])
        return listing
    total = None
    if len(found) >= limit:
        total = (await client.count_workflows(full)).count
    return EscalationListing(found, full, "search_attribute", total=total)


async def _list(client: Client, query: str, limit: int, *, need_memo: bool) -> list[PausedWorkflow]:
    found: list[PausedWorkflow] = []
    async for wf in client.list_workflows(query, page_size=min(max(limit, 100), 1000)):
        brief, _ = await _memo_brief(wf)
        if need_memo and brief is None:
            continue
        found.append(
            PausedWorkflow(wf.id, wf.run_id, wf.workflow_type, wf.task_queue, wf.start_time, brief)
        )
        if len(found) >= limit:
            break
    return found


async def _has_status_attribute(client: Client) -> bool:
    resp = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return STATUS_ATTRIBUTE in resp.custom_attributes


# -- deciding ---------------------------------------------------------------------------------


def _decision(
    option: DecisionOptionName,
    *,
    escalation_id: str | None,
    alternative: str | None,
    input_patch: dict[str, Any] | None,
    wait_s: float | None,
    note: str,
    decided_by: str,
    mapping_id: str | None = None,
) -> EscalationDecision:
    try:
        return EscalationDecision(
            option=option,
            escalation_id=escalation_id,
            alternative=alternative,
            input_patch=input_patch,
            wait_s=wait_s,
            mapping_id=mapping_id,
            note=note,
            decided_by=decided_by,
        )
    except ValidationError as exc:
        raise DecisionError(
            f"invalid decision ({validation_problems(exc, root='decision')})"
        ) from None


async def decide(
    client: Client,
    workflow_id: str,
    option: DecisionOptionName,
    *,
    escalation_id: str | None = None,
    alternative: str | None = None,
    input_patch: dict[str, Any] | None = None,
    wait_s: float | None = None,
    mapping_id: str | None = None,
    note: str = "",
    decided_by: str = "cli",
    via: Literal["update", "signal"] = "update",
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Send a decision. The update is checked by the workflow before it is accepted;
    DecisionError carries the workflow's reason when it is rejected.

    This sends at once, worker or not: an update sent while no worker runs waits for one (up
    to ``timeout_s``, then DecisionUnconfirmed; it may still be applied later). Use
    :func:`decide_checked` to find out first.
    """
    decision = _decision(
        option,
        escalation_id=escalation_id,
        alternative=alternative,
        input_patch=input_patch,
        wait_s=wait_s,
        note=note,
        decided_by=decided_by,
        mapping_id=mapping_id,
    )
    # The server answers NOT_FOUND for a closed workflow too; say which it is.
    await _ensure_running(client, workflow_id)
    return await send_decision(client, workflow_id, decision, via, timeout_s)


async def send_decision(
    client: Client,
    workflow_id: str,
    decision: EscalationDecision,
    via: Literal["update", "signal"],
    timeout_s: float | None,
) -> dict[str, Any]:
    """Send a checked decision: the update (bounded by ``timeout_s``, resent once when the
    server aborts it as not ready) or the signal. DecisionError when the workflow refuses it,
    DecisionUnconfirmed when no worker answered in time, WorkflowClosed when it closed."""
    body = decision.model_dump(mode="json", exclude_none=True)
    handle = client.get_workflow_handle(workflow_id)
    rpc_timeout = timedelta(seconds=timeout_s) if timeout_s else None
    try:
        if via == "signal":
            await handle.signal(SIGNAL, body, rpc_timeout=rpc_timeout)
            return {"accepted": None, "option": decision.option, "via": "signal"}
        result: dict[str, Any] = await _update_once_more_if_not_ready(
            handle, body, rpc_timeout, timeout_s
        )
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        raise DecisionError(getattr(cause, "message", None) or str(cause)) from None
    except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError):
        raise DecisionUnconfirmed(
            f"no answer from a worker within {timeout_s or 0:g}s: the {decision.option!r} update "
            "was sent and may still be applied when a worker gets to it; check `healing status "
            f"{workflow_id}`"
        ) from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # it closed after the check
            await _ensure_running(client, workflow_id)
        raise
    return result


def _not_ready(exc: BaseException) -> bool:
    """The server aborted the update because a workflow task failed with it in flight (an
    event, e.g. a notification's completion, landed in the same moment): nothing was applied."""
    text = f"{exc} {getattr(exc, 'cause', '')}".lower()
    return "workflownotready" in text.replace(" ", "") or "workflow is not ready" in text


async def _update_once_more_if_not_ready(
    handle: WorkflowHandle[Any, Any],
    body: dict[str, Any],
    rpc_timeout: timedelta | None,
    timeout_s: float | None,
) -> dict[str, Any]:
    for attempt in (1, 2):
        update = handle.execute_update(UPDATE, body, rpc_timeout=rpc_timeout)
        try:
            result: dict[str, Any] = await (
                asyncio.wait_for(update, timeout_s + 1) if timeout_s else update
            )
            return result
        except (WorkflowUpdateFailedError, RPCError) as exc:
            if attempt == 2 or not _not_ready(exc):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class DecisionOutcome:
    """What :func:`decide_checked` did."""

    workflow_id: str
    option: str
    via: Literal["update", "signal"]
    applied: bool
    """The worker accepted and applied it (update); False for a queued signal."""
    worker: WorkerCheck
    result: dict[str, Any]

    def describe(self) -> str:
        if self.applied:
            return f"{self.workflow_id}: {self.option} accepted and applied by the worker"
        if self.worker.polling:
            return (
                f"{self.workflow_id}: sent {self.option!r} as a signal ({SIGNAL}; a worker polls "
                f"{self.worker.task_queue}; a signal is not validated: see `healing status "
                f"{self.workflow_id}`)"
            )
        return (
            f"{self.workflow_id}: {self.worker.describe()}; queued {self.option!r} as a signal "
            f"({SIGNAL}): kept in history and applied when a worker returns"
        )


async def decide_checked(
    client: Client,
    workflow_id: str,
    option: DecisionOptionName,
    *,
    escalation_id: str | None = None,
    alternative: str | None = None,
    input_patch: dict[str, Any] | None = None,
    wait_s: float | None = None,
    mapping_id: str | None = None,
    note: str = "",
    decided_by: str | None = None,
    queue: bool = False,
    signal: bool = False,
    timeout_s: float = DECIDE_TIMEOUT_S,
    probe_s: float = PROBE_TIMEOUT_S,
    worker: WorkerCheck | None = None,
) -> DecisionOutcome:
    """Decide without hanging or surprises: find out first whether a worker polls.

    - a worker answers: the ``decide_escalation`` update, validated by the workflow, bounded
      by ``timeout_s`` (DecisionUnconfirmed past it: it may still apply later);
    - no worker and ``queue``: the ``escalation_decision`` signal, durable, applied when a
      worker returns; the option is checked against the memo first and the signal names
      the escalation, so it cannot answer a later one;
    - no worker otherwise: NoWorker, and nothing is sent;
    - ``signal``: the signal in any case (not validated by the workflow).

    ``worker`` reuses an earlier check of the same task queue (bulk decisions).
    Raises WorkflowClosed, DecisionError (refused), NoWorker, DecisionUnconfirmed.
    """
    decision = _decision(
        option,
        escalation_id=escalation_id,
        alternative=alternative,
        input_patch=input_patch,
        wait_s=wait_s,
        note=note,
        decided_by=decided_by or default_decider(),
        mapping_id=mapping_id,
    )
    desc = await _ensure_running(client, workflow_id)
    if worker is None or worker.task_queue != desc.task_queue:
        worker, _, _ = await check_worker(client, desc.task_queue, workflow_id, probe_s=probe_s)
    if worker.polling and not signal:
        result = await send_decision(client, workflow_id, decision, "update", timeout_s)
        return DecisionOutcome(workflow_id, option, "update", True, worker, result)
    if not worker.polling and not (queue or signal):
        raise NoWorker(
            f"no worker is polling task queue {desc.task_queue}; the decision would wait for "
            f"one. Nothing was sent{f' ({worker.detail})' if worker.detail else ''}; --queue "
            "sends it as a durable signal applied when a worker returns",
            task_queue=desc.task_queue,
        )
    memo, problem = await _memo_brief(desc)
    decision = _check_against_memo(workflow_id, decision, memo, problem)
    result = await send_decision(client, workflow_id, decision, "signal", timeout_s)
    return DecisionOutcome(workflow_id, option, "signal", False, worker, result)


def _check_against_memo(
    workflow_id: str,
    decision: EscalationDecision,
    memo: EscalationBrief | None,
    problem: str | None,
) -> EscalationDecision:
    """The decision, aimed at the memo's escalation; DecisionError when the memo shows it
    cannot apply (no worker validates a signal before it lands in history)."""
    if memo is None:
        why = problem or f"its {MEMO_KEY!r} memo is empty"
        raise DecisionError(f"{workflow_id} shows no open escalation ({why}); nothing to decide")
    if decision.option not in memo.options:
        raise DecisionError(
            f"{decision.option!r} is not offered for {memo.error_type.value} "
            f"(options: {', '.join(memo.options)})"
        )
    if decision.escalation_id is None and memo.open_escalations == 1:
        decision = decision.model_copy(update={"escalation_id": memo.escalation_id})
    return decision


async def _ensure_running(client: Client, workflow_id: str) -> WorkflowExecutionDescription:
    """The workflow's description; WorkflowClosed unless its latest run is running (RPCError
    NOT_FOUND when there is no such workflow)."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    if desc.status not in (None, WorkflowExecutionStatus.RUNNING):
        raise WorkflowClosed(workflow_id, desc.status.name)
    return desc


__all__: Sequence[str] = (
    "AWAITING_QUERY",
    "DecisionOutcome",
    "DecisionUnconfirmed",
    "EscalationListing",
    "NoWorker",
    "PausedWorkflow",
    "PendingCall",
    "StatusReport",
    "WorkerCheck",
    "check_address",
    "check_worker",
    "decide",
    "decide_checked",
    "default_decider",
    "healing_status",
    "list_escalations",
    "send_decision",
    "task_queue_pollers",
)
