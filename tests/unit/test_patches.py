"""Every optional feature the healing loop may meet is decided up front (before any local
activity), so a query cannot move its patch marker into another workflow task; see
tests/chaos/test_replay_under_queries.py for what breaks otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import healing.interceptor as pkg

ROOT = Path(pkg.__file__).resolve().parent
# Decided elsewhere: inside decide_upfront itself, or in a signal handler (first in a task).
EXEMPT = {"_UPFRONT_PATCH", "_MEMO_PATCH", "_SA_PATCH", "_RETRIES_HEALED_PATCH"}


def test_every_feature_of_the_loop_is_decided_up_front() -> None:
    outbound = (ROOT / "_workflow_outbound.py").read_text()
    upfront = outbound.split("def _decide_upfront", 1)[1].split("\n    def ", 1)[0]
    decided = set(re.findall(r"(\w+_PATCH): ", upfront))
    used: set[str] = set()
    for path in ROOT.glob("*.py"):
        used |= set(re.findall(r"feature\(\s*(\w+_PATCH)", path.read_text()))
    assert used - EXEMPT, "no feature found: the pattern no longer matches the code"
    assert used - EXEMPT <= decided, f"decide these up front too: {sorted(used - EXEMPT - decided)}"
    state = (
        (ROOT / "_state.py").read_text().split("def decide_upfront", 1)[1].split("\n    def ")[0]
    )
    assert {"_MEMO_PATCH", "_SA_PATCH"} <= set(re.findall(r"(\w+_PATCH)", state))
