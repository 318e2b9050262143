"""Learning: the hint rules as a table (the Wilson bounds are in test_stats.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from healing.config import BackoffPolicy, HealingConfig, LearningPolicy
from healing.learning import (
    RETRY_STRATEGIES,
    StrategyHint,
    hint_for,
)
from healing.matrix import DEFAULT_MATRIX, MatrixRow
from healing.policy import AttemptSituation, next_attempt
from healing.store.base import PatternStats, StrategyStats
from healing.types import Classification, ErrorPattern, ErrorType, HealingStrategy

TIMEOUT_ROW = DEFAULT_MATRIX[ErrorType.TIMEOUT]  # retry_backoff, 3 attempts
POLICY = LearningPolicy()
BACKOFF = BackoffPolicy()
PATTERN = ErrorPattern(
    fingerprint="abc123", connector="crm", operation="get_contact", error_type=ErrorType.TIMEOUT
)


def stats(*strategies: tuple[str, int, int, float | None]) -> PatternStats:
    return PatternStats(
        pattern=PATTERN,
        seen=sum(s[1] for s in strategies),
        strategies=[
            StrategyStats(strategy=name, tries=tries, successes=ok, median_heal_s=median)
            for name, tries, ok, median in strategies
        ],
    )


def hint(
    pattern: PatternStats | None,
    row: MatrixRow = TIMEOUT_ROW,
    policy: LearningPolicy = POLICY,
    budget_s: float = 120.0,
) -> StrategyHint | None:
    return hint_for(pattern, row, policy, backoff=BACKOFF, budget_s=budget_s)


def test_policy_defaults_and_config_field() -> None:
    assert HealingConfig().learning == LearningPolicy(
        enabled=True,
        min_observations=8,
        min_confidence=0.9,
        never_heals_below=0.05,
        learned_wait=True,
        cache_ttl_s=30.0,
    )
    with pytest.raises(ValidationError):
        LearningPolicy(min_confidence=0.5)  # one-sided bounds need a level above 50%


def test_learning_can_be_switched_off_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEALING_LEARNING__ENABLED", "false")
    assert HealingConfig().learning.enabled is False


NEVER_HEALED = stats(("retry_backoff", 40, 0, None))
MOSTLY_HEALED = stats(("retry_backoff", 20, 18, 3.2))


@pytest.mark.parametrize(
    ("name", "pattern", "row", "policy"),
    [
        ("no stats", None, TIMEOUT_ROW, POLICY),
        ("too few observations", stats(("retry_backoff", 7, 0, None)), TIMEOUT_ROW, POLICY),
        ("disabled", NEVER_HEALED, TIMEOUT_ROW, LearningPolicy(enabled=False)),
        ("non-retryable row", MOSTLY_HEALED, DEFAULT_MATRIX[ErrorType.NOT_FOUND], POLICY),
        (
            "non-retryable row that still lists attempts",
            MOSTLY_HEALED,
            TIMEOUT_ROW.model_copy(update={"retryable": False}),
            POLICY,
        ),
        (
            "no attempts allowed",
            MOSTLY_HEALED,
            TIMEOUT_ROW.model_copy(update={"max_attempts": 0}),
            POLICY,
        ),
        ("nothing actionable", stats(("retry_backoff", 10, 0, None)), TIMEOUT_ROW, POLICY),
    ],
)
def test_no_hint(
    name: str, pattern: PatternStats | None, row: MatrixRow, policy: LearningPolicy
) -> None:
    assert hint(pattern, row, policy) is None, name


def test_never_healed_skips_retries_and_says_why() -> None:
    result = hint(NEVER_HEALED)
    assert result is not None
    assert result.skip_retries is True
    assert result.wait_s is None
    assert result.observations == 40
    assert result.confidence == 0.9
    assert result.reason == "retries healed this pattern 0 of 40 times (90% upper bound 4%)"


def test_skip_needs_a_confident_upper_bound_not_just_zero_heals() -> None:
    # 0 of 31: the 90% upper bound is 5.03%, not below 5%; 0 of 32 is 4.88%.
    assert hint(stats(("retry_backoff", 31, 0, None))) is None
    assert hint(stats(("retry_backoff", 32, 0, None))) is not None
    # 0 of 25: two-sided 95% upper bound 13%, one-sided (z = 1.645) 9.8%, below 15%.
    lenient = LearningPolicy(min_confidence=0.95, never_heals_below=0.15)
    result = hint(stats(("retry_backoff", 25, 0, None)), policy=lenient)
    assert result is not None and result.skip_retries
    assert "0 of 25 times (95% upper bound 10%)" in result.reason


def test_skip_sums_the_retry_strategies_and_names_the_alternative() -> None:
    pattern = stats(
        ("retry_backoff", 20, 0, None),
        ("retry", 20, 0, None),
        ("refresh_token", 12, 12, 1.0),
    )
    result = hint(pattern)
    assert result is not None and result.skip_retries
    assert result.preferred_strategy == "refresh_token"
    assert result.reason.startswith("retries healed this pattern 0 of 40 times")
    assert "refresh_token healed it 12 of 12 times" in result.reason


def test_one_heal_in_forty_is_not_never() -> None:
    result = hint(stats(("retry_backoff", 40, 1, 2.0)))
    assert result is None or not result.skip_retries


def test_a_refresh_row_never_skips_its_retry() -> None:
    row = DEFAULT_MATRIX[ErrorType.AUTH_EXPIRED]
    result = hint(stats(("retry_backoff", 40, 0, None)), row=row)
    assert result is None or not result.skip_retries


@pytest.mark.parametrize(
    ("median", "budget_s", "expected"),
    [
        (3.2, 120.0, 3.2),
        (0.2, 120.0, 1.0),  # never below backoff.initial_s
        (500.0, 600.0, 30.0),  # at most backoff.max_s, the matrix's cap
        (500.0, 40.0, 20.0),  # at most half the healing budget
    ],
)
def test_mostly_healed_waits_the_learned_recovery_time(
    median: float, budget_s: float, expected: float
) -> None:
    result = hint(stats(("retry_backoff", 20, 18, median)), budget_s=budget_s)
    assert result is not None
    assert result.skip_retries is False
    assert result.wait_s == pytest.approx(expected)
    assert result.preferred_strategy == "retry_backoff"
    assert "18 of 20 times" in result.reason


@pytest.mark.parametrize(
    ("pattern", "policy"),
    [
        (stats(("retry_backoff", 8, 5, 3.2)), POLICY),  # 90% lower bound 40% < 50%
        (MOSTLY_HEALED, LearningPolicy(learned_wait=False)),
        (stats(("retry_backoff", 20, 18, None)), POLICY),  # no median heal time
        (stats(("retry", 20, 18, 3.2)), POLICY),  # not the row's strategy
    ],
)
def test_no_learned_wait(pattern: PatternStats, policy: LearningPolicy) -> None:
    result = hint(pattern, policy=policy)
    assert result is None or result.wait_s is None


def test_six_of_eight_is_enough_for_a_learned_wait() -> None:
    result = hint(stats(("retry_backoff", 8, 6, 2.5)))
    assert result is not None and result.wait_s == pytest.approx(2.5)


def test_preferred_is_the_highest_lower_bound() -> None:
    pattern = stats(
        ("retry_then_reroute", 100, 60, 10.0),  # 60%, many tries: lower bound ~53%
        ("refresh_token", 8, 8, 1.0),  # 100%, few tries: lower bound ~83%
        ("schema_adapt", 3, 3, 1.0),  # too few tries to count
    )
    result = hint(pattern, row=DEFAULT_MATRIX[ErrorType.SERVICE_DOWN])
    assert result is not None
    assert result.preferred_strategy == "refresh_token"
    assert result.wait_s == pytest.approx(10.0)


def hinted(wait_s: float | None, skip: bool = False) -> StrategyHint:
    return StrategyHint(
        fingerprint="abc",
        skip_retries=skip,
        wait_s=wait_s,
        confidence=0.9,
        observations=20,
        reason="test",
    )


@pytest.mark.parametrize(
    ("hint_", "default", "retry_after", "expected"),
    [
        (None, 1.0, None, 1.0),
        (hinted(None), 2.0, None, 2.0),
        (hinted(3.2), 1.0, None, 3.2),
        (hinted(3.2), 1.0, 10.0, 10.0),  # the server asked for longer: it wins
        (hinted(30.0), 1.0, 5.0, 5.0),  # and it wins when it asks for less, too
        (hinted(3.2, skip=True), 1.0, None, None),  # hopeless: no retry at all
    ],
)
def test_the_learned_wait_paces_retries_and_retry_after_wins(
    hint_: StrategyHint | None, default: float, retry_after: float | None, expected: float | None
) -> None:
    row = DEFAULT_MATRIX[ErrorType.SERVICE_DOWN]
    cls = Classification(
        error_type=ErrorType.SERVICE_DOWN,
        transient=row.transient,
        retryable=row.retryable,
        strategy=row.strategy,
        max_attempts=row.max_attempts,
        retry_after_s=retry_after,
    )
    verdict = next_attempt(
        AttemptSituation(
            classification=cls,
            used=1,
            elapsed_s=0.0,
            budget_s=120.0,
            backoff_s=default,
            probe_interval_s=30.0,
            max_retry_after_s=120.0,
            hint=hint_,
        )
    )
    assert verdict.delay_s == (pytest.approx(expected) if expected is not None else None)


def test_hint_is_frozen() -> None:
    result = hint(NEVER_HEALED)
    assert result is not None
    with pytest.raises(ValidationError):
        result.skip_retries = False  # type: ignore[misc]


def test_retry_strategies_are_the_plain_retries() -> None:
    S = HealingStrategy
    assert {S(s) for s in RETRY_STRATEGIES} == {
        S.RETRY_BACKOFF,
        S.RETRY,
        S.WAIT_RETRY_AFTER,
        S.RETRY_THEN_REROUTE,
    }
