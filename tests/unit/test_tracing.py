"""The tracer's decisions: trace context parsing, head sampling, trust, tail sampling."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bastion.errors import ConfigError, UpstreamConnectError
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import DEFAULT_ENDPOINTS
from bastion.pipeline.forward import request_headers
from bastion.pipeline.trace import Trace, parse_traceparent
from bastion.pipeline.tracing import Tracer
from bastion.settings import EjectionSettings, TracingSettings, parse_settings
from bastion.upstream.balancer import Upstream
from bastion.upstream.origin import Origin
from tests.support.asgi import post_scope

CHAT = next(e for e in DEFAULT_ENDPOINTS if e.path == "/v1/chat/completions")
PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Collected:
    def __init__(self) -> None:
        self.spans: list[list[bytes]] = []

    def add(self, spans: list[bytes]) -> None:
        self.spans.append(spans)


def _tracer(**settings: Any) -> tuple[Tracer, Collected]:
    collected = Collected()
    return Tracer(TracingSettings(enabled=True, **settings), collected), collected  # type: ignore[arg-type]


def _ctx(*headers: tuple[bytes, bytes], client: str = "127.0.0.1") -> RequestContext:
    scope = post_scope("/v1/chat/completions", "k", *headers)
    scope["client"] = (client, 1)

    async def nothing(*_: Any) -> Any:
        raise AssertionError

    ctx = RequestContext(scope, nothing, nothing)
    ctx.endpoint = CHAT
    return ctx


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (PARENT, (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)),
        (b" " + PARENT + b" ", (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)),
        (PARENT[:-2] + b"00", (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 0)),
        (b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01", None),  # all-zero trace id
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-" + b"0" * 16 + b"-01", None),
        (PARENT.upper(), None),  # upper-case hex is invalid
        (b"ff" + PARENT[2:], None),  # version ff is forbidden
        (b"01" + PARENT[2:], None),  # a later version: not understood here
        (PARENT + b"-extra", None),
        (b"garbage", None),
    ],
)
def test_traceparent_parsing(value: bytes, parsed: tuple[int, int, int] | None) -> None:
    assert parse_traceparent(value) == parsed


def test_the_ratio_decides_on_the_trace_id_as_opentelemetry_does() -> None:
    tracer, _ = _tracer(sample_ratio=0.25)
    sampled = 0
    for _ in range(4000):
        ctx = _ctx()
        tracer.start(ctx)
        assert ctx.trace is not None
        assert ctx.trace.sampled == ((ctx.trace.trace_id & (2**64 - 1)) < 2**62)
        sampled += ctx.trace.sampled
    assert 800 < sampled < 1200


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_the_ratio_bounds(ratio: float) -> None:
    tracer, _ = _tracer(sample_ratio=ratio)
    decisions = set()
    for _ in range(200):
        ctx = _ctx()
        tracer.start(ctx)
        assert ctx.trace is not None
        decisions.add(ctx.trace.sampled)
    assert decisions == {bool(ratio)}


def test_an_untrusted_context_is_ignored() -> None:
    tracer, _ = _tracer(sample_ratio=0.0, trusted_networks=("10.0.0.0/8",))
    ctx = _ctx((b"traceparent", PARENT), (b"tracestate", b"a=1"), client="192.0.2.1")
    tracer.start(ctx)
    assert ctx.trace is not None
    assert ctx.trace.trace_id != 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert ctx.trace.parent_id is None and ctx.trace.tracestate is None
    assert not ctx.trace.sampled


def test_a_trusted_network_continues_the_callers_trace() -> None:
    tracer, _ = _tracer(sample_ratio=0.0, trusted_networks=("10.0.0.0/8",))
    ctx = _ctx((b"traceparent", PARENT), (b"tracestate", b"a=1"), client="10.1.2.3")
    tracer.start(ctx)
    trace = ctx.trace
    assert trace is not None
    assert (trace.trace_id, trace.parent_id) == (
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0xF067AA0BA902B7,
    )
    assert trace.tracestate == b"a=1" and trace.sampled  # the caller's flag decides


def test_without_parent_based_the_ratio_decides_even_for_a_trusted_caller() -> None:
    tracer, _ = _tracer(sample_ratio=0.0, trust_incoming=True, parent_based=False)
    ctx = _ctx((b"traceparent", PARENT))
    tracer.start(ctx)
    assert ctx.trace is not None and ctx.trace.parent_id == 0xF067AA0BA902B7
    assert not ctx.trace.sampled


def test_two_traceparents_are_not_believed() -> None:
    tracer, _ = _tracer(trust_incoming=True)
    ctx = _ctx((b"traceparent", PARENT), (b"traceparent", PARENT))
    tracer.start(ctx)
    assert ctx.trace is not None and ctx.trace.parent_id is None


def test_an_oversized_tracestate_is_dropped_but_the_parent_kept() -> None:
    tracer, _ = _tracer(trust_incoming=True)
    ctx = _ctx((b"traceparent", PARENT), (b"tracestate", b"a=" + b"x" * 600))
    tracer.start(ctx)
    assert ctx.trace is not None and ctx.trace.parent_id is not None
    assert ctx.trace.tracestate is None


def test_the_upstream_gets_the_gateways_context_instead_of_the_callers() -> None:
    trace = Trace(0xABC, None, b"vendor=1", True)
    upstream = Upstream(Origin.from_url("http://127.0.0.1:8001"), EjectionSettings())
    context = trace.attempt(upstream, "m")
    caller = [(b"traceparent", PARENT), (b"tracestate", b"evil=1"), (b"accept", b"*/*")]
    headers = request_headers(caller, "rid", None, context)
    span = trace.attempts[0].span_id
    assert headers == [
        (b"accept", b"*/*"),
        (b"x-request-id", b"rid"),
        (b"traceparent", f"00-{0xABC:032x}-{span:016x}-01".encode()),
        (b"tracestate", b"vendor=1"),
    ]
    assert request_headers(caller, None, None) == caller  # tracing off: untouched


def test_the_answer_is_read_for_model_and_reasons_only() -> None:
    trace = Trace(1, None, None, True, reads_answer=True)
    trace.read_answer(
        b'{"model":"m-1","choices":[{"message":{"content":"\\"model\\": \\"leak\\", '
        b'\\"finish_reason\\": \\"leak\\""},"finish_reason":"stop"},'
        b'{"finish_reason":"length"},{"finish_reason":"stop"}]}'
    )
    assert trace.response_model == "m-1"
    assert trace.finish_reasons == ["stop", "length"]


def _finish(tracer: Tracer, ctx: RequestContext, status: int, elapsed: float = 0.01) -> None:
    ctx.status = status
    tracer.finish(ctx, status, elapsed)


def test_failures_are_kept_at_the_error_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer, collected = _tracer(sample_ratio=0.0, error_ratio=0.3)
    draws = iter([0.29, 0.31])
    monkeypatch.setattr(random, "random", lambda: next(draws))
    for _ in range(2):
        ctx = _ctx()
        tracer.start(ctx)
        ctx.error = UpstreamConnectError()
        _finish(tracer, ctx, 502)
    assert len(collected.spans) == 1  # the first draw only


def test_refusals_and_successes_are_not_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer, collected = _tracer(sample_ratio=0.0, error_ratio=1.0)
    monkeypatch.setattr(random, "random", lambda: 0.0)
    for status in (200, 401, 429, 499):
        ctx = _ctx()
        tracer.start(ctx)
        _finish(tracer, ctx, status)
    assert collected.spans == []


def test_slow_requests_are_kept_at_the_slow_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer, collected = _tracer(sample_ratio=0.0, slow_threshold=1.0, slow_ratio=0.5)
    monkeypatch.setattr(random, "random", lambda: 0.4)
    ctx = _ctx()
    tracer.start(ctx)
    ctx.time_to_first_byte = 0.5  # a stream that began fast and then ran long: not slow
    _finish(tracer, ctx, 200, elapsed=30.0)
    assert collected.spans == []
    ctx = _ctx()
    tracer.start(ctx)
    ctx.time_to_first_byte = 1.5
    _finish(tracer, ctx, 200, elapsed=30.0)
    assert len(collected.spans) == 1
    monkeypatch.setattr(random, "random", lambda: 0.6)
    ctx = _ctx()
    tracer.start(ctx)
    _finish(tracer, ctx, 200, elapsed=2.0)
    assert len(collected.spans) == 1


@pytest.mark.parametrize(
    ("tracing", "message"),
    [
        ({"trusted_networks": ["10.0.0.0/33"]}, "is not a network"),
        ({"headers": {"bad header": {"value": "x"}}}, "is not a header name"),
        ({"endpoint": "ftp://collector"}, "http:// or https://"),
        ({"sample_ratio": 1.5}, "less than or equal to 1"),
        ({"exporter": "grpc"}, "unknown setting"),
    ],
)
def test_tracing_settings_are_checked(tracing: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"tracing": {"enabled": True, **tracing}})
    assert message in str(caught.value)
