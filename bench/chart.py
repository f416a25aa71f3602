"""One PNG: latency at one connection, CPU cost per request and per event, memory over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

__all__ = ["draw"]

_COLORS = {"direct": "#7f7f7f", "nginx": "#2ca02c", "bastion": "#1f77b4", "litellm": "#d62728"}
_PCTS = [("p50", "c1_p50_ms"), ("p90", "c1_p90_ms"), ("p99", "c1_p99_ms"), ("p99.9", "c1_p999_ms")]


def _figures(results: dict[str, Any], system: str, scenario: str) -> dict[str, Any]:
    found = results["systems"][system].get("scenarios", {}).get(scenario)
    return found if isinstance(found, dict) and "error" not in found else {}


def _bars(ax: Axes, groups: list[str], series: dict[str, list[float | None]]) -> None:
    width = 0.8 / max(1, len(series))
    for i, (system, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=system, color=_COLORS.get(system))
        for bar, value in zip(bars, values, strict=True):
            if value is not None:
                label = f"{value:.2f}" if value < 10 else f"{value:,.0f}"
                ax.annotate(
                    label,
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.set_xticks(range(len(groups)), groups)
    present = [v for vs in series.values() for v in vs if v]
    if present and max(present) / min(present) > 30:
        ax.set_yscale("log")
    ax.margins(y=0.25)


def _latency(ax: Axes, results: dict[str, Any], systems: list[str]) -> None:
    series = {s: [_figures(results, s, "nonstream").get(key) for _, key in _PCTS] for s in systems}
    _bars(ax, [name for name, _ in _PCTS], series)
    ax.set_title("Non-streaming latency, 1 connection")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)


def _cpu(ax: Axes, results: dict[str, Any], systems: list[str]) -> None:
    gateways = [s for s in systems if s != "direct"]
    series = {
        s: [
            _figures(results, s, "nonstream").get("cpu_us_per_request"),
            _figures(results, s, "stream").get("cpu_us_per_event"),
        ]
        for s in gateways
    }
    _bars(ax, ["per request", "per stream event"], series)
    for x, target in ((0, 120.0), (1, 25.0)):
        ax.hlines(target, x - 0.45, x + 0.45, colors="black", linestyles="dashed", linewidth=1)
        ax.annotate(f"target {target:g}", (x - 0.45, target), fontsize=7, ha="left", va="bottom")
    ax.set_title("Gateway CPU (user+system)")
    ax.set_ylabel("µs")
    ax.legend(fontsize=8)


def _memory(ax: Axes, results: dict[str, Any], systems: list[str]) -> None:
    for s in systems:
        figures = _figures(results, s, "stability")
        samples = figures.get("samples_mib")
        ref = figures.get("rss_ref_mib")
        if not samples or not ref:
            continue
        drift = [(v - ref) / ref * 100 for v in samples]
        label = f"{s} ({ref:,.0f} MiB)"
        ax.plot(range(len(drift)), drift, label=label, color=_COLORS.get(s))
    ax.axhspan(-5, 5, color="#dddddd", alpha=0.5, label="target ±5%")
    ax.set_title("Steady run: RSS vs. after warm-up")
    ax.set_xlabel("seconds")
    ax.set_ylabel("%")
    ax.legend(fontsize=8)


def draw(results: dict[str, Any], path: Path) -> None:
    systems = [s for s, e in results["systems"].items() if not e.get("unavailable")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    _latency(axes[0], results, systems)
    _cpu(axes[1], results, systems)
    _memory(axes[2], results, systems)
    fig.suptitle(f"Bastion benchmark, {results['meta']['started']} ({results['meta']['mode']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
