"""The package keeps its shape (docs/architecture.md, "The dependency rule"): imports point
down the floors, only the CLI knows typer and rich, no module is over 600 lines, no cycles.

Read from the source with ``ast``: every import counts, a function's own included."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prefect_dr"
MAX_LINES = 600

#: docs/architecture.md's floors, lowest first. A module not named here is a use case (or a
#: module use cases share). A module may import its own floor and the ones below.
FOUNDATION = {"errors", "kinds", "cron", "interrupt", "redact", "retry", "units", "log",
              "metrics", "notify"}
BUILDING_BLOCKS = {"pg", "storage", "crypto", "pipeline", "manifest", "signing", "layout",
                   "table_copy", "prefect_api", "prefect_schema", "prefect_db", "config",
                   "durations"}
CLI = {"cli", "console"}
ENTRY = {"__main__"}
FLOORS = ("foundation", "building blocks", "use cases", "cli", "entry")


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floor(module: str) -> int:
    top = module.split(".")[0]
    for n, group in enumerate((FOUNDATION, BUILDING_BLOCKS)):
        if top in group:
            return n
    if top in CLI:
        return 3
    if top in ENTRY:
        return 4
    return 2


def _imports(*, at_import_time: bool = False) -> dict[str, set[str]]:
    """module -> the package modules (and third-party names) it imports: every import, or
    (``at_import_time``) only the module-level ones, those that run when it is imported."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body if at_import_time else ast.walk(tree):
            if isinstance(node, ast.Import):
                out[me].update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out[me].add(node.module)
                if node.module.startswith("prefect_dr"):
                    for alias in node.names:
                        full = f"{node.module}.{alias.name}".replace(".", "/")
                        if (ROOT / f"{full}.py").exists() or (ROOT / full).is_dir():
                            out[me].add(f"{node.module}.{alias.name}")
    return out


def _ours(imported: set[str]) -> set[str]:
    return {m.removeprefix("prefect_dr.") for m in imported
            if m.startswith("prefect_dr.")}


def test_every_module_is_known_to_a_floor() -> None:
    tops = {_name(p).split(".")[0] for p in PACKAGE.rglob("*.py")} - {""}
    for group in (FOUNDATION, BUILDING_BLOCKS, CLI, ENTRY):
        assert group <= tops, f"{sorted(group - tops)} no longer exist: update the floors"


def test_imports_point_down_the_floors() -> None:
    wrong = [f"{me} ({FLOORS[_floor(me)]}) imports {them} ({FLOORS[_floor(them)]})"
             for me, imported in sorted(_imports().items()) for them in sorted(_ours(imported))
             if _floor(them) > _floor(me)]
    assert wrong == []


def test_errors_imports_nothing_of_the_package() -> None:
    assert _ours(_imports()["errors"]) == set()


def test_only_the_cli_knows_typer_and_rich() -> None:
    wrong = [f"{me} imports {them}" for me, imported in sorted(_imports().items())
             if _floor(me) < 3 for them in sorted(imported)
             if them.split(".")[0] in ("typer", "rich", "click")]
    assert wrong == []


def test_no_module_is_over_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, "split by use case (docs/architecture.md)"


def test_no_import_cycles_between_modules() -> None:
    """Among the imports that run when a module is imported (a function's own import, or
    one under TYPE_CHECKING, is how a module names what would otherwise close a cycle)."""
    graph = {me: {m for m in _ours(imported) if m != me and not me.startswith(m + ".")}
             for me, imported in _imports(at_import_time=True).items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [module])
    assert cycles == []
