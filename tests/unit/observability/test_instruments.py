"""The gateway's metrics, fed finished request contexts and read back through
prometheus_client's own parser; and the separate listener that serves them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from bastion.auth.identity import Identity
from bastion.errors import ConfigError, GatewayError, RateLimitError, UpstreamConnectError
from bastion.observability.instruments import (
    REQUEST_DURATION_BUCKETS,
    TOKEN_BUCKETS,
    TPOT_BUCKETS,
    TTFT_BUCKETS,
    GatewayMetrics,
)
from bastion.observability.listener import MetricsListener
from bastion.observability.metrics import CONTENT_TYPE
from bastion.pipeline.account import Account
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import DEFAULT_ENDPOINTS
from bastion.pipeline.meter import Meter
from bastion.settings import EjectionSettings, LoggingSettings, MetricsSettings
from bastion.upstream.balancer import UpstreamSet
from bastion.upstream.origin import Origin

ROUTES = {route.path: route for route in DEFAULT_ENDPOINTS}
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MODELS = ("llama", "qwen")
TTFT = "gen_ai_server_time_to_first_token_seconds"
TPOT = "gen_ai_server_time_per_output_token_seconds"
OPERATIONS = "gen_ai_server_request_duration_seconds"
USAGE = "gen_ai_client_token_usage"
WAIT = 5.0

# Names that identify a caller: none may ever be a label value.
PRINCIPALS = ("alice@example.com", "svc-batch", "bob")
KEY_IDS = ("bk_3f9a2c1d", "bk_77e0b4aa", "jwt-kid-1")


def identity(n: int, *teams: str) -> Identity:
    return Identity(PRINCIPALS[n], "user", KEY_IDS[n], "api_key", teams=teams)


async def _receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _send(message: Any) -> None:
    return None


def context(
    path: str | None = CHAT,
    *,
    model: str | None = "llama",
    status: int = 200,
    usage: tuple[int, int] | None = None,
    track_usage: bool = False,
    sse: bool = False,
    ttfb: float | None = None,
    elapsed: float | None = None,
    who: Identity | None = None,
    error: GatewayError | None = None,
) -> RequestContext:
    """A finished request as ``account`` sees it."""
    scope = {"type": "http", "method": "POST", "path": path or "/nowhere", "headers": []}
    ctx = RequestContext(scope, _receive, _send)
    ctx.endpoint = ROUTES[path] if path is not None else None
    ctx.model = model
    ctx.status = status
    if usage is not None or track_usage:
        ctx.meter = Meter(0, reading=True)
        ctx.meter.usage = usage
    ctx.response_sse = sse
    ctx.time_to_first_byte = ttfb
    ctx.identity = who
    ctx.error = error
    if elapsed is not None:
        ctx.started = time.perf_counter() - elapsed
    return ctx


def gateway_metrics(**settings: Any) -> GatewayMetrics:
    metrics = GatewayMetrics(MetricsSettings(**settings))
    metrics.set_models(MODELS)
    return metrics


def record(metrics: GatewayMetrics, ctx: RequestContext) -> None:
    """Count ``ctx`` as the ``account`` phase does: it hands the metrics plain values."""
    Account(LoggingSettings(access_log=False), None, metrics=metrics)(ctx)


def families(metrics: GatewayMetrics) -> dict[str, Metric]:
    parsed = list(text_string_to_metric_families(metrics.render().decode("utf-8")))
    names = [family.name for family in parsed]
    assert len(names) == len(set(names)), f"a family was written twice: {names}"
    return {family.name: family for family in parsed}


def values(metrics: GatewayMetrics, family: str, sample: str | None = None) -> dict[Any, float]:
    """``{frozenset of label pairs: value}`` of one family's samples named ``sample``."""
    fam = families(metrics)[family]
    name = sample or (family + "_total" if fam.type == "counter" else family)
    return {frozenset(s.labels.items()): s.value for s in fam.samples if s.name == name}


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def gen_ai(
    model: str = "llama", operation: str = "chat", served: str | None = None, **more: str
) -> frozenset[tuple[str, str]]:
    """The labels of a GenAI series: the semantic conventions' attributes."""
    return labels(
        gen_ai_operation_name=operation,
        gen_ai_provider_name="vllm",
        gen_ai_request_model=model,
        gen_ai_response_model=model if served is None else served,
        **more,
    )


