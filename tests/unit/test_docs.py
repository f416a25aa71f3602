"""The documents stay true to the code: no promise left standing, no path that is gone.

A phrase such as "(to come)" or "later" about a feature goes stale the day the feature lands;
these checks fail on such phrases and on source paths or document links that no longer exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

STALE = re.compile(
    r"\(to come\)|\bto come\b|\(later\)|\bcomes? later\b|coming soon|not yet (?:implemented|"
    r"supported|done|available)|\bTODO\b|\bTBD\b|will be added|in a (?:later|future) (?:issue|"
    r"release|version)",
    re.IGNORECASE,
)
SOURCE_PATH = re.compile(r"`((?:[a-z_]+/)*[a-z_]+\.(?:py|md|yaml|toml|json))`")
GENERATED = ("bench/results/",)
"""Where runs write their output (ignored by git): named in the docs, absent in a clone."""
LINK = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")


def _names(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_no_stale_promise(document: Path) -> None:
    found = [
        f"{n}: {line.strip()}"
        for n, line in enumerate(document.read_text().splitlines(), 1)
        if STALE.search(line)
    ]
    assert found == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_named_source_files_exist(document: Path) -> None:
    """A file named in backticks exists in the repository or in the package."""
    missing = [
        name
        for name in SOURCE_PATH.findall(document.read_text())
        if not any((base / name).exists() for base in (ROOT, ROOT / "bastion", document.parent))
        and "/" in name
        and not name.startswith(GENERATED)
    ]
    assert missing == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_relative_links_resolve(document: Path) -> None:
    missing = [
        target
        for target in LINK.findall(document.read_text())
        if not (document.parent / target).exists()
    ]
    assert missing == []


def test_the_stale_check_finds_what_it_looks_for() -> None:
    assert STALE.search("the admin API (to come)")
    assert STALE.search("limits and accounting by team come later")
    assert not STALE.search("a later start does not print it")


def tree_entries(text: str) -> list[str]:
    """The paths drawn in the first code block of a document's "## Layers" section."""
    block = text.split("\n## Layers", 1)[1].split("```\n", 2)[1]
    stack: list[tuple[int, str]] = []
    paths = []
    for line in block.splitlines():
        match = re.match(r"( *)(\w+/|\w+\.py)(?:\s|$)", line)
        if match is None:
            continue
        indent, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(d for _, d in stack) + name
        if name.endswith("/"):
            stack.append((indent, name))
        paths.append(path)
    return paths


def test_the_architecture_drawing_names_real_modules() -> None:
    """Every file and folder in docs/architecture.md's tree exists, and every module of
    the package is in the tree: a newcomer finds each phase where the drawing says."""
    drawn = tree_entries((ROOT / "docs" / "architecture.md").read_text())
    assert [p for p in drawn if not (ROOT / p).exists()] == []
    modules = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "bastion").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert modules - set(drawn) == set()
