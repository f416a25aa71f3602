"""The results table (one row per metric, one column per system), as Markdown, JSON and a PNG.

Targets are the performance issues'; only Bastion's column is judged. A judgement is "pass",
"FAIL", or "n/a: why" when the figure could not be measured on this machine. Besides the
absolute rows (microseconds, which move with the machine), the ratio rows divide Bastion's
CPU per request and per streamed event by nginx's in the same run (shown only when nginx
ran): what issue 15 targets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ROWS", "Row", "render_markdown", "table_rows", "write_json", "write_png"]

HOLD_TARGET = 10_000
Results = dict[str, Any]
Figures = dict[str, Any]
Value = float | int | None


def _fig(results: Results, system: str, scenario: str) -> Figures | None:
    entry = results["systems"].get(system, {})
    found = entry.get("scenarios", {}).get(scenario)
    return found if isinstance(found, dict) and "error" not in found else None


def _get(scenario: str, key: str) -> Callable[[Results, str], Value]:
    def read(results: Results, system: str) -> Value:
        figures = _fig(results, system, scenario)
        value = None if figures is None else figures.get(key)
        return value if isinstance(value, int | float) else None

    return read


def _sum(*readers: Callable[[Results, str], Value]) -> Callable[[Results, str], Value]:
    def read(results: Results, system: str) -> Value:
        values = [r(results, system) for r in readers]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    return read


Judge = Callable[[Value, Results], str]


def _at_most(limit: float) -> Judge:
    return lambda v, _r: "n/a" if v is None else ("pass" if v <= limit else "FAIL")


def _at_least(limit: float) -> Judge:
    return lambda v, _r: "n/a" if v is None else ("pass" if v >= limit else "FAIL")


def _direct_plus(reader: Callable[[Results, str], Value], slack: float) -> Judge:
    def judge(value: Value, results: Results) -> str:
        base = reader(results, "direct")
        if value is None or base is None:
            return "n/a: needs the direct column"
        return "pass" if value <= base + slack else "FAIL"

    return judge


def _abs_at_most(limit: float) -> Judge:
    return lambda v, _r: "n/a" if v is None else ("pass" if abs(v) <= limit else "FAIL")


def _held(value: Value, results: Results) -> str:
    figures = _fig(results, "bastion", "hold")
    if value is None or figures is None:
        return "n/a"
    if figures.get("errors") != 0 or value < figures.get("attempted", 0):
        return "FAIL"
    if figures.get("requested", 0) > figures.get("attempted", 0):
        return f"n/a: fd limit, {int(value):,} held cleanly"
    if value < HOLD_TARGET:
        return f"n/a: only {int(value):,} asked"
    return "pass"


def _noise(results: Results, system: str) -> Value:
    """The busiest any scenario found the gateway core with work that was not the gateway's."""
    scenarios = results["systems"].get(system, {}).get("scenarios", {})
    found = [f.get("other_load_pct") for f in scenarios.values() if isinstance(f, dict)]
    values = [v for v in found if isinstance(v, int | float)]
    return max(values) if values else None


def _redis_limits(results: Results) -> bool:
    return results["systems"].get("bastion", {}).get("limits_backend") == "redis"


def _ratio(
    scenario: str, key: str, *, redis: bool | None = None
) -> Callable[[Results, str], Value]:
    """A gateway's figure over nginx's from the same run (None for nginx and direct, and
    when nginx did not run; only Bastion's is judged). ``redis``: only when Bastion's
    limits are (True) or are not (False) kept in Redis, None: either way (the other
    columns, the floor's say, show their ratio in the row Bastion is judged in)."""
    figure = _get(scenario, key)

    def read(results: Results, system: str) -> Value:
        if system in ("direct", "nginx"):
            return None
        if redis is not None and _redis_limits(results) != redis:
            return None
        mine, floor = figure(results, system), figure(results, "nginx")
        return None if mine is None or not floor else mine / floor

    return read


@dataclass(frozen=True)
class Row:
    label: str
    target: str
    read: Callable[[Results, str], Value]
    fmt: str = "{:,.1f}"
    judge: Judge | None = None


_TTFT99 = _get("stream", "ttft_p99_ms")
_GAPMAX = _get("stream", "gap_max_ms")