def histogram_counts(metrics: GatewayMetrics, family: str) -> dict[Any, float]:
    return values(metrics, family, family + "_count")


# -- requests ---------------------------------------------------------------------------------


def test_requests_are_counted_by_route_model_and_status_class() -> None:
    metrics = gateway_metrics()
    for status in (200, 200, 201, 400, 429, 502, 503):
        record(metrics, context(status=status))
    record(metrics, context(EMBEDDINGS, model="qwen", status=200))
    record(metrics, context(status=101))
    assert values(metrics, "bastion_requests") == {
        labels(route=CHAT, model="llama", code="2xx"): 3.0,
        labels(route=CHAT, model="llama", code="4xx"): 2.0,
        labels(route=CHAT, model="llama", code="5xx"): 2.0,
        labels(route=CHAT, model="llama", code="1xx"): 1.0,
        labels(route=EMBEDDINGS, model="qwen", code="2xx"): 1.0,
    }


def test_a_model_that_is_not_configured_is_a_dash() -> None:
    metrics = gateway_metrics()
    record(metrics, context(model="gpt-4o-mini-from-the-caller"))
    record(metrics, context(model="another-made-up-name"))
    record(metrics, context(model=None, status=400))
    assert values(metrics, "bastion_requests") == {
        labels(route=CHAT, model="-", code="2xx"): 2.0,
        labels(route=CHAT, model="-", code="4xx"): 1.0,
    }


def test_set_models_follows_a_reload() -> None:
    metrics = gateway_metrics()
    record(metrics, context(model="mistral"))
    metrics.set_models(["mistral"])
    record(metrics, context(model="mistral"))
    record(metrics, context(model="llama"))  # no longer configured
    assert values(metrics, "bastion_requests") == {
        labels(route=CHAT, model="-", code="2xx"): 2.0,
        labels(route=CHAT, model="mistral", code="2xx"): 1.0,
    }


def test_an_unmatched_route_and_no_status_have_their_own_labels() -> None:
    metrics = gateway_metrics()
    record(metrics, context(None, model=None, status=404))
    record(metrics, context("/v1/models", model=None, status=0))  # caller left before a status
    assert values(metrics, "bastion_requests") == {
        labels(route="unmatched", model="-", code="4xx"): 1.0,
        labels(route="/v1/models", model="-", code="none"): 1.0,
    }


def test_a_caller_gone_before_the_end_counts_as_499() -> None:
    metrics = gateway_metrics()
    ctx = context(status=200)
    ctx.client_disconnected = True  # the caller went away after the head was sent
    record(metrics, ctx)
    assert values(metrics, "bastion_requests") == {labels(route=CHAT, model="llama", code="4xx"): 1}


def test_request_duration_is_observed_for_every_request() -> None:
    metrics = gateway_metrics()
    record(metrics, context(status=200, elapsed=0.2))
    record(metrics, context(status=500, elapsed=0.2))
    counts = histogram_counts(metrics, "bastion_request_duration_seconds")
    assert counts == {
        labels(route=CHAT, model="llama", code="2xx"): 1.0,
        labels(route=CHAT, model="llama", code="5xx"): 1.0,
    }
    sums = values(
        metrics, "bastion_request_duration_seconds", "bastion_request_duration_seconds_sum"
    )
    assert sums[labels(route=CHAT, model="llama", code="2xx")] == pytest.approx(0.2, abs=0.05)


