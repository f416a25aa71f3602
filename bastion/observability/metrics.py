"""A lean Prometheus metrics registry for the request path, without dependencies.

Recording is the hot path: every request increments counters and observes histograms, so a
record is one dict lookup on the label-value tuple and an in-place add. There are no locks:
everything runs on the one event-loop thread, and :meth:`Registry.render` is synchronous, so a
scrape never sees a record half done.

Checks cost nothing per record once a series exists: the number and type of label values are
checked only when a new label combination is first seen. Each metric keeps at most
``max_series`` combinations; a record for one more is dropped, never raised, and counted in
``bastion_metrics_series_dropped_total{metric="..."}``, so a label fed from client input cannot
grow memory without bound.

:meth:`Registry.render` writes the text exposition format 0.0.4. Counter names end in
``_total`` and are written as ``# TYPE name_total counter``, as ``prometheus_client`` writes
them (its parser reads them as a counter family ``name`` with the sample ``name_total``).

::

    registry = Registry()
    requests = registry.counter("bastion_requests_total", "Requests.", ("route", "status"))
    latency = registry.histogram("bastion_request_seconds", "Latency.", ("route",))

    requests.inc(("chat", "200"))
    latency.observe(("chat",), 0.042)
    body = registry.render()   # served with CONTENT_TYPE
"""

from __future__ import annotations

import math
import re
import sys
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import Literal, NamedTuple, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "Counter",
    "CounterFunction",
    "Family",
    "Gauge",
    "GaugeFunction",
    "Histogram",
    "Merge",
    "Registry",
    "histogram_lines",
]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of :meth:`Registry.render`'s output."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Request latency in seconds: from a cached answer to a long generation."""

Labels = tuple[str, ...]
LabeledValues = Iterable[tuple[Labels, float]]
Merge = Literal["sum", "max", "min"]
"""How a gauge's values from several processes combine into one."""


class Family(NamedTuple):
    """A metric's definition and series as plain data (:meth:`Registry.snapshot`)."""

    name: str
    kind: str
    """``counter``, ``gauge`` or ``histogram``."""
    help: str
    labels: Labels
    merge: Merge
    bounds: tuple[float, ...] | None
    """A histogram's finite bucket bounds."""
    series: list[tuple[Labels, float | list[float]]]
    """Label values -> the value, or a histogram's cells (each bucket's own count, ``+Inf``
    last, then the sum)."""


_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_INF = math.inf
_DROPPED_NAME = "bastion_metrics_series_dropped_total"


class _Metric:
    """What every metric has: a name, help, label names, and a bounded map of series."""

    kind = ""
    merge: Merge = "sum"
    """How the series of several processes combine (:mod:`bastion.observability.snapshots`):
    counters and histograms always add up; a gauge says what it is a fact of."""

    def __init__(
        self, name: str, help: str, labels: Labels, max_series: int, dropped: Counter | None
    ) -> None:
        _check_names(name, labels)
        self.name = name
        self.help = help
        self.label_names = labels
        self._max_series = max_series
        self._dropped = dropped
        # The rendered label pairs of each series, made once when the series is first seen.
        self._label_text: dict[Labels, str] = {}

    def _admit(self, labels: Labels) -> bool:
        """Check a new label combination; whether there is room for one more series."""
        if type(labels) is not tuple or len(labels) != len(self.label_names):
            raise ValueError(
                f"{self.name}: expected a tuple of {len(self.label_names)} label values "
                f"{self.label_names}, got {labels!r}"
            )
        if not all(type(value) is str for value in labels):
            raise TypeError(f"{self.name}: label values must be str, got {labels!r}")
        if len(self._label_text) >= self._max_series:
            if self._dropped is not None:
                self._dropped.inc((self.name,))
            return False
        self._label_text[labels] = _label_pairs(self.label_names, labels)
        return True

    def _samples(self) -> Iterable[str]:
        raise NotImplementedError

    def _series(self) -> list[tuple[Labels, float | list[float]]]:
        raise NotImplementedError

    def dump(self) -> Family:
        """This metric's definition and current series as plain data."""
        return Family(
            self.name, self.kind, self.help, self.label_names, self.merge, None, self._series()
        )

    def _render(self, out: list[str]) -> None:
        family = self.name
        out.append(f"# HELP {family} {_escape_help(self.help)}\n# TYPE {family} {self.kind}\n")
        out.extend(self._samples())


