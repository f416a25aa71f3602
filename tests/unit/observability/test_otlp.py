"""The hand-written OTLP encoding, decoded by the OpenTelemetry project's protobuf classes."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from bastion.observability import otlp
from tests.support.otlp_receiver import plain

TRACE = bytes(range(16))
SPAN = bytes(range(8))
PARENT = bytes(range(8, 16))


def _decode(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def _span(**given: Any) -> bytes:
    fields: dict[str, Any] = {
        "trace_id": TRACE,
        "span_id": SPAN,
        "parent_id": None,
        "name": "POST /v1/chat/completions",
        "kind": otlp.SERVER,
        "start_ns": 1_700_000_000_123_456_789,
        "end_ns": 1_700_000_001_000_000_000,
        "attributes": b"",
    }
    fields.update(given)
    return otlp.span(**fields)


def test_an_export_request_carries_resource_scope_and_spans() -> None:
    body = otlp.export_request(
        otlp.resource([("service.name", "bastion"), ("replica", 3)]),
        otlp.scope("bastion", "0.1.0"),
        [_span(), _span(span_id=PARENT, name="second")],
    )
    (resource_spans,) = _decode(body).resource_spans
    assert {kv.key: plain(kv.value) for kv in resource_spans.resource.attributes} == {
        "service.name": "bastion",
        "replica": 3,
    }
    (scope_spans,) = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("bastion", "0.1.0")
    assert [s.name for s in scope_spans.spans] == ["POST /v1/chat/completions", "second"]


def test_a_span_keeps_every_field() -> None:
    attributes = b"".join(
        [
            otlp.attributes((("text", "héllo ✓"),)),
            otlp.attributes((("text", "héllo ✓"),)),  # the cached encoding, again
            otlp.attribute("yes", True),
            otlp.attribute("no", False),
            otlp.attribute("count", 300),
            otlp.attribute("negative", -5),
            otlp.attribute("big", 2**62),
            otlp.attribute("ratio", 0.25),
            otlp.attribute("reasons", ("stop", "length")),
            otlp.attribute("empty", ""),
        ]
    )
    events = otlp.event("first", 5) + otlp.event("second", 6, [("n", 1)])
    encoded = _span(
        parent_id=PARENT,
        kind=otlp.CLIENT,
        attributes=attributes,
        events=events,
        status=otlp.STATUS_ERROR,
        status_message="upstream_timeout",
        trace_state="vendor=a1,other=b2",
        remote_parent=True,
    )
    span = Span()
    span.ParseFromString(encoded)
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE, SPAN, PARENT)
    assert span.kind == Span.SPAN_KIND_CLIENT
    assert span.start_time_unix_nano == 1_700_000_000_123_456_789
    assert span.end_time_unix_nano == 1_700_000_001_000_000_000
    assert [(kv.key, plain(kv.value)) for kv in span.attributes] == [
        ("text", "héllo ✓"),
        ("text", "héllo ✓"),
        ("yes", True),
        ("no", False),
        ("count", 300),
        ("negative", -5),
        ("big", 2**62),
        ("ratio", 0.25),
        ("reasons", ("stop", "length")),
        ("empty", ""),
    ]
    assert [(e.name, e.time_unix_nano) for e in span.events] == [("first", 5), ("second", 6)]
    assert plain(span.events[1].attributes[0].value) == 1
    assert span.status.code == Status.STATUS_CODE_ERROR
    assert span.status.message == "upstream_timeout"
    assert span.trace_state == "vendor=a1,other=b2"
    assert span.flags == 0x01 | 0x100 | 0x200  # sampled; parent known to be remote


def test_a_root_span_has_no_parent_and_an_unset_status() -> None:
    span = Span()
    span.ParseFromString(_span())
    assert span.parent_span_id == b""
    assert span.kind == Span.SPAN_KIND_SERVER
    assert not span.HasField("status")
    assert span.flags == 0x01 | 0x100  # sampled; parent known not to be remote


def test_long_values_have_multi_byte_lengths() -> None:
    long = "x" * 70_000
    span = Span()
    span.ParseFromString(_span(name=long, attributes=otlp.attribute("k", long)))
    assert span.name == long and plain(span.attributes[0].value) == long
