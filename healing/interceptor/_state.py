"""Per-workflow healing state: what the handlers report and the healing loop changes.

Runs in workflow context outside the sandbox: no module-level mutable state.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import SearchAttributeKey

from healing.config import HealingConfig
from healing.escalation import apply_patch, brief, check_decision, format_delay, to_markdown
from healing.logs import pause_line
from healing.names import ERROR_TYPE_ATTRIBUTE, HEALED_SIGNAL, MEMO_KEY, STATUS_ATTRIBUTE
from healing.types import (
    Escalation,
    EscalationDecision,
    HealingAttempt,
    HealingState,
    HealingStatus,
    RetriesHealed,
)

STATUS_KEY = SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE)
ERROR_TYPE_KEY = SearchAttributeKey.for_keyword(ERROR_TYPE_ATTRIBUTE)
_HISTORY = 50
_SA_PATCH = "healing-search-attributes"
_MEMO_PATCH = "healing-memo"
_RETRIES_HEALED_PATCH = "healing-retries-healed"
_UPFRONT_PATCH = "healing-features-upfront"


class WorkflowSide(Protocol):
    """What the workflow side needs of the worker's healing state (``SelfHealingInterceptor``)."""

    config: HealingConfig
    search_attributes_enabled: bool

    @property
    def has_store(self) -> bool: ...


