"""Learning: turn the outcomes counted per error pattern into a hint for the next failure.

Pure domain: no clock, no store, no Temporal. :class:`healing.patterns.PatternCache` reads
:class:`~healing.store.base.PatternStats` from the store; the healer asks for a hint through a
local activity (so history records it) and applies it within the matrix's bounds.

The rules, with ``c = policy.min_confidence`` and every bound a one-sided Wilson bound at
``c`` (the matching end of the two-sided interval at ``2c - 1``; at the default 0.9 that is
z = 1.28):

- **No hint** when learning is off, the stats are missing, the matrix row is not retryable or
  allows no attempts (learning never makes an error retry), or no strategy has been tried at
  least ``policy.min_observations`` times on the pattern.
- **skip_retries** when the retry strategies (``RETRY_STRATEGIES``, tries and successes summed)
  have at least ``min_observations`` tries and the upper bound of their success rate is below
  ``policy.never_heals_below``: we are ``c`` sure retries heal this pattern less often than
  that. With the defaults (0.9, 0.05) it takes 32 tries without a heal. Only for rows whose
  strategy is a retry strategy; the healer then escalates or reroutes at once.
- **wait_s** (the learned recovery time) when ``policy.learned_wait`` is on, retries are not
  skipped, the row's own strategy is a retry strategy with at least ``min_observations`` tries
  and a median heal time, and the lower bound of its success rate is at least
  ``LEARNED_WAIT_MIN_RATE`` (retries heal the pattern more often than not, so its heal time
  means something). ``wait_s`` is that median, clamped to
  ``[backoff.initial_s, min(backoff.max_s, budget_s / 2)]``. A server's Retry-After always
  wins over it (``healing.policy.next_attempt``).
- **preferred_strategy** (informational): the strategy with the highest lower bound among those
  with at least ``min_observations`` tries, if that bound is above zero.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from healing.classify import message_template
from healing.config import BackoffPolicy, LearningPolicy
from healing.matrix import MatrixRow
from healing.stats import wilson_bounds
from healing.store.base import PatternStats, StrategyStats
from healing.types import Classification, ErrorPattern, HealingStrategy

RETRY_STRATEGIES: frozenset[str] = frozenset(
    {
        HealingStrategy.RETRY_BACKOFF,
        HealingStrategy.RETRY,
        HealingStrategy.WAIT_RETRY_AFTER,
        HealingStrategy.RETRY_THEN_REROUTE,
    }
)
"""Strategies whose tries are plain retries of the same call: the ones a hint may skip."""

LEARNED_WAIT_MIN_RATE = 0.5
"""Lower bound of the retry success rate a learned wait needs."""


class StrategyHint(BaseModel):
    """What the learned stats of one error pattern suggest for its next failure.

    Attributes:
        fingerprint: The error pattern.
        skip_retries: Retries have (confidently) never healed this pattern: do not retry,
            escalate or reroute at once.
        wait_s: Learned recovery time to wait before retrying instead of the fixed backoff;
            None to keep the backoff.
        preferred_strategy: The strategy that heals this pattern best (informational).
        confidence: One-sided confidence level of the bounds behind the hint.
        observations: Tries of every strategy on the pattern.
        reason: One plain-language sentence saying why, for history and the CLI.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    fingerprint: str
    skip_retries: bool = False
    wait_s: float | None = None
    preferred_strategy: str | None = None
    confidence: float
    observations: int
    reason: str


def _bounds(successes: int, tries: int, policy: LearningPolicy) -> tuple[float, float]:
    """One-sided lower and upper bounds at ``policy.min_confidence``."""
    return wilson_bounds(successes, tries, policy.min_confidence)


def _percent(value: float) -> str:
    return f"{value:.1%}" if 0 < value < 0.01 else f"{value:.0%}"


def _seconds(value: float) -> str:
    return f"{value:.3g} s"


