"""Several processes' metrics as one: merged by kind, rendered as one registry would."""

from __future__ import annotations

import json
import math

from prometheus_client.parser import text_string_to_metric_families

from bastion.observability.metrics import Registry
from bastion.observability.snapshots import Gathered, decode, encode, merge, render


def worker(requests: int, in_flight: float, healthy: float, ejected: float) -> Registry:
    """A registry shaped as every worker's is, with its own values."""
    r = Registry()
    counter = r.counter("t_requests_total", "Requests.", ("code",))
    counter.inc(("2xx",), requests)
    if requests > 5:
        counter.inc(("5xx",), 1)  # a series only this worker has
    latency = r.histogram("t_seconds", "Latency.", ("route",), (0.1, 1.0))
    for value in (0.05, 0.5, 5.0)[: min(3, requests)]:
        latency.observe(("/v1",), value)
    r.gauge("t_in_flight", "In flight.").set((), in_flight)
    r.gauge_function("t_healthy", "Healthy.", ("upstream",), lambda: [(("u1",), healthy)], "min")
    r.gauge_function("t_ejected", "Ejected.", ("upstream",), lambda: [(("u1",), ejected)], "max")
    r.counter_function("t_restarts_total", "Kept elsewhere.", (), lambda: [((), 2.0)])
    return r


def values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_one_snapshot_renders_exactly_as_its_registry() -> None:
    registry = worker(7, 3, 1, 0)
    assert render(merge([registry.snapshot()])) == registry.render()
    assert render(decode(json.loads(json.dumps(encode(registry.snapshot()))))) == (
        registry.render()
    )


def test_counters_and_histograms_add_up_and_each_gauge_merges_its_own_way() -> None:
    one, two = worker(7, 3, 1, 0), worker(2, 4, 0, 1)
    merged = values(render(merge([one.snapshot(), two.snapshot()])))
    assert merged[("t_requests_total", (("code", "2xx"),))] == 9
    assert merged[("t_requests_total", (("code", "5xx"),))] == 1
    assert merged[("t_restarts_total", ())] == 4
    assert merged[("t_seconds_count", (("route", "/v1"),))] == 5
    assert merged[("t_seconds_bucket", (("le", "0.1"), ("route", "/v1")))] == 2
    assert merged[("t_seconds_bucket", (("le", "1.0"), ("route", "/v1")))] == 4
    assert merged[("t_seconds_bucket", (("le", "+Inf"), ("route", "/v1")))] == 5
    assert math.isclose(merged[("t_seconds_sum", (("route", "/v1"),))], 5.55 + 0.55)
    assert merged[("t_in_flight", ())] == 7  # an amount: summed
    assert merged[("t_healthy", (("upstream", "u1"),))] == 0  # 1 only if every worker agrees
    assert merged[("t_ejected", (("upstream", "u1"),))] == 1  # ejected by any worker


def test_the_wire_keeps_infinities_and_not_a_number() -> None:
    r = Registry()
    r.gauge("t_odd", "Odd.", ("kind",))
    for kind, value in (("inf", math.inf), ("ninf", -math.inf), ("nan", math.nan)):
        r.gauge("t_" + kind, "Odd.").set((), value)
    back = decode(json.loads(json.dumps(encode(r.snapshot()))))
    assert render(back) == r.render()


def test_a_departed_member_keeps_its_counts_but_not_its_gauges() -> None:
    gathered = Gathered()
    gathered.update(1, encode(worker(7, 3, 1, 0).snapshot()))
    gathered.update(2, encode(worker(2, 4, 1, 0).snapshot()))
    before = values(gathered.render())
    gathered.depart(1)
    gathered.update(1, encode(worker(1, 1, 1, 0).snapshot()))  # its successor starts from 0
    after = values(gathered.render())
    assert before[("t_requests_total", (("code", "2xx"),))] == 9
    assert after[("t_requests_total", (("code", "2xx"),))] == 10  # never goes down
    assert after[("t_seconds_count", (("route", "/v1"),))] == 6
    assert after[("t_in_flight", ())] == 5  # only the living are in flight
    gathered.depart(2)
    gathered.depart(2)  # twice is once
    assert values(gathered.render())[("t_requests_total", (("code", "2xx"),))] == 10


def test_the_gatherers_own_metrics_are_added() -> None:
    own = Registry()
    own.gauge("t_workers", "Workers.").set((), 2)
    gathered = Gathered()
    gathered.update(1, encode(worker(1, 0, 1, 0).snapshot()))
    text = values(gathered.render(own.snapshot()))
    assert text[("t_workers", ())] == 2
    assert text[("t_requests_total", (("code", "2xx"),))] == 1
