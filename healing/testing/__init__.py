"""Chaos testing: a real HTTP server that fails like real vendors, driven by a FaultPlan.

    from healing.testing import ChaosAPI, FaultPlan, FaultRule, StatusFault

    plan = FaultPlan(rules=[FaultRule(path="/contacts/*", faults=[StatusFault(status=503)])])
    async with ChaosAPI(plan) as chaos:
        ...  # point a connector at chaos.url

The server classes are imported lazily so that `python -m healing.testing.chaos` runs the
module once, as __main__.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from healing.testing.plan import (
    DEFAULT_PATHS_PREFIX,
    DEFAULT_RANDOM_KINDS,
    BodyFault,
    Fault,
    FaultKind,
    FaultPlan,
    FaultRule,
    LatencyFault,
    Outage,
    ResetFault,
    SchemaDriftFault,
    SchemaRenameFault,
    StatusFault,
    TimeoutFault,
    TruncatedFault,
    Vendor,
)
from healing.testing.state import ChaosStats, TokenSet

if TYPE_CHECKING:
    from healing.testing.chaos import ChaosAPI
    from healing.testing.thread import ChaosThread

__all__ = [
    "DEFAULT_PATHS_PREFIX",
    "DEFAULT_RANDOM_KINDS",
    "BodyFault",
    "ChaosAPI",
    "ChaosStats",
    "ChaosThread",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FaultRule",
    "LatencyFault",
    "Outage",
    "ResetFault",
    "SchemaDriftFault",
    "SchemaRenameFault",
    "StatusFault",
    "TimeoutFault",
    "TokenSet",
    "TruncatedFault",
    "Vendor",
]


def __getattr__(name: str) -> Any:
    if name == "ChaosAPI":
        from healing.testing.chaos import ChaosAPI

        return ChaosAPI
    if name == "ChaosThread":
        from healing.testing.thread import ChaosThread

        return ChaosThread
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
