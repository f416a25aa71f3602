"""Phase ``account``: runs for every request, served, refused or failed.

It hands plain facts of the finished request to each sink: a record to the access log
(:mod:`bastion.observability.access_log`), an audit event for a refusal
(:mod:`bastion.store.audit`), a usage record (:mod:`bastion.store.usage`) and the request's
metrics (:mod:`bastion.observability.instruments`). None of those knows the request context.
A traced request's spans are built and queued for export here too (:mod:`.tracing`).
"""

from __future__ import annotations

import time

from bastion.observability.access_log import AccessLogWriter
from bastion.observability.instruments import GatewayMetrics
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import EndpointKind
from bastion.pipeline.tracing import Tracer
from bastion.settings import LoggingSettings
from bastion.store.audit import AuditTrail
from bastion.store.records import AuditEvent
from bastion.store.usage import UsageQueue, UsageRecord

_INFERENCE = EndpointKind.INFERENCE

__all__ = ["Account"]


class Account:
    """Leaves one access-log record per request (when the access log is on), an audit event
    per refused request, a usage record per inference request, and the request's metrics."""

    def __init__(
        self,
        settings: LoggingSettings,
        writer: AccessLogWriter | None,
        audit: AuditTrail | None = None,
        usage: UsageQueue | None = None,
        metrics: GatewayMetrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._writer = writer if settings.access_log else None
        self._tracer = tracer
        self._audit = audit
        self._usage = usage
        self._metrics = metrics

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def __call__(self, ctx: RequestContext) -> None:
        error = ctx.error
        if error is not None and self._audit is not None and self._audit.wants(error):
            self._audit.refused(_refusal(ctx))
        status = 499 if ctx.client_disconnected and not ctx.response_done else ctx.status
        endpoint = ctx.endpoint
        meter = ctx.meter
        elapsed_ms = ctx.elapsed_ms()  # one clock reading for every sink
        now = time.time()
        latency_ms = round(elapsed_ms, 2)
        ttfb = ctx.time_to_first_byte
        ttfb_ms = None if ttfb is None else round(ttfb * 1000, 2)
        tokens = ctx.billed_tokens() if meter is not None and meter.reading else None
        if self._usage is not None and endpoint is not None and endpoint.kind is _INFERENCE:
            billed = tokens or ctx.billed_tokens()
            self._usage.add(_usage_record(ctx, now, status, billed, latency_ms, ttfb_ms))
        identity = ctx.identity
        if self._metrics is not None:
            self._metrics.request(
                endpoint.path if endpoint is not None else "unmatched",
                ctx.model,
                status,
                elapsed_ms / 1000.0,
                identity.teams if identity is not None else (),
                tokens,
                ctx.time_to_first_byte if ctx.response_sse else None,
                meter.content_events if meter is not None else 0,
                None if error is None else error.code or type(error).__name__,
            )
        if ctx.trace is not None:
            assert self._tracer is not None  # only the tracer gives a request a trace
            self._tracer.finish(ctx, status, elapsed_ms / 1000.0)
        writer = self._writer
        if writer is None:
            return
        writer.write(
            (
                now,
                ctx.request_id,
                ctx.caller_request_id,
                ctx.client_host,
                ctx.method,
                endpoint.path if endpoint is not None else "-",
                status,
                ctx.model,
                identity.principal if identity is not None else None,
                ctx.upstream,
                latency_ms,
                ttfb_ms,
                error.code if error is not None else None,
                ctx.response_bytes,
                meter.usage if meter is not None else None,
            )
        )


def _usage_record(
    ctx: RequestContext,
    now: float,
    status: int,
    tokens: tuple[int, int],
    latency_ms: float,
    ttfb_ms: float | None,
) -> UsageRecord:
    identity = ctx.identity
    teams: tuple[str, ...] = ()
    if identity is None:
        who, credential = "-", "-"
    else:
        who, credential, teams = identity.principal, identity.credential_id, identity.teams
    return UsageRecord(
        now, ctx.request_id, who, credential, teams, ctx.model or "-",
        ctx.endpoint.permission if ctx.endpoint is not None else "-", status, tokens[0], tokens[1],
        latency_ms, ttfb_ms,
    )  # fmt: skip


def _refusal(ctx: RequestContext) -> AuditEvent:
    """The audit event of a refused request: who (when known), what, from where, and why;
    never the credential that was presented."""
    error = ctx.error
    identity = ctx.identity
    endpoint = ctx.endpoint
    return AuditEvent(
        at=time.time(),
        actor=identity.principal if identity is not None else "-",
        credential=identity.credential_id if identity is not None else "-",
        action="request.refused",
        target=endpoint.path if endpoint is not None else "-",
        outcome="denied",
        status=ctx.status or (error.status if error is not None else 0),
        address=str(ctx.address) if ctx.address is not None else ctx.client_host,
        request_id=ctx.request_id or "-",
        detail={
            "method": ctx.method,
            "model": ctx.model,
            "reason": error.code if error is not None else None,
        },
    )
