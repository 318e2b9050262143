"""Workflow side of "tell a human": start the ``healing_notify`` activity beside the wait for
a decision, never in its way; without a webhook, write the notification's log line.

With ``HEALING_NOTIFY_WEBHOOK`` the notifier runs as a child task of the workflow: the pause
does not wait for it, a failed delivery is retried by the activity's RetryPolicy, and a final
failure is logged and swallowed, so a broken receiver never fails or delays the workflow. It
is an optional history entry, guarded by the ``healing-notify`` patch (recorded only when a
webhook is configured), so a history replays on a worker configured either way.

Without a webhook the notification is a log line written here (never while replaying), with
no activity: a pause then costs no extra history, and no activity is left running when a
quick decision completes the workflow.

Runs in workflow context outside the sandbox: no module-level mutable state.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Final

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from healing.config import HealingConfig
from healing.metrics import notification as count_notification
from healing.names import NOTIFY_ACTIVITY, NOTIFY_REJECTED_TYPE
from healing.notify import Notification, log_line, notification_for
from healing.types import Escalation

NOTIFY_PATCH: Final = "healing-notify"
NOTIFY_RETRIES: Final = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_attempts=5,
    non_retryable_error_types=[NOTIFY_REJECTED_TYPE],
)


def _notice(esc: Escalation, config: HealingConfig) -> Notification:
    info = workflow.info()
    return notification_for(
        esc, namespace=info.namespace, run_id=info.run_id, web_ui_url=config.web_ui_url
    )


def log_notice(esc: Escalation, config: HealingConfig) -> None:
    """The log-line notifier (``healing.notify``, WARNING), once: never on replay."""
    if workflow.unsafe.is_replaying():
        return
    logging.getLogger("healing.notify").warning("%s", log_line(_notice(esc, config)))
    count_notification("log", "sent")


def start_notifier(
    esc: Escalation, config: HealingConfig, tasks: set[asyncio.Task[None]]
) -> asyncio.Task[None]:
    """Start telling a human about ``esc``; ``tasks`` holds the task until it ends."""
    notice = _notice(esc, config)
    # The HTTP timeout plus room for the activity itself.
    timeout = timedelta(seconds=config.notify_timeout_s + 5.0)
    task = asyncio.create_task(_notify(notice, timeout))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def _notify(notice: Notification, start_to_close: timedelta) -> None:
    try:
        await workflow.execute_activity(
            NOTIFY_ACTIVITY,
            notice.model_dump(mode="json"),
            start_to_close_timeout=start_to_close,
            retry_policy=NOTIFY_RETRIES,
            summary=f"notify: paused for a decision ({notice.error_type} in {notice.call})",
        )
    except ActivityError as err:
        cause = err.cause
        why = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        workflow.logger.warning(
            "nobody was notified of escalation %s (the workflow stays paused): %s",
            notice.escalation_id,
            why,
        )
    except Exception as exc:  # never let the notifier fail the workflow
        workflow.logger.warning(
            "nobody was notified of escalation %s: %s", notice.escalation_id, exc
        )