def hint_for(
    stats: PatternStats | None,
    row: MatrixRow,
    policy: LearningPolicy,
    *,
    backoff: BackoffPolicy,
    budget_s: float,
    now: datetime | None = None,
) -> StrategyHint | None:
    """The hint the learned stats of one pattern give, or None to heal by the matrix alone.

    Args:
        stats: The pattern's stats from the store; None when the pattern is new.
        row: The matrix row of the failure's error type (the safety bound).
        policy: The learning knobs.
        backoff: The backoff policy, whose ``initial_s`` and ``max_s`` clamp a learned wait.
        budget_s: The healing budget of one call; a learned wait is at most half of it.
        now: The wall-clock time; evidence last seen more than ``policy.evidence_ttl_s``
            before it is stale and gives no hint (None: never stale).

    Returns:
        A hint, or None (see the module docstring for the exact rules).
    """
    if stats is None or not policy.enabled or not row.retryable or row.max_attempts == 0:
        return None
    seen = stats.last_seen
    if (
        now is not None
        and seen is not None
        and (now - seen).total_seconds() > policy.evidence_ttl_s
    ):
        return None  # stale: the upstream may have changed since
    enough = [s for s in stats.strategies if s.tries >= policy.min_observations]
    if not enough:
        return None
    level = f"{policy.min_confidence:.0%}"
    row_retries = row.strategy in RETRY_STRATEGIES
    retries = [s for s in stats.strategies if s.strategy in RETRY_STRATEGIES]
    tries = sum(s.tries for s in retries)
    healed = min(tries, sum(s.successes for s in retries))
    skip = False
    reasons: list[str] = []
    if row_retries and tries >= policy.min_observations:
        upper = _bounds(healed, tries, policy)[1]
        skip = upper < policy.never_heals_below
        if skip:
            reasons.append(
                f"retries healed this pattern {healed} of {tries} times "
                f"({level} upper bound {_percent(upper)})"
            )
    wait_s = None if skip else _learned_wait(stats, row, policy, backoff, budget_s, reasons)
    # Once retries are skipped, only a strategy other than retrying can be preferred.
    preferred = _preferred([s for s in enough if not skip or s not in retries], policy)
    if preferred is not None and (not reasons or preferred[0].strategy not in RETRY_STRATEGIES):
        best, low = preferred
        reasons.append(
            f"{best.strategy} healed {'it' if reasons else 'this pattern'} "
            f"{min(best.successes, best.tries)} of {best.tries} times "
            f"({level} lower bound {_percent(low)})"
        )
    if not skip and wait_s is None and preferred is None:
        return None
    return StrategyHint(
        fingerprint=stats.pattern.fingerprint,
        skip_retries=skip,
        wait_s=wait_s,
        preferred_strategy=preferred[0].strategy if preferred else None,
        confidence=policy.min_confidence,
        observations=sum(s.tries for s in stats.strategies),
        reason="; ".join(reasons),
    )


def _learned_wait(
    stats: PatternStats,
    row: MatrixRow,
    policy: LearningPolicy,
    backoff: BackoffPolicy,
    budget_s: float,
    reasons: list[str],
) -> float | None:
    if not policy.learned_wait or row.strategy not in RETRY_STRATEGIES:
        return None
    own = next((s for s in stats.strategies if s.strategy == row.strategy), None)
    if own is None or own.tries < policy.min_observations or own.median_heal_s is None:
        return None
    healed = min(own.tries, own.successes)
    low = _bounds(healed, own.tries, policy)[0]
    if low < LEARNED_WAIT_MIN_RATE:
        return None
    ceiling = min(backoff.max_s, budget_s / 2)  # never past the backoff cap
    if ceiling <= 0:
        return None
    wait_s = max(min(own.median_heal_s, ceiling), min(backoff.initial_s, ceiling))
    reasons.append(
        f"{own.strategy} healed this pattern {healed} of {own.tries} times "
        f"({policy.min_confidence:.0%} lower bound {_percent(low)}) after a median "
        f"{_seconds(own.median_heal_s)}, so the retry waits {_seconds(wait_s)}"
    )
    return wait_s


def _preferred(
    candidates: list[StrategyStats], policy: LearningPolicy
) -> tuple[StrategyStats, float] | None:
    scored = [(_bounds(min(s.successes, s.tries), s.tries, policy)[0], s) for s in candidates]
    if not scored:
        return None
    low, best = max(scored, key=lambda pair: (pair[0], pair[1].tries))
    return (best, low) if low > 0 else None


def pattern_of(cls: Classification, connector: str | None, operation: str | None) -> ErrorPattern:
    """The error pattern a classified failure counts under (ids, numbers, emails normalised)."""
    return ErrorPattern(
        fingerprint=cls.fingerprint,
        connector=connector or "",
        operation=operation or "",
        error_type=cls.error_type,
        status_code=cls.status_code,
        vendor_code=cls.vendor_code,
        template=message_template(cls.message),
    )