ROWS: list[Row] = [
    Row(
        "Non-streaming: gateway CPU per request (µs)",
        "≤ 120",
        _get("nonstream", "cpu_us_per_request"),
        "{:,.0f}",
        _at_most(120),
    ),
    Row(
        "Non-streaming: CPU per request over nginx's (same run)",
        "≤ 3x",
        _ratio("nonstream", "cpu_us_per_request", redis=False),
        "{:.1f}x",
        _at_most(3.0),
    ),
    Row(
        "Non-streaming: CPU per request over nginx's (same run), limits in Redis",
        "≤ 3.5x",
        _ratio("nonstream", "cpu_us_per_request", redis=True),
        "{:.1f}x",
        _at_most(3.5),
    ),
    Row(
        "Non-streaming: req/s, 64 conns, gateway on 1 core",
        "≥ 6,000",
        _get("nonstream", "rps"),
        "{:,.0f}",
        _at_least(6000),
    ),
    Row("Non-streaming: gateway core busy (%)", "", _get("nonstream", "cpu_busy_pct"), "{:.0f}"),
    Row(
        "Non-streaming: errors (64 conns + 1 conn)",
        "0",
        _sum(_get("nonstream", "errors"), _get("nonstream", "c1_errors")),
        "{:,.0f}",
        _at_most(0),
    ),
    Row("1 conn: latency p50 (ms)", "", _get("nonstream", "c1_p50_ms"), "{:.3f}"),
    Row("1 conn: latency p99 (ms)", "", _get("nonstream", "c1_p99_ms"), "{:.3f}"),
    Row(
        "1 conn: added p50 over direct, paired (ms)",
        "≤ 0.15",
        _get("nonstream", "c1_added_p50_ms"),
        "{:+.3f}",
        _at_most(0.15),
    ),
    Row(
        "1 conn: added p99 over direct, paired (ms)",
        "≤ 0.5",
        _get("nonstream", "c1_added_p99_ms"),
        "{:+.3f}",
        _at_most(0.5),
    ),
    Row(
        "Streaming: gateway CPU per event (µs)",
        "≤ 25",
        _get("stream", "cpu_us_per_event"),
        "{:,.1f}",
        _at_most(25),
    ),
    Row(
        "Streaming: CPU per event over nginx's (same run)",
        "≤ 1.3x",
        _ratio("stream", "cpu_us_per_event"),
        "{:.2f}x",
        _at_most(1.3),
    ),
    Row("Streaming: events/s relayed", "", _get("stream", "events_per_s"), "{:,.0f}"),
    Row("Streaming: TTFT p50 (ms)", "", _get("stream", "ttft_p50_ms"), "{:.1f}"),
    Row("Streaming: TTFT p99 (ms)", "≤ direct + 5", _TTFT99, "{:.1f}", _direct_plus(_TTFT99, 5)),
    Row("Streaming: inter-event gap p99 (ms)", "", _get("stream", "gap_p99_ms"), "{:.1f}"),
    Row(
        "Streaming: inter-event gap max (ms)",
        "≤ direct + 5",
        _GAPMAX,
        "{:.1f}",
        _direct_plus(_GAPMAX, 5),
    ),
    Row("Streaming: failed streams", "0", _get("stream", "errors"), "{:,.0f}", _at_most(0)),
    Row("Open streams held without error", "10,000", _get("hold", "held"), "{:,.0f}", _held),
    Row("Open streams: errors", "0", _get("hold", "errors"), "{:,.0f}", _at_most(0)),
    Row(
        "Open streams: memory per stream (KiB)",
        "≤ 64",
        _get("hold", "kib_per_stream"),
        "{:,.1f}",
        _at_most(64),
    ),
    Row(
        "Steady run: RSS max drift (%)",
        "within ±5",
        _get("stability", "drift_pct"),
        "{:+.1f}",
        _abs_at_most(5),
    ),
    Row("Steady run: errors", "0", _get("stability", "errors"), "{:,.0f}", _at_most(0)),
    Row("Idle RSS (MiB)", "", _get("nonstream", "rss_idle_mib"), "{:,.1f}"),
    Row("Noise: other processes on gateway core, max (%)", "", _noise, "{:.0f}"),
]


def _cell(results: Results, system: str, row: Row) -> str:
    value = row.read(results, system)
    if value is not None:
        return row.fmt.format(value)
    if results["systems"].get(system, {}).get("unavailable"):
        return "not available"
    return "—"


def table_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table; Bastion's judgement last when Bastion is in the run."""
    systems = list(results["systems"])
    judged = "bastion" in systems
    verdict = "Bastion (smoke: indicative)" if results["meta"]["mode"] == "smoke" else "Bastion"
    header = ["Metric", "Target", *systems] + ([verdict] if judged else [])
    rows = []
    for row in ROWS:
        if all(row.read(results, s) is None for s in systems):
            continue  # a scenario this run left out
        cells = [row.label, row.target] + [_cell(results, s, row) for s in systems]
        if judged:
            unavailable = results["systems"]["bastion"].get("unavailable")
            verdict = "" if row.judge is None else row.judge(row.read(results, "bastion"), results)
            cells.append("n/a" if unavailable and row.judge else verdict)
        rows.append(cells)
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _notes(results: Results) -> list[str]:
    notes = []
    for name, entry in results["systems"].items():
        if entry.get("unavailable"):
            notes.append(f"- **{name}**: {entry['unavailable']}")
        for extra in entry.get("notes", []):
            notes.append(f"- {name}: {extra}")
        for scenario, figures in entry.get("scenarios", {}).items():
            if not isinstance(figures, dict):
                continue
            if "error" in figures:
                notes.append(f"- {name} / {scenario}: error: {figures['error'][:400]}")
            if figures.get("limit"):
                notes.append(f"- {name} / {scenario}: {figures['limit']}")
            kinds = figures.get("error_kinds")
            if kinds:
                notes.append(f"- {name} / {scenario}: error kinds {kinds}")
            tail = figures.get("log_tail", "").strip().splitlines()[-3:]
            if tail:
                notes.append(f"- {name} / {scenario}: its log ends: `{' / '.join(tail)[:500]}`")
    return notes


def render_markdown(results: Results) -> str:
    meta = results["meta"]
    header, rows = table_rows(results)
    parts = [
        f"# Bastion benchmark, {meta['started']}",
        "",
        f"Machine: {meta['machine']}. {meta['layout']}. Mode: {meta['mode']}.",
        f"Parameters: {meta['params_text']}.",
        "",
        _markdown_table(header, rows),
    ]
    notes = _notes(results)
    if notes:
        parts += ["", "Notes:", "", *notes]
    return "\n".join(parts) + "\n"


def write_json(results: Results, path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")


def write_png(results: Results, path: Path) -> None:
    """Latency percentiles, CPU cost and memory drift side by side."""
    from bench import chart  # matplotlib is imported only when a chart is drawn

    chart.draw(results, path)
