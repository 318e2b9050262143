"""Domain values shared by every module: error types, verdicts, escalations, status.

All are pydantic models or enums so that they cross Temporal's pydantic data converter
unchanged and can be validated at the boundary (signals, updates, config).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from healing.names import REPORT_KEY as REPORT_KEY  # the key FailureReport travels under

BreakerState = Literal["closed", "open", "half_open"]
ConnectorName = str


class ErrorType(StrEnum):
    """What went wrong, as the classification matrix knows it."""

    TIMEOUT = "TIMEOUT"
    RATE_LIMITED = "RATE_LIMITED"
    SERVICE_DOWN = "SERVICE_DOWN"
    AUTH_EXPIRED = "AUTH_EXPIRED"
    AUTH_INVALID = "AUTH_INVALID"
    SCHEMA_MISMATCH = "SCHEMA_MISMATCH"
    NETWORK_ERROR = "NETWORK_ERROR"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # Extensions beyond the spec's ten rows.
    BAD_REQUEST = "BAD_REQUEST"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    QUOTA_EXHAUSTED = "QUOTA_EXHAUSTED"
    CONFLICT = "CONFLICT"
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"


class HealingStrategy(StrEnum):
    """How an error type is healed."""

    RETRY_BACKOFF = "retry_backoff"
    WAIT_RETRY_AFTER = "wait_retry_after"
    RETRY_THEN_REROUTE = "retry_then_reroute"
    REFRESH_TOKEN = "refresh_token"
    SCHEMA_ADAPT = "schema_adapt"
    RETRY = "retry"
    WAIT_CIRCUIT = "wait_circuit"
    REROUTE = "reroute"
    ESCALATE = "escalate"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Classification(_Frozen):
    """The verdict on one failure: where it sits in the matrix and what to do about it."""

    error_type: ErrorType
    transient: bool | None = Field(description="None means 'maybe' (INTERNAL_ERROR)")
    retryable: bool
    strategy: HealingStrategy
    max_attempts: int = Field(ge=0, description="healing retries allowed for this type")
    status_code: int | None = None
    vendor_code: str | None = None
    retry_after_s: float | None = None
    message: str = ""
    fingerprint: str = ""
    rule: str = "default"
    benign: bool = False
    escalate_now: bool = False
    """A retryable type the rule says cannot heal in time (HubSpot DAILY, quota exhausted)."""
    schema_mapping: dict[str, str] = Field(default_factory=dict)
    """For SCHEMA_MISMATCH: proposed renames, observed field -> expected field (names only)."""


class HealingAttempt(_Frozen):
    """One thing the healing layer tried for one call."""

    at: datetime
    error_type: ErrorType | None = None
    strategy: HealingStrategy | Literal["decision"]
    outcome: Literal["failed", "healed", "escalated", "gave_up", "decided", "skipped", "waiting"]
    detail: str = ""
    delay_s: float | None = None


class HealingResult(_Frozen):
    """What healing did for one call, attached to a step's result."""

    healed: bool
    escalated: bool = False
    attempts: int = 1
    error_types: list[ErrorType] = Field(default_factory=list)
    strategies: list[HealingStrategy] = Field(default_factory=list)
    time_to_heal_s: float | None = None
    decision: str | None = None
    connector: str | None = None


class CircuitBreakerState(_Frozen):
    connector: ConnectorName
    state: BreakerState
    failures_in_window: int = 0
    calls_in_window: int = 0
    opened_at: float | None = None
    retry_at: float | None = None


class ErrorPattern(_Frozen):
    """A recurring failure: the key the learning layer counts outcomes under."""

    fingerprint: str
    connector: str
    operation: str
    error_type: ErrorType
    status_code: int | None = None
    vendor_code: str | None = None
    template: str = ""


DecisionOptionName = Literal[
    "retry", "skip", "abort", "reroute", "edit_and_retry", "reauthorized", "wait", "accept_mapping"
]


class EscalationOption(_Frozen):
    option: DecisionOptionName
    label: str
    effect: str


class Escalation(_Frozen):
    """A call the healing layer could not fix, waiting for a human."""

    escalation_id: str
    workflow_id: str
    activity: str
    connector: str | None
    operation: str | None
    error_type: ErrorType
    classification: Classification
    explanation: str
    connection: str | None = None
    """The connector account whose credential the call used (None: ``default``)."""
    options: list[EscalationOption]
    attempts: list[HealingAttempt] = Field(default_factory=list)
    opened_at: datetime
    timeout_s: float
    default_option: DecisionOptionName
    alternatives: list[str] = Field(default_factory=list)
    proposal: dict[str, Any] | None = None
    """For a schema review: the proposed mapping (``healing.drift.SchemaMapping``, names
    only) that ``accept_mapping`` applies to the response already received."""

    @property
    def timeout_at(self) -> datetime:
        """When ``default_option`` applies without a decision."""
        return self.opened_at + timedelta(seconds=self.timeout_s)


