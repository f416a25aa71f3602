"""Several upstreams for one model: load spread, failover, ejection and recovery."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import UPSTREAM_KEY, closed_port
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

HI = [{"role": "user", "content": "hi"}]
KEYS = Keys()


@pytest.fixture
def pair() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream().start(), FakeUpstream().start()
    yield a, b
    a.stop()
    b.stop()


def _config(*urls: str, weights: tuple[int, ...] | None = None, **upstream: Any) -> dict[str, Any]:
    config = base_config(urls[0], KEYS)
    config["models"][0]["upstreams"] = [
        {"url": u, "api_key": {"env": "TEST_UPSTREAM_KEY"}, "weight": (weights or (1,) * 9)[i]}
        for i, u in enumerate(urls)
    ]
    config["upstream"] = {
        "health": {"interval": 0.2, "timeout": 0.5},
        "ejection": {"failures": 2, "duration": 0.5},
        **upstream,
    }
    return config


def _chat(gateway: GatewayProcess) -> str:
    reply = openai_client(gateway.url, KEYS.user).chat.completions.create(
        model="test-model", messages=HI
    )
    return reply.choices[0].message.content or ""


def _metrics(gateway: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    request = urllib.request.Request(
        gateway.url + "/bastion/metrics", headers={"Authorization": f"Bearer {KEYS.admin}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        time.sleep(0.05)


def test_requests_spread_by_requests_in_flight(
    pair: tuple[FakeUpstream, FakeUpstream], tmp_path: Path
) -> None:
    a, b = pair
    with running_gateway(_config(a.url, b.url), tmp_path, UPSTREAM_KEY) as gateway:
        for _ in range(4):  # idle: taken in turn
            _chat(gateway)
        assert len(a.seen) == len(b.seen) == 2
        a.reset(), b.reset()
        a.behaviour.delay = 0.4  # a is slow: its requests stay in flight
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: _chat(gateway), range(40)))
        # a never holds more than its share of the four in flight, b turns over fast
        assert len(b.seen) > 3 * len(a.seen) > 0


def test_weights_share_requests(pair: tuple[FakeUpstream, FakeUpstream], tmp_path: Path) -> None:
    a, b = pair
    config = _config(a.url, b.url, weights=(3, 1))
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        for _ in range(40):
            _chat(gateway)
    assert (len(a.seen), len(b.seen)) == (30, 10)


def test_an_upstream_killed_mid_run_fails_no_request_and_returns_after_recovery(
    pair: tuple[FakeUpstream, FakeUpstream], tmp_path: Path
) -> None:
    a, b = pair
    failures: list[BaseException] = []
    served = 0
    stop = threading.Event()

    def load(gateway: GatewayProcess) -> None:
        nonlocal served
        while not stop.is_set():
            try:
                assert _chat(gateway) == "Hello from upstream"
                served += 1
            except Exception as exc:
                failures.append(exc)

    with running_gateway(_config(a.url, b.url), tmp_path, UPSTREAM_KEY) as gateway:
        workers = [threading.Thread(target=load, args=(gateway,)) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            _until(lambda: len(a.seen) > 10 and len(b.seen) > 10)
            a.stop()  # killed mid-run
            killed_at = len(a.seen)
            before = served
            _until(lambda: served > before + 30)
            assert len(a.seen) == killed_at  # nothing reached it since
            metrics = _metrics(gateway)
            label = (("upstream", f"127.0.0.1:{a.port}"),)
            assert metrics[("bastion_upstream_healthy", label)] == 0.0  # taken out
            a.start()  # back on the same port
            _until(lambda: len(a.seen) > killed_at + 5)  # put back in
        finally:
            stop.set()
            for w in workers:
                w.join(10)
        assert failures == []
        assert "taken out" in gateway.logs and "back in" in gateway.logs


def test_an_upstream_answering_503_is_passed_over(
    pair: tuple[FakeUpstream, FakeUpstream], tmp_path: Path
) -> None:
    a, b = pair
    a.behaviour.status = 503  # overloaded; its health check still passes
    config = _config(a.url, b.url, ejection={"failures": 2, "duration": 30})
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        for _ in range(6):
            assert _chat(gateway) == "Hello from upstream"
        assert len(b.seen) == 6
        assert len(a.seen) == 2  # ejected after two failures in a row, then left alone
        metrics = _metrics(gateway)
        label = (("upstream", f"127.0.0.1:{a.port}"),)
        assert metrics[("bastion_upstream_retries_total", label)] == 2.0
        assert metrics[("bastion_upstream_ejected", label)] == 1.0


def test_a_model_with_every_upstream_down_answers_503_at_once(tmp_path: Path) -> None:
    urls = [f"http://127.0.0.1:{closed_port()}" for _ in range(2)]
    with running_gateway(_config(*urls), tmp_path, UPSTREAM_KEY) as gateway:
        client = openai_client(gateway.url, KEYS.user)
        _until(lambda: "taken out" in gateway.logs)
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(model="test-model", messages=HI)
            assert time.monotonic() - started < 0.5
            assert caught.value.status_code == 503
            assert caught.value.body["code"] == "no_healthy_upstream"  # type: ignore[index]


def test_without_health_checks_a_dead_upstream_is_retried_then_ejected(
    pair: tuple[FakeUpstream, FakeUpstream], tmp_path: Path
) -> None:
    _, b = pair
    dead = f"http://127.0.0.1:{closed_port()}"
    config = _config(dead, b.url, health={"enabled": False})
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        for _ in range(8):
            assert _chat(gateway) == "Hello from upstream"  # never an error to the caller
        assert len(b.seen) == 8
        metrics = _metrics(gateway)
        label = (("upstream", dead.removeprefix("http://")),)
        assert metrics[("bastion_upstream_failures_total", label)] == 2.0  # then ejected
        assert metrics[("bastion_upstream_ejections_total", label)] == 1.0
