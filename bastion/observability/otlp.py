"""OTLP trace data written as protobuf bytes, directly: no message objects.

The OpenTelemetry SDK's encoder builds a message object per span, attribute and value and
costs about 50 µs per span here; writing the wire format straight from plain values costs a
fifth of that, which matters at a high sampling ratio (docs/performance.md, "Tracing cost").
Only what Bastion sends is written: spans with attributes, events and a status, under one
resource and one instrumentation scope (``opentelemetry/proto/trace/v1/trace.proto``).

A span is encoded once, when it is finished; an export request joins encoded spans::

    body = export_request(resource(attrs), scope("bastion", version), [span(...), ...])
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

__all__ = [
    "CLIENT",
    "SERVER",
    "STATUS_ERROR",
    "STATUS_UNSET",
    "AttributeValue",
    "attribute",
    "attributes",
    "event",
    "export_request",
    "resource",
    "scope",
    "span",
]

AttributeValue = str | bool | int | float | tuple[str, ...]

SERVER = 2
CLIENT = 3
"""``Span.SpanKind`` values."""
STATUS_UNSET = 0
STATUS_ERROR = 2
"""``Status.StatusCode`` values."""

_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack
_ATTRIBUTE_CACHE_SIZE = 4096
_attribute_cache: dict[tuple[tuple[str, AttributeValue], ...], bytes] = {}


_ONE_BYTE = [bytes((n,)) for n in range(128)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    n = len(payload)
    return tag + (_ONE_BYTE[n] if n < 0x80 else _varint(n)) + payload


def _any_value(value: AttributeValue) -> bytes:
    """An ``AnyValue`` message."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):  # before int: a bool is an int
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + _double(value)
    return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))


_keys: dict[str, bytes] = {}


def _key_value(key: str, value: AttributeValue) -> bytes:
    """A ``KeyValue`` message."""
    encoded_key = _keys.get(key)
    if encoded_key is None:
        if len(_keys) >= _ATTRIBUTE_CACHE_SIZE:
            _keys.clear()
        encoded_key = _keys[key] = _field(b"\x0a", key.encode())
    return encoded_key + _field(b"\x12", _any_value(value))


def attribute(key: str, value: AttributeValue) -> bytes:
    """One span attribute as it sits in a ``Span`` (field 9)."""
    return _field(b"\x4a", _key_value(key, value))


def attributes(items: tuple[tuple[str, AttributeValue], ...]) -> bytes:
    """Span attributes (field 9) whose values recur (methods, routes, models, statuses):
    the encoding of the whole group is remembered."""
    found = _attribute_cache.get(items)
    if found is None:
        if len(_attribute_cache) >= _ATTRIBUTE_CACHE_SIZE:
            _attribute_cache.clear()
        found = b"".join(_field(b"\x4a", _key_value(k, v)) for k, v in items)
        _attribute_cache[items] = found
    return found


_event_heads: dict[str, tuple[bytes, bytes]] = {}


def event(name: str, time_ns: int, attributes: Sequence[tuple[str, AttributeValue]] = ()) -> bytes:
    """One span event as it sits in a ``Span`` (field 11)."""
    if not attributes:
        known = _event_heads.get(name)
        if known is None:
            encoded = _field(b"\x12", name.encode())
            head = b"\x5a" + _varint(9 + len(encoded)) + b"\x09"
            known = _event_heads[name] = (head, encoded)
        return known[0] + _fixed64(time_ns) + known[1]
    body = b"\x09" + _fixed64(time_ns) + _field(b"\x12", name.encode())
    for key, value in attributes:
        body += _field(b"\x1a", _key_value(key, value))
    return _field(b"\x5a", body)


def span(
    *,
    trace_id: bytes,
    span_id: bytes,
    parent_id: bytes | None,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    attributes: bytes,
    events: bytes = b"",
    status: int = STATUS_UNSET,
    status_message: str = "",
    trace_state: str = "",
    remote_parent: bool = False,
) -> bytes:
    """A ``Span`` message. ``attributes`` and ``events`` are joined outputs of
    :func:`attribute` and :func:`event`; the span is recorded (sampled flag set)."""
    out = b"\x0a\x10" + trace_id + b"\x12\x08" + span_id
    if trace_state:
        out += _field(b"\x1a", trace_state.encode())
    if parent_id is not None:
        out += b"\x22\x08" + parent_id
    out += _field(b"\x2a", name.encode()) + b"\x30" + _varint(kind)
    out += b"\x39" + _fixed64(start_ns) + b"\x41" + _fixed64(end_ns) + attributes + events
    if status != STATUS_UNSET:
        detail = _field(b"\x12", status_message.encode()) if status_message else b""
        out += _field(b"\x7a", detail + b"\x18" + _varint(status))
    flags = 0x01 | _FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if remote_parent else 0)
    return out + b"\x85\x01" + _fixed32(flags)  # field 16, fixed32


def resource(attributes: Iterable[tuple[str, AttributeValue]]) -> bytes:
    """A ``Resource`` message."""
    return b"".join(_field(b"\x0a", _key_value(k, v)) for k, v in attributes)


def scope(name: str, version: str) -> bytes:
    """An ``InstrumentationScope`` message."""
    return _field(b"\x0a", name.encode()) + _field(b"\x12", version.encode())


def export_request(resource: bytes, scope: bytes, spans: Iterable[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest``: ``spans`` (encoded by :func:`span`) under one
    resource and one scope."""
    scope_spans = _field(b"\x0a", scope) + b"".join(_field(b"\x12", s) for s in spans)
    resource_spans = _field(b"\x0a", resource) + _field(b"\x12", scope_spans)
    return _field(b"\x0a", resource_spans)