class EscalationBrief(_Frozen):
    """An open escalation in brief: the ``healing`` memo while a workflow is paused, so
    listing and reading escalations needs visibility only, no running worker."""

    escalation_id: str
    workflow_id: str
    error_type: ErrorType
    connector: str | None = None
    operation: str | None = None
    connection: str | None = None
    """The connector account whose credential the call used (None: ``default``)."""
    opened_at: datetime
    timeout_at: datetime
    options: list[DecisionOptionName]
    default_option: DecisionOptionName
    explanation: str
    """The explanation's first line."""
    open_escalations: int = 1
    """Escalations open on the workflow (parallel steps may pause together)."""
    mapping_id: str | None = None
    """For a schema review: the proposed mapping (``healing drift approve`` resumes it)."""


class EscalationDecision(BaseModel):
    """A human's answer, from a signal or an update."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    option: DecisionOptionName
    escalation_id: str | None = None
    alternative: str | None = None
    input_patch: dict[str, Any] | None = None
    wait_s: float | None = Field(default=None, ge=0)
    mapping_id: str | None = None
    """For ``accept_mapping``: the proposal accepted (default: the escalation's own)."""
    note: str = ""
    decided_by: str = "unknown"


HealingState = Literal["idle", "healing", "awaiting_decision", "healed", "resolved", "failed"]
"""``healed``: healed with no human; ``resolved``: finished after a human decided."""


class HealingStatus(_Frozen):
    """Answer of the `healing_status` query."""

    state: HealingState
    attempts: int = 0
    counts_by_error_type: dict[str, int] = Field(default_factory=dict)
    open_escalations: list[Escalation] = Field(default_factory=list)
    history: list[HealingAttempt] = Field(default_factory=list)
    drift: list[str] = Field(default_factory=list)
    """Schema drift this workflow's calls met (``added properties.hs_new_prop (string)``),
    names and types only; also drift that failed nothing."""
    parked: dict[str, datetime] = Field(default_factory=dict)
    """Calls waiting, with no human, for a spent quota's reset: ``connector.operation`` (with
    `` #2``, ``#3`` ... for parallel calls of one operation) -> when they resume (UTC)."""

    @property
    def open_escalation(self) -> Escalation | None:
        return self.open_escalations[0] if self.open_escalations else None


EventKind = Literal[
    "classified",
    "strategy",
    "attempt",
    "escalated",
    "decided",
    "healed",
    "gave_up",
    "refreshed",
    "adapted",
    "rerouted",
    "circuit",
]


class HealingEvent(_Frozen):
    """One step of healing, for the event log."""

    at: datetime
    kind: EventKind
    workflow_id: str
    connector: str | None = None
    operation: str | None = None
    error_type: ErrorType | None = None
    fingerprint: str | None = None
    strategy: HealingStrategy | None = None
    outcome: str | None = None
    duration_s: float | None = None


class FailureReport(_Frozen):
    """What the activity side hands the workflow side when it stops retrying a call.

    Travels as the first detail of the ApplicationError under ``REPORT_KEY``; holds no
    secrets (the classification's message is redacted) and no response values.
    """

    classification: Classification
    connector: str | None = None
    operation: str | None = None
    attempts: int = 1
    counts_by_type: dict[str, int] = Field(default_factory=dict)
    elapsed_s: float = 0.0
    reason: str = ""
    learned: str | None = None
    """The learned hint that shaped this verdict, in words (None: the matrix alone)."""
    token_version: int | None = None
    """The credential version the failed attempt sent (AUTH_EXPIRED refreshes past it)."""
    activity_id: str | None = None
    """The call's activity id: restarts reuse it, so its idempotency key stays the same."""
    alternatives: list[str] = Field(default_factory=list)
    """Reroute targets of the connector, as the activity's worker knows them, healthiest
    first; recorded in history so the workflow side decides the same way on replay."""
    park_s: float | None = None
    """For a spent daily or org quota: seconds until its reset, when the call may wait for it
    with no human (within the worker's ``max_wait_s``); None: a human decides."""


class RetriesHealed(_Frozen):
    """What the activity side tells the workflow when server retries healed a call."""

    activity: str
    activity_id: str
    attempts: int
    counts_by_type: dict[str, int] = Field(default_factory=dict)
    error_type: ErrorType | None = None
    strategy: HealingStrategy = HealingStrategy.RETRY
    heal_s: float = 0.0
