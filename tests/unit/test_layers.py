"""The package's layers, as ``docs/architecture.md`` draws them, hold in the code.

A module may import modules of its own layer or of lower layers, never of a higher one, and
no chain of imports comes back to where it started (``if TYPE_CHECKING:`` imports count:
a circle of knowledge is a circle even when Python never runs it). The layer table is read
from the document itself, so the drawing and this check cannot disagree.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bastion"
DOC = ROOT / "docs" / "architecture.md"

Edge = tuple[str, str]


def layer_table(text: str) -> dict[str, int]:
    """``{top-level unit: layer}`` from the document's table rows ``| N | `a`, `b` | ... |``."""
    section = text.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for number, units in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.MULTILINE):
        for unit in re.findall(r"`([\w.]+)`", units):
            assert unit not in layers, f"{unit} is in two layers"
            layers[unit.removesuffix(".py").removesuffix("/")] = int(number)
    return layers


def unit_of(module: str) -> str:
    """``bastion.pipeline.forward`` -> ``pipeline``; ``bastion`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports(package: Path) -> set[Edge]:
    """Every (importer, imported) pair of Bastion modules, wherever the import stands."""
    edges: set[Edge] = set()
    for path in package.rglob("*.py"):
        importer = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            edges.update((importer, n) for n in names if n.split(".")[0] == "bastion")
    return edges


def upward(edges: Iterable[Edge], layers: Mapping[str, int]) -> list[Edge]:
    return sorted((a, b) for a, b in edges if layers[unit_of(a)] < layers[unit_of(b)])


def circles(edges: Iterable[Edge]) -> list[list[str]]:
    """One circle through each back edge found by a depth-first walk (none: a DAG)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    path: list[str] = []
    found: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return found


@pytest.fixture(scope="module")
def layers() -> dict[str, int]:
    return layer_table(DOC.read_text())


@pytest.fixture(scope="module")
def edges() -> set[Edge]:
    return imports(PACKAGE)


def test_every_module_has_a_layer(layers: dict[str, int], edges: set[Edge]) -> None:
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units - layers.keys() == set(), "place each new module in docs/architecture.md"
    assert layers.keys() - units == set(), "the document names a unit that no longer exists"


def test_no_module_imports_a_higher_layer(layers: dict[str, int], edges: set[Edge]) -> None:
    assert upward(edges, layers) == []


def test_no_circle_of_imports(edges: set[Edge]) -> None:
    assert circles(edges) == []


def test_the_checks_find_what_they_look_for(layers: dict[str, int]) -> None:
    """The checks themselves: an upward edge and a circle are reported."""
    bad = {("bastion.store.audit", "bastion.pipeline.context")}
    assert upward(bad, layers) == sorted(bad)
    loop = {("bastion.a", "bastion.b"), ("bastion.b", "bastion.c"), ("bastion.c", "bastion.a")}
    assert circles(loop) == [["bastion.a", "bastion.b", "bastion.c", "bastion.a"]]
