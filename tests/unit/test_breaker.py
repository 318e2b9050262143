"""Circuit breaker: a pure state machine driven by an explicit clock."""

from __future__ import annotations

import pytest

from healing.breaker import (
    MAX_WINDOW_ENTRIES,
    BreakerBoard,
    BreakerTransition,
    CircuitBreaker,
)
from healing.config import BreakerPolicy

POLICY = BreakerPolicy(failure_threshold=5, window_s=60.0, min_failure_ratio=0.5, open_s=30.0)


def open_breaker(at: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker("crm", POLICY)
    for i in range(5):
        breaker.record_failure(at + i * 0.1)
    assert breaker.state == "open"
    return breaker


def test_closed_breaker_lets_calls_through() -> None:
    assert CircuitBreaker("crm", POLICY).before_call(0.0) is None


def test_opens_on_the_fifth_failure_not_the_fourth() -> None:
    breaker = CircuitBreaker("crm", POLICY)
    transitions = [breaker.record_failure(float(t)) for t in range(5)]
    assert transitions[:4] == [None] * 4
    assert transitions[4] == BreakerTransition("crm", "closed", "open", 4.0)
    assert breaker.before_call(4.0) == pytest.approx(30.0)
    assert breaker.before_call(20.0) == pytest.approx(14.0)


def test_busy_connector_with_scattered_faults_stays_closed() -> None:
    breaker = CircuitBreaker("crm", POLICY)
    # 50 calls in a minute, 6 of them failures: over the threshold, far under the ratio.
    for i in range(50):
        now = i * 1.0
        if i % 8 == 0:
            breaker.record_failure(now)
        else:
            breaker.record_success(now)
    snap = breaker.snapshot(49.0)
    assert snap.failures_in_window >= POLICY.failure_threshold
    assert snap.state == "closed"
    assert breaker.before_call(49.0) is None


def test_plain_ratio_rule_opens_when_failures_are_half_of_the_calls() -> None:
    breaker = CircuitBreaker("crm", POLICY.model_copy(update={"ratio_confidence": 0.5}))
    for i in range(5):
        breaker.record_success(float(i))
    for i in range(4):
        breaker.record_failure(5.0 + i)
    assert breaker.state == "closed"
    transition = breaker.record_failure(9.0)  # 5 failures out of 10 calls
    assert transition is not None and transition.to_state == "open"


def test_window_slides_old_failures_out() -> None:
    breaker = CircuitBreaker("crm", POLICY)
    for t in (0.0, 1.0, 2.0, 3.0):
        breaker.record_failure(t)
    # 60.5 s later the first failure has left the window, so this is failure 4, not 5.
    breaker.record_failure(60.5)
    assert breaker.state == "closed"
    assert breaker.snapshot(60.5).failures_in_window == 4
    breaker.record_failure(60.9)  # the failure at 1.0 is still inside: 5 in the window
    assert breaker.snapshot(60.9).state == "open"


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker = open_breaker()
    assert breaker.before_call(29.0) == pytest.approx(1.4)
    assert breaker.before_call(30.4) is None  # the probe
    assert breaker.state == "half_open"
    waits = [breaker.before_call(30.4 + dt) for dt in (0.0, 0.5, 10.0)]
    assert all(w is not None and 0 < w <= 1.0 for w in waits)


def test_probe_success_closes_and_clears_the_window() -> None:
    breaker = open_breaker()
    assert breaker.before_call(31.0) is None
    transition = breaker.record_success(31.5)
    assert transition == BreakerTransition("crm", "half_open", "closed", 31.5)
    snap = breaker.snapshot(31.5)
    assert (snap.state, snap.failures_in_window, snap.calls_in_window) == ("closed", 0, 0)
    assert breaker.before_call(31.6) is None
    # A single new failure must not reopen it: the old failures are forgotten.
    breaker.record_failure(32.0)
    assert breaker.state == "closed"


def test_probe_failure_reopens_for_another_open_period() -> None:
    breaker = open_breaker()
    assert breaker.before_call(31.0) is None
    transition = breaker.record_failure(32.0)
    assert transition == BreakerTransition("crm", "half_open", "open", 32.0)
    assert breaker.before_call(32.0) == pytest.approx(30.0)
    assert breaker.before_call(61.9) == pytest.approx(0.1)
    assert breaker.before_call(62.0) is None


def test_lost_probe_does_not_wedge_the_breaker() -> None:
    breaker = open_breaker()
    assert breaker.before_call(31.0) is None  # probe leaves and never reports
    assert breaker.before_call(60.0) is not None
    assert breaker.before_call(61.0) is None  # a replacement probe after open_s
    assert breaker.before_call(61.5) is not None


def test_late_outcomes_while_open_change_nothing() -> None:
    breaker = open_breaker()
    assert breaker.record_success(1.0) is None
    assert breaker.record_failure(2.0) is None
    assert breaker.before_call(10.0) == pytest.approx(20.4)


def test_snapshot_reports_state_and_retry_time() -> None:
    breaker = open_breaker(at=100.0)
    snap = breaker.snapshot(110.0)
    assert snap.connector == "crm"
    assert snap.state == "open"
    assert snap.opened_at == pytest.approx(100.4)
    assert snap.retry_at == pytest.approx(130.4)
    assert (snap.failures_in_window, snap.calls_in_window) == (5, 5)
    assert breaker.snapshot(131.0).state == "half_open"


def test_disabled_policy_never_blocks() -> None:
    breaker = CircuitBreaker("crm", POLICY.model_copy(update={"enabled": False}))
    for t in range(20):
        breaker.record_failure(float(t))
    assert breaker.before_call(20.0) is None
    assert breaker.snapshot(20.0).state == "closed"


def test_window_memory_is_bounded() -> None:
    breaker = CircuitBreaker("crm", BreakerPolicy(window_s=1e9), max_entries=100)
    for i in range(1_000):
        breaker.record_success(float(i))
    assert breaker.snapshot(1_000.0).calls_in_window == 100
    assert MAX_WINDOW_ENTRIES == 10_000


def test_old_entries_are_pruned_by_time() -> None:
    breaker = CircuitBreaker("crm", POLICY)
    for i in range(500):
        breaker.record_success(i * 0.01)
    breaker.record_success(100.0)
    assert breaker.snapshot(100.0).calls_in_window == 1


def test_board_creates_breakers_lazily_and_keeps_them_apart() -> None:
    board = BreakerBoard(POLICY)
    assert board.snapshots(0.0) == []
    crm = board.get("crm")
    assert board.get("crm") is crm
    for t in range(5):
        crm.record_failure(float(t))
    assert board.get("mail").before_call(5.0) is None
    assert [(s.connector, s.state) for s in board.snapshots(5.0)] == [
        ("crm", "open"),
        ("mail", "closed"),
    ]


def test_board_with_disabled_policy_never_blocks() -> None:
    board = BreakerBoard(BreakerPolicy(enabled=False))
    for t in range(10):
        board.get("crm").record_failure(float(t))
    assert board.get("crm").before_call(10.0) is None


def test_rejects_a_zero_memory_cap() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("crm", POLICY, max_entries=0)


def test_half_failures_in_a_small_sample_do_not_open_by_default() -> None:
    # A flaky but working connector: a burst whose first 10 answers are half failures.
    breaker = CircuitBreaker("crm", POLICY)
    for i in range(5):
        breaker.record_success(float(i))
    for i in range(5):
        assert breaker.record_failure(5.0 + i) is None
    assert breaker.state == "closed"
    # Failures keep coming: 10 of 15 calls is confidently over half (90% lower bound 0.501).
    transitions = [breaker.record_failure(10.0 + i) for i in range(5)]
    assert transitions[:4] == [None] * 4
    assert transitions[4] is not None and transitions[4].to_state == "open"
