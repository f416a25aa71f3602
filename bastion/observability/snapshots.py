"""The metrics of several processes as one: snapshots taken in each, merged, rendered.

With ``server.workers`` above 1 every worker keeps its own :class:`~.metrics.Registry` (the
request path stays a few dictionary updates, no inter-process traffic). A scrape asks each
worker for :meth:`~.metrics.Registry.snapshot` (plain data, :func:`encode` for the wire),
:func:`merge` combines them, and :func:`render` writes the text format exactly as a single
registry does::

    counter, histogram   the workers' values added up (each bucket, the sum, the count)
    gauge                as the gauge says (Gauge(merge=...)): "sum" for amounts (requests in
                         flight), "max" or "min" for per-process views of one fact (an
                         upstream ejected by any worker, the store keys' remaining trust)

:func:`counting` keeps only what adds up (counters and histograms): what a dead worker leaves
behind, so that its share of every counter stays counted and no total ever goes down.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from bastion.observability.metrics import (
    Family,
    Labels,
    _escape_help,
    _format,
    _label_pairs,
    histogram_lines,
)

__all__ = ["Gathered", "counting", "decode", "encode", "merge", "render"]

Series = dict[Labels, float | list[float]]


class Gathered:
    """The latest snapshot of each process of a group whose members come and go (workers that
    die and are replaced), and what the departed counted, so that no total ever goes down."""

    def __init__(self) -> None:
        self._latest: dict[int, list[Family]] = {}
        self._departed: list[Family] = []

    def update(self, member: int, data: Any) -> None:
        """``member`` answered with this :func:`encode`-d snapshot."""
        self._latest[member] = decode(data)

    def depart(self, member: int) -> None:
        """``member`` is gone: its counters and histograms (as last gathered) stay counted."""
        last = self._latest.pop(member, None)
        if last is not None:
            self._departed = merge([self._departed, counting(last)])

    def render(self, *more: Sequence[Family]) -> bytes:
        """Everything gathered, and ``more`` (the gatherer's own metrics), merged."""
        return render(merge([*self._latest.values(), self._departed, *more]))


def merge(snapshots: Iterable[Sequence[Family]]) -> list[Family]:
    """One family per name (in the order first seen) with the series of all ``snapshots``."""
    first: dict[str, Family] = {}
    series: dict[str, Series] = {}
    for snapshot in snapshots:
        for family in snapshot:
            known = first.get(family.name)
            if known is None:
                first[family.name] = family
                series[family.name] = {k: _copy(v) for k, v in family.series}
            elif _same_shape(known, family):
                _add(series[family.name], family)
    return [f._replace(series=list(series[name].items())) for name, f in first.items()]


def counting(families: Sequence[Family]) -> list[Family]:
    """The counters and histograms of ``families`` (gauges are facts of a live process)."""
    return [f for f in families if f.kind != "gauge"]


def render(families: Iterable[Family]) -> bytes:
    """The text exposition format 0.0.4, as :meth:`~.metrics.Registry.render` writes it."""
    out: list[str] = []
    for family in families:
        name = family.name
        out.append(f"# HELP {name} {_escape_help(family.help)}\n# TYPE {name} {family.kind}\n")
        if family.bounds is None:
            for labels, value in family.series:
                assert not isinstance(value, list)
                out.append(f"{name}{_label_pairs(family.labels, labels)} {_format(value)}\n")
            continue
        le = [_format(bound) for bound in family.bounds] + ["+Inf"]
        for labels, cells in family.series:
            assert isinstance(cells, list)
            histogram_lines(out, name, _label_pairs(family.labels, labels), le, cells)
    return "".join(out).encode()


def encode(families: Sequence[Family]) -> list[Any]:
    """JSON-ready data (lists and numbers; NaN and infinities need a JSON that allows them)."""
    return [
        [f.name, f.kind, f.help, f.labels, f.merge, f.bounds, [[k, v] for k, v in f.series]]
        for f in families
    ]


def decode(data: Any) -> list[Family]:
    """The families :func:`encode` gave, back from JSON."""
    families = []
    for name, kind, help, labels, merge, bounds, series in data:
        families.append(
            Family(
                str(name),
                str(kind),
                str(help),
                tuple(labels),
                merge,
                tuple(float(b) for b in bounds) if bounds is not None else None,
                [(tuple(k), _number(v)) for k, v in series],
            )
        )
    return families


def _same_shape(known: Family, other: Family) -> bool:
    return (known.kind, known.labels, known.bounds) == (other.kind, other.labels, other.bounds)


def _add(into: Series, family: Family) -> None:
    how = family.merge if family.kind == "gauge" else "sum"
    for labels, value in family.series:
        found = into.get(labels)
        if found is None:
            into[labels] = _copy(value)
        elif isinstance(found, list):
            assert isinstance(value, list)
            for index, count in enumerate(value):
                found[index] += count
        else:
            assert not isinstance(value, list)
            into[labels] = (
                found + value if how == "sum" else (max if how == "max" else min)(found, value)
            )


def _copy(value: float | list[float]) -> float | list[float]:
    return list(value) if isinstance(value, list) else value


def _number(value: Any) -> float | list[float]:
    return [float(x) for x in value] if isinstance(value, list) else float(value)
