"""Phase ``authenticate``: who is calling? Asks each configured authenticator in turn."""

from __future__ import annotations

import logging

from bastion.auth.guard import FailureGuard
from bastion.auth.identity import Authenticator, Identity
from bastion.errors import AuthenticationError
from bastion.pipeline.context import RequestContext

__all__ = ["Authenticate"]

log = logging.getLogger("bastion.auth")

_MAX_CREDENTIAL = 8192


class Authenticate:
    """Turns the ``Authorization`` header into an :class:`Identity`, or refuses with 401.

    Every refusal is the same generic 401; the reason goes to the log (never the credential).
    An address that keeps failing is turned away with 429 for a while (see ``FailureGuard``).
    """

    def __init__(self, authenticators: tuple[Authenticator, ...], guard: FailureGuard) -> None:
        self._authenticators = authenticators
        self._guard = guard

    async def __call__(self, ctx: RequestContext) -> None:
        # The peer's own text unless a trusted proxy named another address (no str() per request)
        address = ctx.client_host if ctx.forwarded_for is None else str(ctx.address)
        self._guard.check(address)
        try:
            ctx.identity = await self._identify(ctx.authorization)
        except AuthenticationError:
            self._guard.failed(address)
            log.info(
                "authentication failed request_id=%s client=%s route=%s",
                ctx.request_id,
                ctx.client_host,
                ctx.route.path if ctx.route else "-",
            )
            raise

    async def _identify(self, header: bytes | None) -> Identity:
        if not header or len(header) > _MAX_CREDENTIAL:
            raise AuthenticationError()
        scheme, _, credential = header.partition(b" ")
        scheme = scheme.lower()
        credential = credential.strip()
        if not credential:
            raise AuthenticationError()
        for authenticator in self._authenticators:
            identity = await authenticator.authenticate(scheme, credential)
            if identity is not None:
                return identity
        raise AuthenticationError()
