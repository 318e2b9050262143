"""The healing policy as tables: every matrix row x every situation -> the expected verdict.

The expectations are written out per group of rows (not recomputed from the policy), so a
change of behaviour shows up as a table cell that no longer holds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from healing.learning import StrategyHint
from healing.matrix import DEFAULT_MATRIX
from healing.policy import (
    MIN_DELAY_S,
    AttemptSituation,
    StepSituation,
    final_state,
    next_attempt,
    next_step,
    wait_after_decision,
)
from healing.types import Classification, ErrorType

E = ErrorType
BUDGET, PROBE, BACKOFF = 120.0, 30.0, 1.0

GROUPS: dict[str, set[ErrorType]] = {
    "permanent": {
        E.AUTH_INVALID,
        E.PERMISSION_DENIED,
        E.NOT_FOUND,
        E.BAD_REQUEST,
        E.QUOTA_EXHAUSTED,
        E.RESPONSE_TOO_LARGE,
    },
    "workflow": {E.AUTH_EXPIRED, E.SCHEMA_MISMATCH},
    "transient": {E.TIMEOUT, E.SERVICE_DOWN, E.NETWORK_ERROR, E.RATE_LIMITED},
    "retry_only": {E.INTERNAL_ERROR, E.CONFLICT},
    "circuit": {E.CIRCUIT_OPEN},
}

SKIP = StrategyHint(fingerprint="f", skip_retries=True, confidence=0.9, observations=40, reason="r")
WAIT = StrategyHint(fingerprint="f", wait_s=5.0, confidence=0.9, observations=40, reason="r")

# Situation name -> changes to the base situation (``used`` relative to max_attempts).
SITUATIONS: dict[str, dict[str, Any]] = {
    "first failure": {"used": 1},
    "retries left": {"used": "max", "elapsed_s": 10.0},
    "retries spent": {"used": "max+1", "elapsed_s": 10.0},
    "retries spent, alternative": {"used": "max+1", "elapsed_s": 10.0, "has_alternative": True},
    "retries spent, breaker open": {"used": "max+1", "elapsed_s": 10.0, "circuit_wait_s": 12.0},
    "retries spent, budget spent": {"used": "max+1", "elapsed_s": 100.0},
    "budget spent": {"used": 1, "elapsed_s": 119.5},
    "breaker open, first failure": {"used": 1, "circuit_wait_s": 12.0},
    "learned: never heals": {"used": 1, "hint": SKIP},
    "learned: wait": {"used": 1, "hint": WAIT},
}

# Expected (action, delay) per group and situation. None delay: hand_over.
R, W, H = "retry", "wait_recovery", "hand_over"
EXPECTED: dict[str, dict[str, tuple[str, float | None]]] = {
    "permanent": {name: (H, None) for name in SITUATIONS},
    "workflow": {name: (H, None) for name in SITUATIONS},
    "transient": {
        "first failure": (R, BACKOFF),
        "retries left": (R, BACKOFF),
        "retries spent": (W, PROBE),
        "retries spent, alternative": (H, None),
        "retries spent, breaker open": (W, 12.0),
        "retries spent, budget spent": (H, None),
        "budget spent": (H, None),
        "breaker open, first failure": (R, BACKOFF),
        "learned: never heals": (H, None),
        "learned: wait": (R, 5.0),
    },
    "retry_only": {
        "first failure": (R, BACKOFF),
        "retries left": (R, BACKOFF),
        "retries spent": (H, None),
        "retries spent, alternative": (H, None),
        "retries spent, breaker open": (H, None),
        "retries spent, budget spent": (H, None),
        "budget spent": (H, None),
        "breaker open, first failure": (R, BACKOFF),
        "learned: never heals": (H, None),
        "learned: wait": (R, 5.0),
    },
    "circuit": {
        # Waiting behind the circuit costs no upstream call: only the budget bounds it.
        "first failure": (W, 12.0),
        "retries left": (W, 12.0),
        "retries spent": (W, 12.0),
        "retries spent, alternative": (H, None),
        "retries spent, breaker open": (W, 12.0),
        "retries spent, budget spent": (W, 12.0),  # 100 s + 12 s still fits in 120 s
        "budget spent": (H, None),
        "breaker open, first failure": (W, 12.0),
        "learned: never heals": (H, None),
        "learned: wait": (W, 12.0),
    },
}


def _classification(etype: ErrorType, **changes: Any) -> Classification:
    row = DEFAULT_MATRIX[etype]
    # A CIRCUIT_OPEN failure carries the breaker's own wait as its Retry-After.
    changes.setdefault("retry_after_s", 12.0 if etype is E.CIRCUIT_OPEN else None)
    return Classification(
        error_type=etype,
        transient=row.transient,
        retryable=row.retryable,
        strategy=row.strategy,
        max_attempts=row.max_attempts,
        **changes,
    )


def _situation(etype: ErrorType, changes: dict[str, Any]) -> AttemptSituation:
    cls = _classification(etype)
    used = changes.get("used", 1)
    if used == "max":
        used = max(cls.max_attempts, 1)
    elif used == "max+1":
        used = cls.max_attempts + 1
    base = AttemptSituation(
        classification=cls,
        used=used,
        elapsed_s=0.0,
        budget_s=BUDGET,
        backoff_s=BACKOFF,
        probe_interval_s=PROBE,
        max_retry_after_s=120.0,
    )
    return replace(base, **{k: v for k, v in changes.items() if k != "used"})


def test_every_matrix_row_is_in_a_group() -> None:
    grouped = set().union(*GROUPS.values())
    assert grouped == set(DEFAULT_MATRIX), set(DEFAULT_MATRIX) ^ grouped


CASES = [
    pytest.param(group, etype, name, id=f"{etype.value}-{name}")
    for group, types in GROUPS.items()
    for etype in sorted(types)
    for name in SITUATIONS
]


@pytest.mark.parametrize(("group", "etype", "situation"), CASES)
def test_next_attempt_table(group: str, etype: ErrorType, situation: str) -> None:
    verdict = next_attempt(_situation(etype, SITUATIONS[situation]))
    action, delay = EXPECTED[group][situation]
    assert (verdict.action, verdict.delay_s) == (action, delay), verdict.reason
    assert verdict.reason  # every verdict says why


def test_retry_after_is_honoured_and_spread_never_sooner() -> None:
    s = _situation(E.RATE_LIMITED, {"used": 1})
    s = replace(s, classification=_classification(E.RATE_LIMITED, retry_after_s=7.0), spread=0.05)
    verdict = next_attempt(s)
    assert verdict.action == "retry" and verdict.delay_s == pytest.approx(7.35)


def test_retry_after_past_the_limit_hands_over_naming_it() -> None:
    s = _situation(E.RATE_LIMITED, {"used": 1})
    s = replace(s, classification=_classification(E.RATE_LIMITED, retry_after_s=99999999.0))
    verdict = next_attempt(s)
    assert verdict.action == "hand_over" and "wait 1157d 9h, past the" in verdict.reason


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(1.0, PROBE), (20.0, PROBE), (45.0, 45.0), (0.0, PROBE)],  # never a probe a second
)
def test_recovery_waits_at_the_probe_cadence_or_later_when_asked(
    retry_after: float, expected: float
) -> None:
    cls = _classification(E.RATE_LIMITED, retry_after_s=retry_after)
    verdict = next_attempt(
        replace(_situation(E.RATE_LIMITED, {"used": "max+1"}), classification=cls)
    )
    assert (verdict.action, verdict.delay_s) == ("wait_recovery", expected)


@pytest.mark.parametrize("etype", [E.RATE_LIMITED, E.SERVICE_DOWN, E.CIRCUIT_OPEN])
def test_a_zero_retry_after_still_sets_a_server_side_delay(etype: ErrorType) -> None:
    # timedelta(0) as next_retry_delay would hand the pace back to the RetryPolicy.
    cls = _classification(etype, retry_after_s=0.0)
    verdict = next_attempt(replace(_situation(etype, {"used": 1}), classification=cls))
    assert verdict.delay_s is not None and verdict.delay_s >= MIN_DELAY_S


def test_an_open_circuit_longer_than_max_retry_after_waits_not_hands_over() -> None:
    cls = _classification(E.CIRCUIT_OPEN, retry_after_s=200.0)
    s = replace(_situation(E.CIRCUIT_OPEN, {"used": 1}), classification=cls, circuit_wait_s=None)
    s = replace(s, max_retry_after_s=120.0, budget_s=600.0)
    verdict = next_attempt(s)
    assert verdict.action == "wait_recovery" and "service asks" not in verdict.reason


def test_quota_escalate_now_hands_over_even_with_retries_left() -> None:
    cls = _classification(E.RATE_LIMITED, escalate_now=True, rule="hubspot_daily_limit")
    verdict = next_attempt(replace(_situation(E.RATE_LIMITED, {"used": 1}), classification=cls))
    assert verdict.action == "hand_over" and "hubspot_daily_limit" in verdict.reason


def test_recovery_waits_stay_inside_the_budget() -> None:
    # A quiet connector down for good: probes at 30 s cadence until the budget is spent.
    probes, elapsed = 0, 7.0
    while True:
        s = replace(_situation(E.SERVICE_DOWN, {"used": "max+1"}), elapsed_s=elapsed)
        verdict = next_attempt(s)
        if verdict.action == "hand_over":
            break
        assert verdict.action == "wait_recovery" and verdict.delay_s == PROBE
        elapsed += PROBE
        probes += 1
    assert probes == 3 and elapsed <= BUDGET
    assert "healing budget of 2m" in verdict.reason


# --- workflow side --------------------------------------------------------------------------

STEP_CASES: list[tuple[str, ErrorType, dict[str, Any], str, str | None]] = [
    ("expired, refresh left", E.AUTH_EXPIRED, {}, "refresh", None),
    ("expired, refreshes spent", E.AUTH_EXPIRED, {"refreshes": 2}, "escalate", None),
    ("expired, no connector", E.AUTH_EXPIRED, {"has_connector": False}, "escalate", None),
    ("schema, mapping", E.SCHEMA_MISMATCH, {"mapping": True}, "adapt", None),
    ("schema, no mapping", E.SCHEMA_MISMATCH, {}, "escalate", None),
    ("schema, adapts spent", E.SCHEMA_MISMATCH, {"mapping": True, "adapts": 2}, "escalate", None),
    ("down, alternative", E.SERVICE_DOWN, {"alts": ("crm_eu",)}, "reroute", "crm_eu"),
    ("down, none", E.SERVICE_DOWN, {}, "escalate", None),
    ("timeout, alternative", E.TIMEOUT, {"alts": ("b", "c")}, "reroute", "b"),
    ("network, alternative", E.NETWORK_ERROR, {"alts": ("b",)}, "reroute", "b"),
    ("throttled, alternative", E.RATE_LIMITED, {"alts": ("b",)}, "reroute", "b"),
    ("quota, alternative", E.RATE_LIMITED, {"alts": ("b",), "now": True}, "escalate", None),
    ("circuit, alternative", E.CIRCUIT_OPEN, {"alts": ("b",)}, "reroute", "b"),
    ("500, alternative", E.INTERNAL_ERROR, {"alts": ("b",)}, "escalate", None),
    ("404, alternative", E.NOT_FOUND, {"alts": ("b",)}, "escalate", None),
    ("400, alternative", E.BAD_REQUEST, {"alts": ("b",)}, "escalate", None),
    ("too large, alternative", E.RESPONSE_TOO_LARGE, {"alts": ("b",)}, "escalate", None),
    ("invalid auth", E.AUTH_INVALID, {"alts": ("b",)}, "escalate", None),
    ("circuit, none", E.CIRCUIT_OPEN, {}, "escalate", None),
    ("expired, alternative", E.AUTH_EXPIRED, {"alts": ("b",)}, "refresh", None),
    ("down, quota-like", E.SERVICE_DOWN, {"alts": ("b",), "now": True}, "escalate", None),
    ("schema, no connector", E.SCHEMA_MISMATCH, {"mapping": True, "has_connector": False},
     "escalate", None),
    # Started before the outage rule: replays reroute only what they rerouted then.
    ("legacy timeout", E.TIMEOUT, {"alts": ("b",), "legacy": True}, "escalate", None),
    ("legacy down", E.SERVICE_DOWN, {"alts": ("b",), "legacy": True}, "reroute", "b"),
    ("legacy quota down", E.SERVICE_DOWN, {"alts": ("b",), "now": True, "legacy": True},
     "reroute", "b"),
    # A spent quota with a known reset parks the call (never reroutes: the quota is ours).
    ("quota, reset known", E.QUOTA_EXHAUSTED, {"now": True, "park": 7200.0, "alts": ("b",)},
     "park", None),
    ("quota, parks spent", E.QUOTA_EXHAUSTED, {"now": True, "park": 7200.0, "parks": 3},
     "escalate", None),
    # No park in the report: no reset known, one past max_wait_s, or a report from before.
    ("quota, report says no park", E.QUOTA_EXHAUSTED, {"now": True}, "escalate", None),
    ("rate limited, park", E.RATE_LIMITED, {"now": True, "park": 7200.0}, "escalate", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("etype", "given", "action", "target"),
    [pytest.param(*case[1:], id=case[0]) for case in STEP_CASES],
)
def test_next_step_table(
    etype: ErrorType, given: dict[str, Any], action: str, target: str | None
) -> None:
    cls = _classification(
        etype,
        schema_mapping={"email_address": "email"} if given.get("mapping") else {},
        escalate_now=given.get("now", False),
    )
    verdict = next_step(
        StepSituation(
            classification=cls,
            refreshes=given.get("refreshes", 0),
            adapts=given.get("adapts", 0),
            untried_alternatives=given.get("alts", ()),
            has_connector=given.get("has_connector", True),
            legacy=given.get("legacy", False),
            parks=given.get("parks", 0),
            park_s=given.get("park"),
        )
    )
    assert (verdict.action, verdict.target) == (action, target)
    assert verdict.reason
    assert (verdict.delay_s is not None) == (action == "park")


@pytest.mark.parametrize(
    ("asked", "retry_after", "expected"),
    [
        (None, None, 60.0),  # nobody named a length: the default
        (None, 3600.0, 3600.0),  # a quota's reset time
        (None, 99999999.0, 86400.0),  # an absurd Retry-After is capped
        (300.0, 3600.0, 300.0),  # the human's own choice wins
        (10**9, None, 86400.0),  # and is capped too
        (0.0, 45.0, 45.0),  # 0 means "no choice"
    ],
)
def test_wait_after_decision_is_bounded(
    asked: float | None, retry_after: float | None, expected: float
) -> None:
    got = wait_after_decision(
        asked_s=asked, retry_after_s=retry_after, default_s=60.0, max_s=86400.0
    )
    assert got == expected


@pytest.mark.parametrize(
    ("human", "failed", "state"),
    [(False, False, "healed"), (True, False, "resolved"), (True, True, "failed")],
)
def test_final_state(human: bool, failed: bool, state: str) -> None:
    assert final_state(decided_by_human=human, failed=failed) == state
