"""Contract names are spelt once, in healing/names.py, and what the activities register is it."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

from temporalio import activity

from healing import names
from healing.activities import healing_activities

ROOT = Path(__file__).resolve().parents[2]
# "healing" (the memo key) is also the logger name and a HealingStatus value: not checkable.
CONTRACT = {
    value: name
    for name, value in vars(names).items()
    if name.isupper() and isinstance(value, str) and name != "MEMO_KEY"
}


def spellings(root: Path, contract: Mapping[str, str]) -> dict[str, set[str]]:
    """Module -> the contract constants it writes as string literals (``__all__`` aside)."""
    found: dict[str, set[str]] = {}
    for path in sorted((root / "healing").rglob("*.py")):
        if path.name == "names.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        exports = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign | ast.AnnAssign)
            and node.value is not None
            and any(
                isinstance(t, ast.Name) and t.id == "__all__"
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
            for n in ast.walk(node.value)
        }  # "GrantRevoked" in __all__ is the exception class, not the error type
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in contract
                and id(node) not in exports
            ):
                module = ".".join(path.relative_to(root).with_suffix("").parts)
                found.setdefault(module.removesuffix(".__init__"), set()).add(contract[node.value])
    return found


def test_no_module_spells_a_contract_name() -> None:
    found = spellings(ROOT, CONTRACT)
    assert not found, f"import these from healing.names instead: {found}"


def test_the_check_finds_a_spelt_name(tmp_path: Path) -> None:
    (tmp_path / "healing").mkdir()
    (tmp_path / "healing" / "plugin.py").write_text(
        '__all__ = ["healing_status"]\nQUERY = "healing_status"\nOTHER = "healing_statuses"\n'
    )
    assert spellings(tmp_path, CONTRACT) == {"healing.plugin": {"STATUS_QUERY"}}


def test_registered_healing_activities_are_the_contract_names() -> None:
    registered = {activity._Definition.must_from_callable(fn).name for fn in healing_activities()}
    assert registered == names.HEALING_ACTIVITIES
    assert all(str(name).startswith(names.ACTIVITY_PREFIX) for name in registered)


def test_names_module_imports_nothing_of_ours() -> None:
    # Any module may import names, so names may import no healing module (no cycle possible).
    tree = ast.parse((ROOT / "healing" / "names.py").read_text(encoding="utf-8"))
    nodes = list(ast.walk(tree))
    imported = [n.module or "" for n in nodes if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in nodes if isinstance(n, ast.Import) for a in n.names]
    assert [m for m in imported if m.split(".")[0] == "healing"] == []
