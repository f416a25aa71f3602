"""The console's static files keep to what the Content-Security-Policy and the XSS rule need,
checked in the source (the browser tests check the pages at run time)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[3] / "bastion" / "console" / "static"
SCRIPTS = sorted(STATIC.glob("*.js"))
TEXT = sorted(p for p in STATIC.iterdir() if p.suffix in {".js", ".css", ".html", ".svg"})

# Ways to turn a string into markup or code: none is used, so data can only ever be text.
UNSAFE = re.compile(
    r"\.innerHTML\b|\.outerHTML\b|insertAdjacentHTML|document\.write|\beval\s*\(|"
    r"\bnew\s+Function\b|setTimeout\s*\(\s*['\"`]|setInterval\s*\(\s*['\"`]|"
    r"\.setAttribute\(\s*['\"]style['\"]|\blocalStorage\b|\bsessionStorage\b"
)
EXTERNAL = re.compile(r"\b(?:https?:)?//(?!www\.w3\.org/2000/svg)[a-z0-9.-]+\.[a-z]{2,}", re.I)


def _names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_the_pages_are_there() -> None:
    names = {p.name for p in STATIC.iterdir()}
    assert {"index.html", "app.js", "console.css", "logo.svg"} <= names
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("path", SCRIPTS, ids=_names(SCRIPTS))
def test_no_script_turns_data_into_markup_or_code(path: Path) -> None:
    code = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("//")
    )
    assert UNSAFE.findall(code) == []


@pytest.mark.parametrize("path", TEXT, ids=_names(TEXT))
def test_nothing_is_loaded_from_elsewhere(path: Path) -> None:
    assert EXTERNAL.findall(path.read_text()) == []


def test_the_html_has_no_inline_script_or_style() -> None:
    page = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.S)
    assert scripts
    for attributes, body in scripts:
        assert 'src="/ui/' in attributes
        assert 'type="module"' in attributes
        assert body.strip() == ""
    assert re.search(r"\sstyle\s*=|<style\b|\son[a-z]+\s*=", page, re.I) is None


def test_the_rules_find_what_they_look_for() -> None:
    assert UNSAFE.search("el.innerHTML = name")
    assert UNSAFE.search("setTimeout('go()', 1)")
    assert not UNSAFE.search("el.textContent = name")
    assert EXTERNAL.search('import x from "https://cdn.example.com/x.js"')
    assert not EXTERNAL.search("const SVG_NS = 'http://www.w3.org/2000/svg';")
