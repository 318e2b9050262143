"""Telling a human that a workflow paused for a decision.

When a call cannot heal, the human is told one :class:`Notification`, built from the
escalation in workflow code, in one of three forms:

- a log line (:func:`log_line`; ``healing.notify`` logger, WARNING) when no webhook is
  configured, written by the workflow side itself (no activity, nothing in history);
- a JSON POST to ``HEALING_NOTIFY_WEBHOOK`` (:func:`webhook_body`);
- a Slack-compatible message, ``{"text": ..., "blocks": [...]}`` (:func:`slack_message`), for a
  ``hooks.slack.com`` URL or ``HEALING_NOTIFY_FORMAT=slack``.

The two POSTs are sent by the ``healing_notify`` activity, started beside the wait for a
decision (it never blocks or fails the workflow; its RetryPolicy retries a failed delivery;
history records what the human was told).

Every form carries the explanation, the options, the Web UI link
(``{HEALING_WEB_UI_URL}/namespaces/{namespace}/workflows/{workflow_id}``) and the command that
decides (``healing decide WF <option>``).

Signature scheme. With ``HEALING_NOTIFY_SECRET`` set, each POST carries::

    X-Healing-Timestamp: 1700000000                      (Unix seconds when it was sent)
    X-Healing-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>

where ``body`` is the raw request body (UTF-8 JSON, exactly the bytes received). A receiver
recomputes the HMAC over the raw body, compares it in constant time and rejects timestamps
older (or newer) than a tolerance, which stops replays: :func:`verify_signature` does all
three. Each retry is signed afresh with its own timestamp. ``X-Healing-Delivery`` holds the
escalation id, the same on every retry, so a receiver can drop a duplicate delivery (a retry
after an answer that was lost).

The webhook URL and the secret are never logged (a Slack webhook URL is itself a credential):
messages name the receiver by scheme, host and port only. 5xx answers, 408, 429 and transport
errors (timeouts, refused connections) are retryable :class:`NotifyError`; other 4xx and
redirects are not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shlex
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict

from healing.backoff import parse_retry_after
from healing.types import Escalation, EscalationOption

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Notification",
    "NotifyError",
    "NotifyFormat",
    "decide_command",
    "deliver",
    "describe_target",
    "log_line",
    "notification_for",
    "notify_format",
    "payload",
    "sign",
    "slack_message",
    "verify_signature",
    "webhook_body",
    "workflow_link",
]

_LOG = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Healing-Timestamp"
SIGNATURE_HEADER = "X-Healing-Signature"
DELIVERY_HEADER = "X-Healing-Delivery"
EVENT_HEADER = "X-Healing-Event"
EVENT = "escalation.opened"
DEFAULT_TOLERANCE_S = 300.0
_SLACK_TEXT_MAX = 2900  # Slack's limit for a section's text is 3000 characters
_RETRY_AFTER_MAX_S = 60.0

NotifyFormat = Literal["log", "json", "slack"]


class NotifyError(Exception):
    """The receiver did not take the notification; ``retryable`` says if trying again helps."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s


class Notification(BaseModel):
    """What a human is told when a workflow pauses: the activity input and the JSON body."""

    model_config = ConfigDict(frozen=True)

    event: str = EVENT
    workflow_id: str
    run_id: str | None = None
    namespace: str
    escalation_id: str
    error_type: str
    connector: str | None = None
    operation: str | None = None
    activity: str
    explanation: str
    options: list[EscalationOption]
    default_option: str
    opened_at: datetime
    timeout_at: datetime
    link: str
    """The workflow in the Temporal Web UI."""
    decide_command: str
    """``healing decide WF <option>``: replace ``<option>`` with one of ``options``."""

    @property
    def call(self) -> str:
        """``connector.operation``, or the activity name when the call has no connector."""
        if self.connector and self.operation:
            return f"{self.connector}.{self.operation}"
        return self.connector or self.activity

    @property
    def summary(self) -> str:
        """The explanation's first line."""
        return self.explanation.splitlines()[0] if self.explanation else ""

    def command(self, option: str) -> str:
        return decide_command(self.workflow_id, option)


