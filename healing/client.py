"""Client-side helpers: read a workflow's healing status, list and decide escalations.

Used by the CLI and by users' own code; the same operations exist as plain Temporal calls
(query ``healing_status``, signal ``escalation_decision``, update ``decide_escalation``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from healing.errors import ConfigError, DecisionError, WorkflowClosed, validation_problems
from healing.names import DECISION_SIGNAL as SIGNAL
from healing.names import DECISION_UPDATE as UPDATE
from healing.names import STATUS_QUERY as QUERY
from healing.types import DecisionOptionName, Escalation, EscalationDecision, HealingStatus

AWAITING_QUERY = 'HealingStatus = "awaiting_decision" AND ExecutionStatus = "Running"'
_HOST = re.compile(r"[\w.-]+")


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
    pending: list[PendingCall]


async def healing_status(client: Client, workflow_id: str) -> StatusReport:
    """The healing query plus the server's view of activities being retried now."""
    handle = client.get_workflow_handle(workflow_id)
    desc = await handle.describe()
    status: HealingStatus | None = None
    try:
        raw = await handle.query(QUERY)
        status = HealingStatus.model_validate(raw)
    except Exception:  # no healing worker running, or a closed workflow without one
        status = None
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
    run_status = desc.status.name if desc.status else "UNKNOWN"
    return StatusReport(workflow_id, run_status, status, pending)


async def list_escalations(client: Client, *, limit: int = 100) -> list[Escalation]:
    """Open escalations of running workflows (needs the HealingStatus search attribute)."""
    found: list[Escalation] = []
    async for wf in client.list_workflows(AWAITING_QUERY, limit=limit):
        try:
            raw = await client.get_workflow_handle(wf.id, run_id=wf.run_id).query(QUERY)
        except Exception:
            continue
        found.extend(HealingStatus.model_validate(raw).open_escalations)
    return found


async def decide(
    client: Client,
    workflow_id: str,
    option: DecisionOptionName,
    *,
    escalation_id: str | None = None,
    alternative: str | None = None,
    input_patch: dict[str, Any] | None = None,
    wait_s: float | None = None,
    note: str = "",
    decided_by: str = "cli",
    via: Literal["update", "signal"] = "update",
) -> dict[str, Any]:
    """Send a decision. The update is checked by the workflow before it is accepted;
    DecisionError carries the workflow's reason when it is rejected."""
    try:
        decision = EscalationDecision(
            option=option,
            escalation_id=escalation_id,
            alternative=alternative,
            input_patch=input_patch,
            wait_s=wait_s,
            note=note,
            decided_by=decided_by,
        )
    except ValidationError as exc:
        raise DecisionError(
            f"invalid decision ({validation_problems(exc, root='decision')})"
        ) from None
    body = decision.model_dump(mode="json", exclude_none=True)
    handle = client.get_workflow_handle(workflow_id)
    # The server answers NOT_FOUND for a closed workflow too; say which it is.
    await _ensure_running(client, workflow_id)
    try:
        if via == "signal":
            await handle.signal(SIGNAL, body)
            return {"accepted": None, "option": option, "via": "signal"}
        result: dict[str, Any] = await handle.execute_update(UPDATE, body)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        raise DecisionError(getattr(cause, "message", None) or str(cause)) from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # it closed after the check
            await _ensure_running(client, workflow_id)
        raise
    return result


async def _ensure_running(client: Client, workflow_id: str) -> None:
    """Raise WorkflowClosed unless the workflow's latest run is running (RPCError NOT_FOUND
    when there is no such workflow)."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    if desc.status not in (None, WorkflowExecutionStatus.RUNNING):
        raise WorkflowClosed(workflow_id, desc.status.name)
