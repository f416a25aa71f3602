"""Phase ``authenticate``: who is calling? Asks each configured authenticator in turn.

A request with an ``Authorization`` header is judged by that header alone. One without it is
named, on the admin API only, by a web console session when it brings the session's cookie
(and CSRF token: see :mod:`bastion.console.sessions`); else by its verified client
certificate when ``auth.client_certificate`` is configured; otherwise it is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bastion.auth.clientcert import ClientCertificateAuthenticator
from bastion.auth.guard import FailureGuard
from bastion.auth.identity import Authenticator, Identity
from bastion.errors import AuthenticationError, RateLimitError
from bastion.observability.instruments import GatewayMetrics
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import EndpointKind

__all__ = ["Authenticate", "SessionCheck"]

SessionCheck = Callable[[RequestContext], Awaitable[Identity | None]]
"""The console session a request brings (None: it brings no session cookie); refuses a dead
session (401) and a missing or wrong CSRF token (403). Built by the layer above."""

log = logging.getLogger("bastion.auth")

_MAX_CREDENTIAL = 8192


class Authenticate:
    """Turns the ``Authorization`` header (or, without one, the client certificate) into an
    :class:`Identity`, or refuses with 401.

    Every refusal is the same generic 401; the reason goes to the log (never the credential).
    An address that keeps failing is turned away with 429 for a while (see ``FailureGuard``).
    """

    def __init__(
        self,
        authenticators: tuple[Authenticator, ...],
        guard: FailureGuard,
        certificates: ClientCertificateAuthenticator | None = None,
        metrics: GatewayMetrics | None = None,
        sessions: SessionCheck | None = None,
    ) -> None:
        self._authenticators = authenticators
        self._sessions = sessions
        self._guard = guard
        self._certificates = certificates
        self._metrics = metrics

    async def __call__(self, ctx: RequestContext) -> None:
        endpoint = ctx.endpoint
        if (
            ctx.authorization is None
            and ctx.api_key is not None
            and endpoint
            and endpoint.anthropic
        ):
            ctx.authorization = b"Bearer " + ctx.api_key  # Anthropic clients' x-api-key
        # The peer's own text unless a trusted proxy named another address (no str() per request)
        address = ctx.client_host if ctx.forwarded_for is None else str(ctx.address)
        try:
            self._guard.check(address)
        except RateLimitError:
            if self._metrics is not None:
                self._metrics.auth_failed("blocked")
            raise
        try:
            if ctx.authorization is None:
                ctx.identity = await self._without_header(ctx)
            else:
                ctx.identity = await self._identify(ctx.authorization)
        except AuthenticationError:
            if self._metrics is not None:
                self._metrics.auth_failed(_reason(ctx, self._certificates is not None))
            self._guard.failed(address)
            log.info(
                "authentication failed request_id=%s client=%s route=%s",
                ctx.request_id,
                ctx.client_host,
                ctx.endpoint.path if ctx.endpoint else "-",
                extra=ctx.log_fields(),
            )
            raise

    async def _without_header(self, ctx: RequestContext) -> Identity:
        """A console session (admin API only), else a client certificate, else 401."""
        endpoint = ctx.endpoint
        if (
            self._sessions is not None
            and endpoint is not None
            and endpoint.kind is EndpointKind.ADMIN
        ):
            identity = await self._sessions(ctx)
            if identity is not None:
                return identity
        if self._certificates is not None:
            downstream = ctx.downstream
            certificate = downstream.peer_certificate if downstream is not None else None
            return self._certificates.identify(certificate)
        raise AuthenticationError()

    async def _identify(self, header: bytes | None) -> Identity:
        parsed = _credential(header) if header else None
        if parsed is None:
            raise AuthenticationError()
        scheme, credential = parsed
        for authenticator in self._authenticators:
            identity = await authenticator.authenticate(scheme, credential)
            if identity is not None:
                return identity
        raise AuthenticationError()


def _reason(ctx: RequestContext, certificates: bool) -> str:
    """Why authentication failed, in a word for the metrics (never the credential)."""
    header = ctx.authorization
    if header is None:
        return "certificate" if certificates else "missing"
    return "malformed" if _credential(header) is None else "invalid"


def _credential(header: bytes) -> tuple[bytes, bytes] | None:
    """``(scheme, credential)`` of an ``Authorization`` header (the scheme in lower case);
    None when it is too long or names no credential."""
    if len(header) > _MAX_CREDENTIAL:
        return None
    scheme, _, credential = header.partition(b" ")
    credential = credential.strip()
    return (scheme.lower(), credential) if credential else None