# -- tokens -----------------------------------------------------------------------------------


def test_tokens_are_counted_from_the_reported_usage() -> None:
    metrics = gateway_metrics()
    record(metrics, context(usage=(12, 34)))
    record(metrics, context(usage=(8, 6), track_usage=True))
    record(metrics, context(EMBEDDINGS, model="qwen", usage=(100, 0)))
    assert values(metrics, "bastion_tokens") == {
        labels(model="llama", type="input"): 20.0,
        labels(model="llama", type="output"): 40.0,
        labels(model="qwen", type="input"): 100.0,
        labels(model="qwen", type="output"): 0.0,
    }


def test_tokens_are_estimated_when_tracked_but_not_reported() -> None:
    metrics = gateway_metrics()
    ctx = context(track_usage=True, sse=True)
    assert ctx.meter is not None
    ctx.meter.prompt_estimate = 7
    ctx.meter.content_events = 5
    record(metrics, ctx)
    failed = context(track_usage=True, status=502)
    assert failed.meter is not None
    failed.meter.prompt_estimate = 50
    record(metrics, failed)  # nothing generated: billed nothing
    assert values(metrics, "bastion_tokens") == {
        labels(model="llama", type="input"): 7.0,
        labels(model="llama", type="output"): 5.0,
    }


def test_no_tokens_without_usage_or_tracking() -> None:
    metrics = gateway_metrics()
    record(metrics, context("/v1/models", model=None))
    record(metrics, context())
    assert values(metrics, "bastion_tokens") == {}


# -- generation timings -----------------------------------------------------------------------


def test_time_to_first_token_and_per_output_token_for_a_streamed_200() -> None:
    metrics = gateway_metrics()
    record(metrics, context(sse=True, ttfb=0.5, elapsed=2.0, usage=(10, 4)))
    fams = families(metrics)
    assert fams[TTFT].type == "histogram"
    assert fams[TPOT].type == "histogram"
    assert histogram_counts(metrics, TTFT) == {gen_ai(): 1.0}
    assert values(metrics, TTFT, TTFT + "_sum") == {gen_ai(): 0.5}
    assert histogram_counts(metrics, TPOT) == {gen_ai(): 1.0}
    (tpot,) = values(metrics, TPOT, TPOT + "_sum").values()
    assert tpot == pytest.approx((2.0 - 0.5) / 3, abs=0.05)  # 4 tokens, 3 gaps
    buckets = {s.labels["le"] for s in fams[TTFT].samples if s.name == TTFT + "_bucket"}
    assert len(buckets) == len(TTFT_BUCKETS) + 1
    buckets = {s.labels["le"] for s in fams[TPOT].samples if s.name == TPOT + "_bucket"}
    assert len(buckets) == len(TPOT_BUCKETS) + 1


def test_time_per_output_token_counts_content_events_without_usage() -> None:
    metrics = gateway_metrics()
    ctx = context(sse=True, ttfb=0.2, elapsed=1.2)
    ctx.meter = Meter(0, reading=False)
    ctx.meter.content_events = 11
    record(metrics, ctx)
    (tpot,) = values(metrics, TPOT, TPOT + "_sum").values()
    assert tpot == pytest.approx(1.0 / 10, abs=0.01)


@pytest.mark.parametrize(
    "ctx",
    [
        pytest.param(context(sse=False, ttfb=0.5, usage=(1, 9)), id="not a stream"),
        pytest.param(context(sse=True, ttfb=0.5, usage=(1, 9), status=500), id="a 500"),
        pytest.param(context(sse=True, ttfb=0.5, usage=(1, 9), status=429), id="a 429"),
        pytest.param(context(sse=True, ttfb=None, usage=(1, 9)), id="no first byte"),
    ],
)
def test_no_generation_timings_unless_a_streamed_200(ctx: RequestContext) -> None:
    metrics = gateway_metrics()
    record(metrics, ctx)
    assert histogram_counts(metrics, TTFT) == {}
    assert histogram_counts(metrics, TPOT) == {}
    assert sum(values(metrics, "bastion_requests").values()) == 1


