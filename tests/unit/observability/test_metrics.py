"""The metrics registry, read back through prometheus_client's own text parser."""

from __future__ import annotations

import math

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bastion.observability.metrics import (
    CONTENT_TYPE,
    DEFAULT_BUCKETS,
    Registry,
)

DROPPED = "bastion_metrics_series_dropped"


def families(registry: Registry) -> dict[str, Metric]:
    text = registry.render().decode("utf-8")
    parsed = list(text_string_to_metric_families(text))
    names = [family.name for family in parsed]
    assert len(names) == len(set(names)), f"a family was written twice: {names}"
    return {family.name: family for family in parsed}


def samples(registry: Registry, family: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for s in families(registry)[family].samples]


def buckets_of(family: Metric, **labels: str) -> list[tuple[str, float]]:
    return [
        (s.labels["le"], s.value)
        for s in family.samples
        if s.name.endswith("_bucket") and {k: v for k, v in s.labels.items() if k != "le"} == labels
    ]


def one(family: Metric, name: str, **labels: str) -> Sample:
    (sample,) = [s for s in family.samples if s.name == name and s.labels == labels]
    return sample


# -- counters ---------------------------------------------------------------------------------


def test_counter_is_a_counter_family_without_the_total_suffix() -> None:
    registry = Registry()
    requests = registry.counter("bastion_requests_total", "Requests served.", ("route", "status"))
    requests.inc(("chat", "200"))
    requests.inc(("chat", "200"))
    requests.inc(("chat", "429"), 3.0)
    requests.inc(("embeddings", "200"), 0.5)

    family = families(registry)["bastion_requests"]
    assert family.type == "counter"
    assert family.documentation == "Requests served."
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("bastion_requests_total", {"route": "chat", "status": "200"}, 2.0),
        ("bastion_requests_total", {"route": "chat", "status": "429"}, 3.0),
        ("bastion_requests_total", {"route": "embeddings", "status": "200"}, 0.5),
    ]
    assert requests.value(("chat", "200")) == 2.0
    assert requests.value(("never", "seen")) == 0.0


def test_the_type_line_names_the_sample_as_prometheus_client_writes_it() -> None:
    registry = Registry()
    registry.counter("bastion_requests_total", "Requests.").inc(amount=2)

    text = registry.render().decode()
    assert (
        "# HELP bastion_requests_total Requests.\n"
        "# TYPE bastion_requests_total counter\n"
        "bastion_requests_total 2.0\n"
    ) in text


def test_an_unlabeled_counter_is_shown_at_zero_before_its_first_increment() -> None:
    registry = Registry()
    registry.counter("bastion_restarts_total", "Restarts.")
    registry.counter("bastion_errors_total", "Errors.", ("source",))

    assert samples(registry, "bastion_restarts") == [("bastion_restarts_total", {}, 0.0)]
    assert samples(registry, "bastion_errors") == []


def test_a_counter_refuses_to_decrease() -> None:
    counter = Registry().counter("bastion_tokens_total", "Tokens.")
    counter.inc(amount=5)
    with pytest.raises(ValueError, match="cannot decrease"):
        counter.inc(amount=-1)
    assert counter.value() == 5.0


# -- gauges -----------------------------------------------------------------------------------


def test_gauge_set_inc_and_dec() -> None:
    registry = Registry()
    inflight = registry.gauge("bastion_inflight_requests", "In flight.", ("upstream",))
    inflight.inc(("a",))
    inflight.inc(("a",), 2.0)
    inflight.dec(("a",))
    inflight.dec(("b",))  # a gauge may start below zero
    inflight.set(("c",), 7.5)
    inflight.set(("c",), 1.25)

    family = families(registry)["bastion_inflight_requests"]
    assert family.type == "gauge"
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("bastion_inflight_requests", {"upstream": "a"}, 2.0),
        ("bastion_inflight_requests", {"upstream": "b"}, -1.0),
        ("bastion_inflight_requests", {"upstream": "c"}, 1.25),
    ]
    assert inflight.value(("a",)) == 2.0
    assert inflight.value(("z",)) == 0.0


def test_special_and_small_values_are_written_as_prometheus_reads_them() -> None:
    registry = Registry()
    gauge = registry.gauge("bastion_odd", "Odd values.", ("case",))
    cases = {"inf": math.inf, "ninf": -math.inf, "tiny": 1e-05, "huge": 1.5e20, "third": 1 / 3}
    for case, value in cases.items():
        gauge.set((case,), value)
    gauge.set(("nan",), math.nan)
    gauge.set(("int",), 3)

    text = registry.render().decode()
    assert 'bastion_odd{case="inf"} +Inf\n' in text
    assert 'bastion_odd{case="ninf"} -Inf\n' in text
    assert 'bastion_odd{case="nan"} NaN\n' in text
    values = {s.labels["case"]: s.value for s in families(registry)["bastion_odd"].samples}
    assert math.isnan(values.pop("nan"))
    assert values == {**cases, "int": 3.0}


