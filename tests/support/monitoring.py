"""The shipped Grafana dashboard and Prometheus rules, and the metric names their PromQL reads.

The names are found by a small reading of PromQL, enough for the expressions we write: string
literals, label matchers, ranges and grouping clauses are taken out; what is left that is an
identifier, not followed by ``(`` (a function or an aggregation) and not a keyword, is a
metric name.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "bastion.json"
RULES = ROOT / "deploy" / "prometheus" / "bastion-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "bastion-rules.test.yaml"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
)
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run Prometheus's ``promtool`` in deploy/prometheus/."""
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/setup --test installs it (Debian: prometheus)"
    return subprocess.run(
        [found, *args],
        cwd=RULES.parent,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for found in _IDENTIFIER.finditer(text):
        word = found.group()
        if text[found.end() :].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def rules() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows hold none), rows' nested panels included."""
    found = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_expressions(board: dict[str, Any]) -> dict[str, str]:
    """``{where: PromQL}`` of every panel target and every query variable."""
    found = {
        f"panel {panel['id']} ({panel['title']}) {target['refId']}": target["expr"]
        for panel in panels(board)
        for target in panel["targets"]
    }
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        selector = _LABEL_VALUES.match(query)
        assert selector is not None, f"variable {variable['name']}: not label_values(...)"
        found[f"variable {variable['name']}"] = selector[1]
    return found


def rule_expressions(loaded: dict[str, Any]) -> dict[str, str]:
    """``{alert or record name: PromQL}`` of every rule."""
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in loaded["groups"]
        for rule in group["rules"]
    }


def names_read() -> dict[str, set[str]]:
    """``{metric name: where it is read}`` over the dashboard and the rules."""
    where: dict[str, set[str]] = {}
    expressions = {
        **{f"dashboard {k}": v for k, v in dashboard_expressions(dashboard()).items()},
        **{f"rule {k}": v for k, v in rule_expressions(rules()).items()},
    }
    for place, expr in expressions.items():
        for name in metric_names(expr):
            where.setdefault(name, set()).add(place)
    return where