def test_a_single_output_token_has_no_time_per_token() -> None:
    metrics = gateway_metrics()
    record(metrics, context(sse=True, ttfb=0.3, elapsed=0.5, usage=(5, 1)))
    assert histogram_counts(metrics, TTFT) == {gen_ai(): 1.0}
    assert histogram_counts(metrics, TPOT) == {}


def test_generation_timings_of_an_unknown_model_name_no_model() -> None:
    metrics = gateway_metrics()
    record(metrics, context(model="free-text", sse=True, ttfb=0.1, elapsed=0.4, usage=(1, 4)))
    assert histogram_counts(metrics, TTFT) == {gen_ai(""): 1.0}
    assert histogram_counts(metrics, TPOT) == {gen_ai(""): 1.0}


# -- generative AI operations under the OpenTelemetry semantic conventions ---------------------


def test_generative_operations_are_timed_with_their_error_type() -> None:
    metrics = gateway_metrics()
    record(metrics, context(status=200, elapsed=0.3))
    record(metrics, context(status=429, error=RateLimitError("slow down")))
    record(metrics, context(status=502, error=UpstreamConnectError()))
    record(metrics, context(status=400))  # the upstream's own refusal, relayed
    gone = context(status=200)
    gone.client_disconnected = True
    record(metrics, gone)
    record(metrics, context("/v1/messages"))
    record(metrics, context("/v1/responses"))
    record(metrics, context("/v1/completions", model="qwen"))
    record(metrics, context(EMBEDDINGS, model="qwen"))
    for other in ("/v1/models", "/tokenize", "/v1/audio/transcriptions", None):
        record(metrics, context(other))  # not a generative operation: no gen_ai series
    assert histogram_counts(metrics, OPERATIONS) == {
        gen_ai(error_type=""): 3.0,
        gen_ai(error_type="rate_limit_exceeded"): 1.0,
        gen_ai(error_type="upstream_unreachable"): 1.0,
        gen_ai(error_type="400"): 1.0,
        gen_ai(error_type="499"): 1.0,
        gen_ai("qwen", "text_completion", error_type=""): 1.0,
        gen_ai("qwen", "embeddings", error_type=""): 1.0,
    }
    sums = values(metrics, OPERATIONS, OPERATIONS + "_sum")
    assert sums[gen_ai(error_type="")] == pytest.approx(0.3, abs=0.05)
    assert sum(values(metrics, "bastion_requests").values()) == 13  # every route still counts


def test_an_operation_on_a_model_that_is_not_configured_names_no_model() -> None:
    metrics = gateway_metrics()
    record(metrics, context(model="gpt-4o-mini-from-the-caller", status=404))
    record(metrics, context(model=None, status=401))
    assert histogram_counts(metrics, OPERATIONS) == {
        gen_ai("", error_type="404"): 1.0,
        gen_ai("", error_type="401"): 1.0,
    }


def test_operations_are_counted_before_the_models_are_known() -> None:
    metrics = GatewayMetrics(MetricsSettings())
    record(metrics, context())
    assert histogram_counts(metrics, OPERATIONS) == {gen_ai("", error_type=""): 1.0}


