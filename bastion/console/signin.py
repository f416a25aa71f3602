"""Who may sign in to the console, and sign-in with an API key.

A key is checked by the gateway's own API key authenticator, behind the same brute-force
guard as every credential (``auth.brute_force``: failures count, a blocked address gets 429
before its key is looked at) and a sign-in rate limit of its own
(``console.sign_in_attempts`` per address per minute, failed or not). Only a principal whose
access includes ``admin`` or ``console``, from an address its access allows, gets a session;
the same check applies to OIDC sign-ins (:mod:`bastion.console.oidc`).
"""

from __future__ import annotations

import logging

from bastion.auth.apikeys import ApiKeyAuthenticator
from bastion.auth.guard import FailureGuard
from bastion.auth.identity import Identity
from bastion.errors import AuthenticationError, PermissionDeniedError, RateLimitError
from bastion.pipeline.context import RequestContext
from bastion.policy.policy import Policy
from bastion.policy.roles import Access
from bastion.settings import BruteForceSettings

__all__ = ["CONSOLE_PERMISSIONS", "Gatekeeper", "KeySignIn", "address_of"]

log = logging.getLogger("bastion.auth")

CONSOLE_PERMISSIONS = ("admin", "console")
"""Either lets a principal into the console (``console``: the read-only pages)."""
_MAX_KEY = 256


def address_of(ctx: RequestContext) -> str:
    """The caller's address as the brute-force guard counts it (as ``authenticate`` does)."""
    return ctx.client_host if ctx.forwarded_for is None else str(ctx.address)


class Gatekeeper:
    """Limits sign-in attempts per address, and admits only console principals."""

    def __init__(self, policy: Policy, guard: FailureGuard, attempts: int) -> None:
        self._policy = policy
        self.guard = guard
        """The brute-force guard shared with every other credential check."""
        self._attempts = FailureGuard(BruteForceSettings(max_failures=attempts, block=60.0))

    def attempt(self, ctx: RequestContext) -> str:
        """Count a sign-in attempt; 429 when the address is blocked or tried too often."""
        address = address_of(ctx)
        self.guard.check(address)
        try:
            self._attempts.check(address)
        except RateLimitError as exc:
            raise RateLimitError(
                "Too many sign-in attempts; retry later.",
                code="too_many_sign_in_attempts",
                headers=exc.headers,
            ) from None
        self._attempts.failed(address)  # every attempt counts, failed or not
        return address

    def admit(self, ctx: RequestContext, identity: Identity) -> Access:
        """The principal's access if it may use the console from here; 403 otherwise."""
        access = self._policy.access(identity)
        if (
            access is None
            or not any(access.allows_route(p) for p in CONSOLE_PERMISSIONS)
            or not access.allows_address(ctx.address)
        ):
            log.info(
                "console sign-in refused principal=%s request_id=%s",
                identity.principal,
                ctx.request_id,
            )
            raise PermissionDeniedError("This principal may not use the console.")
        return access

    def access(self, identity: Identity) -> Access | None:
        return self._policy.access(identity)


class KeySignIn:
    """Turns an API key into the identity of its holder (generic 401 if it is not one)."""

    def __init__(self, keys: ApiKeyAuthenticator, gate: Gatekeeper) -> None:
        self._keys = keys
        self._gate = gate

    async def __call__(self, ctx: RequestContext, key: object) -> Identity:
        address = self._gate.attempt(ctx)
        try:
            if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY or not key.isascii():
                raise AuthenticationError()
            identity = await self._keys.authenticate(b"bearer", key.encode("ascii"))
            if identity is None:  # not a Bastion key at all
                raise AuthenticationError()
        except AuthenticationError:
            self._gate.guard.failed(address)
            log.info("console sign-in failed client=%s request_id=%s", address, ctx.request_id)
            raise AuthenticationError() from None  # the same 401 whatever was wrong
        return identity
