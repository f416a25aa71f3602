"""Prometheus metrics after a known sequence of requests, read with the official parser."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import UPSTREAM_KEY, closed_port
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

KEYS = Keys()
HI = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def scraped(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str, int]]:
    config = base_config(upstream.url, KEYS)
    port = closed_port()
    config["metrics"] = {"listen": f"127.0.0.1:{port}"}
    with running_gateway(config, tmp_path_factory.mktemp("metrics"), UPSTREAM_KEY) as gateway:
        client = openai_client(gateway.url, KEYS.user)
        for _ in range(3):
            client.chat.completions.create(model="test-model", messages=HI)
        chunks = list(client.chat.completions.create(model="test-model", messages=HI, stream=True))
        assert chunks
        with pytest.raises(openai.AuthenticationError):
            openai_client(gateway.url, "sk-wrong-key-123").models.list()
        request = urllib.request.Request(gateway.url + CHAT, data=b'{"model": "x"}')
        assert _status(request) == 401  # no credential at all
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model-secret-name", messages=HI)
        text = _get(gateway.url + "/bastion/metrics", KEYS.admin)
        yield gateway, text, port


def _get(url: str, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        body: bytes = r.read()
        return body.decode()


def _status(request: urllib.request.Request | str, key: str | None = None) -> int:
    """The status of a request expected to be refused."""
    if isinstance(request, str):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        request = urllib.request.Request(request, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    caught.value.close()
    return caught.value.code


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_requests_are_counted_by_route_model_and_status_class(
    scraped: tuple[GatewayProcess, str, int],
) -> None:
    samples = _samples(scraped[1])
    requests: dict[Any, float] = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "bastion_requests_total"
    }
    assert requests[_labels(route=CHAT, model="test-model", code="2xx")] == 4
    # the refused ones: no credential (1), and an unknown model (1) -- never its name
    assert requests[_labels(route=CHAT, model="-", code="4xx")] == 2
    assert requests[_labels(route="/v1/models", model="-", code="4xx")] == 1
    duration = samples[
        (
            "bastion_request_duration_seconds_count",
            _labels(route=CHAT, model="test-model", code="2xx"),
        )
    ]
    assert duration == 4


def test_tokens_and_stream_timings(scraped: tuple[GatewayProcess, str, int]) -> None:
    samples = _samples(scraped[1])
    model = _labels(model="test-model", type="input")
    assert samples[("bastion_tokens_total", model)] == 4 * 5
    assert (
        samples[("bastion_tokens_total", _labels(model="test-model", type="output"))] == 3 * 3 + 3
    )
    ttft = _labels(
        gen_ai_operation_name="chat",
        gen_ai_provider_name="vllm",
        gen_ai_request_model="test-model",
        gen_ai_response_model="test-model",
    )
    assert samples[("gen_ai_server_time_to_first_token_seconds_count", ttft)] == 1  # the stream
    assert samples[("gen_ai_server_time_per_output_token_seconds_count", ttft)] == 1
    assert samples[("gen_ai_server_time_to_first_token_seconds_sum", ttft)] > 0


def test_authentication_failures_by_reason(scraped: tuple[GatewayProcess, str, int]) -> None:
    samples = _samples(scraped[1])
    assert samples[("bastion_auth_failures_total", _labels(reason="invalid"))] == 1
    assert samples[("bastion_auth_failures_total", _labels(reason="missing"))] == 1


def test_upstream_series_exist(
    scraped: tuple[GatewayProcess, str, int], upstream: FakeUpstream
) -> None:
    samples = _samples(scraped[1])
    label = _labels(upstream=f"127.0.0.1:{upstream.port}")
    assert samples[("bastion_upstream_healthy", label)] == 1
    assert samples[("bastion_upstream_requests_total", label)] == 4
    assert samples[("bastion_upstream_in_flight", label)] == 0
    assert samples[("bastion_upstream_failures_total", label)] == 0


def test_the_gateways_own_health_is_exported(scraped: tuple[GatewayProcess, str, int]) -> None:
    samples = _samples(scraped[1])
    assert 0 < samples[("bastion_store_keys_valid_seconds", ())] <= 30  # store.stale_after
    assert samples[("bastion_store_key_reloads_total", ())] >= 1  # the first load
    for lost in ("audit_events", "usage_records", "access_log"):
        assert samples[(f"bastion_{lost}_dropped_total", ())] == 0
    assert samples[("bastion_config_reloads_total", ())] == 0
    assert samples[("bastion_limiter_fail_open_total", ())] == 0


def test_no_secret_or_per_caller_label(scraped: tuple[GatewayProcess, str, int]) -> None:
    text = scraped[1]
    for secret in (KEYS.user, KEYS.admin, UPSTREAM_KEY, "sk-wrong-key-123"):
        assert secret not in text
    values = {v for (_, labels) in _samples(text) for _, v in labels}
    assert not values & {"alice", "root", "no-such-model-secret-name"}
    assert not any(v.startswith("sk-") for v in values)


def test_metrics_need_the_metrics_permission_on_the_gateway_port(
    scraped: tuple[GatewayProcess, str, int],
) -> None:
    url = scraped[0].url + "/bastion/metrics"
    assert _status(url) == 401
    assert _status(url, KEYS.user) == 403


def test_the_separate_listener_serves_metrics_without_a_credential(
    scraped: tuple[GatewayProcess, str, int],
) -> None:
    text = _get(f"http://127.0.0.1:{scraped[2]}/metrics")
    assert "bastion_requests_total" in text
    assert _status(f"http://127.0.0.1:{scraped[2]}/v1/models") == 404