def test_token_usage_is_a_histogram_per_operation_and_type() -> None:
    metrics = gateway_metrics()
    record(metrics, context(usage=(12, 34)))
    record(metrics, context(usage=(3, 5)))
    record(metrics, context(EMBEDDINGS, model="qwen", usage=(100, 0)))  # no output tokens
    fams = families(metrics)
    assert fams[USAGE].type == "histogram"
    assert histogram_counts(metrics, USAGE) == {
        gen_ai(gen_ai_token_type="input"): 2.0,
        gen_ai(gen_ai_token_type="output"): 2.0,
        gen_ai("qwen", "embeddings", gen_ai_token_type="input"): 1.0,
    }
    assert values(metrics, USAGE, USAGE + "_sum") == {
        gen_ai(gen_ai_token_type="input"): 15.0,
        gen_ai(gen_ai_token_type="output"): 39.0,
        gen_ai("qwen", "embeddings", gen_ai_token_type="input"): 100.0,
    }
    output = {
        s.labels["le"]: s.value
        for s in fams[USAGE].samples
        if s.name == USAGE + "_bucket" and s.labels["gen_ai_token_type"] == "output"
    }
    assert (output["4.0"], output["16.0"], output["64.0"], output["+Inf"]) == (0, 1, 2, 2)


def test_no_team_label_on_the_generative_series() -> None:
    metrics = gateway_metrics(team_label=True)
    record(metrics, context(who=identity(0, "red"), usage=(1, 2), sse=True, ttfb=0.1))
    for family in (OPERATIONS, USAGE, TTFT):
        for key in histogram_counts(metrics, family):
            assert "team" not in dict(key)
    assert {dict(k)["team"] for k in values(metrics, "bastion_tokens")} == {"red"}


def test_the_response_model_is_the_name_the_upstreams_know() -> None:
    metrics = GatewayMetrics(MetricsSettings(), provider="llama_cpp")
    metrics.set_models(MODELS, {"llama": "meta-llama/Llama-3.1-8B-Instruct"})
    record(metrics, context(status=200))
    record(metrics, context(model="qwen"))
    (first, second) = histogram_counts(metrics, OPERATIONS)
    assert dict(first) == {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "llama_cpp",
        "gen_ai_request_model": "llama",
        "gen_ai_response_model": "meta-llama/Llama-3.1-8B-Instruct",
        "error_type": "",
    }
    assert dict(second)["gen_ai_response_model"] == "qwen"


def test_bucket_boundaries_are_those_of_the_semantic_conventions() -> None:
    assert REQUEST_DURATION_BUCKETS == (
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    )  # fmt: skip
    assert TTFT_BUCKETS == (
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    )  # fmt: skip
    assert TPOT_BUCKETS == (
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    )  # fmt: skip
    assert TOKEN_BUCKETS == (
        1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216,
        67108864,
    )  # fmt: skip
    metrics = gateway_metrics()
    record(metrics, context(usage=(1, 1), sse=True, ttfb=0.1, elapsed=0.2))
    fams = families(metrics)
    for family, bounds in (
        (OPERATIONS, REQUEST_DURATION_BUCKETS),
        (TTFT, TTFT_BUCKETS),
        (USAGE, TOKEN_BUCKETS),
    ):
        rendered = [s.labels["le"] for s in fams[family].samples if s.name == family + "_bucket"]
        assert rendered[: len(bounds) + 1] == [repr(float(b)) for b in bounds] + ["+Inf"]


# -- the gateway's own state ------------------------------------------------------------------


def test_draining_is_a_gauge_at_0_until_set() -> None:
    metrics = gateway_metrics()
    assert families(metrics)["bastion_draining"].type == "gauge"
    assert values(metrics, "bastion_draining") == {labels(): 0.0}
    metrics.set_draining(True)
    assert values(metrics, "bastion_draining") == {labels(): 1.0}
    metrics.set_draining(False)
    assert values(metrics, "bastion_draining") == {labels(): 0.0}


def test_available_upstreams_per_model_are_read_at_each_scrape() -> None:
    metrics = gateway_metrics()
    assert values(metrics, "bastion_model_upstreams_available") == {}
    counts = {"llama": 2, "qwen": 0}
    metrics.set_models(MODELS, available=lambda: [((m,), n) for m, n in counts.items()])
    assert values(metrics, "bastion_model_upstreams_available") == {
        labels(model="llama"): 2.0,
        labels(model="qwen"): 0.0,
    }
    counts["qwen"] = 1
    assert values(metrics, "bastion_model_upstreams_available")[labels(model="qwen")] == 1.0
    metrics.set_models(["mistral"], available=lambda: [(("mistral",), 3)])  # a reload
    assert values(metrics, "bastion_model_upstreams_available") == {labels(model="mistral"): 3.0}


