"""Phase ``forward``: send the request upstream and relay the answer as it arrives.

Only what the upstream needs is forwarded: hop-by-hop headers, the caller's credentials and
cookies, and anything the caller could use to impersonate the gateway are dropped; the
upstream's own key (if any) and the request id are added. The response is relayed piece by
piece as the upstream socket delivers it, so a stream is never buffered; each ``send`` waits
for the caller's socket to drain, which is the backpressure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from bastion.errors import UpstreamError
from bastion.limits.limiter import rate_headers
from bastion.pipeline.context import RequestContext
from bastion.pipeline.created import CreatedResponse
from bastion.pipeline.endpoints import BodyKind
from bastion.pipeline.fields import REMOVE
from bastion.pipeline.meter import Meter
from bastion.pipeline.responses import send_whole
from bastion.pipeline.route import ModelEntry
from bastion.pipeline.trace import error_type
from bastion.settings import UpstreamClientSettings
from bastion.upstream.balancer import Upstream, Weighted
from bastion.upstream.client import UpstreamPool, UpstreamResponse

__all__ = ["Forward", "request_headers", "response_headers"]

# Never forwarded upstream: hop-by-hop headers, the caller's credentials, headers the gateway
# sets itself, and content codings it would have to undo to account for usage.
_DROP_REQUEST = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"x-api-key",
        b"api-key",
        b"x-request-id",
        b"x-bastion-model",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-real-ip",
        b"accept-encoding",
        # headers vLLM reads to steer the engine (as the guarded body fields do)
        b"x-vllm-priority",
        b"x-data-parallel-rank",
        b"x-session-id",
        b"x-amzn-sagemaker-adapter-identifier",
        b"x-amzn-sagemaker-session-id",
        b"endpoint-load-metrics-format",
        b"x-amzn-sagemaker-adapter-alias",
    }
)
_DROP_TRACED = _DROP_REQUEST | {b"traceparent", b"tracestate"}
"""With tracing on, the gateway sends its own trace context (see :mod:`.tracing`); with it
off, the caller's passes through untouched."""
_DROP_RESPONSE = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"server",
        b"date",
        b"x-request-id",
        b"set-cookie",
    }
)
_WHOLE_BODY_LIMIT = 1024 * 1024
# Answers that say "this server cannot take it now", not "this request is wrong".
_RETRY_STATUSES = frozenset({502, 503, 504})


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def request_headers(
    caller: list[tuple[bytes, bytes]],
    request_id: str | None,
    authorization: bytes | None,
    trace_context: list[tuple[bytes, bytes]] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The headers to send upstream, built from the caller's; ``trace_context`` (the
    gateway's ``traceparent`` and ``tracestate``) replaces the caller's."""
    drop = _DROP_REQUEST if trace_context is None else _DROP_TRACED
    if any(name == b"connection" for name, _ in caller):
        drop = drop | _connection_tokens(caller)
    headers = [(name, value) for name, value in caller if name not in drop]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    if authorization is not None:
        headers.append((b"authorization", authorization))
    if trace_context is not None:
        headers += trace_context
    return headers


def response_headers(
    upstream: list[tuple[bytes, bytes]], request_id: str
) -> list[tuple[bytes, bytes]]:
    """The headers to send the caller, built from the upstream's."""
    drop = _DROP_RESPONSE
    if any(name == b"connection" for name, _ in upstream):
        drop = drop | _connection_tokens(upstream)
    headers = [(name, value) for name, value in upstream if name not in drop]
    headers.append((b"x-request-id", request_id.encode()))
    return headers


class Forward:
    """Sends the request to an upstream of its model and relays the response to the caller.

    The model's balancer picks the upstream. An attempt that fails before any response has
    begun (connection refused or reset, timeout, protocol error, or a 502/503/504 answer) is
    retried on another upstream, up to ``retries`` times and only within ``retry_window``
    seconds of the first attempt; the caller has seen nothing of a failed attempt. Once the
    response head is on its way to the caller, nothing is retried. A request pinned to an
    upstream (``ctx.pinned``: it names a response that upstream keeps) goes there or
    nowhere.
    """

    def __init__(self, pool: UpstreamPool, settings: UpstreamClientSettings) -> None:
        self._pool = pool
        self._retries = settings.retries
        self._window = settings.retry_window

    async def __call__(self, ctx: RequestContext, entry: ModelEntry) -> None:
        assert ctx.endpoint is not None
        path = ctx.endpoint.target
        query = ctx.scope.get("query_string", b"")
        if query:
            path = path + b"?" + query
        body = _body_for(ctx, entry)
        balancer = entry.balancer
        pinned = ctx.pinned
        member = balancer.pick() if pinned is None else balancer.pin(pinned)
        tried: tuple[Upstream, ...] = ()
        first = time.monotonic()
        trace = ctx.trace
        while True:
            upstream = member.upstream
            ctx.upstream = upstream.name
            ctx.attempts = len(tried) + 1
            trial = upstream.begin(time.monotonic())
            if trace is None:
                answer = await self._attempt(ctx, member, trial, path, body)
            else:
                context = trace.attempt(upstream, entry.upstream_model or ctx.model)
                answer = await self._attempt(ctx, member, trial, path, body, context)
                if isinstance(answer, UpstreamError):
                    trace.failed(error_type(answer))
            retryable = isinstance(answer, UpstreamError) or answer.status in _RETRY_STATUSES
            # only the pinned upstream keeps what it names; the clock is read only when the
            # answer could be retried (not for every request)
            more = (
                retryable
                and pinned is None
                and len(tried) < self._retries
                and time.monotonic() - first < self._window
            )
            other = balancer.pick_other((*tried, upstream)) if more else None
            if other is None:
                if isinstance(answer, UpstreamError):
                    raise answer
                await self._relay_from(ctx, upstream, trial, answer)
                return
            if not isinstance(answer, UpstreamError):  # answered "not now"; another may serve
                answer.close()
                upstream.failed(time.monotonic(), trial)
                if trace is not None:
                    trace.failed(str(answer.status), answer.status)
            upstream.retries += 1
            tried = (*tried, upstream)
            member = other

    async def _attempt(
        self,
        ctx: RequestContext,
        member: Weighted,
        trial: int,
        path: bytes,
        body: bytes,
        trace_context: list[tuple[bytes, bytes]] | None = None,
    ) -> UpstreamResponse | UpstreamError:
        """Send the request to ``member``: its response head, or the error it failed with
        (already counted against the upstream)."""
        upstream = member.upstream
        try:
            return await self._pool.request(
                upstream.origin,
                ctx.method.encode(),
                path,
                request_headers(
                    ctx.scope["headers"],
                    ctx.request_id if member.send_request_id else None,
                    member.authorization,
                    trace_context,
                ),
                body,
            )
        except UpstreamError as error:
            upstream.failed(time.monotonic(), trial)
            return error
        except BaseException:
            upstream.abandoned(trial)
            raise

    async def _relay_from(
        self, ctx: RequestContext, upstream: Upstream, trial: int, response: UpstreamResponse
    ) -> None:
        """Relay, and tell the upstream's state how the exchange ended."""
        try:
            await self._relay(ctx, response)
        except UpstreamError:
            upstream.failed(time.monotonic(), trial)
            raise
        except BaseException:
            upstream.abandoned(trial)
            raise
        finally:
            response.close()
        if response.status in _RETRY_STATUSES:
            upstream.failed(time.monotonic(), trial)
        else:
            upstream.succeeded(trial)

    async def _relay(self, ctx: RequestContext, response: UpstreamResponse) -> None:
        headers = response_headers(response.headers, ctx.echoed_request_id)
        length = None
        for name, value in headers:
            if name == b"content-type":
                ctx.response_sse = value.startswith(b"text/event-stream")
            elif name == b"content-length" and value.isdigit():
                length = int(value)
        ctx.status = response.status
        if ctx.grant is not None:
            headers.extend(rate_headers(ctx.grant.info))
        meter = ctx.meter
        created = ctx.created
        if created is not None and not created.begin(
            ctx.upstream or "", response.status, ctx.response_sse
        ):
            created = None
        trace = ctx.trace
        reads = trace is not None and trace.reads_answer
        if length is not None and length <= _WHOLE_BODY_LIMIT:
            body = await response.read()
            ctx.time_to_first_byte = time.perf_counter() - ctx.started
            if reads:
                assert trace is not None
                trace.read_answer(body)
            if created is not None:
                created.whole(body)
            if meter is not None:
                body = _metered_whole(meter, body, ctx.response_sse, headers)
            await send_whole(ctx, response.status, headers, body)
            return
        metered = meter is not None and meter.start(ctx.response_sse)
        if metered and length is not None:  # the meter may change the length
            headers = [(n, v) for n, v in headers if n != b"content-length"]
            length = None
        await self._start(ctx, headers)
        downstream = ctx.downstream
        relayed = _relayed(ctx, meter if metered else None, created)
        if reads:
            assert trace is not None
            relayed = trace.watching(relayed)
        try:
            if length is None and downstream is not None:
                await downstream.splice(response, relayed)
            else:
                await _pump(ctx, response, relayed)
        finally:  # also when the stream is cut: what was relayed is billed
            rest = meter.end() if meter is not None else b""
        ctx.response_done = True
        await ctx.send({"type": "http.response.body", "body": rest})

    @staticmethod
    async def _start(ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        ctx.response_started = True
        await ctx.send({"type": "http.response.start", "status": ctx.status, "headers": headers})


def _relayed(
    ctx: RequestContext, meter: Meter | None, created: CreatedResponse | None
) -> Callable[[bytes], bytes]:
    """What each piece of a relayed body goes through: timing, counting, the meter and (for
    a create) the watch for the created response's id, until it is found. Returns what to
    send on (empty: nothing now). For an event stream it also notes whether what went out
    stops inside an event, so that an error event can start a new one."""
    started = ctx.started
    sse = ctx.response_sse
    feed = None if meter is None else meter.feeder

    def relayed(piece: bytes) -> bytes:
        if ctx.time_to_first_byte is None:
            ctx.time_to_first_byte = time.perf_counter() - started
        ctx.response_bytes += len(piece)
        if created is not None and created.open:
            created.feed(piece)
        out = piece if feed is None else feed(piece)
        if sse and out:
            ctx.response_last = out  # where an error event would follow (if one must)
        return out

    return relayed


async def _pump(
    ctx: RequestContext, response: UpstreamResponse, relayed: Callable[[bytes], bytes]
) -> None:
    """Relay the body through ASGI ``send``, piece by piece (any ASGI server)."""
    send = ctx.send
    async for chunk in response:
        piece = relayed(chunk)
        if piece:
            await send({"type": "http.response.body", "body": piece, "more_body": True})


def _body_for(ctx: RequestContext, entry: ModelEntry) -> bytes:
    """The body to forward: as received, unless the upstream knows the model by another name
    or the gateway sets fields (``priority``, ``stream_options``)."""
    assert ctx.endpoint is not None
    if ctx.endpoint.body is BodyKind.NONE:
        return b""  # a body the endpoint does not take is not the upstream's to read
    renamed = entry.upstream_model is not None
    if ctx.json is None or not (renamed or ctx.body_overrides):
        return ctx.body
    rewritten = dict(ctx.json)
    if renamed:
        rewritten["model"] = entry.upstream_model
    if ctx.body_overrides:
        for name, value in ctx.body_overrides.items():
            if value is REMOVE:
                rewritten.pop(name, None)
            else:
                rewritten[name] = value
    return orjson.dumps(rewritten)


def _metered_whole(
    meter: Meter, body: bytes, sse: bool, headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A complete body through the meter; its length is corrected if the meter changed it."""
    kept = meter.whole(body, sse)
    if len(kept) != len(body):
        headers[:] = [(n, v) for n, v in headers if n != b"content-length"]
        headers.append((b"content-length", str(len(kept)).encode()))
    return kept
