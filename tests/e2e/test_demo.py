"""`healing demo`: its fault plan, and one short end-to-end run on its own dev server."""

from __future__ import annotations

import io
import re
from pathlib import Path

from healing.demo import DemoOptions, fault_plan, percentile, run_demo
from healing.devserver import find_free_port
from healing.testing.plan import SUCCESS_KINDS


def test_fault_plan_is_seeded_and_mixed() -> None:
    plan, special = fault_plan(7, 0.3, 60)
    assert fault_plan(7, 0.3, 60) == (plan, special)
    assert fault_plan(8, 0.3, 60) != (plan, special)
    kinds = sorted(special.values())
    assert kinds.count("404") + kinds.count("403") == 3  # about 5% permanent
    assert {"404", "403", "outage"} <= set(kinds)
    for i in range(60):
        needed = plan.attempts_needed("GET", f"/contacts/{i:04d}")
        if special.get(i) in ("404", "403"):
            assert needed is None
        else:  # transient: at most 4 faults (an outage that reroutes), mostly at most 2
            assert needed is not None and needed <= (5 if special.get(i) else 3)
    drawn = [plan.fault_for("GET", f"/contacts/{i:04d}", 1) for i in range(60) if i not in special]
    injected = {f.kind for f in drawn if f is not None and f.kind not in SUCCESS_KINDS}
    assert {"timeout", "reset", "status"} <= injected


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 95) == 95.0


async def test_demo_heals_transients_and_escalates_permanent_errors(tmp_path: Path) -> None:
    out = io.StringIO()
    opts = DemoOptions(
        count=16, seed=3, state_dir=tmp_path, out=out, port=find_free_port(),
        ui_port=find_free_port(),
    )  # fmt: skip
    assert await run_demo(opts) == 0, out.getvalue()
    text = out.getvalue()
    _, special = fault_plan(3, 0.3, 16)
    permanent = sum(1 for kind in special.values() if kind in ("404", "403"))

    def row(label: str) -> str:
        match = re.search(rf"^{re.escape(label)}\s+(.+)$", text, re.MULTILINE)
        assert match, f"no row {label!r} in:\n{text}"
        return match.group(1).strip()

    assert int(row("  escalated, awaiting a decision")) == permanent
    assert row("  failed / still running") == "0 / 0"
    healed, met = row("Transient faults healed without a human").split()[0].split("/")
    assert healed == met and int(met) > 0
    assert int(row("  total")) > 0
    assert row("Calls to permanently failing paths") == f"{permanent} for {permanent}"
    assert "healing decide demo-" in text
    assert "query=HealingStatus%3D%22awaiting_decision%22" in text
    assert (tmp_path / "demo.log").exists()
