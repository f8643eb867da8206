"""The package's layering (issue 12, "Structure"): one module owns the run record; results/ never
imports report/ (or train/); the subpackages import each other without cycles.

Read from the source (every import statement, module level or inside a function), so an import
that only runs on one code path is caught too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import capsbench

PACKAGE = Path(capsbench.__file__).resolve().parent
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())


def _imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "capsbench":  # from capsbench import report
                names.update(f"capsbench.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith("capsbench.")}


def subpackage_imports() -> dict[str, set[str]]:
    """Subpackage -> the other subpackages its modules import."""
    graph: dict[str, set[str]] = defaultdict(set)
    for sub in SUBPACKAGES:
        for path in (PACKAGE / sub).rglob("*.py"):
            for name in _imported(ast.parse(path.read_text())):
                target = name.split(".")[1]
                if target in SUBPACKAGES and target != sub:
                    graph[sub].add(target)
    return graph


def test_results_imports_no_report_and_no_train():
    assert subpackage_imports()["results"].isdisjoint({"report", "train", "executors"})


def test_subpackages_import_each_other_without_cycles():
    graph = subpackage_imports()
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, (*path, node))
        done.add(node)

    for sub in SUBPACKAGES:
        visit(sub, ())


def test_one_module_owns_the_run_record():
    """Version and schema of the run record live in one module (they were in train/record.py and
    results/schema.py, which imported each other)."""
    version_owners, schema_users = [], []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "RUN_RECORD_VERSION" for t in node.targets):
                version_owners.append(str(path.relative_to(PACKAGE)))
            if isinstance(node, ast.Constant) and node.value == "record.schema.json":
                schema_users.append(str(path.relative_to(PACKAGE)))
    assert version_owners == ["results/run_record.py"]
    assert schema_users == ["results/run_record.py"]
    assert not (PACKAGE / "train" / "record.py").exists()
