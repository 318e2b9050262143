"""Worker log lines a person reads: one per healing step and one per pause, no tracebacks.

The Temporal SDK logs every failed activity attempt as "Completing activity as failed" with a
full traceback (logger ``temporalio.activity``). For the ``ApplicationError`` that the healing
interceptor raises on purpose (it carries a ``FailureReport`` under ``REPORT_KEY``) that is
noise: :class:`HealingStepFilter` rewrites such a record into one line ("healing
crm.get_contact: SERVICE_DOWN (HTTP 503), retry in 2.0s") and drops the traceback. Every other
record, including real bugs in activities, passes through untouched.

:func:`install` adds the filter (idempotent); ``HealingPlugin`` and ``healing.runner`` call it.
:func:`pause_line` is the line the workflow side logs (logger ``healing``) when it pauses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from temporalio.exceptions import ApplicationError

from healing.escalation import format_delay, format_duration
from healing.names import REPORT_KEY
from healing.notify import workflow_link
from healing.types import Escalation

__all__ = [
    "ACTIVITY_LOGGER",
    "DEFAULT_WEB_UI_URL",
    "HealingStepFilter",
    "install",
    "pause_line",
    "step_line",
    "uninstall",
]

ACTIVITY_LOGGER = "temporalio.activity"
DEFAULT_WEB_UI_URL = "http://localhost:8233"
"""The dev server's Web UI (``healing dev``); ``HealingConfig.web_ui_url`` overrides it."""


def _report(err: BaseException) -> Mapping[str, Any] | None:
    if not isinstance(err, ApplicationError) or not err.details:
        return None
    first = err.details[0]
    if isinstance(first, Mapping) and isinstance(first.get(REPORT_KEY), Mapping):
        report: Mapping[str, Any] = first[REPORT_KEY]
        return report
    return None


def step_line(err: ApplicationError, report: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """One line for one healing step: which call, what failed, and what happens next.

    ``info`` is the SDK's activity details on the record (``temporal_activity``): workflow id,
    activity type, attempt.
    """
    cls = report.get("classification") or {}
    connector, operation = report.get("connector"), report.get("operation")
    target = f"{connector}.{operation}" if connector and operation else info.get("activity_type")
    error = str(cls.get("error_type") or err.type or "failure")
    if cls.get("status_code"):
        error += f" (HTTP {cls['status_code']})"
    if err.non_retryable:
        reason = report.get("reason") or "no retry is left"
        what = f"handed to the workflow: {reason}"
    else:
        delay = err.next_retry_delay.total_seconds() if err.next_retry_delay else 0.0
        what = f"retry in {format_delay(delay)}"
    where = []
    if info.get("attempt"):
        where.append(f"attempt {info['attempt']}")
    if info.get("workflow_id"):
        where.append(f"workflow {info['workflow_id']}")
    suffix = f" ({', '.join(where)})" if where else ""
    return f"healing {target}: {error}, {what}{suffix}"


class HealingStepFilter(logging.Filter):
    """Rewrites the SDK's per-attempt failure records of healing errors into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        report = _report(exc)
        if report is None:
            return True  # not ours: a real failure keeps its traceback
        assert isinstance(exc, ApplicationError)  # _report checked it
        info = getattr(record, "temporal_activity", None)
        record.msg = step_line(exc, report, info if isinstance(info, Mapping) else {})
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        if not exc.non_retryable and record.levelno == logging.WARNING:
            # A scheduled retry is healing at work, not something to look into.
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install(logger_name: str = ACTIVITY_LOGGER) -> HealingStepFilter:
    """Add the filter to the SDK's activity logger once; returns the one installed."""
    logger = logging.getLogger(logger_name)
    for existing in logger.filters:
        if isinstance(existing, HealingStepFilter):
            return existing
    step_filter = HealingStepFilter()
    logger.addFilter(step_filter)
    return step_filter


def uninstall(logger_name: str = ACTIVITY_LOGGER) -> None:
    """Remove the filter (tracebacks come back)."""
    logger = logging.getLogger(logger_name)
    for existing in list(logger.filters):
        if isinstance(existing, HealingStepFilter):
            logger.removeFilter(existing)


def pause_line(esc: Escalation, *, namespace: str, web_ui_url: str | None = None) -> str:
    """The one line logged when a workflow pauses for a human, with its Web UI link."""
    target = f"{esc.connector}.{esc.operation}" if esc.connector and esc.operation else esc.activity
    status = esc.classification.status_code
    error = esc.error_type.value + (f" (HTTP {status})" if status else "")
    options = ", ".join(o.option for o in esc.options)
    return (
        f"healing paused workflow {esc.workflow_id}: {target} {error} needs a decision "
        f"({options}; {esc.default_option} in {format_duration(esc.timeout_s)}): "
        f"{workflow_link(web_ui_url or DEFAULT_WEB_UI_URL, namespace, esc.workflow_id)}"
    )