# -- histograms -------------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_and_inf_equals_count() -> None:
    registry = Registry()
    latency = registry.histogram(
        "bastion_request_seconds", "Latency.", ("route",), buckets=(0.1, 1.0, 10.0)
    )
    for value in (0.05, 0.1, 0.5, 1.0, 2.0, 50.0):
        latency.observe(("chat",), value)
    latency.observe(("embeddings",), 0.01)

    family = families(registry)["bastion_request_seconds"]
    assert family.type == "histogram"
    # A value equal to a bound counts in that bucket (le: less than or equal).
    assert buckets_of(family, route="chat") == [
        ("0.1", 2.0),
        ("1.0", 4.0),
        ("10.0", 5.0),
        ("+Inf", 6.0),
    ]
    assert one(family, "bastion_request_seconds_count", route="chat").value == 6.0
    assert one(family, "bastion_request_seconds_sum", route="chat").value == pytest.approx(53.65)
    assert buckets_of(family, route="embeddings") == [
        ("0.1", 1.0),
        ("1.0", 1.0),
        ("10.0", 1.0),
        ("+Inf", 1.0),
    ]
    assert latency.count(("chat",)) == 6
    assert latency.sum(("chat",)) == pytest.approx(53.65)
    assert latency.count(("never",)) == 0
    assert latency.sum(("never",)) == 0.0


def test_histogram_default_buckets_and_an_unlabeled_series_from_the_start() -> None:
    registry = Registry()
    histogram = registry.histogram("bastion_upstream_seconds", "Upstream latency.")
    assert histogram.buckets == DEFAULT_BUCKETS

    family = families(registry)["bastion_upstream_seconds"]
    assert [le for le, _ in buckets_of(family)] == [repr(b) for b in DEFAULT_BUCKETS] + ["+Inf"]
    assert {s.value for s in family.samples} == {0.0}

    histogram.observe((), 0.3)
    histogram.observe((), 400.0)
    family = families(registry)["bastion_upstream_seconds"]
    counts = [count for _, count in buckets_of(family)]
    assert counts == sorted(counts), "buckets must be cumulative"
    assert dict(buckets_of(family))["0.25"] == 0.0
    assert dict(buckets_of(family))["0.5"] == 1.0
    assert dict(buckets_of(family))["300.0"] == 1.0
    assert dict(buckets_of(family))["+Inf"] == 2.0 == one(family, f"{family.name}_count").value


def test_histogram_ignores_nan() -> None:
    registry = Registry()
    histogram = registry.histogram("bastion_x_seconds", "X.", ("k",), buckets=(1.0,))
    histogram.observe(("a",), 0.5)
    histogram.observe(("a",), math.nan)
    histogram.observe(("b",), math.nan)  # creates no series either

    assert histogram.count(("a",)) == 1
    assert histogram.sum(("a",)) == 0.5
    family = families(registry)["bastion_x_seconds"]
    assert {s.labels["k"] for s in family.samples} == {"a"}


def test_a_trailing_inf_bucket_is_accepted_once() -> None:
    registry = Registry()
    histogram = registry.histogram("bastion_y_seconds", "Y.", buckets=(1, 2, math.inf))
    assert histogram.buckets == (1.0, 2.0)
    assert [le for le, _ in buckets_of(families(registry)["bastion_y_seconds"])] == [
        "1.0",
        "2.0",
        "+Inf",
    ]


@pytest.mark.parametrize(
    "buckets",
    [(), (math.inf,), (1.0, 1.0), (2.0, 1.0), (1.0, math.nan), (-math.inf, 1.0)],
)
def test_bad_buckets_are_refused(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="bucket"):
        Registry().histogram("bastion_z_seconds", "Z.", buckets=buckets)


def test_default_buckets_span_a_cached_answer_to_a_long_generation() -> None:
    assert DEFAULT_BUCKETS == (
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
    )  # fmt: skip


# -- gauge functions --------------------------------------------------------------------------


def test_gauge_function_is_read_at_each_scrape() -> None:
    registry = Registry()
    health = {"a:8000": 1.0, "b:8000": 0.0}
    calls: list[None] = []

    def read() -> list[tuple[tuple[str, ...], float]]:
        calls.append(None)
        return [((name,), up) for name, up in health.items()]

    registry.gauge_function("bastion_upstream_up", "Upstream health.", ("upstream",), read)
    assert calls == []

    assert samples(registry, "bastion_upstream_up") == [
        ("bastion_upstream_up", {"upstream": "a:8000"}, 1.0),
        ("bastion_upstream_up", {"upstream": "b:8000"}, 0.0),
    ]
    health["b:8000"] = 1.0
    health['c"\n'] = 0.0
    family = families(registry)["bastion_upstream_up"]
    assert family.type == "gauge"
    assert {s.labels["upstream"]: s.value for s in family.samples} == {
        "a:8000": 1.0,
        "b:8000": 1.0,
        'c"\n': 0.0,
    }
    assert len(calls) == 2