class WorkflowHealing:
    """Everything the handlers report and the healing loop changes, for one workflow run."""

    def __init__(self, side: WorkflowSide) -> None:
        self.side = side
        self.state: HealingState = "idle"
        self.error_type: str | None = None
        self.attempts = 0
        self.counts: dict[str, int] = {}
        self.history: list[HealingAttempt] = []
        self.open: dict[str, Escalation] = {}
        self.decisions: dict[str, EscalationDecision] = {}
        self.touched = False
        self.features: dict[str, bool] = {}
        self.args: dict[str, list[Any]] = {}
        """Each open escalation's call arguments, to check an edit before accepting it."""
        self.memo: dict[str, Any] | None = None
        """The ``healing`` memo as last upserted (None: not set)."""
        self.human = False
        """A human decided at least once in this run: it ends ``resolved``, not ``healed``."""
        self.rejected: str | None = None
        """Why the last decision signal was refused, and who sent it (Current Details show it
        until a valid decision arrives). Not in history: a replay rebuilds it from the signals."""
        self.announced: set[str] = set()
        """Escalations whose pause has been logged (once each; replays log nothing)."""
        self.drift: list[str] = []
        """Schema drift this run's calls met, once each (``healing_status``)."""
        self.parked: dict[str, datetime] = {}
        """Calls waiting for a spent quota's reset (``connector.operation`` -> resume time)."""
        self.log = workflow.LoggerAdapter(logging.getLogger("healing"), None)
        self.log.workflow_info_on_message = False  # the line names the workflow itself

    def snapshot(self) -> HealingStatus:
        return HealingStatus(
            state=self.state,
            attempts=self.attempts,
            counts_by_error_type=dict(self.counts),
            open_escalations=list(self.open.values()),
            history=list(self.history),
            drift=list(self.drift),
            parked=dict(self.parked),
        )

    def note_drift(self, changes: list[str]) -> None:
        """Remember drift a call met (names and types only), once each, at most _HISTORY."""
        for change in changes:
            if change not in self.drift and len(self.drift) < _HISTORY:
                self.drift.append(change)

    def record(self, attempt: HealingAttempt) -> None:
        self.history = [*self.history, attempt][-_HISTORY:]

    def count(self, counts: dict[str, int]) -> None:
        for key, n in counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
            self.attempts += n
        self.touched = self.touched or bool(counts)

    def set(self, state: HealingState, error_type: str | None = None) -> None:
        if self.open and state != "failed":
            state = "awaiting_decision"  # another call may still wait for a human
        changed = state != self.state or (error_type is not None and error_type != self.error_type)
        self.state = state
        self.error_type = error_type or self.error_type
        self.touched = True
        self.render()
        self._announce()
        memo = brief(list(self.open.values())).model_dump(mode="json") if self.open else None
        if memo != self.memo and self.feature(_MEMO_PATCH, True):
            # Listing escalations reads this from visibility: no worker needed.
            workflow.upsert_memo({MEMO_KEY: memo})
            self.memo = memo
        if changed and self.feature(_SA_PATCH, self.side.search_attributes_enabled):
            updates = [STATUS_KEY.value_set(state)]
            if self.error_type:
                updates.append(ERROR_TYPE_KEY.value_set(self.error_type))
            workflow.upsert_search_attributes(updates)

    def render(self) -> None:
        """Write Current Details (the Web UI's User Metadata tab; not part of history)."""
        if self.open:
            details = to_markdown(list(self.open.values()), rejected=self.rejected)
        elif self.rejected:
            details = f"**Last decision rejected:** {self.rejected}\n\nHealing: {self.state}"
        else:
            details = f"Healing: {self.state}"
        if self.parked and not self.open:
            waits = (
                f"- {call}: quota spent, resumes by itself at {at:%Y-%m-%d %H:%M:%S} UTC"
                for call, at in sorted(self.parked.items())
            )
            details += "\n\n**Parked until the quota resets** (no decision needed):\n" + "\n".join(
                waits
            )
        workflow.set_current_details(details)

    def _announce(self) -> None:
        """One log line per pause, with the workflow's Web UI link (logger ``healing``).

        Without a webhook the notifier (``healing_notify``) logs that line itself; with one it
        posts instead, so the worker log hears of the pause from here.
        """
        config = self.side.config
        if config.notify_webhook is None:
            return
        for esc in self.open.values():
            if esc.escalation_id in self.announced:
                continue
            self.announced.add(esc.escalation_id)
            namespace = workflow.info().namespace
            self.log.info(pause_line(esc, namespace=namespace, web_ui_url=config.web_ui_url))

    def reject(self, problem: str, sent_by: str | None) -> None:
        """Record a refused decision signal and show it in Current Details."""
        who = sent_by or "unknown"
        self.rejected = f"{problem} (sent by {who} at {workflow.now():%H:%M:%S} UTC)"
        self.render()

    def feature(self, patch_id: str, enabled: bool) -> bool:
        """Whether this run uses an optional feature (search attributes, the store), decided
        once and recorded in history, so a replay on a worker configured otherwise stays
        deterministic."""
        if patch_id not in self.features:
            if enabled or workflow.unsafe.is_replaying():
                self.features[patch_id] = workflow.patched(patch_id)
            else:
                self.features[patch_id] = False
        return self.features[patch_id]

    def decide_upfront(self, features: dict[str, bool]) -> None:
        """Decide every optional feature (patch id -> enabled) at the first healing moment,
        before any local activity runs. A patch first met after a local activity is recorded in
        whichever workflow task that activity's result lands in, and a query arriving meanwhile
        moves it: a replay then misses the marker and fails as non-deterministic."""
        if _UPFRONT_PATCH in self.features:
            return
        if self.feature(_UPFRONT_PATCH, True):
            self.feature(_MEMO_PATCH, True)
            self.feature(_SA_PATCH, self.side.search_attributes_enabled)
            for patch_id, enabled in features.items():
                self.feature(patch_id, enabled)

    def check(self, decision: EscalationDecision) -> Escalation:
        """The escalation a decision answers; DecisionError says why it cannot be applied."""
        esc = check_decision(decision, list(self.open.values()))
        if decision.option == "edit_and_retry":
            apply_patch(self.args.get(esc.escalation_id, []), decision.input_patch or {})
        return esc

    def healed_by_retries(self, raw: Any) -> None:
        """Record a heal done by server retries alone (``HEALED_SIGNAL``)."""
        try:
            report = RetriesHealed.model_validate(raw)
        except ValidationError as exc:
            workflow.logger.warning("ignoring %s signal: %s", HEALED_SIGNAL, exc)
            return
        if not self.feature(_RETRIES_HEALED_PATCH, True):
            # Buffered by a run that had no handler yet: replaying it must add no command.
            return
        self.count(report.counts_by_type)
        tried = ", ".join(f"{k} x{n}" for k, n in sorted(report.counts_by_type.items()))
        self.record(
            HealingAttempt(
                at=workflow.now(),
                error_type=report.error_type,
                strategy=report.strategy,
                outcome="healed",
                detail=f"{report.activity} healed by server retries in "
                f"{format_delay(report.heal_s)} ({tried})",
            )
        )
        if self.state in ("idle", "healing", "healed"):
            self.set("healed")

    def decide(self, esc: Escalation, decision: EscalationDecision) -> None:
        self.human = True
        self.open.pop(esc.escalation_id, None)
        self.args.pop(esc.escalation_id, None)
        self.decisions[esc.escalation_id] = decision
        self.rejected = None
        self.render()