class _Scalar(_Metric):
    """A counter or gauge: one float per series."""

    def __init__(
        self, name: str, help: str, labels: Labels, max_series: int, dropped: Counter | None
    ) -> None:
        super().__init__(name, help, labels, max_series, dropped)
        self._values: dict[Labels, float] = {}
        if not labels:
            # An unlabeled series exists from the start, so a scrape shows its 0.
            self._admit(())
            self._values[()] = 0.0

    def value(self, labels: Labels = ()) -> float:
        """The series' value; 0 for a series never recorded."""
        return self._values.get(labels, 0.0)

    def _samples(self) -> Iterable[str]:
        name, text = self.name, self._label_text
        return [f"{name}{text[key]} {_format(value)}\n" for key, value in self._values.items()]

    def _series(self) -> list[tuple[Labels, float | list[float]]]:
        return list(self._values.items())


class Counter(_Scalar):
    """A value that only goes up: requests, tokens, errors. Its name ends in ``_total``."""

    kind = "counter"

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        """Add ``amount`` (not negative) to the series of ``labels``."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (amount {amount})")
        try:
            self._values[labels] += amount
        except KeyError:
            if self._admit(labels):
                self._values[labels] = amount


class Gauge(_Scalar):
    """A value that goes up and down: requests in flight, queue depth."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Labels,
        max_series: int,
        dropped: Counter | None,
        merge: Merge = "sum",
    ) -> None:
        super().__init__(name, help, labels, max_series, dropped)
        self.merge = _check_merge(name, merge)

    def set(self, labels: Labels, value: float) -> None:
        """Set the series of ``labels`` to ``value``."""
        values = self._values
        if labels in values or self._admit(labels):
            values[labels] = value

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        """Add ``amount`` to the series of ``labels``."""
        try:
            self._values[labels] += amount
        except KeyError:
            if self._admit(labels):
                self._values[labels] = amount

    def dec(self, labels: Labels = (), amount: float = 1.0) -> None:
        """Subtract ``amount`` from the series of ``labels``."""
        try:
            self._values[labels] -= amount
        except KeyError:
            if self._admit(labels):
                self._values[labels] = -amount


class Histogram(_Metric):
    """A distribution of observed values (latencies, sizes) in cumulative buckets.

    Each series is one list: the count of each bucket (not cumulative; the last one is ``+Inf``)
    followed by the sum, so an observation is one bisection and two in-place adds.
    """

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Labels,
        max_series: int,
        dropped: Counter | None,
        buckets: tuple[float, ...],
    ) -> None:
        super().__init__(name, help, labels, max_series, dropped)
        self._bounds = _check_buckets(name, buckets)
        self._le = [_format(bound) for bound in self._bounds] + ["+Inf"]
        self._values: dict[Labels, list[float]] = {}
        if not labels:
            self._admit(())
            self._values[()] = self._new_cells()

    @property
    def buckets(self) -> tuple[float, ...]:
        """The finite upper bounds; ``+Inf`` is always added after them."""
        return self._bounds

    def _new_cells(self) -> list[float]:
        return [0.0] * (len(self._bounds) + 2)

    def observe(self, labels: Labels, value: float) -> None:
        """Record ``value`` in the series of ``labels``; NaN is ignored (it has no bucket)."""
        try:
            cells = self._values[labels]
        except KeyError:
            if value != value or not self._admit(labels):
                return
            cells = self._values[labels] = self._new_cells()
        if value == value:
            cells[bisect_left(self._bounds, value)] += 1
            cells[-1] += value

    def count(self, labels: Labels = ()) -> int:
        """How many values the series observed; 0 for a series never recorded."""
        cells = self._values.get(labels)
        return 0 if cells is None else int(sum(cells[:-1]))

    def sum(self, labels: Labels = ()) -> float:
        """The sum of the values the series observed; 0 for a series never recorded."""
        cells = self._values.get(labels)
        return 0.0 if cells is None else cells[-1]

    def _samples(self) -> Iterable[str]:
        name, text, le = self.name, self._label_text, self._le
        out: list[str] = []
        for labels, cells in self._values.items():
            histogram_lines(out, name, text[labels], le, cells)
        return out

    def _series(self) -> list[tuple[Labels, float | list[float]]]:
        return [(labels, list(cells)) for labels, cells in self._values.items()]

    def dump(self) -> Family:
        family = super().dump()
        return family._replace(bounds=self._bounds)