# -- teams ------------------------------------------------------------------------------------


def test_no_team_label_unless_turned_on() -> None:
    metrics = gateway_metrics()
    record(metrics, context(who=identity(0, "red"), usage=(1, 2)))
    for family in ("bastion_requests", "bastion_tokens"):
        for key in values(metrics, family):
            assert "team" not in dict(key)


def test_team_label_is_bounded_by_max_teams() -> None:
    metrics = gateway_metrics(team_label=True, max_teams=2)
    for who in (
        identity(0, "red", "ops"),  # the first team counts
        identity(1, "blue"),
        identity(2, "green"),  # a third team: over the bound
        identity(0, "red"),
        identity(1, "yellow"),
        None,
        identity(2),  # no team
    ):
        record(metrics, context(who=who, usage=(1, 1)))
    assert values(metrics, "bastion_requests") == {
        labels(route=CHAT, model="llama", code="2xx", team="red"): 2.0,
        labels(route=CHAT, model="llama", code="2xx", team="blue"): 1.0,
        labels(route=CHAT, model="llama", code="2xx", team="other"): 2.0,
        labels(route=CHAT, model="llama", code="2xx", team="-"): 2.0,
    }
    tokens = values(metrics, "bastion_tokens")
    assert tokens[labels(model="llama", type="input", team="red")] == 2.0
    assert tokens[labels(model="llama", type="output", team="other")] == 2.0
    assert tokens[labels(model="llama", type="input", team="-")] == 2.0
    assert {dict(k)["team"] for k in tokens} == {"red", "blue", "other", "-"}


def test_requests_without_a_team_do_not_use_up_the_bound() -> None:
    metrics = gateway_metrics(team_label=True, max_teams=1)
    for _ in range(3):
        record(metrics, context(who=identity(0)))
    record(metrics, context(who=identity(1, "blue")))
    record(metrics, context(who=identity(2, "green")))
    teams = {dict(k)["team"] for k in values(metrics, "bastion_requests")}
    assert teams == {"-", "blue", "other"}


# -- auth and limiter -------------------------------------------------------------------------


def test_auth_failures_and_limiter_decisions_are_counted() -> None:
    metrics = gateway_metrics()
    for reason in ("invalid", "invalid", "missing", "blocked"):
        metrics.auth_failed(reason)
    for decision in ("allowed", "allowed", "allowed", "rate_limited", "quota_exceeded"):
        metrics.limiter_decision(decision)
    assert values(metrics, "bastion_auth_failures") == {
        labels(reason="invalid"): 2.0,
        labels(reason="missing"): 1.0,
        labels(reason="blocked"): 1.0,
    }
    assert values(metrics, "bastion_limiter_decisions") == {
        labels(decision="allowed"): 3.0,
        labels(decision="rate_limited"): 1.0,
        labels(decision="quota_exceeded"): 1.0,
    }


def test_a_fresh_registry_renders_and_parses() -> None:
    fams = families(gateway_metrics())
    assert fams["bastion_requests"].type == "counter"
    assert fams["bastion_tokens"].type == "counter"
    assert fams["bastion_request_duration_seconds"].type == "histogram"
    assert fams["bastion_auth_failures"].samples == []


# -- state read at scrape time ----------------------------------------------------------------


def upstream_set() -> UpstreamSet:
    upstreams = UpstreamSet(EjectionSettings(failures=2, duration=5.0))
    for port in (8001, 8002):
        upstreams.get(
            Origin.from_url(f"http://127.0.0.1:{port}"),
            health_path="/health",
            authorization=b"Bearer upstream-secret",
        )
    return upstreams


