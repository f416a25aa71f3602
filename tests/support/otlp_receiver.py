"""An OTLP/HTTP traces receiver for tests: a real HTTP server on 127.0.0.1, port 0, in a thread.

It decodes every export with the OpenTelemetry project's own protobuf classes
(``opentelemetry-proto``), as a collector would, and keeps the spans in a plain form.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def plain(value: AnyValue) -> Any:
    """An ``AnyValue`` as the Python value it holds."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(plain(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    status_code: int
    status_message: str
    flags: int
    trace_state: str
    resource: dict[str, Any]
    scope: str

    @property
    def event_names(self) -> list[str]:
        return [name for name, _, _ in self.events]


@dataclass
class OtlpReceiver:
    status: int = 200
    """What every export is answered with."""
    unavailable: int = 0
    """How many of the next exports are answered 503 (then ``status`` again)."""
    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: list[dict[str, str]] = field(default_factory=list)
    """The headers of every export received."""
    bodies: list[bytes] = field(default_factory=list)
    """Every export's body as received (compressed if it was)."""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                status = receiver._received(self.path, dict(self.headers.items()), body)
                answer = ExportTraceServiceResponse().SerializeToString() if status == 200 else b""
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()
            self.exports.clear()
            self.bodies.clear()
        self.status = 200
        self.unavailable = 0

    def _received(self, path: str, headers: dict[str, str], body: bytes) -> int:
        """Record an export; the status to answer it with."""
        with self._lock:
            self.exports.append({"path": path, **{k.lower(): v for k, v in headers.items()}})
            self.bodies.append(body)
            status = self.status
            if self.unavailable > 0:
                self.unavailable -= 1
                status = 503
        if status != 200:
            return status
        if headers.get("Content-Encoding", headers.get("content-encoding")) == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: plain(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={kv.key: plain(kv.value) for kv in span.attributes},
                            events=[
                                (
                                    e.name,
                                    e.time_unix_nano,
                                    {a.key: plain(a.value) for a in e.attributes},
                                )
                                for e in span.events
                            ],
                            status_code=span.status.code,
                            status_message=span.status.message,
                            flags=span.flags,
                            trace_state=span.trace_state,
                            resource=resource,
                            scope=scope_spans.scope.name,
                        )
                    )
        with self._lock:
            self.spans.extend(found)
        return 200

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """The spans received, once ``predicate`` holds for them (polled)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans never matched; received {len(spans)}: {spans}")
            time.sleep(0.02)

    def trace(self, trace_id: str, count: int = 2, timeout: float = 10.0) -> list[ReceivedSpan]:
        """The spans of one trace, once at least ``count`` arrived."""
        spans = self.wait_for(
            lambda s: sum(1 for x in s if x.trace_id == trace_id) >= count, timeout
        )
        return [s for s in spans if s.trace_id == trace_id]
