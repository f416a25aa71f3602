"""Each request's trace: decided when it starts, built only when it ends and is kept.

A traced request gets a :class:`Trace` on its context: its ids, the sampling decision and a
few clock readings (when authentication, authorization and admission ended; each upstream
attempt). No OpenTelemetry object exists while it runs. When it ends (``account``), it is
kept if it was sampled, or, at ``error_ratio``, if it failed, or, at ``slow_ratio``, if it
was slow; only then are its spans encoded (:mod:`bastion.observability.otlp`) and queued for
export (:mod:`bastion.observability.traces`). A request not kept costs its ids, the clock
readings and the upstream's ``traceparent`` header.

Spans: the gateway's ``SERVER`` span (``POST /v1/chat/completions``) with events
``bastion.authenticated``, ``bastion.authorized``, ``bastion.admitted``,
``bastion.first_byte`` and, for a stream relayed to its end, ``bastion.stream_end``; under
it one ``CLIENT`` span per upstream attempt (``chat gemma-3-270m``), whose id is the parent
id the upstream receives in ``traceparent``, so a model server that traces (vLLM with
``--otlp-traces-endpoint``) joins the trace. The upstream is told the head decision
(``-01`` or ``-00``): a request kept at its end for an error or its slowness has the
gateway's spans only.

The caller's ``traceparent`` and ``tracestate`` are continued only when trusted
(``tracing.trust_incoming``, ``tracing.trusted_networks``); otherwise they are replaced, not
forwarded. Prompts and completions are never recorded: the only values read from an answer
are its model name and finish reasons, as JSON string values of those keys.
"""

from __future__ import annotations

import random
import time

from bastion.errors import UpstreamError
from bastion.observability import otlp
from bastion.observability.otlp import AttributeValue
from bastion.observability.traces import TraceExporter
from bastion.pipeline.context import RequestContext
from bastion.pipeline.trace import Attempt, Trace, error_type, parse_traceparent
from bastion.policy.networks import NetworkList, client_address
from bastion.settings import TracingSettings

__all__ = ["Tracer"]

_ID_MASK = (1 << 64) - 1
_MAX_TRACESTATE = 512
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}
"""``gen_ai.operation.name`` of the endpoints that are generative AI operations."""
_ANSWER_READ = frozenset({"chat", "text_completion"})


class Tracer:
    """Starts each request's :class:`Trace` and, when the request ends, keeps or forgets it."""

    def __init__(self, settings: TracingSettings, exporter: TraceExporter) -> None:
        self._exporter = exporter
        self._bound = round(settings.sample_ratio * (1 << 64))
        self._parent_based = settings.parent_based
        self._error_ratio = settings.error_ratio
        self._slow = settings.slow_threshold
        self._slow_ratio = settings.slow_ratio
        self._trust_all = settings.trust_incoming
        self._trusted = NetworkList(settings.trusted_networks, "tracing.trusted_networks")
        self._may_continue = self._trust_all or bool(self._trusted)
        self._principal = settings.record_principal
        self._teams = settings.record_teams

    def start(self, ctx: RequestContext) -> None:
        """Decide whether the request is sampled and give it its trace."""
        incoming = self._incoming(ctx) if self._may_continue else None
        if incoming is None:
            trace_id = random.getrandbits(128) or 1
            parent_id, tracestate = None, None
            sampled = (trace_id & _ID_MASK) < self._bound
        else:
            trace_id, parent_id, flags, tracestate = incoming
            parent_decides = self._parent_based
            sampled = bool(flags & 1) if parent_decides else (trace_id & _ID_MASK) < self._bound
        endpoint = ctx.endpoint
        reads = sampled and endpoint is not None and _OPERATIONS.get(endpoint.path) in _ANSWER_READ
        ctx.trace = Trace(trace_id, parent_id, tracestate, sampled, reads)

    def _incoming(self, ctx: RequestContext) -> tuple[int, int, int, bytes | None] | None:
        """The caller's trace context, when it is to be believed."""
        if not self._trust_all:
            client = ctx.scope.get("client")
            peer = client_address(str(client[0]) if client else None, None, self._trusted)
            if peer not in self._trusted:
                return None
        parent = None
        states: list[bytes] = []
        for name, value in ctx.scope["headers"]:
            if name == b"traceparent":
                if parent is not None:
                    return None  # two of them: neither is believed
                parent = parse_traceparent(value)
            elif name == b"tracestate":
                states.append(value)
        if parent is None:
            return None
        tracestate = b",".join(states)
        if not tracestate or len(tracestate) > _MAX_TRACESTATE or not tracestate.isascii():
            return (*parent, None)
        return (*parent, tracestate)

    def finish(self, ctx: RequestContext, status: int, elapsed: float) -> None:
        """The request ended with ``status`` after ``elapsed`` seconds: export its spans if
        it is kept."""
        trace = ctx.trace
        assert trace is not None
        failed = _failure(ctx, status)
        if not trace.sampled:
            # random, not secret: a sampling draw (as the ids, which OpenTelemetry's SDK
            # also draws from this generator)
            if failed is not None:
                kept = random.random() < self._error_ratio  # noqa: S311
            else:
                slow = self._slow
                took = ctx.time_to_first_byte if ctx.time_to_first_byte is not None else elapsed
                kept = slow is not None and took >= slow and random.random() < self._slow_ratio  # noqa: S311
            if not kept:
                return
        spans = _SpanWriter(ctx, trace, status, elapsed, failed)
        self._exporter.add(spans.write(self._principal, self._teams))