def by_upstream(metrics: GatewayMetrics, family: str) -> dict[str, float]:
    return {dict(k)["upstream"]: v for k, v in values(metrics, family).items()}


def test_watch_upstreams_reports_their_state() -> None:
    metrics = gateway_metrics()
    upstreams = upstream_set()
    metrics.watch_upstreams(upstreams)
    good, bad = upstreams.all()
    for _ in range(3):
        good.begin(0.0)
    good.succeeded(0)
    good.retries += 1
    for _ in range(2):
        bad.begin(0.0)
        bad.failed(0.0, 0)
    bad.retries += 2
    bad.check_failed(1)

    a, b = "127.0.0.1:8001", "127.0.0.1:8002"
    assert by_upstream(metrics, "bastion_upstream_healthy") == {a: 1.0, b: 0.0}
    assert by_upstream(metrics, "bastion_upstream_ejected") == {a: 0.0, b: 1.0}
    assert by_upstream(metrics, "bastion_upstream_in_flight") == {a: 2.0, b: 0.0}
    assert by_upstream(metrics, "bastion_upstream_requests") == {a: 3.0, b: 2.0}
    assert by_upstream(metrics, "bastion_upstream_failures") == {a: 0.0, b: 2.0}
    assert by_upstream(metrics, "bastion_upstream_retries") == {a: 1.0, b: 2.0}
    assert by_upstream(metrics, "bastion_upstream_ejections") == {a: 0.0, b: 1.0}
    fams = families(metrics)
    assert fams["bastion_upstream_healthy"].type == "gauge"
    assert fams["bastion_upstream_requests"].type == "counter"


def test_watch_upstreams_reads_the_set_at_each_scrape() -> None:
    metrics = gateway_metrics()
    upstreams = upstream_set()
    metrics.watch_upstreams(upstreams)
    first, second = upstreams.all()
    first.begin(0.0)
    assert by_upstream(metrics, "bastion_upstream_in_flight")["127.0.0.1:8001"] == 1.0
    first.succeeded(0)
    upstreams.retain([second.origin])
    upstreams.get(
        Origin.from_url("http://127.0.0.1:8003"), health_path="/health", authorization=None
    )
    assert by_upstream(metrics, "bastion_upstream_in_flight") == {
        "127.0.0.1:8002": 0.0,
        "127.0.0.1:8003": 0.0,
    }
    text = metrics.render()
    assert b"upstream-secret" not in text


def test_watch_count_reads_a_counter_kept_elsewhere() -> None:
    metrics = gateway_metrics()
    kept = [0]
    metrics.watch_count(
        "bastion_fail_open_total", "Requests let through fail-open.", lambda: kept[0]
    )
    assert values(metrics, "bastion_fail_open") == {labels(): 0.0}
    kept[0] = 7
    assert values(metrics, "bastion_fail_open") == {labels(): 7.0}
    assert families(metrics)["bastion_fail_open"].documentation == "Requests let through fail-open."


# -- no label names a caller ------------------------------------------------------------------


@pytest.mark.parametrize("team_label", [False, True])
def test_no_label_value_is_a_principal_or_a_key_id(team_label: bool) -> None:
    metrics = gateway_metrics(team_label=team_label, max_teams=2)
    metrics.watch_upstreams(upstream_set())
    for n in range(3):
        for who in (identity(n), identity(n, f"team-{n}")):
            record(metrics, context(who=who, usage=(3, 4), sse=True, ttfb=0.1, elapsed=0.3))
            record(metrics, context(EMBEDDINGS, model="qwen", who=who, status=429))
    metrics.auth_failed("invalid")
    metrics.limiter_decision("rate_limited")

    seen: set[str] = set()
    for family in families(metrics).values():
        for sample in family.samples:
            seen.update(sample.labels.values())
    assert seen  # there are labels to look at
    assert not seen & set(PRINCIPALS)
    assert not seen & set(KEY_IDS)
    text = metrics.render().decode()
    for name in (*PRINCIPALS, *KEY_IDS):
        assert name not in text


