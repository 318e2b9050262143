"""Retry budget per connector: retries across the fleet stay under a share of recent traffic.

Anchors: the AWS SDKs' retry quota (a token bucket that retries drain and successes refill)
and Finagle/Linkerd retry budgets (retries may add ``ratio`` of the requests of the last
``window_s`` seconds, plus ``min_per_s`` so a quiet service can still retry). Counts live in
the store's windowed counters, so the budget is the fleet's, not one worker's.

First attempts are never refused; they only earn budget. A refused retry is not sent: the
caller waits (a server-side wait, not a failed attempt) and asks again, so during an outage
the upstream sees at most ``1 + ratio`` times its normal load from this fleet, whatever the
number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from healing.config import RetryBudgetPolicy
from healing.store.base import FleetState

__all__ = ["BudgetVerdict", "RetryBudget", "allowed_retries"]


def allowed_retries(firsts: int, policy: RetryBudgetPolicy) -> float:
    """Retries the window may hold: ``min_per_s * window_s + ratio * firsts``."""
    return policy.min_per_s * policy.window_s + policy.ratio * firsts


@dataclass(frozen=True)
class BudgetVerdict:
    """Whether a retry may be sent now."""

    allowed: bool
    retries: int
    """Retries in the window, this one included when allowed."""
    limit: float


class RetryBudget:
    """The fleet's retry budget, one per connector.

    Args:
        state: The store's fleet state.
        policy: Ratio, floor and window.
    """

    def __init__(self, state: FleetState, policy: RetryBudgetPolicy) -> None:
        self.state = state
        self.policy = policy

    def _window(self, now: float) -> tuple[int, int]:
        bucket = int(now)
        return bucket, bucket - int(self.policy.window_s) + 1

    async def first_attempt(self, connector: str, *, now: float) -> None:
        """Count a first attempt: it earns retries and is never refused."""
        if not self.policy.enabled:
            return
        bucket, keep = self._window(now)
        await self.state.counter_add(f"retry:{connector}:first", bucket, 1, keep_from=keep)

    async def try_retry(self, connector: str, *, now: float) -> BudgetVerdict:
        """Spend one retry if the window has room; a refused retry is not counted."""
        if not self.policy.enabled:
            return BudgetVerdict(True, 0, float("inf"))
        bucket, keep = self._window(now)
        key = f"retry:{connector}:retry"
        sums = await self.state.counter_sums([f"retry:{connector}:first"], since_bucket=keep)
        limit = allowed_retries(sums[f"retry:{connector}:first"], self.policy)
        # Add first, then check: two workers racing for the last retry cannot both pass.
        total = await self.state.counter_add(key, bucket, 1, keep_from=keep)
        if total <= limit:
            return BudgetVerdict(True, total, limit)
        await self.state.counter_add(key, bucket, -1, keep_from=keep)
        return BudgetVerdict(False, total - 1, limit)
