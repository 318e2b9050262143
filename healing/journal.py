"""What the workflow side tells the store about one call, and what it asks of it.

Workflow code never touches the store: events and strategy outcomes go out through the
``healing_record`` local activity, learned hints come in through ``healing_match_pattern``,
so history records both and replays need no store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from healing.types import ErrorPattern, EventKind

MATCH_ACTIVITY = "healing_match_pattern"
RECORD_ACTIVITY = "healing_record"
_TIMEOUT = timedelta(seconds=5)
_ONCE = RetryPolicy(maximum_attempts=2)


class Journal:
    """Events and outcomes of one call, buffered in workflow memory until flushed."""

    def __init__(self, enabled: Callable[[], bool], connector: str | None = None) -> None:
        self._enabled = enabled
        self._decided: bool | None = None
        self.connector = connector
        self.operation: str | None = None
        self.events: list[dict[str, Any]] = []
        self.outcomes: list[dict[str, Any]] = []
        self.pending: list[tuple[ErrorPattern, str]] = []

    @property
    def enabled(self) -> bool:
        if self._decided is None:
            self._decided = self._enabled()
        return self._decided

    def event(self, kind: EventKind, **fields: Any) -> None:
        if not self.enabled:
            return
        self.events.append(
            {
                "at": workflow.now().isoformat(),
                "kind": kind,
                "workflow_id": workflow.info().workflow_id,
                "connector": self.connector,
                "operation": self.operation,
                **{k: (v.value if hasattr(v, "value") else v) for k, v in fields.items()},
            }
        )

    def tried(self, pattern: ErrorPattern, strategy: str) -> None:
        """A workflow-side strategy is under way; its outcome is known when the call ends."""
        if self.enabled:
            self.pending.append((pattern, strategy))

    def settle(self, *, healed: bool, heal_s: float | None = None) -> None:
        for pattern, strategy in self.pending:
            self.outcomes.append(
                {
                    "pattern": pattern.model_dump(mode="json"),
                    "strategy": strategy,
                    "healed": healed,
                    "heal_s": heal_s if healed else None,
                }
            )
        self.pending = []

    async def flush(self) -> None:
        """Hand what is buffered to the worker's event log; a failure never fails the call."""
        if not self.enabled or not (self.events or self.outcomes):
            return
        body = {"events": self.events, "outcomes": self.outcomes}
        self.events, self.outcomes = [], []
        try:
            await workflow.execute_local_activity(
                RECORD_ACTIVITY, body, start_to_close_timeout=_TIMEOUT, retry_policy=_ONCE
            )
        except ActivityError as exc:
            workflow.logger.warning("healing events not recorded: %s", exc)


async def learned_hint(enabled: bool, fingerprint: str, error_type: str) -> dict[str, Any] | None:
    """The store's hint for a failure pattern, recorded in history; None without one."""
    if not enabled:
        return None
    try:
        result: dict[str, Any] | None = await workflow.execute_local_activity(
            MATCH_ACTIVITY,
            {"fingerprint": fingerprint, "error_type": error_type},
            start_to_close_timeout=_TIMEOUT,
            retry_policy=_ONCE,
        )
    except ActivityError as exc:
        workflow.logger.warning("no learned hint for %s: %s", fingerprint, exc)
        return None
    return result
