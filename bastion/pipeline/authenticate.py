"""Phase ``authenticate``: who is calling? Asks each configured authenticator in turn.

A request with an ``Authorization`` header is judged by that header alone. One without it is
named by its verified client certificate when ``auth.client_certificate`` is configured;
otherwise it is refused.
"""

from __future__ import annotations

import logging

from bastion.auth.clientcert import ClientCertificateAuthenticator
from bastion.auth.guard import FailureGuard
from bastion.auth.identity import Authenticator, Identity
from bastion.errors import AuthenticationError, RateLimitError
from bastion.observability.instruments import GatewayMetrics
from bastion.pipeline.context import RequestContext

__all__ = ["Authenticate"]

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
    ) -> None:
        self._authenticators = authenticators
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
            if ctx.authorization is None and self._certificates is not None:
                downstream = ctx.downstream
                certificate = downstream.peer_certificate if downstream is not None else None
                ctx.identity = self._certificates.identify(certificate)
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