class GaugeFunction(_Metric):
    """A gauge whose series are read from a function at scrape time.

    For state that lives elsewhere (upstream health, requests in flight per upstream): the
    function returns ``(label values, value)`` pairs and owns their number.
    """

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Labels,
        fn: Callable[[], LabeledValues],
        merge: Merge = "sum",
    ) -> None:
        super().__init__(name, help, labels, sys.maxsize, None)
        self._fn = fn
        self.merge = _check_merge(name, merge)

    def _samples(self) -> Iterable[str]:
        name, names = self.name, self.label_names
        return [f"{name}{_label_pairs(names, labels)} {_format(v)}\n" for labels, v in self._read()]

    def _series(self) -> list[tuple[Labels, float | list[float]]]:
        return [(tuple(labels), float(value)) for labels, value in self._read()]

    def _read(self) -> list[tuple[Labels, float]]:
        found = list(self._fn())
        for labels, _ in found:
            if len(labels) != len(self.label_names):
                raise ValueError(
                    f"{self.name}: expected {len(self.label_names)} label values "
                    f"{self.label_names}, got {labels!r}"
                )
        return found


class CounterFunction(GaugeFunction):
    """A counter whose series are read from a function at scrape time (counts kept by the
    object they are about: requests per upstream, fail-open events). Its name ends in
    ``_total`` and the function's values must never decrease."""

    kind = "counter"

    def __init__(
        self, name: str, help: str, labels: Labels, fn: Callable[[], LabeledValues]
    ) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter name {name!r} must end in '_total'")
        super().__init__(name, help, labels, fn)


_M = TypeVar("_M", bound=_Metric)


class Registry:
    """The set of metrics one gateway exposes, rendered together for a scrape.

    ``max_series`` bounds the label combinations of each metric; records for more are dropped
    and counted in ``bastion_metrics_series_dropped_total{metric="..."}``.
    """

    def __init__(self, max_series: int = 1000) -> None:
        if max_series < 1:
            raise ValueError(f"max_series must be at least 1, got {max_series}")
        self.max_series = max_series
        self._metrics: list[_Metric] = []
        self._taken: set[str] = set()
        # Its label values are metric names, which registration bounds: it is never capped.
        self._dropped = Counter(
            _DROPPED_NAME,
            "Records dropped because their metric already had max_series label combinations.",
            ("metric",),
            sys.maxsize,
            None,
        )
        self._add(self._dropped)

    def counter(self, name: str, help: str, labels: Labels = ()) -> Counter:
        """Register a counter; its ``name`` must end in ``_total``."""
        if not name.endswith("_total"):
            raise ValueError(f"counter name {name!r} must end in '_total'")
        return self._add(Counter(name, help, labels, self.max_series, self._dropped))

    def gauge(self, name: str, help: str, labels: Labels = (), merge: Merge = "sum") -> Gauge:
        """Register a gauge; ``merge`` says how several processes' values combine."""
        return self._add(Gauge(name, help, labels, self.max_series, self._dropped, merge))

    def histogram(
        self,
        name: str,
        help: str,
        labels: Labels = (),
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """Register a histogram with these finite, increasing bucket bounds (``+Inf`` added)."""
        if "le" in labels:
            raise ValueError(f"histogram {name!r} cannot have a label named 'le'")
        metric = Histogram(name, help, labels, self.max_series, self._dropped, buckets)
        return self._add(metric)

    def gauge_function(
        self,
        name: str,
        help: str,
        labels: Labels,
        fn: Callable[[], LabeledValues],
        merge: Merge = "sum",
    ) -> GaugeFunction:
        """Register a gauge whose ``(label values, value)`` pairs ``fn`` returns at scrape time;
        ``merge`` says how several processes' values combine."""
        return self._add(GaugeFunction(name, help, labels, fn, merge))

    def counter_function(
        self, name: str, help: str, labels: Labels, fn: Callable[[], LabeledValues]
    ) -> CounterFunction:
        """Register a counter whose ``(label values, value)`` pairs ``fn`` returns at scrape
        time."""
        return self._add(CounterFunction(name, help, labels, fn))

    def snapshot(self) -> list[Family]:
        """Every metric as plain data, in registration order (to be merged with other
        processes' by :mod:`bastion.observability.snapshots`)."""
        return [metric.dump() for metric in self._metrics]

    def render(self) -> bytes:
        """Every metric in the text exposition format 0.0.4, in registration order."""
        out: list[str] = []
        for metric in self._metrics:
            metric._render(out)
        return "".join(out).encode()

    def _add(self, metric: _M) -> _M:
        names = _sample_names(metric)
        clash = sorted(self._taken.intersection(names))
        if clash:
            raise ValueError(f"metric {metric.name!r} clashes with a registered name: {clash}")
        self._taken.update(names)
        self._metrics.append(metric)
        return metric


def _check_merge(name: str, merge: str) -> Merge:
    if merge not in ("sum", "max", "min"):
        raise ValueError(f"{name}: merge must be sum, max or min, got {merge!r}")
    return merge  # type: ignore[return-value]


def _check_names(name: str, labels: Labels) -> None:
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"invalid metric name {name!r}")
    if type(labels) is not tuple:
        raise ValueError(f"{name}: label names must be a tuple, got {labels!r}")
    for label in labels:
        if not isinstance(label, str) or not _LABEL_NAME.fullmatch(label):
            raise ValueError(f"{name}: invalid label name {label!r}")
        if label.startswith("__"):
            raise ValueError(f"{name}: label names starting with '__' are reserved ({label!r})")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{name}: duplicate label names {labels}")


