"""Contract names: what workflows, the CLI, other workers and Temporal itself know us by.

Defined once here and imported everywhere, because a name spelt twice drifts: a renamed
activity that the workflow side still schedules under its old name fails only at run time,
on a real server. Renaming one of these is a breaking change (DESIGN section 3); this module
imports nothing, so any module may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "ABORTED_TYPE",
    "ACTIVITY_PREFIX",
    "ADAPT_ACTIVITY",
    "CREDENTIAL_ERROR_TYPE",
    "DECISION_SIGNAL",
    "DECISION_UPDATE",
    "DRIFT_REVIEW_KEY",
    "ERROR_TYPE_ATTRIBUTE",
    "GRANT_REVOKED_TYPE",
    "HEALED_SIGNAL",
    "HEALING_ACTIVITIES",
    "HELD_TYPE",
    "HINTS_HEADER",
    "LEDGER_KEY",
    "MATCH_ACTIVITY",
    "MEMO_KEY",
    "NOTIFY_ACTIVITY",
    "NOTIFY_FAILED_TYPE",
    "NOTIFY_REJECTED_TYPE",
    "RECORD_ACTIVITY",
    "REFRESH_ACTIVITY",
    "REPORT_KEY",
    "SEARCH_ATTRIBUTES",
    "STATUS_ATTRIBUTE",
    "STATUS_QUERY",
    "TOKEN_ENDPOINT_TYPE",
]

# --- handlers every healing workflow answers -------------------------------------------------
STATUS_QUERY: Final = "healing_status"
DECISION_SIGNAL: Final = "escalation_decision"
DECISION_UPDATE: Final = "decide_escalation"
HEALED_SIGNAL: Final = "healing_healed_by_retries"
"""Sent by the activity side when server retries alone healed a call: the workflow cannot see
those retries otherwise, and the signal records them in history."""

# --- search attributes (both Keyword) and the memo key ---------------------------------------
STATUS_ATTRIBUTE: Final = "HealingStatus"
ERROR_TYPE_ATTRIBUTE: Final = "HealingErrorType"
SEARCH_ATTRIBUTES: Final[Mapping[str, str]] = MappingProxyType(
    {STATUS_ATTRIBUTE: "Keyword", ERROR_TYPE_ATTRIBUTE: "Keyword"}
)
"""Search attribute name -> indexed value type, as ``healing setup`` registers them."""
MEMO_KEY: Final = "healing"

CALL_INTEGRATION_ACTIVITY: Final = "call_integration"
"""The catalog-call activity (``activities.integration``); its request names the connection."""

# --- healing activities: the prefix keeps the interceptor from healing its own -----------------
ACTIVITY_PREFIX: Final = "healing_"
REFRESH_ACTIVITY: Final = "healing_refresh_credentials"
ADAPT_ACTIVITY: Final = "healing_adapt_schema"
MATCH_ACTIVITY: Final = "healing_match_pattern"
RECORD_ACTIVITY: Final = "healing_record"
NOTIFY_ACTIVITY: Final = "healing_notify"
"""Tells a human that a workflow paused for a decision (log line, webhook, Slack)."""
HEALING_ACTIVITIES: Final = frozenset(
    {REFRESH_ACTIVITY, ADAPT_ACTIVITY, MATCH_ACTIVITY, RECORD_ACTIVITY, NOTIFY_ACTIVITY}
)

# --- what travels inside Temporal messages ----------------------------------------------------
HINTS_HEADER: Final = "healing-hints"
"""Temporal header carrying the workflow side's hints to the activity side."""
REPORT_KEY: Final = "healing_report"
"""Key of the FailureReport in the first detail of a healing ApplicationError."""
DRIFT_REVIEW_KEY: Final = "healing_drift_review"
"""Key of a call_integration result that holds a drifted response for a human's review
(``healing.drift.DriftReview``): the workflow side escalates with ``accept_mapping``."""
LEDGER_KEY: Final = "healing_ledger"
"""Key of the call's ledger in activity heartbeat details (survives to the next attempt)."""

# --- ApplicationError types the healing layer raises and recognises ----------------------------
ABORTED_TYPE: Final = "HealingAborted"
GRANT_REVOKED_TYPE: Final = "GrantRevoked"
CREDENTIAL_ERROR_TYPE: Final = "CredentialError"
TOKEN_ENDPOINT_TYPE: Final = "TokenEndpointUnavailable"
"""The refresh activity's token endpoint failed (5xx, 429, timeout, bad answer): transient."""
NOTIFY_FAILED_TYPE: Final = "HealingNotifyFailed"
"""The notifier's receiver failed (5xx, timeout, refused): retried by its RetryPolicy."""
NOTIFY_REJECTED_TYPE: Final = "HealingNotifyRejected"
"""The notifier's receiver refused the message (4xx): not retried."""
HELD_TYPE: Final = "HealingHeld"
"""A call held back before sending (its rate-limit slot is later, or the fleet's retry budget
is spent): a server-side wait, never a failed attempt."""
