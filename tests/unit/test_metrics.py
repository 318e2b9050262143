"""healing.metrics outside Temporal: the HEALING_METRICS address, labels, and no-op safety."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from healing import metrics
from healing.breaker import BreakerTransition
from healing.errors import ConfigError
from healing.names import GRANT_REVOKED_TYPE


@pytest.mark.parametrize(
    ("raw", "bound"),
    [
        ("127.0.0.1:9464", "127.0.0.1:9464"),
        (" 0.0.0.0:9000 ", "0.0.0.0:9000"),
        ("localhost:9464", "127.0.0.1:9464"),
        ("[::1]:9464", "[::1]:9464"),
    ],
)
def test_bind_address(raw: str, bound: str) -> None:
    assert metrics.bind_address(raw) == bound


@pytest.mark.parametrize("raw", ["9464", "example.com:9464", "127.0.0.1:0", "127.0.0.1:x", ""])
def test_bad_bind_address_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="HEALING_METRICS"):
        metrics.bind_address(raw)


def test_names_are_prefixed_and_unique() -> None:
    assert all(name.startswith("healing_") for name in metrics.METRIC_NAMES)
    assert len(set(metrics.METRIC_NAMES)) == len(metrics.METRIC_NAMES)


def test_heal_strategy_and_refresh_outcome() -> None:
    assert metrics.heal_strategy(["retry_backoff", "refresh_token", "decision"], human=False) == (
        "refresh_token"
    )
    assert metrics.heal_strategy(["retry_backoff"], human=False) == "retry"
    assert metrics.heal_strategy(["reroute"], human=True) == "decision"
    assert metrics.refresh_outcome(None) == "ok"
    assert metrics.refresh_outcome(("dead", GRANT_REVOKED_TYPE)) == "revoked"
    assert metrics.refresh_outcome(("flaky", None)) == "failed"


def test_recording_outside_temporal_is_a_no_op() -> None:
    # Outside an activity or workflow there is no meter: nothing raises into healing.
    metrics.activity_failure("TIMEOUT", "crm", "get_contact")
    metrics.activity_attempt("retry_backoff", "retry", "TIMEOUT")
    metrics.activity_healed("retry_backoff", "TIMEOUT", 1.5)
    metrics.breaker_changed(BreakerTransition("crm", "closed", "open", 0.0))
    metrics.notification("json", "sent")
    metrics.workflow_attempt("reroute", "rerouted", "SERVICE_DOWN")
    metrics.workflow_healed("retry", "TIMEOUT", 2.0, human=False)
    metrics.workflow_escalation_opened("NOT_FOUND", None)
    metrics.workflow_escalation_closed("NOT_FOUND", None, "retry")


def test_the_dashboard_uses_exactly_the_healing_metrics() -> None:
    root = Path(__file__).resolve().parents[2]
    dash = json.loads((root / "dashboards" / "healing.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for expr in exprs
        for name in re.findall(r"\bhealing_[a-z_]+", expr)
    }
    assert used == set(metrics.METRIC_NAMES)
    for expr in exprs:  # well-formed enough to paste into Prometheus
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
