"""One attempt of one integration call, as the activity side sees it.

What the attempt knows (connector, operation, hints, the ledger of earlier attempts), the
events it emits, and the activity's own heartbeat details, kept apart from the ledger.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from temporalio import activity
from temporalio.worker import ActivityOutboundInterceptor, ExecuteActivityInput

from healing.eventlog import EventLog
from healing.integration import CallContext, IntegrationSpec, read_hints
from healing.interceptor._ledger import Ledger, is_ledger
from healing.types import Classification, ErrorPattern, EventKind, HealingEvent


def inner_timeout(info: activity.Info) -> float | None:
    """Just under start_to_close: a call that overruns times out here, where it is
    classified as TIMEOUT and paced, not on the server, where nothing would classify it."""
    stc = info.start_to_close_timeout
    if stc is None or info.is_local:
        return None
    seconds = stc.total_seconds()
    return seconds - min(1.0, seconds * 0.1)


def arg_field(args: Any, name: str) -> str | None:
    """``connector``/``operation`` of a call's first argument (a model or a dict), if any."""
    first = args[0] if args else None
    value = first.get(name) if isinstance(first, dict) else getattr(first, name, None)
    return value if isinstance(value, str) else None


class Attempt:
    """One attempt of one integration call, as the activity side sees it."""

    def __init__(
        self,
        input: ExecuteActivityInput,
        spec: IntegrationSpec | None,
        *,
        clock: Callable[[], float],
        events: EventLog,
    ) -> None:
        self.clock = clock
        self.events = events
        self.info = activity.info()
        self.hints = read_hints(input.headers)
        self.connector = (
            self.hints.connector or (spec and spec.connector) or arg_field(input.args, "connector")
        )
        self.operation = (spec and spec.operation) or arg_field(input.args, "operation")
        self.base_connector = (spec and spec.connector) or arg_field(input.args, "connector")
        """The call's own connector (before any reroute): alternatives are listed under it."""
        self.ledger = Ledger.from_details(self.info.heartbeat_details)
        self.started = clock()
        self.context: CallContext | None = None

    def elapsed(self) -> float:
        # Server-side times, so time skipping and worker clock skew do not distort the budget.
        # started_time, not current_attempt_scheduled_time: the test server sets the latter to
        # the previous failure's time, which would hide the wait just served.
        served = (self.info.started_time - self.info.scheduled_time).total_seconds()
        return served + self.clock() - self.started

    def event(
        self,
        kind: EventKind,
        cls: Classification | ErrorPattern | None,
        *,
        strategy: str | None = None,
        outcome: str | None = None,
        duration_s: float | None = None,
    ) -> None:
        self.events.start()
        self.events.emit(
            HealingEvent.model_validate(
                {
                    "at": datetime.now(UTC),
                    "kind": kind,
                    "workflow_id": self.info.workflow_id or "",
                    "connector": self.connector,
                    "operation": self.operation,
                    "error_type": cls.error_type if cls else None,
                    "fingerprint": cls.fingerprint if cls else None,
                    "strategy": strategy,
                    "outcome": outcome,
                    "duration_s": duration_s,
                }
            )
        )


# The activity's own latest heartbeat details in this attempt (a list per running call).
USER_HEARTBEAT: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "healing_user_heartbeat", default=None
)


class HeartbeatKeeper(ActivityOutboundInterceptor):
    """Remembers the activity's own heartbeat details, so the ledger is sent beside them
    rather than over them (a paginating activity resumes from its details)."""

    def heartbeat(self, *details: Any) -> None:
        holder = USER_HEARTBEAT.get()
        if holder is not None and not any(is_ledger(d) for d in details):
            holder[:] = details
        self.next.heartbeat(*details)