def _sample_names(metric: _Metric) -> set[str]:
    """The family name and every sample name ``metric`` writes, which no other may reuse."""
    name = metric.name
    if isinstance(metric, Counter | CounterFunction):
        return {name, name.removesuffix("_total")}
    if isinstance(metric, Histogram):
        return {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def _check_buckets(name: str, buckets: tuple[float, ...]) -> tuple[float, ...]:
    bounds = tuple(float(bound) for bound in buckets)
    if bounds and bounds[-1] == _INF:
        bounds = bounds[:-1]
    if not bounds:
        raise ValueError(f"{name}: a histogram needs at least one finite bucket")
    if not all(math.isfinite(bound) for bound in bounds):
        raise ValueError(f"{name}: bucket bounds must be finite (+Inf is added), got {buckets}")
    if any(low >= high for low, high in pairwise(bounds)):
        raise ValueError(f"{name}: bucket bounds must increase, got {buckets}")
    return bounds


def _label_pairs(names: Labels, values: Labels) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True))
    return f"{{{pairs}}}"


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _format(value: float) -> str:
    """A sample value as Prometheus reads it: ``repr`` of the float, and ``+Inf``, ``NaN``."""
    value = float(value)
    if value != value:
        return "NaN"
    if value == _INF:
        return "+Inf"
    if value == -_INF:
        return "-Inf"
    return repr(value)


def histogram_lines(
    out: list[str], name: str, pairs: str, le: Sequence[str], cells: Sequence[float]
) -> None:
    """Append one histogram series' lines: cumulative ``_bucket`` lines (``le`` the bounds as
    written, ``+Inf`` last), ``_sum`` and ``_count``; ``cells`` are the per-bucket counts and
    then the sum, ``pairs`` the series' label text (``{a="x"}`` or empty)."""
    prefix = f"{name}_bucket{{{pairs[1:-1]}," if pairs else f"{name}_bucket{{"
    total = 0.0
    for bound, count in zip(le, cells, strict=False):
        total += count
        out.append(f'{prefix}le="{bound}"}} {_format(total)}\n')
    out.append(f"{name}_sum{pairs} {_format(cells[-1])}\n")
    out.append(f"{name}_count{pairs} {_format(total)}\n")
