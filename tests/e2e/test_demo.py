"""`healing demo`: its fault plan, and one short end-to-end run on its own dev server."""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
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


def shell_without_the_virtualenv() -> dict[str, str]:
    """The environment of a new shell that never activated .venv: its bin is not on PATH."""
    venv_bin = str(Path(sys.executable).absolute().parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "HEALING_STORE")}
    env["PATH"] = os.pathsep.join(path or ["/usr/bin", "/bin"])
    return env


async def run_as_printed(command: str) -> tuple[int, str]:
    """Run one printed command line through a shell, as a user pasting it would."""
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        cwd=Path.cwd(),  # the demo printed paths relative to where it ran
        env=shell_without_the_virtualenv(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_demo_heals_transients_token_expiry_and_drift_and_its_next_steps_run(
    tmp_path: Path,
) -> None:
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

    assert int(row("Workflows (steps: get_contact, some create_contact)")) == 16 + 2
    assert int(row("  escalated, awaiting a decision")) == permanent
    assert row("  failed / still running") == "0 / 0"
    healed, met = row("Transient faults healed without a human").split()[0].split("/")
    assert healed == met and int(met) > 0
    assert int(row("  total")) > 0
    assert row("Calls to permanently failing paths") == f"{permanent} for {permanent}"
    # The two faults retries cannot fix, healed (the store's events prove it).
    assert row("Expired token (deals.get_deal, 401)") == "healed by a token refresh"
    assert row("Schema drift (crm.get_checked_contact)") == (
        "healed by a schema adaptation (email_address->email)"
    )
    assert int(row("  schema drift (email renamed email_address)")) >= 1
    # What was learned: the store's patterns, token refresh and schema adaptation among them.
    learned = text[text.index("What the store learned") :]
    for pattern in ("deals.get_deal", "AUTH_EXPIRED 401", "refresh_token 1/1"):
        assert pattern in learned, learned
    for pattern in ("crm.get_checked_contact", "SCHEMA_MISMATCH", "schema_adapt 1/1"):
        assert pattern in learned, learned
    assert (tmp_path / "healing.db").exists()
    # One log line per healing step, no tracebacks.
    log = (tmp_path / "demo.log").read_text()
    assert "Traceback" not in log and "Completing activity as failed" not in log
    assert re.search(r"healing crm\.get_contact: \w+.*, retry in \d", log), log[-2000:]

    # Next steps run as printed, from a shell that never activated the virtualenv.
    steps = [line[4:] for line in text.splitlines() if line.startswith("  $ ")]
    assert len(steps) == 3, text
    assert all(".venv/bin/healing " in s or "/bin/healing " in s for s in steps), steps
    outputs = []
    for step in steps:
        code, output = await run_as_printed(step)
        assert code == 0, f"{step!r} exited {code}:\n{output}"
        outputs.append(output)
    patterns, events, token_events = outputs
    assert "AUTH_EXPIRED" in patterns and "SCHEMA_MISMATCH" in patterns, patterns
    assert "no healing events" not in events and "healed" in events, events
    assert "refreshed" in token_events and "deals.get_deal" in token_events, token_events
    assert "healing demo --keep" in text  # how to decide the escalated ones live
