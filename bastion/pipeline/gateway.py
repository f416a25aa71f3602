"""The gateway's ASGI application: one request, a few phases, one error boundary.

::

    accept -> authenticate -> authorize -> admit -> route -> forward -> account
    (head,    (who is it?)    (may they?    (limits,  (which     (relay)    (always: log,
     endpoint,                 this model?)  quotas)   upstream)             usage, metrics,
     body)                                                                   audit)

- accept (``accept.py``): the network gate (``Authorize.network``), head limits, the
  endpoint allowlist (``endpoints.py``: unknown paths are 404 before anything else), the
  body, bounded and parsed once;
- authenticate (``authenticate.py``): credential -> identity;
- authorize (``authorize.py``): endpoint, address and model permissions; the model must be
  one the gateway serves (``route.py``'s registry: otherwise 404); a stored response only
  for its owner (``ownership.py``: otherwise 404), on the upstream that keeps it;
- admit (``admit.py``): rate limits, concurrency, budgets;
- route (``route.py``, used by ``forward``): the model's balancer picks the upstream, and
  another on a retry;
- forward (``forward.py``): send, relay as it arrives;
- account (``account.py``): runs on success, refusal and failure alike.

Each phase is a small object with one job. A phase that refuses raises a
:class:`~bastion.errors.GatewayError`; :meth:`Gateway.__call__` is the one place that turns
errors into responses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import orjson

from bastion.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    UpstreamError,
)
from bastion.observability.instruments import GatewayMetrics
from bastion.observability.metrics import CONTENT_TYPE
from bastion.pipeline.accept import Acceptor
from bastion.pipeline.account import Account
from bastion.pipeline.admit import Admit
from bastion.pipeline.authenticate import Authenticate
from bastion.pipeline.authorize import Authorize
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import (
    READY_ENDPOINT,
    READY_VERBOSE,
    Endpoint,
    EndpointKind,
    EndpointTable,
)
from bastion.pipeline.forward import Forward
from bastion.pipeline.ownership import Ownership
from bastion.pipeline.readiness import DRAINING, READY, Readiness, verbose_asked
from bastion.pipeline.responses import send_error, send_json, send_whole
from bastion.pipeline.route import ModelEntry, ModelRegistry
from bastion.pipeline.tracing import Tracer
from bastion.policy.roles import Access
from bastion.types import Message, Receive, Scope, Send

__all__ = ["Gateway"]

log = logging.getLogger("bastion")

AdminHandler = Callable[[RequestContext], Awaitable[None]]
"""Answers a request on an admin route (the admin API, built by the layer above)."""
ConsoleHandler = Callable[[RequestContext], Awaitable[None]]
"""Answers a request on a console route (``/ui``, built by the layer above), body read."""


class Gateway:
    """The ASGI callable. Built once by :mod:`bastion.app`; holds no per-request state."""

    def __init__(
        self,
        *,
        endpoints: EndpointTable,
        acceptor: Acceptor,
        authenticate: Authenticate,
        authorize: Authorize,
        models: ModelRegistry,
        forward: Forward,
        account: Account,
        ownership: Ownership,
        readiness: Readiness,
        admin: AdminHandler | None = None,
        console: ConsoleHandler | None = None,
        admit: Admit | None = None,
        metrics: GatewayMetrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._accept = acceptor
        self._authenticate = authenticate
        self._authorize = authorize
        self._models = models
        self._forward = forward
        self._account = account
        self._ownership = ownership
        self._readiness = readiness
        self._admin = admin
        self._console = console
        self._admit = admit
        self._metrics = metrics
        self._tracer = tracer
        self._created = int(time.time())
        self._listings: dict[Access, bytes] = {}

    @property
    def models(self) -> ModelRegistry:
        return self._models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        ctx = RequestContext(scope, receive, send)
        try:
            await self._handle(ctx)
        except GatewayError as error:
            if ctx.response_started and isinstance(error, UpstreamError):
                _log_cut(ctx, error)
            await self._refuse(ctx, error)
        except asyncio.CancelledError:
            if not ctx.client_disconnected:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        except Exception:
            log.exception("unexpected error request_id=%s", ctx.request_id, extra=ctx.log_fields())
            await self._refuse(ctx, InternalError())
        finally:
            if ctx.grant is not None:
                self._finish(ctx)
            self._account(ctx)

    def _finish(self, ctx: RequestContext) -> None:
        """Give back what ``admit`` took; never lets an error escape into ``account``."""
        assert self._admit is not None
        try:
            self._admit.finish(ctx)
        except Exception:
            log.exception(
                "releasing limits failed request_id=%s", ctx.request_id, extra=ctx.log_fields()
            )

    async def _refuse(self, ctx: RequestContext, error: GatewayError) -> None:
        if ctx.client_disconnected:
            ctx.error = error
            return
        await send_error(ctx, error)

    async def _handle(self, ctx: RequestContext) -> None:
        self._accept.read_head(ctx)
        self._authorize.network(ctx)
        endpoint = self._endpoints.match(ctx.scope.get("raw_path") or ctx.scope["path"].encode())
        if endpoint is None:
            raise NotFoundError()
        ctx.endpoint = endpoint
        if endpoint is READY_ENDPOINT and verbose_asked(ctx.scope.get("query_string", b"")):
            endpoint = ctx.endpoint = READY_VERBOSE  # it names the models: a credential, then
        if endpoint.public:
            if endpoint.kind is EndpointKind.CONSOLE:
                await self._answer_console(ctx)
                return
            _check_method(ctx, endpoint)
            await self._answer_local(ctx)
            return
        if self._tracer is not None:
            self._tracer.start(ctx)
        await self._authenticate(ctx)
        trace = ctx.trace
        if trace is not None:
            trace.authenticated = time.perf_counter()
        self._authorize(ctx)
        kind = endpoint.kind
        if kind is not EndpointKind.STORED and kind is not EndpointKind.ADMIN:
            # after authorizing: no 405 tells a stranger what exists; the admin API routes
            # methods itself (its 405 names the methods of the path asked for)
            _check_method(ctx, endpoint)
        await self._accept.read_body(ctx)
        if kind is EndpointKind.STORED:
            entry = await self._ownership.stored(ctx)  # 404 unless it is the caller's own
            _check_method(ctx, endpoint)
        else:
            if kind is EndpointKind.ADMIN:
                assert self._admin is not None  # the endpoint exists only with it
                await self._admin(ctx)
                return
            if kind is EndpointKind.LOCAL:
                await self._answer_local(ctx)
                return
            if kind is EndpointKind.CONTROL:
                ctx.model = ctx.control_model
            entry = self._models.resolve(ctx)
        self._authorize.model(ctx, entry.name)
        if kind is EndpointKind.INFERENCE:
            self._authorize.body(ctx)
            if endpoint.stores:
                await self._ownership.create(ctx, entry)
        if trace is not None:
            trace.authorized = time.perf_counter()
        if kind is not EndpointKind.CONTROL and self._admit is not None:
            await self._admit(ctx, entry.name)
            if trace is not None:
                trace.admitted = time.perf_counter()
        await self._forward_watching(ctx, entry)

    async def _forward_watching(self, ctx: RequestContext, entry: ModelEntry) -> None:
        """Forward, and abort the upstream request as soon as the caller goes away."""
        task = asyncio.current_task()
        assert task is not None
        forwarding = True

        def on_disconnect() -> None:
            if forwarding and not ctx.response_done:
                ctx.client_disconnected = True
                task.cancel()

        downstream = ctx.downstream
        if downstream is None:
            await self._forward_watching_receive(ctx, entry, on_disconnect)
            return
        if downstream.disconnected:
            ctx.client_disconnected = True
            return
        downstream.on_disconnect = on_disconnect
        try:
            await self._forward(ctx, entry)
        finally:
            forwarding = False
            downstream.on_disconnect = None

    async def _forward_watching_receive(
        self, ctx: RequestContext, entry: ModelEntry, on_disconnect: Callable[[], None]
    ) -> None:
        """The same under any ASGI server: a task waits for ``http.disconnect``."""
        watcher = asyncio.ensure_future(ctx.receive())

        def on_message(done: asyncio.Future[Message]) -> None:
            if not done.cancelled() and done.result()["type"] == "http.disconnect":
                on_disconnect()

        watcher.add_done_callback(on_message)
        try:
            await self._forward(ctx, entry)
        finally:
            watcher.remove_done_callback(on_message)
            watcher.cancel()

    async def _answer_console(self, ctx: RequestContext) -> None:
        """A console route: it checks its own credential (a key, OIDC, a session)."""
        if self._console is None:  # pragma: no cover - its routes exist only with it
            raise NotFoundError()
        await self._accept.read_body(ctx)
        await self._console(ctx)

    def _models_listing(self, ctx: RequestContext) -> bytes:
        """``/v1/models`` as the caller sees it: only the models it may use."""
        access = ctx.access
        assert access is not None  # authorize ran
        body = self._listings.get(access)
        if body is None:
            names = [n for n in self._models.names if access.allows_model(n)]
            body = orjson.dumps(
                {
                    "object": "list",
                    "data": [
                        {
                            "id": n,
                            "object": "model",
                            "created": self._created,
                            "owned_by": "bastion",
                        }
                        for n in names
                    ],
                }
            )
            if len(self._listings) >= 10_000:  # one per role, restriction and team rules
                self._listings.clear()
            self._listings[access] = body
        return body

    async def _answer_local(self, ctx: RequestContext) -> None:
        assert ctx.endpoint is not None
        path = ctx.endpoint.path
        if path == "/health":
            await send_json(ctx, 200, b'{"status":"ok"}')
        elif path == "/ready":
            await self._answer_ready(ctx, verbose=not ctx.endpoint.public)
        elif path == "/v1/models":
            await send_json(ctx, 200, self._models_listing(ctx))
        elif path == "/bastion/metrics" and self._metrics is not None:
            body = await self._metrics.exposition()
            await send_whole(ctx, 200, [(b"content-type", CONTENT_TYPE)], body)
        else:  # pragma: no cover - there is no other local endpoint
            raise NotFoundError()

    async def _answer_ready(self, ctx: RequestContext, *, verbose: bool) -> None:
        """200 while this process serves, 503 once it drains; whatever upstreams say."""
        readiness = self._readiness
        ready = readiness.ready
        body = readiness.report() if verbose else READY if ready else DRAINING
        await send_json(ctx, 200 if ready else 503, body)


def _check_method(ctx: RequestContext, endpoint: Endpoint) -> None:
    if ctx.method not in endpoint.methods:
        allow = ", ".join(sorted(endpoint.methods)).encode()
        raise MethodNotAllowedError(headers=((b"allow", allow),))


def _log_cut(ctx: RequestContext, error: UpstreamError) -> None:
    """An upstream that fails after the response began: an expected fault, so one line and
    no traceback (the status already went out as a success; this line says otherwise)."""
    cause = error.__cause__
    log.warning(
        "upstream failed mid-response request_id=%s%s upstream=%s reason=%s%s",
        ctx.request_id,
        f" caller_request_id={ctx.caller_request_id}" if ctx.caller_request_id else "",
        ctx.upstream,
        error.code,
        f" ({cause})" if cause is not None and str(cause) else "",
        extra=ctx.log_fields(),
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