def test_gauge_function_without_labels() -> None:
    registry = Registry()
    registry.gauge_function("bastion_queue_depth", "Queued.", (), lambda: [((), 4.0)])
    assert samples(registry, "bastion_queue_depth") == [("bastion_queue_depth", {}, 4.0)]


def test_gauge_function_with_the_wrong_number_of_label_values_fails_the_render() -> None:
    registry = Registry()
    registry.gauge_function("bastion_up", "Up.", ("upstream",), lambda: [(("a", "b"), 1.0)])
    with pytest.raises(ValueError, match="expected 1 label values"):
        registry.render()


# -- escaping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ['say "hi"', "back\\slash", "two\nlines", 'all\\"\n\\n', "ünïcødé ✓", "", "{}=,"],
)
def test_label_values_round_trip_through_the_parser(value: str) -> None:
    registry = Registry()
    registry.counter("bastion_escapes_total", "Escapes.", ("v", "w")).inc((value, "plain"))
    assert samples(registry, "bastion_escapes") == [
        ("bastion_escapes_total", {"v": value, "w": "plain"}, 1.0)
    ]


def test_label_values_are_escaped_in_histogram_samples_too() -> None:
    registry = Registry()
    histogram = registry.histogram("bastion_esc_seconds", "E.", ("v",), buckets=(1.0,))
    histogram.observe(('a"\\\nb',), 0.5)
    family = families(registry)["bastion_esc_seconds"]
    assert {s.labels["v"] for s in family.samples} == {'a"\\\nb'}
    assert len(family.samples) == 4


def test_help_text_round_trips_through_the_parser() -> None:
    registry = Registry()
    registry.gauge("bastion_help", 'A "quoted" back\\slash\nand a second line.')
    assert families(registry)["bastion_help"].documentation == (
        'A "quoted" back\\slash\nand a second line.'
    )


# -- bounded cardinality ----------------------------------------------------------------------


def test_series_beyond_the_cap_are_dropped_and_counted() -> None:
    registry = Registry(max_series=2)
    requests = registry.counter("bastion_requests_total", "Requests.", ("model",))
    latency = registry.histogram("bastion_request_seconds", "Latency.", ("model",), (1.0,))
    inflight = registry.gauge("bastion_inflight", "In flight.", ("model",))

    for model in ("a", "b", "c", "d", "c"):
        requests.inc((model,))
        latency.observe((model,), 0.5)
        inflight.set((model,), 1.0)
    inflight.inc(("e",))
    inflight.dec(("e",))
    requests.inc(("a",))  # known series keep recording after the cap is reached

    assert requests.value(("a",)) == 2.0
    assert requests.value(("c",)) == 0.0
    assert {s.labels["model"] for s in families(registry)["bastion_requests"].samples} == {"a", "b"}
    assert latency.count(("c",)) == 0
    assert inflight.value(("e",)) == 0.0
    dropped = families(registry)[DROPPED]
    assert dropped.type == "counter"
    assert {(s.name, s.labels["metric"], s.value) for s in dropped.samples} == {
        ("bastion_metrics_series_dropped_total", "bastion_requests_total", 3.0),
        ("bastion_metrics_series_dropped_total", "bastion_request_seconds", 3.0),
        ("bastion_metrics_series_dropped_total", "bastion_inflight", 5.0),
    }


def test_the_unlabeled_series_counts_against_nothing_else() -> None:
    registry = Registry(max_series=1)
    counter = registry.counter("bastion_plain_total", "Plain.")
    counter.inc()
    counter.inc()
    assert counter.value() == 2.0
    assert samples(registry, DROPPED) == []


def test_max_series_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_series"):
        Registry(max_series=0)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "1abc", "bad-name", "with space", "é_total", "a.b"])