def _failure(ctx: RequestContext, status: int) -> str | None:
    """Why the request failed (``error.type``), or None: a 5xx, or an upstream that broke off
    a response already begun. A refusal (4xx) is the caller's fault, not a failure."""
    error = ctx.error
    if status >= 500:
        return error_type(error) if error is not None else str(status)
    if isinstance(error, UpstreamError) and ctx.response_started:
        return error_type(error)
    return None


class _SpanWriter:
    """Encodes one kept request's spans."""

    def __init__(
        self,
        ctx: RequestContext,
        trace: Trace,
        status: int,
        elapsed: float,
        failed: str | None,
    ) -> None:
        self.ctx = ctx
        self.trace = trace
        self.status = status
        self.failed = failed
        self.started = ctx.started
        # the wall clock at the request's start, from one reading of each clock now (the
        # times taken while it ran are perf_counter readings)
        self.base_ns = time.time_ns() - int((time.perf_counter() - ctx.started) * 1e9)
        self.end_ns = self.base_ns + int(elapsed * 1e9)
        self.trace_id = trace.trace_id.to_bytes(16, "big")
        endpoint = ctx.endpoint
        self.route = endpoint.path if endpoint is not None else ""
        self.operation = _OPERATIONS.get(self.route)

    def _ns(self, at: float) -> int:
        return self.base_ns + int((at - self.started) * 1e9)

    def write(self, principal: bool, teams: bool) -> list[bytes]:
        gen_ai = self._gen_ai()
        spans = [self._server(principal, teams, gen_ai)]
        attempts = self.trace.attempts
        for index, attempt in enumerate(attempts):
            last = index == len(attempts) - 1
            spans.append(self._client(attempt, index, gen_ai if last else b""))
        return spans

    def _gen_ai(self) -> bytes:
        """The answer's generative AI attributes (on the server span and the last attempt)."""
        trace, meter = self.trace, self.ctx.meter
        out = b""
        if trace.response_model is not None:
            out = otlp.attributes((("gen_ai.response.model", trace.response_model),))
        if meter is not None and meter.usage is not None:
            prompt, completion = meter.usage
            out += otlp.attribute("gen_ai.usage.input_tokens", prompt)
            out += otlp.attribute("gen_ai.usage.output_tokens", completion)
        if trace.finish_reasons:
            reasons = tuple(trace.finish_reasons)
            out += otlp.attributes((("gen_ai.response.finish_reasons", reasons),))
        return out

    def _server(self, principal: bool, teams: bool, gen_ai: bytes) -> bytes:
        ctx, trace = self.ctx, self.trace
        attrs: list[tuple[str, AttributeValue]] = [
            ("http.request.method", ctx.method),
            ("url.scheme", ctx.scope.get("scheme", "http")),
        ]
        if self.route:
            attrs.append(("http.route", self.route))
        if self.status:
            attrs.append(("http.response.status_code", self.status))
        if self.operation is not None:
            attrs.append(("gen_ai.operation.name", self.operation))
        model = ctx.model
        if model is not None:
            attrs.append(("gen_ai.request.model", model))
        if self.failed is not None:
            attrs.append(("error.type", self.failed))
        elif ctx.error is not None:
            attrs.append(("bastion.refusal", error_type(ctx.error)))
        identity = ctx.identity
        if identity is not None and principal:
            attrs.append(("enduser.id", identity.principal))
        if identity is not None and teams and identity.teams:
            attrs.append(("bastion.teams", tuple(identity.teams)))
        encoded = (
            otlp.attributes(tuple(attrs))
            + otlp.attributes((("client.address", str(ctx.address or ctx.client_host)),))
            + otlp.attribute("bastion.request_id", ctx.request_id)
            + gen_ai
        )
        return otlp.span(
            trace_id=self.trace_id,
            span_id=trace.span_id.to_bytes(8, "big"),
            parent_id=None if trace.parent_id is None else trace.parent_id.to_bytes(8, "big"),
            name=f"{ctx.method} {self.route}" if self.route else ctx.method,
            kind=otlp.SERVER,
            start_ns=self.base_ns,
            end_ns=self.end_ns,
            attributes=encoded,
            events=self._events(),
            status=otlp.STATUS_ERROR if self.failed is not None else otlp.STATUS_UNSET,
            status_message=self.failed or "",
            trace_state=trace.tracestate.decode() if trace.tracestate else "",
            remote_parent=trace.parent_id is not None,
        )

    def _events(self) -> bytes:
        trace, ctx = self.trace, self.ctx
        events = []
        for name, at in (
            ("bastion.authenticated", trace.authenticated),
            ("bastion.authorized", trace.authorized),
            ("bastion.admitted", trace.admitted),
        ):
            if at is not None:
                events.append(otlp.event(name, self._ns(at)))
        if ctx.time_to_first_byte is not None:
            first = self.started + ctx.time_to_first_byte
            events.append(otlp.event("bastion.first_byte", self._ns(first)))
        if ctx.response_sse and ctx.response_done and self.failed is None:
            events.append(otlp.event("bastion.stream_end", self.end_ns))
        return b"".join(events)

    def _client(self, attempt: Attempt, index: int, gen_ai: bytes) -> bytes:
        upstream = attempt.upstream
        origin = upstream.origin
        endpoint = self.ctx.endpoint
        target = endpoint.target.decode() if endpoint is not None else ""
        status = attempt.status if attempt.error is not None else self.ctx.status
        error = attempt.error
        if error is None and index == len(self.trace.attempts) - 1:
            error = self.failed
        attrs: list[tuple[str, AttributeValue]] = [
            ("http.request.method", self.ctx.method),
            ("server.address", origin.host),
            ("server.port", origin.port),
            ("url.full", f"{origin.scheme}://{upstream.name}{target}"),
            ("bastion.upstream", upstream.name),
        ]
        if status:
            attrs.append(("http.response.status_code", status))
        if error is not None:
            attrs.append(("error.type", error))
        if index:
            attrs.append(("http.request.resend_count", index))
        if self.operation is not None:
            attrs.append(("gen_ai.operation.name", self.operation))
        if attempt.model is not None:
            attrs.append(("gen_ai.request.model", attempt.model))
        ended = attempt.ended
        name = self.operation or self.ctx.method
        if self.operation is not None and attempt.model is not None:
            name = f"{self.operation} {attempt.model}"
        return otlp.span(
            trace_id=self.trace_id,
            span_id=attempt.span_id.to_bytes(8, "big"),
            parent_id=self.trace.span_id.to_bytes(8, "big"),
            name=name,
            kind=otlp.CLIENT,
            start_ns=self._ns(attempt.started),
            end_ns=self.end_ns if ended is None else self._ns(ended),
            attributes=otlp.attributes(tuple(attrs)) + gen_ai,
            status=otlp.STATUS_ERROR if error is not None else otlp.STATUS_UNSET,
            status_message=error or "",
        )