# --- building -------------------------------------------------------------------------------


def workflow_link(web_ui_url: str, namespace: str, workflow_id: str) -> str:
    """The workflow's page in the Temporal Web UI (its latest run)."""
    base = web_ui_url.rstrip("/")
    return f"{base}/namespaces/{quote(namespace, safe='')}/workflows/{quote(workflow_id, safe='')}"


def decide_command(workflow_id: str, option: str = "<option>") -> str:
    """The shell command that decides, quoted so it runs as printed."""
    shown = option if option == "<option>" else shlex.quote(option)
    return f"healing decide {shlex.quote(workflow_id)} {shown}"


def notification_for(
    esc: Escalation, *, namespace: str, web_ui_url: str, run_id: str | None = None
) -> Notification:
    """The notification of an open escalation (pure: workflow code builds it)."""
    return Notification(
        workflow_id=esc.workflow_id,
        run_id=run_id,
        namespace=namespace,
        escalation_id=esc.escalation_id,
        error_type=esc.error_type.value,
        connector=esc.connector,
        operation=esc.operation,
        activity=esc.activity,
        explanation=esc.explanation,
        options=list(esc.options),
        default_option=esc.default_option,
        opened_at=esc.opened_at,
        timeout_at=esc.timeout_at,
        link=workflow_link(web_ui_url, namespace, esc.workflow_id),
        decide_command=decide_command(esc.workflow_id),
    )


# --- formatting -----------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def log_line(n: Notification) -> str:
    """One line: workflow, error type, call, explanation, options, Web UI link, command."""
    options = ", ".join(o.option for o in n.options)
    return _one_line(
        f"workflow {n.workflow_id} paused for a decision: {n.error_type} in {n.call}: "
        f"{n.summary} Options: {options}. Web UI: {n.link} Decide: {n.decide_command}"
    )