def test_invalid_metric_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        Registry().gauge(name, "Bad.")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (("1a",), "invalid label name"),
        (("a-b",), "invalid label name"),
        (("a:b",), "invalid label name"),
        (("",), "invalid label name"),
        (("__name",), "reserved"),
        (("a", "a"), "duplicate label names"),
    ],
)
def test_invalid_label_names_are_refused(labels: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Registry().gauge("bastion_g", "G.", labels)


def test_label_names_must_be_a_tuple() -> None:
    # ValueError from the check; TypeError from the compiled build, which checks the argument's
    # declared type first
    with pytest.raises((ValueError, TypeError), match="tuple"):
        Registry().gauge("bastion_g", "G.", ["a"])  # type: ignore[arg-type]


def test_metric_names_with_colons_are_accepted() -> None:
    registry = Registry()
    registry.gauge("bastion:ratio", "R.").set((), 0.5)
    assert samples(registry, "bastion:ratio") == [("bastion:ratio", {}, 0.5)]


def test_counter_names_must_end_in_total() -> None:
    with pytest.raises(ValueError, match="_total"):
        Registry().counter("bastion_requests", "Requests.")


def test_histograms_cannot_have_a_le_label() -> None:
    with pytest.raises(ValueError, match="'le'"):
        Registry().histogram("bastion_h_seconds", "H.", ("le",))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("gauge", "bastion_x"), ("gauge", "bastion_x")),
        (("gauge", "bastion_x"), ("counter", "bastion_x_total")),
        (("counter", "bastion_x_total"), ("gauge", "bastion_x_total")),
        (("histogram", "bastion_x"), ("gauge", "bastion_x_count")),
        (("gauge", "bastion_x_bucket"), ("histogram", "bastion_x")),
        (("counter", "bastion_x_total"), ("histogram", "bastion_x")),
        (("gauge", "bastion_metrics_series_dropped_total"), None),
    ],
)
def test_names_that_would_clash_are_refused(
    first: tuple[str, str], second: tuple[str, str] | None
) -> None:
    registry = Registry()

    def register(kind: str, name: str) -> None:
        if kind == "gauge":
            registry.gauge(name, "M.")
        elif kind == "counter":
            registry.counter(name, "M.")
        else:
            registry.histogram(name, "M.")

    if second is None:
        with pytest.raises(ValueError, match="clashes"):
            register(*first)
        return
    register(*first)
    with pytest.raises(ValueError, match="clashes"):
        register(*second)
    assert len(families(registry)) == 2  # the refused one was not added


def test_the_wrong_number_of_label_values_is_refused_and_records_nothing() -> None:
    registry = Registry()
    counter = registry.counter("bastion_c_total", "C.", ("a", "b"))
    gauge = registry.gauge("bastion_g", "G.", ("a",))
    histogram = registry.histogram("bastion_h_seconds", "H.", ("a",))
    with pytest.raises(ValueError, match="expected a tuple of 2 label values"):
        counter.inc(("x",))
    with pytest.raises(ValueError, match="expected a tuple of 2 label values"):
        counter.inc()
    with pytest.raises(ValueError, match="expected a tuple of 1 label values"):
        gauge.set(("x", "y"), 1.0)
    with pytest.raises(ValueError, match="expected a tuple of 1 label values"):
        histogram.observe((), 1.0)
    with pytest.raises((ValueError, TypeError), match="tuple"):  # TypeError: compiled build
        gauge.inc("x")  # type: ignore[arg-type]  # a bare string is not a tuple of one
    with pytest.raises(TypeError, match="str"):  # "must be str"; compiled: "str object expected"
        gauge.set((1,), 1.0)  # type: ignore[arg-type]
    assert {name: f.samples for name, f in families(registry).items()} == {
        DROPPED: [],
        "bastion_c": [],
        "bastion_g": [],
        "bastion_h_seconds": [],
    }


# -- the whole output -------------------------------------------------------------------------


def test_render_is_utf8_text_in_registration_order() -> None:
    registry = Registry()
    registry.gauge("bastion_b", "B.").set((), 1.0)
    registry.counter("bastion_a_total", "A.", ("k",)).inc(("ü",))
    registry.histogram("bastion_c_seconds", "C.", buckets=(1.0,)).observe((), 2.0)

    body = registry.render()
    assert isinstance(body, bytes)
    assert body.endswith(b"\n")
    assert body.decode("utf-8") == (
        "# HELP bastion_metrics_series_dropped_total Records dropped because their metric already"
        " had max_series label combinations.\n"
        "# TYPE bastion_metrics_series_dropped_total counter\n"
        "# HELP bastion_b B.\n"
        "# TYPE bastion_b gauge\n"
        "bastion_b 1.0\n"
        "# HELP bastion_a_total A.\n"
        "# TYPE bastion_a_total counter\n"
        'bastion_a_total{k="ü"} 1.0\n'
        "# HELP bastion_c_seconds C.\n"
        "# TYPE bastion_c_seconds histogram\n"
        'bastion_c_seconds_bucket{le="1.0"} 0.0\n'
        'bastion_c_seconds_bucket{le="+Inf"} 1.0\n'
        "bastion_c_seconds_sum 2.0\n"
        "bastion_c_seconds_count 1.0\n"
    )
    assert list(families(registry)) == [DROPPED, "bastion_b", "bastion_a", "bastion_c_seconds"]


def test_content_type() -> None:
    assert CONTENT_TYPE == b"text/plain; version=0.0.4; charset=utf-8"
