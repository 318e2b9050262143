"""The ledger of one call: what its earlier attempts met, carried in heartbeat details.

Heartbeat details survive to the next attempt of the same activity, so per-type retry
budgets hold across server-paced retries, and a success after failures knows which error
pattern it healed (for the learning layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from healing.names import LEDGER_KEY
from healing.types import ErrorPattern


@dataclass
class Ledger:
    counts: dict[str, int] = field(default_factory=dict)
    """Failures so far by error type."""
    pattern: ErrorPattern | None = None
    """The latest failure's pattern."""
    strategy: str | None = None
    """The strategy applied to the latest failure."""
    failing_since: str | None = None
    """When this call first failed (ISO wall-clock time), for outage explanations."""
    waited: bool = False
    """The healer imposed a recovery wait (behind the circuit or at the probe cadence)."""
    failed_at_s: float | None = None
    """Seconds into the call (from its schedule) when it first failed: the healing budget
    counts from here."""
    slot_at: float | None = None
    """A reserved rate-limit slot (epoch) the call waits for on the server (not a failure)."""
    slot_gen: int = 0
    """The rate window's generation of that slot."""
    held: int = 0
    """Attempts held back before sending (rate-limit slot, retry budget): not failures."""

    @classmethod
    def from_details(cls, details: Any) -> Ledger:
        for item in details or ():
            raw = item.get(LEDGER_KEY) if isinstance(item, dict) else None
            if isinstance(raw, dict):
                try:
                    counts = {str(k): int(v) for k, v in dict(raw.get("counts", {})).items()}
                    pattern = raw.get("pattern")
                    return cls(
                        counts=counts,
                        pattern=ErrorPattern.model_validate(pattern) if pattern else None,
                        strategy=raw.get("strategy"),
                        failing_since=raw.get("failing_since"),
                        waited=bool(raw.get("waited", False)),
                        failed_at_s=_seconds(raw.get("failed_at_s")),
                        slot_at=_seconds(raw.get("slot_at")),
                        slot_gen=int(raw.get("slot_gen") or 0),
                        held=int(raw.get("held") or 0),
                    )
                except (TypeError, ValueError):
                    return cls()  # a foreign or corrupt detail: start afresh
        return cls()

    def to_detail(self) -> dict[str, Any]:
        return {
            LEDGER_KEY: {
                "counts": self.counts,
                "pattern": self.pattern.model_dump(mode="json") if self.pattern else None,
                "strategy": self.strategy,
                "failing_since": self.failing_since,
                "waited": self.waited,
                "failed_at_s": self.failed_at_s,
                "slot_at": self.slot_at,
                "slot_gen": self.slot_gen,
                "held": self.held,
            }
        }


def is_ledger(item: Any) -> bool:
    return isinstance(item, dict) and LEDGER_KEY in item


def user_details(details: Any) -> list[Any]:
    """Heartbeat details without the ledger: what the activity itself recorded."""
    return [item for item in details or () if not is_ledger(item)]


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value >= 0 else None
