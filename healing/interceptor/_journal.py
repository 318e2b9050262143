"""What the workflow side tells the store about one call, and what it asks of it.

Workflow code never touches the store: events and strategy outcomes go out through the
``healing_record`` local activity, learned hints come in through ``healing_match_pattern``,
so history records both and replays need no store. Events are typed models, built (and so
validated) where they happen; recording is best effort: it never fails a workflow.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

from healing.names import MATCH_ACTIVITY, RECORD_ACTIVITY
from healing.types import ErrorPattern, ErrorType, EventKind, HealingEvent, HealingStrategy

_TIMEOUT = timedelta(seconds=5)
_ONCE = RetryPolicy(maximum_attempts=2)


class Journal:
    """Events and outcomes of one call, buffered in workflow memory until flushed."""

    def __init__(self, enabled: Callable[[], bool], connector: str | None = None) -> None:
        self._enabled = enabled
        self._decided: bool | None = None
        self.connector = connector
        self.operation: str | None = None
        self.events: list[HealingEvent] = []
        self.outcomes: list[dict[str, Any]] = []
        self.pending: list[tuple[ErrorPattern, HealingStrategy]] = []

    @property
    def enabled(self) -> bool:
        if self._decided is None:
            self._decided = self._enabled()
        return self._decided

    def event(
        self,
        kind: EventKind,
        *,
        error_type: ErrorType | None = None,
        fingerprint: str | None = None,
        strategy: HealingStrategy | None = None,
        outcome: str | None = None,
        duration_s: float | None = None,
    ) -> None:
        if not self.enabled:
            return
        self.events.append(
            HealingEvent(
                at=workflow.now(),
                kind=kind,
                workflow_id=workflow.info().workflow_id,
                connector=self.connector,
                operation=self.operation,
                error_type=error_type,
                fingerprint=fingerprint,
                strategy=strategy,
                outcome=outcome,
                duration_s=duration_s,
            )
        )

    def tried(self, pattern: ErrorPattern, strategy: HealingStrategy) -> None:
        """A workflow-side strategy is under way; its outcome is known when the call ends."""
        if self.enabled:
            self.pending.append((pattern, strategy))

    @property
    def last_strategy(self) -> HealingStrategy | None:
        return self.pending[-1][1] if self.pending else None

    def settle(self, *, healed: bool, heal_s: float | None = None) -> None:
        for pattern, strategy in self.pending:
            self.outcomes.append(
                {
                    "pattern": pattern.model_dump(mode="json"),
                    "strategy": strategy.value,
                    "healed": healed,
                    "heal_s": heal_s if healed else None,
                }
            )
        self.pending = []

    async def flush(self) -> None:
        """Hand what is buffered to the worker's event log; a failure never fails the call."""
        if not self.enabled or not (self.events or self.outcomes):
            return
        body = {
            "events": [e.model_dump(mode="json") for e in self.events],
            "outcomes": self.outcomes,
        }
        self.events, self.outcomes = [], []
        try:
            await workflow.execute_local_activity(
                RECORD_ACTIVITY, body, start_to_close_timeout=_TIMEOUT, retry_policy=_ONCE
            )
        except Exception as exc:
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
    except Exception as exc:
        workflow.logger.warning("no learned hint for %s: %s", fingerprint, exc)
        return None
    return result
