"""The per-request context that the pipeline's phases fill in, one field per fact."""

from __future__ import annotations

import time
from typing import Any

from bastion.auth.identity import Identity
from bastion.errors import GatewayError
from bastion.limits.limiter import Grant
from bastion.observability.logs import request_fields
from bastion.pipeline.created import CreatedResponse
from bastion.pipeline.endpoints import Endpoint
from bastion.pipeline.meter import Meter
from bastion.pipeline.trace import Trace
from bastion.policy.networks import Address
from bastion.policy.roles import Access
from bastion.types import DOWNSTREAM_SCOPE_KEY, Downstream, Receive, Scope, Send
from bastion.upstream.balancer import Weighted

__all__ = ["RequestContext"]


class RequestContext:
    """Everything known about one request; lives exactly as long as the request.

    Phases write the fields they own (``authenticate`` the identity, ``forward`` the upstream,
    ...) and read those of earlier phases. No request data ever lives on a long-lived object.
    """

    __slots__ = (
        "_client_host",
        "access",
        "address",
        "api_key",
        "attempts",
        "authorization",
        "body",
        "body_overrides",
        "caller_request_id",
        "client_disconnected",
        "content_length",
        "content_type",
        "control_model",
        "created",
        "downstream",
        "endpoint",
        "error",
        "forwarded_for",
        "grant",
        "identity",
        "json",
        "meter",
        "method",
        "model",
        "pinned",
        "receive",
        "request_id",
        "response_bytes",
        "response_done",
        "response_last",
        "response_sse",
        "response_started",
        "scope",
        "send",
        "started",
        "status",
        "time_to_first_byte",
        "trace",
        "upstream",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.downstream: Downstream | None = scope.get(DOWNSTREAM_SCOPE_KEY)
        """The caller's connection under Bastion's own server (None under another)."""
        self.started = time.perf_counter()
        self.method: str = scope["method"]
        self.endpoint: Endpoint | None = None
        self.request_id = ""
        """Bastion's id of the request: unguessable, the only id an upstream ever sees."""
        self.caller_request_id: str | None = None
        """The caller's X-Request-Id (when sane): logged and echoed back, never forwarded."""
        self.authorization: bytes | None = None
        self.api_key: bytes | None = None
        """The ``x-api-key`` header (Anthropic's clients send the key there)."""
        self.content_type = b""
        self.content_length: int | None = None
        self.body = b""
        self.json: dict[str, Any] | None = None
        self.model: str | None = None
        self.control_model: str | None = None
        """For control routes only: the model whose upstream to address (x-bastion-model)."""
        self.identity: Identity | None = None
        self.access: Access | None = None
        """The identity's effective permissions (set by ``authorize``)."""
        self.address: Address | None = None
        """The caller's address, X-Forwarded-For believed only from trusted proxies."""
        self.forwarded_for: bytes | None = None
        self.upstream: str | None = None
        """Display name of the upstream the request went to (never its credentials)."""
        self.pinned: Weighted | None = None
        """The upstream that must serve the request, not the balancer's pick: the one that
        keeps the stored response it names (see :mod:`.ownership`)."""
        self.created: CreatedResponse | None = None
        """Watches the answer of a create for the id of the response the upstream keeps."""
        self.attempts = 0
        """Upstreams tried (more than 1 when an attempt failed before the response)."""
        self.status = 0
        self.response_started = False
        self.response_done = False
        self.response_sse = False
        self.response_last = b""
        """The last piece of the body relayed so far (whether a stream stopped inside an
        event is read from it only when an error event must follow)."""
        self.response_bytes = 0
        self.time_to_first_byte: float | None = None
        self.client_disconnected = False
        self.error: GatewayError | None = None
        self.grant: Grant | None = None
        """What ``admit`` took from the limiter (released by its ``finish``)."""
        self.meter: Meter | None = None
        """What the request cost in tokens (made by ``admit``; see :mod:`.meter`)."""
        self.body_overrides: dict[str, Any] | None = None
        """Fields the gateway sets in (or removes from) the forwarded JSON body."""
        self.trace: Trace | None = None
        """The request's trace, when tracing is on (see :mod:`.tracing`)."""
        self._client_host: str | None = None

    def billed_tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens to bill, as the meter counts them (none without one).

        A response cut because the caller went away is billed for what it got, unless the
        upstream's answer was an error (which generated nothing). Limits, usage records and
        metrics all use this."""
        meter = self.meter
        if meter is None:
            return 0, 0
        status = self.status
        if self.client_disconnected and not self.response_done and status < 400:
            status = 200
        return meter.billed(status, self.response_sse, self.response_bytes)

    def override(self, fields: dict[str, Any]) -> None:
        """Fields to set in the forwarded JSON body (``fields.REMOVE``: to remove)."""
        if self.body_overrides is None:
            self.body_overrides = dict(fields)
        else:
            self.body_overrides.update(fields)

    def log_fields(self) -> dict[str, str]:
        """The request's ids for a log record's ``extra`` (fields of a JSON log line)."""
        return request_fields(self.request_id, self.caller_request_id)

    @property
    def response_event_open(self) -> bool:
        """The event stream relayed so far stops inside an event (not on a blank line)."""
        last = self.response_last
        return bool(last) and last[-2:] != b"\n\n" and last[-4:] != b"\r\n\r\n"

    @property
    def echoed_request_id(self) -> str:
        """The X-Request-Id the caller gets back: its own, or else Bastion's."""
        return self.caller_request_id or self.request_id

    @property
    def client_host(self) -> str:
        """The peer's address as text (``-`` when the server gives none); read once."""
        host = self._client_host
        if host is None:
            client = self.scope.get("client")
            host = self._client_host = str(client[0]) if client else "-"
        return host

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0
