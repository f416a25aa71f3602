"""Traces of real requests through a real ``bastion serve``, received by an OTLP/HTTP receiver
that decodes them with the OpenTelemetry project's protobuf classes.

The fake upstream records the ``traceparent`` it receives, so each test can check that the
upstream joins the gateway's trace: same trace id, and the gateway's CLIENT span as parent.
"""

from __future__ import annotations

import secrets
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.integration.conftest import closed_port
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan

SERVER, CLIENT = 2, 3
STATUS_ERROR = 2
COLLECTOR_TOKEN = "collector-token-" + secrets.token_hex(8)
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver().start()
    yield found
    found.stop()


@pytest.fixture(autouse=True)
def _fresh_receiver(request: pytest.FixtureRequest) -> None:
    if "receiver" in request.fixturenames:
        request.getfixturevalue("receiver").clear()


@pytest.fixture(scope="module")
def busy() -> Iterator[FakeUpstream]:
    """An upstream that answers 503 to every request (its health check passes)."""
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def _tracing_config(
    upstream: FakeUpstream, keys: Keys, receiver: OtlpReceiver, **tracing: Any
) -> dict[str, Any]:
    client = {"retries": 1, "connect_timeout": 1.0, "health": {"enabled": False}}
    config = base_config(upstream.url, keys, upstream=client)
    config["models"] += [
        {"name": "down-model", "upstreams": [{"url": f"http://127.0.0.1:{closed_port()}"}]},
    ]
    config["tracing"] = {
        "enabled": True,
        "endpoint": receiver.url,
        "export_interval": 0.05,
        **tracing,
    }
    return config


