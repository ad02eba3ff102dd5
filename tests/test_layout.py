"""The house's layout holds: the layering contract is checked by `lint-imports` (make lint); the
benchmark scripts, which are no package, are checked here for import circles."""

from __future__ import annotations

import ast
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def sibling_imports(path: Path, siblings: set[str]) -> set[str]:
    """The scripts a script imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in siblings)
        elif isinstance(node, ast.ImportFrom) and node.module in siblings and not node.level:
            found.add(node.module)
    return found


def test_the_benchmark_scripts_import_each_other_in_no_circle() -> None:
    scripts = {path.stem: path for path in SCRIPTS.glob("*.py")}
    graph = {name: sibling_imports(path, set(scripts)) for name, path in scripts.items()}
    assert graph["bench_jobs"], "the job runner imports the jobs it runs"
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, f"import circle: {' -> '.join([*visiting[visiting.index(name):], name])}"
        if name in done:
            return
        visiting.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
