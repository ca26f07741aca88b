"""Imports only run down: no cycle between medfm modules, and no import against the package
order written in ARCHITECTURE.md (``LAYERS`` below is that list, lowest first).

Every module's AST is read, including imports inside functions, so a deferred import cannot
hide a dependency that runs the wrong way. ``if TYPE_CHECKING:`` blocks are skipped: they
never run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "medfm"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"

# Lowest first. A module may import from its own layer and the layers below it, never above.
LAYERS = [
    ["medfm.io", "medfm.registry"],
    ["medfm.config"],
    ["medfm.tracking"],
    ["medfm.data"],
    ["medfm.models"],
    ["medfm.ssl"],
    ["medfm.train"],
    ["medfm.metrics", "medfm.figures"],
    ["medfm.features"],
    ["medfm.curation"],
    ["medfm.heads"],
    ["medfm.evaluation"],
    ["medfm.robustness"],
    ["medfm.monitor"],
    ["medfm.api"],
    ["medfm.demo"],
    ["medfm.cli", "medfm.__main__", "medfm"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = i, name.count(".")
    assert best is not None, f"{module} is in no layer of LAYERS; add it to ARCHITECTURE.md too"
    return best


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """medfm modules that ``path`` imports (``from medfm.x import y`` counts ``medfm.x.y`` when
    that is a module)."""
    tree, found = ast.parse(path.read_text()), set()
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for n in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("medfm")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("medfm"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in modules else node.module)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports_of(p, set(paths)) - {m} for m, p in paths.items()}


def test_every_import_runs_down_the_package_order():
    wrong = [
        f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
        for m, deps in sorted(graph().items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not wrong, "imports against the order in ARCHITECTURE.md:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    edges = graph()
    # a package's __init__ is imported by its children; only module-to-module edges count
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append([*stack[stack.index(d) :], d])
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_architecture_md_writes_down_the_same_order():
    text = ARCHITECTURE.read_text()
    block = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", text, re.S)
    assert block, "ARCHITECTURE.md has no <!-- layers --> ... <!-- /layers --> list"
    lines = [line.split(":")[0] for line in block.group(1).splitlines()]
    written = [re.findall(r"`(medfm[\w.]*)`", line) for line in lines]
    assert [w for w in written if w] == LAYERS


def test_the_checker_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from medfm.robustness.audit import run_audit\n")
    assert imports_of(bad, {"medfm.robustness.audit"}) == {"medfm.robustness.audit"}
    assert layer_of("medfm.robustness.audit") > layer_of("medfm.data.loader")
