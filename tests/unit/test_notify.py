"""The notifier's pure parts: message formats, the HMAC signature scheme, where it sends.

Every format must carry the explanation, the options, the Web UI link and the command that
decides; the signature must match an independent implementation (openssl) and fail for a
tampered body, a wrong secret or a stale timestamp; secrets never reach a message.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from healing.config import HealingConfig
from healing.escalation import build_escalation
from healing.notify import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Notification,
    NotifyError,
    decide_command,
    deliver,
    describe_target,
    log_line,
    notification_for,
    notify_format,
    sign,
    slack_message,
    verify_signature,
    webhook_body,
    workflow_link,
)
from healing.types import Classification, ErrorType, HealingAttempt, HealingStrategy

OPENED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# printf '%s' '1700000000.{"event":"escalation.opened","workflow_id":"wf-1"}' \
#   | openssl dgst -sha256 -hmac whsec_test
VECTOR_BODY = '{"event":"escalation.opened","workflow_id":"wf-1"}'
VECTOR_SIG = "sha256=65efb8f9cf18365cec499a1ee2aadd3dec1674e6f46b5287919b16f71b6d03fa"


def notice(workflow_id: str = "order-42", ui: str = "http://localhost:8233") -> Notification:
    cls = Classification(
        error_type=ErrorType.NOT_FOUND,
        transient=False,
        retryable=False,
        strategy=HealingStrategy.ESCALATE,
        max_attempts=0,
        status_code=404,
        message="crm answered 404: no contact 42",
    )
    esc = build_escalation(
        escalation_id="esc-1",
        workflow_id=workflow_id,
        activity="call_integration",
        connector="crm",
        operation="get_contact",
        classification=cls,
        attempts=[
            HealingAttempt(
                at=OPENED, error_type=ErrorType.NOT_FOUND, strategy="escalate", outcome="failed"
            )
        ],
        reason="Stopped because NOT_FOUND is not retryable.",
        alternatives=[],
        opened_at=OPENED,
        timeout_s=3600,
        default_option="abort",
    )
    return notification_for(esc, namespace="default", web_ui_url=ui, run_id="run-1")


# --- what every format carries --------------------------------------------------------------


def test_link_and_command() -> None:
    n = notice()
    assert n.link == "http://localhost:8233/namespaces/default/workflows/order-42"
    assert n.decide_command == "healing decide order-42 <option>"
    assert n.command("retry") == "healing decide order-42 retry"
    # Ids that need quoting stay one shell word; odd ids stay one URL path segment.
    assert decide_command("a b;rm -rf", "skip") == "healing decide 'a b;rm -rf' skip"
    assert workflow_link("http://ui:8080/", "prod ns", "a/b c") == (
        "http://ui:8080/namespaces/prod%20ns/workflows/a%2Fb%20c"
    )
    assert notice(ui="https://temporal.example.com/").link.startswith(
        "https://temporal.example.com/namespaces/default/workflows/"
    )


def test_log_line_is_one_line_with_everything() -> None:
    n = notice()
    line = log_line(n)
    assert "\n" not in line
    for part in (
        "order-42",
        "NOT_FOUND",
        "crm.get_contact",
        n.summary,
        "retry, edit_and_retry, skip, abort",
        n.link,
        "healing decide order-42 <option>",
    ):
        assert part in line, part


def test_webhook_body_carries_explanation_options_link_and_command() -> None:
    n = notice()
    body = webhook_body(n)
    assert json.loads(json.dumps(body)) == body  # plain JSON
    assert body["event"] == "escalation.opened"
    assert body["workflow_id"] == "order-42" and body["run_id"] == "run-1"
    assert body["error_type"] == "NOT_FOUND" and body["call"] == "crm.get_contact"
    assert body["explanation"] == n.explanation and "Tried:" in body["explanation"]
    assert [o["option"] for o in body["options"]] == ["retry", "edit_and_retry", "skip", "abort"]
    assert body["options"][0]["command"] == "healing decide order-42 retry"
    assert all(o["effect"] for o in body["options"])
    assert body["link"] == n.link
    assert body["decide_command"] == "healing decide order-42 <option>"
    assert body["timeout_at"] == "2026-03-01T13:00:00Z"


def test_slack_message_carries_explanation_options_link_and_command() -> None:
    n = notice()
    msg = slack_message(n)
    assert set(msg) == {"text", "blocks"}
    assert "order-42" in msg["text"] and n.link in msg["text"]
    dumped = json.dumps(msg["blocks"])
    texts = " ".join(
        str(t)
        for block in msg["blocks"]
        for t in [block.get("text", {}).get("text", "")]
        + [f["text"] for f in block.get("fields", [])]
        + [e.get("text", "") for e in block.get("elements", []) if isinstance(e.get("text"), str)]
    )
    assert n.summary.replace("`", "") in texts.replace("`", "")
    for option in ("retry", "edit_and_retry", "skip", "abort"):
        assert f"*{option}*" in texts and f"healing decide order-42 {option}" in texts
    assert "healing decide order-42 &lt;option&gt;" in texts  # Slack mrkdwn escaping
    buttons = [e for b in msg["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert buttons and buttons[0]["url"] == n.link
    assert msg["blocks"][0]["type"] == "header"
    assert len(msg["blocks"][0]["text"]["text"]) <= 150
    assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in msg["blocks"])
    assert n.link in dumped


def test_slack_escapes_markup_in_the_explanation() -> None:
    base = notice()
    n = base.model_copy(update={"explanation": "body was <html> & broken"})
    section = slack_message(n)["blocks"][1]["text"]["text"]
    assert section == "body was &lt;html&gt; &amp; broken"


# --- signatures -----------------------------------------------------------------------------


def test_signature_matches_an_independent_implementation() -> None:
    assert sign("whsec_test", 1700000000, VECTOR_BODY) == VECTOR_SIG
    assert sign(b"whsec_test", "1700000000", VECTOR_BODY.encode()) == VECTOR_SIG
    assert verify_signature("whsec_test", "1700000000", VECTOR_BODY, VECTOR_SIG, now=1700000000)


def test_tampered_body_wrong_secret_or_bad_header_fail() -> None:
    now = 1700000000.0
    assert not verify_signature("whsec_test", "1700000000", VECTOR_BODY + " ", VECTOR_SIG, now=now)
    tampered = VECTOR_BODY.replace("wf-1", "wf-2")
    assert not verify_signature("whsec_test", "1700000000", tampered, VECTOR_SIG, now=now)
    assert not verify_signature("other", "1700000000", VECTOR_BODY, VECTOR_SIG, now=now)
    # The timestamp is signed too: moving it breaks the signature.
    assert not verify_signature("whsec_test", "1700000001", VECTOR_BODY, VECTOR_SIG, now=now)
    assert not verify_signature("whsec_test", "1700000000", VECTOR_BODY, None, now=now)
    assert not verify_signature("whsec_test", None, VECTOR_BODY, VECTOR_SIG, now=now)
    assert not verify_signature("whsec_test", "soon", VECTOR_BODY, VECTOR_SIG, now=now)
    assert not verify_signature("whsec_test", "1700000000", VECTOR_BODY, VECTOR_SIG[7:], now=now)


def test_stale_or_future_timestamp_fails() -> None:
    sent = 1700000000
    assert verify_signature("whsec_test", sent, VECTOR_BODY, VECTOR_SIG, 300, now=sent + 300)
    assert not verify_signature("whsec_test", sent, VECTOR_BODY, VECTOR_SIG, 300, now=sent + 301)
    assert not verify_signature("whsec_test", sent, VECTOR_BODY, VECTOR_SIG, 300, now=sent - 301)
    assert not verify_signature("whsec_test", sent, VECTOR_BODY, VECTOR_SIG)  # years ago


# --- where and how it sends -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "configured", "expected"),
    [
        (None, "auto", "log"),
        ("", "slack", "log"),
        ("https://hooks.slack.com/services/T0/B0/xyz", "auto", "slack"),
        ("https://example.com/hook", "auto", "json"),
        ("https://example.com/hook", "slack", "slack"),
        ("https://hooks.slack.com/services/T0/B0/xyz", "json", "json"),
    ],
)
def test_format_selection(url: str | None, configured: str, expected: str) -> None:
    assert notify_format(url, configured) == expected


def test_target_description_hides_path_and_query() -> None:
    url = "https://hooks.slack.com/services/T000/B000/SECRETSECRET?token=abc"
    assert describe_target(url) == "https://hooks.slack.com"
    assert describe_target("http://127.0.0.1:8123/x/y") == "http://127.0.0.1:8123"


def test_config_reads_the_notify_and_metrics_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALING_NOTIFY_WEBHOOK", "https://example.com/h")
    monkeypatch.setenv("HEALING_NOTIFY_SECRET", "s3cret")
    monkeypatch.setenv("HEALING_NOTIFY_FORMAT", "slack")
    monkeypatch.setenv("HEALING_WEB_UI_URL", "http://ui.internal:8080")
    monkeypatch.setenv("HEALING_METRICS", "127.0.0.1:9464")
    cfg = HealingConfig()
    assert cfg.notify_webhook is not None and cfg.notify_secret is not None
    assert cfg.notify_webhook.get_secret_value() == "https://example.com/h"
    assert cfg.notify_secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg) and "example.com/h" not in repr(cfg)
    assert cfg.notify_format == "slack" and cfg.web_ui_url == "http://ui.internal:8080"
    assert cfg.metrics == "127.0.0.1:9464"


def _recorder(status: int, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, headers={"retry-after": "7"})

    return httpx.MockTransport(handle)


async def test_deliver_signs_the_exact_body() -> None:
    seen: list[httpx.Request] = []
    n = notice()
    done = await deliver(
        n,
        url="https://example.com/hook/SECRET",
        secret="s3cret",
        transport=_recorder(204, seen),
        clock=lambda: 1700000123.9,
    )
    assert done == {"format": "json", "target": "https://example.com", "status": 204}
    (req,) = seen
    assert req.headers[TIMESTAMP_HEADER] == "1700000123"
    assert req.headers[DELIVERY_HEADER] == "esc-1"
    assert verify_signature(
        "s3cret",
        req.headers[TIMESTAMP_HEADER],
        req.content,
        req.headers[SIGNATURE_HEADER],
        now=1700000130,
    )
    assert json.loads(req.content) == webhook_body(n)


async def test_deliver_without_a_secret_sends_no_signature() -> None:
    seen: list[httpx.Request] = []
    await deliver(notice(), url="https://example.com/h", transport=_recorder(200, seen))
    assert SIGNATURE_HEADER not in seen[0].headers
    assert TIMESTAMP_HEADER in seen[0].headers


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (408, True), (400, False), (404, False), (302, False)],
)
async def test_deliver_failures_say_whether_to_retry(status: int, retryable: bool) -> None:
    seen: list[httpx.Request] = []
    url = "https://hooks.slack.com/services/T0/B0/TOPSECRET"
    with pytest.raises(NotifyError) as info:
        await deliver(notice(), url=url, transport=_recorder(status, seen))
    assert info.value.retryable is retryable and info.value.status == status
    assert "TOPSECRET" not in str(info.value) and "hooks.slack.com" in str(info.value)
    body: dict[str, Any] = json.loads(seen[0].content)
    assert set(body) == {"text", "blocks"}  # a slack.com URL gets a Slack message
    if status == 429:
        assert info.value.retry_after_s == 7


async def test_deliver_transport_errors_are_retryable_and_hide_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}")

    with pytest.raises(NotifyError) as info:
        await deliver(
            notice(), url="http://127.0.0.1:9/hook/TOPSECRET", transport=httpx.MockTransport(refuse)
        )
    assert info.value.retryable and "TOPSECRET" not in str(info.value)
    assert "ConnectError" in str(info.value)


async def test_deliver_without_a_url_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="healing.notify")
    done = await deliver(notice(), url=None)
    assert done["format"] == "log"
    (record,) = [r for r in caplog.records if r.name == "healing.notify"]
    assert record.getMessage() == log_line(notice())
