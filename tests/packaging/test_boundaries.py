"""Import boundaries: only rankq/replication/ knows the consensus engine."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "rankq"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_only_replication_imports_pysyncobj() -> None:
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if (ROOT / "replication") in path.parents:
            continue
        if any(m == "pysyncobj" or m.startswith("pysyncobj.") for m in imported_modules(path)):
            offenders.append(str(path.relative_to(ROOT.parent)))
    assert offenders == [], f"these modules import pysyncobj; go through rankq.replication instead: {offenders}"


def test_no_pysyncobj_internals_outside_replication() -> None:
    """Name-mangled PySyncObj attributes (`_SyncObj__x`) or the raw SyncObj object stay inside replication/."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if (ROOT / "replication") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and (node.attr.startswith("_SyncObj") or node.attr == "syncobj"):
                offenders.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_the_scan_sees_an_import() -> None:
    """The scan itself works: replication/ does import pysyncobj."""
    assert "pysyncobj" in imported_modules(ROOT / "replication" / "node.py")