@pytest.fixture(scope="module")
def traced(
    upstream: FakeUpstream,
    busy: FakeUpstream,
    keys: Keys,
    receiver: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """Every request sampled; the caller's trace context is not trusted."""
    config = _tracing_config(
        upstream,
        keys,
        receiver,
        headers={"authorization": {"value": f"Bearer {COLLECTOR_TOKEN}"}},
        resource_attributes={"deployment.environment.name": "test"},
    )
    config["models"].append(
        {"name": "two-upstreams", "upstreams": [{"url": busy.url}, {"url": upstream.url}]}
    )
    with running_gateway(config, tmp_path_factory.mktemp("traced")) as process:
        yield process


@pytest.fixture(scope="module")
def tail_only(
    upstream: FakeUpstream,
    keys: Keys,
    receiver: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """Nothing sampled at the start; failures and slow requests kept at their end; trusts
    every caller's trace context; exports compressed."""
    config = _tracing_config(
        upstream,
        keys,
        receiver,
        sample_ratio=0.0,
        slow_threshold=0.4,
        trust_incoming=True,
        compression="gzip",
        record_principal=True,
    )
    with running_gateway(config, tmp_path_factory.mktemp("tail")) as process:
        yield process


def _chat(gateway: GatewayProcess, key: str, content: str = "Hi", **extra: Any) -> Any:
    return openai_client(gateway.url, key).chat.completions.create(
        model=extra.pop("model", "test-model"),
        messages=[{"role": "user", "content": content}],
        **extra,
    )


def _received_traceparent(upstream: FakeUpstream) -> tuple[str, str, str]:
    """(trace id, parent span id, flags) of the last traceparent the upstream received."""
    version, trace_id, parent, flags = upstream.seen[-1].headers["traceparent"].split("-")
    assert version == "00"
    return trace_id, parent, flags


def _one(spans: list[ReceivedSpan], kind: int) -> ReceivedSpan:
    found = [s for s in spans if s.kind == kind]
    assert len(found) == 1, spans
    return found[0]


def test_a_request_is_one_trace_that_the_upstream_joins(
    traced: GatewayProcess, upstream: FakeUpstream, keys: Keys, receiver: OtlpReceiver
) -> None:
    reply = _chat(traced, keys.user)
    assert reply.choices[0].message.content == "Hello from upstream"
    trace_id, parent, flags = _received_traceparent(upstream)
    assert flags == "01"
    spans = receiver.trace(trace_id)
    server, client = _one(spans, SERVER), _one(spans, CLIENT)
    assert client.span_id == parent  # the upstream's parent is the gateway's CLIENT span
    assert client.parent_id == server.span_id
    assert server.parent_id == ""  # a root: the caller's context is not trusted here
    assert server.name == "POST /v1/chat/completions"
    assert client.name == "chat test-model"
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    assert server.attributes == server.attributes | {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
        "url.scheme": "http",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "test-model",
        "gen_ai.response.model": "test-model",
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.finish_reasons": ("stop",),
        "client.address": "127.0.0.1",
    }
    assert len(server.attributes["bastion.request_id"]) == 32
    assert "enduser.id" not in server.attributes  # not configured
    assert "error.type" not in server.attributes and server.status_code == 0
    host, port = upstream.url.removeprefix("http://").split(":")
    assert client.attributes == client.attributes | {
        "http.request.method": "POST",
        "server.address": host,
        "server.port": int(port),
        "url.full": f"{upstream.url}/v1/chat/completions",
        "http.response.status_code": 200,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "test-model",
    }
    events = server.event_names
    assert events[:3] == ["bastion.authenticated", "bastion.authorized", "bastion.admitted"]
    assert "bastion.first_byte" in events
    times = [t for _, t, _ in server.events]
    assert times == sorted(times) and server.start_ns <= times[0] and times[-1] <= server.end_ns
    assert server.resource["service.name"] == "bastion"
    assert server.resource["deployment.environment.name"] == "test"
    assert server.scope == "bastion"
    assert server.flags & 0xFF == 1 and client.flags & 0xFF == 1
    export = receiver.exports[-1]
    assert export["path"] == "/v1/traces"
    assert export["content-type"] == "application/x-protobuf"
    assert export["authorization"] == f"Bearer {COLLECTOR_TOKEN}"
    assert COLLECTOR_TOKEN not in traced.logs


def test_a_stream_ends_its_span_with_the_stream(
    traced: GatewayProcess, upstream: FakeUpstream, keys: Keys, receiver: OtlpReceiver
) -> None:
    upstream.behaviour.gap = 0.05
    chunks = list(_chat(traced, keys.user, stream=True))
    assert len(chunks) == 3
    trace_id, parent, _ = _received_traceparent(upstream)
    spans = receiver.trace(trace_id)
    server, client = _one(spans, SERVER), _one(spans, CLIENT)
    assert client.span_id == parent
    assert server.event_names[-2:] == ["bastion.first_byte", "bastion.stream_end"]
    first = dict((n, t) for n, t, _ in server.events)["bastion.first_byte"]
    assert server.end_ns - first >= 0.1e9  # two gaps of 50 ms after the first event
    assert server.attributes["gen_ai.usage.output_tokens"] == 3
    assert server.attributes["gen_ai.response.model"] == "test-model"
    assert client.end_ns > first


def test_a_retry_is_a_second_client_span(
    traced: GatewayProcess,
    upstream: FakeUpstream,
    busy: FakeUpstream,
    keys: Keys,
    receiver: OtlpReceiver,
) -> None:
    busy.behaviour.status = 503
    for _ in range(2):  # ties are broken in turn: one of two starts on the busy upstream
        _chat(traced, keys.user, model="two-upstreams")
    assert busy.seen, "the busy upstream was never tried"
    trace_id, busy_parent, _ = _received_traceparent(busy)
    retried = [s for s in upstream.seen if s.headers["traceparent"].split("-")[1] == trace_id]
    assert len(retried) == 1  # the same trace went on to the other upstream
    parent = retried[0].headers["traceparent"].split("-")[2]
    spans = receiver.trace(trace_id, count=3)
    server = _one(spans, SERVER)
    first, second = sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.start_ns)
    assert (first.span_id, second.span_id) == (busy_parent, parent)
    assert first.parent_id == second.parent_id == server.span_id
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503" and first.status_code == STATUS_ERROR
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    assert first.end_ns <= second.start_ns
    assert server.attributes["http.response.status_code"] == 200 and server.status_code == 0


def test_an_unreachable_upstream_is_an_error_span(
    traced: GatewayProcess, keys: Keys, receiver: OtlpReceiver
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(traced, keys.user, model="down-model")
    assert caught.value.status_code == 502
    spans = receiver.wait_for(lambda s: any(x.kind == CLIENT for x in s))
    server, client = _one(spans, SERVER), _one(spans, CLIENT)
    assert server.status_code == client.status_code == STATUS_ERROR
    assert server.attributes["error.type"] == client.attributes["error.type"]
    assert server.attributes["error.type"] == "upstream_unreachable"
    assert server.attributes["http.response.status_code"] == 502
    assert "http.response.status_code" not in client.attributes


def test_an_untrusted_callers_trace_context_is_replaced(
    traced: GatewayProcess, upstream: FakeUpstream, keys: Keys, receiver: OtlpReceiver
) -> None:
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "caller=1"}
    _chat(traced, keys.user, extra_headers=headers)
    trace_id, _, _ = _received_traceparent(upstream)
    assert trace_id != CALLER_TRACE
    assert "tracestate" not in upstream.seen[-1].headers
    server = _one(receiver.trace(trace_id), SERVER)
    assert server.parent_id == "" and server.trace_state == ""


def test_refusals_are_traced_without_the_credential(
    traced: GatewayProcess, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    wrong = "bst_" + "x" * 38
    with pytest.raises(openai.AuthenticationError):
        _chat(traced, wrong)
    spans = receiver.wait_for(lambda s: len(s) >= 1)
    server = _one(spans, SERVER)
    assert server.attributes["http.response.status_code"] == 401
    assert server.attributes["bastion.refusal"] == "invalid_api_key"
    assert server.status_code == 0 and "error.type" not in server.attributes
    assert not upstream.seen
    assert all(wrong.encode() not in body for body in receiver.bodies)


def test_no_prompt_or_completion_text_is_exported(
    traced: GatewayProcess, upstream: FakeUpstream, keys: Keys, receiver: OtlpReceiver
) -> None:
    secret = "prompt-" + secrets.token_hex(12)
    _chat(traced, keys.user, content=secret)
    _chat(traced, keys.user, content=secret, stream=True)
    completion = openai_client(traced.url, keys.user).completions.create(
        model="test-model", prompt=secret, stream=True
    )
    assert [c.choices[0].text for c in completion] == ["tok0 ", "tok1 ", "tok2 "]
    receiver.wait_for(lambda s: sum(x.kind == SERVER for x in s) >= 3)
    for body in receiver.bodies:
        for text in (secret, "Hello from upstream", "tok0", keys.user):
            assert text.encode() not in body


def test_nothing_is_exported_for_requests_not_sampled(
    tail_only: GatewayProcess, upstream: FakeUpstream, keys: Keys, receiver: OtlpReceiver
) -> None:
    for _ in range(5):
        _chat(tail_only, keys.user)
    unsampled = [s.headers["traceparent"] for s in upstream.seen]
    assert len(unsampled) == 5 and all(v.endswith("-00") for v in unsampled)
    assert len({v.split("-")[1] for v in unsampled}) == 5  # a trace per request
    with pytest.raises(openai.APIStatusError):  # a failure: kept at error_ratio 1
        _chat(tail_only, keys.user, model="down-model")
    spans = receiver.wait_for(lambda s: len(s) >= 2)
    server = _one(spans, SERVER)
    assert server.attributes["error.type"] == "upstream_unreachable"
    assert server.attributes["enduser.id"] == "alice"  # record_principal
    # the five earlier requests were queued before the failure: none of them was exported
    assert {s.trace_id for s in spans} == {server.trace_id}
    assert receiver.exports[-1]["content-encoding"] == "gzip"


def test_a_cut_stream_is_kept_as_an_error(
    tail_only: GatewayProcess, upstream: FakeUpstream, keys: Keys, receiver: OtlpReceiver
) -> None:
    upstream.behaviour.cut_after = 1
    with pytest.raises(openai.APIError):
        list(_chat(tail_only, keys.user, stream=True))
    trace_id, parent, flags = _received_traceparent(upstream)
    assert flags == "00"
    spans = receiver.trace(trace_id)
    server, client = _one(spans, SERVER), _one(spans, CLIENT)
    assert client.span_id == parent
    assert server.attributes["http.response.status_code"] == 200  # already sent
    assert server.status_code == client.status_code == STATUS_ERROR
    assert server.attributes["error.type"] == client.attributes["error.type"]
    assert "bastion.stream_end" not in server.event_names


def test_a_slow_request_is_kept(
    tail_only: GatewayProcess, upstream: FakeUpstream, keys: Keys, receiver: OtlpReceiver
) -> None:
    _chat(tail_only, keys.user)
    upstream.behaviour.delay = 0.5
    _chat(tail_only, keys.user)
    trace_id, _, flags = _received_traceparent(upstream)
    assert flags == "00"
    spans = receiver.trace(trace_id)
    server = _one(spans, SERVER)
    assert server.end_ns - server.start_ns >= 0.5e9
    assert server.status_code == 0
    assert {s.trace_id for s in receiver.spans} == {trace_id}  # not the fast one


def test_a_trusted_callers_sampled_context_is_continued(
    tail_only: GatewayProcess, upstream: FakeUpstream, keys: Keys, receiver: OtlpReceiver
) -> None:
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=a1"}
    _chat(tail_only, keys.user, extra_headers=headers)
    trace_id, parent, flags = _received_traceparent(upstream)
    assert (trace_id, flags) == (CALLER_TRACE, "01")
    assert upstream.seen[-1].headers["tracestate"] == "vendor=a1"
    spans = receiver.trace(CALLER_TRACE)
    server, client = _one(spans, SERVER), _one(spans, CLIENT)
    assert server.parent_id == CALLER_SPAN
    assert server.flags & 0x300 == 0x300  # its parent is remote
    assert server.trace_state == "vendor=a1"
    assert client.span_id == parent and client.parent_id == server.span_id


def test_a_trusted_callers_unsampled_context_is_not_exported(
    tail_only: GatewayProcess, upstream: FakeUpstream, keys: Keys, receiver: OtlpReceiver
) -> None:
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}
    _chat(tail_only, keys.user, extra_headers=headers)
    assert _received_traceparent(upstream)[::2] == (CALLER_TRACE, "00")
    with pytest.raises(openai.APIStatusError):  # then a failure, which is exported
        _chat(tail_only, keys.user, model="down-model")
    spans = receiver.wait_for(lambda s: len(s) >= 2)
    assert CALLER_TRACE not in {s.trace_id for s in spans}


def test_with_tracing_off_the_callers_trace_context_passes_through(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "caller=1"}
    _chat(gateway, keys.user, extra_headers=headers)
    seen = upstream.seen[-1].headers
    assert seen["traceparent"] == headers["traceparent"]
    assert seen["tracestate"] == "caller=1"


def test_export_failures_are_counted_and_logged_without_secrets(
    traced: GatewayProcess, keys: Keys, receiver: OtlpReceiver
) -> None:
    receiver.status = 400  # refused: not retried
    _chat(traced, keys.user)
    traced.wait_for_log("trace export to 127.0.0.1 failed (HTTP 400)")
    request = urllib.request.Request(
        traced.url + "/bastion/metrics", headers={"authorization": f"Bearer {keys.admin}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        metrics = answer.read().decode()
    dropped = [
        line
        for line in metrics.splitlines()
        if line.startswith("bastion_trace_spans_dropped_total")
    ]
    assert dropped and float(dropped[0].split()[-1]) >= 2
    assert COLLECTOR_TOKEN not in traced.logs
