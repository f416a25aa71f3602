"""Every metric the shipped dashboard and alert rules read is one a running gateway exports.

One gateway (HTTPS, a Redis limiter whose Redis is gone, a model whose only upstream is down)
answers a success, a stream, a refused key, a rate-limited request and requests to the dead
model; then its metrics port is scraped as Prometheus would, and the names read by
deploy/grafana/bastion.json and deploy/prometheus/bastion-rules.yaml are looked up in it.
"""

from __future__ import annotations

import ssl
import urllib.request
from dataclasses import dataclass

import openai
import pytest
import trustme
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from bastion.auth.apikeys import generate_key, hash_key
from tests.integration.conftest import UPSTREAM_KEY, closed_port
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Keys, base_config, running_gateway
from tests.support.monitoring import names_read, promtool
from tests.support.tls import server_files

KEYS = Keys()
LIMITED = generate_key()
HI = [{"role": "user", "content": "hi"}]
PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for each scrape."""
ONLY_WHEN_IT_HAPPENS = {"bastion_metrics_series_dropped_total"}
"""Families with a label per event (here: the metric whose series were capped): declared on
every scrape, with a sample only once it happened."""


@dataclass
class Scrape:
    text: str
    certificate_expiry: float

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(self.text)
            for s in family.samples
        ]

    def sample_names(self) -> set[str]:
        return {name for name, _, _ in self.samples()}

    def declared_names(self) -> set[str]:
        """The names of the samples each ``# TYPE`` line announces."""
        names = set()
        for line in self.text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
                names.update(name + suffix for suffix in suffixes)
        return names

    def values(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(labels, value) for n, labels, value in self.samples() if n == name]


def _client(url: str, key: str, ca_file: str) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca_file))
    return openai.OpenAI(base_url=url + "/v1", api_key=key, http_client=http, max_retries=0)


@pytest.fixture(scope="module")
def scraped(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    where = tmp_path_factory.mktemp("monitoring")
    cert, key, ca_file = server_files(trustme.CA(), where)
    metrics_port = closed_port()
    config = base_config(
        upstream.url,
        KEYS,
        upstream={"health": {"enabled": False}, "ejection": {"failures": 1, "duration": 60}},
        metrics={"listen": f"127.0.0.1:{metrics_port}", "team_label": True},
        limits={
            "backend": "redis",
            "redis": {"url": f"redis://127.0.0.1:{closed_port()}/0"},  # nothing listens
            "on_backend_failure": "open",
            "users": {"limited": {"requests_per_minute": 1}},
        },
    )
    config["server"]["tls"] = {"certificate": str(cert), "key": str(key)}
    config["auth"]["api_keys"].append({"name": "limited", "hash": hash_key(LIMITED)})
    dead = f"http://127.0.0.1:{closed_port()}"
    config["models"].append({"name": "down-model", "upstreams": [{"url": dead}]})
    with running_gateway(config, where, UPSTREAM_KEY) as gateway:
        _exercise(gateway.url, str(ca_file))
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    return Scrape(text, leaf.not_valid_after_utc.timestamp())


def _exercise(url: str, ca_file: str) -> None:
    """A request of each kind the dashboard and the alerts look at."""
    with (
        _client(url, KEYS.user, ca_file) as user,
        _client(url, "bst_not-a-key-of-this-gateway", ca_file) as stranger,
        _client(url, LIMITED, ca_file) as limited,
    ):
        assert user.chat.completions.create(model="test-model", messages=HI).choices
        stream = user.chat.completions.create(
            model="test-model", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        assert list(stream)
        with pytest.raises(openai.AuthenticationError):
            stranger.chat.completions.create(model="test-model", messages=HI)
        limited.chat.completions.create(model="test-model", messages=HI)
        with pytest.raises(openai.RateLimitError):
            limited.chat.completions.create(model="test-model", messages=HI)
        with pytest.raises(openai.APIStatusError) as unreachable:
            user.chat.completions.create(model="down-model", messages=HI)
        assert unreachable.value.status_code == 502  # the attempt failed: now ejected
        with pytest.raises(openai.APIStatusError) as ejected:
            user.chat.completions.create(model="down-model", messages=HI)
        assert ejected.value.status_code == 503


def test_every_metric_the_dashboard_and_the_rules_read_is_exported(scraped: Scrape) -> None:
    read = names_read()
    assert len(read) >= 25
    exported = scraped.declared_names() | PROMETHEUS_OWN
    missing = {name: sorted(where) for name, where in read.items() if name not in exported}
    assert missing == {}


def test_every_metric_they_read_has_a_sample(scraped: Scrape) -> None:
    present = scraped.sample_names()
    empty = set(names_read()) - present - PROMETHEUS_OWN - ONLY_WHEN_IT_HAPPENS
    assert empty == set()
    assert scraped.declared_names() >= ONLY_WHEN_IT_HAPPENS


def test_errors_carry_their_reason(scraped: Scrape) -> None:
    reasons = {
        labels["error_type"]: value
        for labels, value in scraped.values("gen_ai_server_request_duration_seconds_count")
    }
    assert reasons[""] == 3  # the chat, the stream and the limited key's first request
    for reason in ("invalid_api_key", "rate_limit_exceeded", "upstream_unreachable"):
        assert reasons[reason] == 1, reason
    assert reasons["no_healthy_upstream"] == 1


def test_the_dead_model_has_no_upstream_available(scraped: Scrape) -> None:
    available = {
        labels["model"]: value
        for labels, value in scraped.values("bastion_model_upstreams_available")
    }
    assert available == {"test-model": 1, "down-model": 0}
    ejections = [v for _, v in scraped.values("bastion_upstream_ejections_total")]
    assert sorted(ejections) == [0, 1]


def test_the_limiter_backend_failure_and_fail_open_are_counted(scraped: Scrape) -> None:
    ((_, failures),) = scraped.values("bastion_limiter_backend_failures_total")
    ((_, admitted),) = scraped.values("bastion_limiter_fail_open_total")
    assert failures >= 1
    assert admitted >= 1
    decisions = {
        labels["decision"]: value
        for labels, value in scraped.values("bastion_limiter_decisions_total")
    }
    assert decisions["rate_limited"] == 1


def test_tokens_and_generation_timings_are_exported(scraped: Scrape) -> None:
    usage = {
        labels["gen_ai_token_type"]: value
        for labels, value in scraped.values("gen_ai_client_token_usage_count")
        if labels["gen_ai_request_model"] == "test-model"
    }
    assert usage == {"input": 3, "output": 3}
    ((ttft, count),) = scraped.values("gen_ai_server_time_to_first_token_seconds_count")
    assert count == 1
    assert ttft["gen_ai_provider_name"] == "vllm"
    assert {labels["team"] for labels, _ in scraped.values("bastion_tokens_total")} == {"-"}


def test_the_certificate_expiry_and_draining_are_exported(scraped: Scrape) -> None:
    ((_, expiry),) = scraped.values("bastion_tls_certificate_expiry_timestamp_seconds")
    assert expiry == scraped.certificate_expiry
    assert scraped.values("bastion_draining") == [({}, 0.0)]


def test_the_scrape_passes_promtools_lint(scraped: Scrape) -> None:
    done = promtool("check", "metrics", stdin=scraped.text)
    assert done.returncode == 0, done.stdout + done.stderr