def webhook_body(n: Notification) -> dict[str, Any]:
    """The JSON webhook payload: the notification, each option with its command, a summary."""
    body = n.model_dump(mode="json")
    body["call"] = n.call
    body["summary"] = log_line(n)
    body["options"] = [
        {**o.model_dump(mode="json"), "command": n.command(o.option)} for o in n.options
    ]
    return body


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int = _SLACK_TEXT_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_message(n: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` fallback plus Block Kit ``blocks``)."""
    esc = _slack_escape
    options = "\n".join(
        f"• *{esc(o.option)}*: {esc(o.effect)}\n    `{esc(n.command(o.option))}`" for o in n.options
    )
    timeout = f"{n.timeout_at:%Y-%m-%d %H:%M} UTC"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _clip(f"Workflow paused: {n.error_type} in {n.call}", 150),
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(esc(n.explanation))}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Workflow*\n<{n.link}|{esc(n.workflow_id)}>"},
                {"type": "mrkdwn", "text": f"*Error type*\n{esc(n.error_type)}"},
                {"type": "mrkdwn", "text": f"*Call*\n`{esc(n.call)}`"},
                {
                    "type": "mrkdwn",
                    "text": f"*Without a decision*\n{esc(n.default_option)} at {timeout}",
                },
            ],
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(f"*Options*\n{options}")}},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Open in Temporal Web UI"},
                    "url": n.link,
                }
            ],
        },
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"Decide: `{esc(n.decide_command)}` · "
                    f"escalation `{esc(n.escalation_id)}`",
                }
            ],
        },
    ]
    text = f"Workflow {n.workflow_id} paused for a decision: {n.error_type} in {n.call}. {n.link}"
    return {"text": _slack_escape(text), "blocks": blocks}


# --- signing --------------------------------------------------------------------------------


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def sign(secret: str | bytes, timestamp: int | str, body: str | bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``: the signature header."""
    message = _bytes(str(timestamp)) + b"." + _bytes(body)
    return "sha256=" + hmac.new(_bytes(secret), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    timestamp: str | int | None,
    body: str | bytes,
    signature: str | None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> bool:
    """Whether a delivery is authentic and fresh: call it with the raw body and both headers.

    Args:
        secret: ``HEALING_NOTIFY_SECRET``.
        timestamp: The ``X-Healing-Timestamp`` header (Unix seconds).
        body: The raw request body, exactly as received.
        signature: The ``X-Healing-Signature`` header (``sha256=<hex>``).
        tolerance_s: How far the timestamp may be from ``now`` (either way); replays of an
            older delivery fail.
        now: Unix seconds to judge freshness by (default: ``time.time()``).
    """
    if not signature or timestamp is None:
        return False
    try:
        sent = int(str(timestamp).strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance_s:
        return False
    expected = sign(secret, sent, body)
    return hmac.compare_digest(
        expected.encode("ascii"), signature.strip().encode("utf-8", "replace")
    )


# --- sending --------------------------------------------------------------------------------


def notify_format(url: str | None, configured: str = "auto") -> NotifyFormat:
    """``log`` without a URL; else the configured format, ``auto`` meaning Slack for a
    hooks.slack.com URL and JSON otherwise."""
    if not url:
        return "log"
    if configured in ("json", "slack"):
        return "slack" if configured == "slack" else "json"
    host = (urlsplit(url).hostname or "").lower()
    return "slack" if host == "hooks.slack.com" else "json"


def describe_target(url: str) -> str:
    """A receiver for messages: scheme, host and port only (paths and queries hold secrets)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme or '?'}://{parts.hostname or '?'}{port}"


def _retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(
        response.headers.get("retry-after"), now=datetime.now(UTC), cap_s=_RETRY_AFTER_MAX_S
    )


def payload(n: Notification, fmt: NotifyFormat) -> dict[str, Any]:
    return slack_message(n) if fmt == "slack" else webhook_body(n)


async def deliver(
    n: Notification,
    *,
    url: str | None,
    secret: str | None = None,
    fmt: str = "auto",
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Send one notification; returns what was done (format, receiver, HTTP status).

    Raises:
        NotifyError: The receiver failed (``retryable``) or refused the message.
    """
    kind = notify_format(url, fmt)
    if kind == "log" or url is None:
        _LOG.warning("%s", log_line(n))
        return {"format": "log", "target": "log", "status": None}
    target = describe_target(url)
    body = json.dumps(payload(n, kind), separators=(",", ":"), ensure_ascii=False)
    stamp = str(int(clock()))
    sent_headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "temporal-healing-notify",
        TIMESTAMP_HEADER: stamp,
        EVENT_HEADER: n.event,
        DELIVERY_HEADER: n.escalation_id,
    }
    if secret:
        sent_headers[SIGNATURE_HEADER] = sign(secret, stamp, body)
    try:
        async with httpx.AsyncClient(
            timeout=timeout_s, transport=transport, follow_redirects=False
        ) as client:
            response = await client.post(url, content=body.encode("utf-8"), headers=sent_headers)
    except httpx.TimeoutException:
        raise NotifyError(
            f"{target} did not answer within {timeout_s:g}s", retryable=True
        ) from None
    except httpx.HTTPError as exc:  # refused, reset, DNS: the type only (messages may hold the URL)
        raise NotifyError(f"cannot reach {target} ({type(exc).__name__})", retryable=True) from None
    status = response.status_code
    if status >= 500 or status in (408, 429):
        raise NotifyError(
            f"{target} answered {status}",
            retryable=True,
            status=status,
            retry_after_s=_retry_after(response),
        )
    if status >= 300:
        raise NotifyError(
            f"{target} refused the notification: {status}", retryable=False, status=status
        )
    return {"format": kind, "target": target, "status": status}
