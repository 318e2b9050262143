"""healing.logs: the SDK's "Completing activity as failed" records of healing errors become one
line without a traceback; every other record keeps its traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError

from healing import logs
from healing.escalation import build_escalation
from healing.names import REPORT_KEY
from healing.types import Classification, ErrorType, FailureReport, HealingStrategy

ACTIVITY_INFO = {"activity_type": "call_integration", "attempt": 2, "workflow_id": "wf-7"}


def classification(error_type: ErrorType, status: int) -> Classification:
    return Classification(
        error_type=error_type,
        transient=error_type is ErrorType.SERVICE_DOWN,
        retryable=error_type is ErrorType.SERVICE_DOWN,
        strategy=HealingStrategy.RETRY_THEN_REROUTE,
        max_attempts=3,
        status_code=status,
        message=f"crm answered {status}",
    )


def healing_error(*, retry_in: float | None, reason: str = "") -> ApplicationError:
    etype = ErrorType.SERVICE_DOWN if retry_in is not None else ErrorType.NOT_FOUND
    report = FailureReport(
        classification=classification(etype, 503 if retry_in is not None else 404),
        connector="crm",
        operation="get_contact",
        reason=reason,
    ).model_dump(mode="json")
    return ApplicationError(
        "crm answered",
        {REPORT_KEY: report},
        type=etype.value,
        non_retryable=retry_in is None,
        next_retry_delay=timedelta(seconds=retry_in) if retry_in is not None else None,
    )


@pytest.fixture
def activity_log() -> Iterator[logging.Logger]:
    """A private logger with the filter, so the test does not depend on the SDK's one."""
    name = f"test.logs.{id(object())}"
    logs.install(name)
    try:
        yield logging.getLogger(name)
    finally:
        logs.uninstall(name)


def fail_with(logger: logging.Logger, err: BaseException, level: int = logging.WARNING) -> None:
    """What the SDK does: log inside ``except`` with ``exc_info=True`` and activity details."""
    try:
        raise err
    except BaseException:
        logger.log(
            level,
            "Completing activity as failed (%s)",
            ACTIVITY_INFO,
            exc_info=True,
            extra={"temporal_activity": ACTIVITY_INFO},
        )


def test_a_healing_retry_is_one_line_without_a_traceback(
    activity_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        fail_with(activity_log, healing_error(retry_in=2.0))
    (record,) = caplog.records
    assert record.getMessage() == (
        "healing crm.get_contact: SERVICE_DOWN (HTTP 503), retry in 2.0s (attempt 2, workflow wf-7)"
    )
    assert record.exc_info is None and record.levelname == "INFO"
    assert "Traceback" not in caplog.text
    assert len(caplog.text.strip().splitlines()) == 1


def test_a_hand_over_says_why(
    activity_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        fail_with(activity_log, healing_error(retry_in=None, reason="NOT_FOUND is not retryable"))
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "healing crm.get_contact: NOT_FOUND (HTTP 404), handed to the workflow: "
        "NOT_FOUND is not retryable"
    )
    assert record.exc_info is None and record.levelname == "WARNING"
    assert "Traceback" not in caplog.text


def test_long_retry_delays_are_in_human_units(
    activity_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        fail_with(activity_log, healing_error(retry_in=90.0), level=logging.DEBUG)  # BENIGN
    (record,) = caplog.records
    assert "retry in 1m 30s" in record.getMessage() and record.levelname == "DEBUG"


@pytest.mark.parametrize(
    "err",
    [
        ValueError("a bug in the activity"),
        ApplicationError("the activity's own verdict", type="Mine"),
        ApplicationError("details but no report", {"something": "else"}),
    ],
)
def test_other_failures_keep_their_traceback(
    activity_log: logging.Logger, caplog: pytest.LogCaptureFixture, err: BaseException
) -> None:
    with caplog.at_level(logging.DEBUG):
        fail_with(activity_log, err)
    (record,) = caplog.records
    assert record.getMessage().startswith("Completing activity as failed")
    assert record.exc_info is not None and "Traceback" in caplog.text


def test_install_is_idempotent_and_the_plugin_installs_it() -> None:
    from healing import HealingPlugin

    sdk = logging.getLogger(logs.ACTIVITY_LOGGER)
    before = [f for f in sdk.filters if isinstance(f, logs.HealingStepFilter)]
    HealingPlugin()
    HealingPlugin()
    assert logs.install() is logs.install()
    installed = [f for f in sdk.filters if isinstance(f, logs.HealingStepFilter)]
    assert len(installed) == 1 and len(before) <= 1


def test_pause_line_names_the_call_and_links_the_web_ui() -> None:
    esc = build_escalation(
        escalation_id="e1",
        workflow_id="wf-7",
        activity="call_integration",
        connector="crm",
        operation="get_contact",
        classification=classification(ErrorType.NOT_FOUND, 404),
        attempts=[],
        reason="",
        alternatives=[],
        opened_at=datetime(2026, 1, 1, tzinfo=UTC),
        timeout_s=7 * 86400,
        default_option="abort",
    )
    line = logs.pause_line(esc, namespace="prod", web_ui_url="https://ui.example/")
    assert line == (
        "healing paused workflow wf-7: crm.get_contact NOT_FOUND (HTTP 404) needs a decision "
        "(retry, edit_and_retry, skip, abort; abort in 7d): "
        "https://ui.example/namespaces/prod/workflows/wf-7"
    )
    assert logs.pause_line(esc, namespace="default").endswith(
        "http://localhost:8233/namespaces/default/workflows/wf-7"
    )
    assert "\n" not in line