# -- the separate listener --------------------------------------------------------------------


@pytest.fixture
async def listener() -> AsyncIterator[tuple[MetricsListener, GatewayMetrics]]:
    metrics = gateway_metrics()
    record(metrics, context(usage=(2, 3)))
    server = MetricsListener("127.0.0.1", 0, metrics.render)
    await server.start()
    yield server, metrics
    await server.stop()


async def exchange(port: int, request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Send ``request`` raw, read to the end; (status line, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(WAIT):
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = dict((n.strip().lower(), v.strip()) for n, v in (x.split(b":", 1) for x in lines))
    return status, headers, body


async def test_the_listener_serves_metrics(
    listener: tuple[MetricsListener, GatewayMetrics],
) -> None:
    server, metrics = listener
    assert server.port > 0
    status, headers, body = await exchange(
        server.port, b"GET /metrics HTTP/1.1\r\nHost: scraper\r\n\r\n"
    )
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"content-type"] == CONTENT_TYPE
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"connection"] == b"close"
    assert body == metrics.render()
    parsed = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "bastion_requests" in parsed


async def test_the_listener_renders_at_each_scrape(
    listener: tuple[MetricsListener, GatewayMetrics],
) -> None:
    server, metrics = listener
    metrics.auth_failed("missing")
    _, _, body = await exchange(server.port, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")
    assert b'bastion_auth_failures_total{reason="missing"} 1.0' in body


async def test_the_listener_answers_head_without_a_body(
    listener: tuple[MetricsListener, GatewayMetrics],
) -> None:
    server, metrics = listener
    status, headers, body = await exchange(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == b"HTTP/1.1 200 OK"
    assert body == b""
    assert headers[b"content-length"] == str(len(metrics.render())).encode()


@pytest.mark.parametrize(
    "target", [b"/", b"/metricsx", b"/metrics/", b"/v1/metrics", b"/health", b"/admin/v1"]
)
async def test_the_listener_answers_404_elsewhere(
    listener: tuple[MetricsListener, GatewayMetrics], target: bytes
) -> None:
    server, _ = listener
    status, _, body = await exchange(server.port, b"GET %b HTTP/1.1\r\n\r\n" % target)
    assert status == b"HTTP/1.1 404 Not Found"
    assert b"bastion" not in body


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE"])
async def test_the_listener_answers_405_to_other_methods(
    listener: tuple[MetricsListener, GatewayMetrics], method: bytes
) -> None:
    server, _ = listener
    status, _, body = await exchange(
        server.port, b"%b /metrics HTTP/1.1\r\ncontent-length: 0\r\n\r\n" % method
    )
    assert status == b"HTTP/1.1 405 Method Not Allowed"
    assert b"bastion" not in body


async def test_the_listener_closes_a_head_that_is_too_large(
    listener: tuple[MetricsListener, GatewayMetrics],
) -> None:
    server, _ = listener
    request = b"GET /metrics HTTP/1.1\r\nx-filler: " + b"a" * 10_000 + b"\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        async with asyncio.timeout(WAIT):
            answer = await reader.read()
    except ConnectionResetError:
        answer = b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()
    assert answer == b""


async def test_stop_closes_the_listener() -> None:
    server = MetricsListener("127.0.0.1", 0, lambda: b"")
    await server.start()
    port = server.port
    await server.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    await server.stop()  # idempotent


async def test_a_port_in_use_is_a_configuration_error(
    listener: tuple[MetricsListener, GatewayMetrics],
) -> None:
    server, _ = listener
    clash = MetricsListener("127.0.0.1", server.port, lambda: b"")
    with pytest.raises(ConfigError) as caught:
        await clash.start()
    assert caught.value.key == "metrics.listen"
