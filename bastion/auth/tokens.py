"""Bearer JWTs from an OIDC identity provider: verified, then mapped to an identity.

What is refused, and why it matters:

- an algorithm outside ``auth.jwt.algorithms`` (``none``, and every HMAC algorithm, can never
  be listed), so the token's header cannot choose how it is checked;
- a key whose type does not fit the algorithm (an RSA key for ``HS256`` or ``ES256``: the
  classic algorithm-confusion attack);
- any ``crit`` header: Bastion implements no JWS extension, so it must not accept a token
  that demands one;
- a missing or expired ``exp``, a ``nbf`` in the future, an ``aud`` that is not ours, an
  ``iss`` that is not exactly ours (``https://idp.example.com.evil`` merely contains it);
- a key id the provider does not publish (after one rate-limited refresh of its key set).

While no key has ever been fetched (the provider unreachable since start-up), tokens are
refused with 503 rather than 401: nobody's credential was wrong, and the brute-force guard
must not count it against the caller.

Verified tokens are remembered until they expire (keyed by their SHA-256), so a signature is
checked once per token, not once per request.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Container
from typing import Any

import jwt

from bastion.auth.identity import Identity
from bastion.auth.jwks import Fetch, KeySet, SigningKey, http_get
from bastion.errors import AuthenticationError, ServiceUnavailableError
from bastion.settings import JwtSettings

__all__ = ["JwtAuthenticator"]

_CACHE_SIZE = 10_000
# Which key types may verify which algorithms (and, for EC, on which curve).
_KEY_FOR = {
    "RS": ("RSA", None),
    "PS": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}


def _fits(key: SigningKey, algorithm: str) -> bool:
    """Whether ``key`` may verify ``algorithm``: its type, its curve, its declared ``alg``."""
    kty, crv = _KEY_FOR.get(algorithm, _KEY_FOR.get(algorithm[:2], ("", None)))
    if key.kty != kty or (crv is not None and key.crv != crv):
        return False
    return key.alg is None or key.alg == algorithm


class JwtAuthenticator:
    """Checks ``Authorization: Bearer <JWT>`` (see the module docstring)."""

    method = "jwt"

    def __init__(
        self,
        settings: JwtSettings,
        fetch: Fetch = http_get,
        known_roles: Container[str] = frozenset(
            {"admin", "operator", "user", "viewer", "console-viewer"}
        ),
        keys: KeySet | None = None,
    ) -> None:
        """``keys``: a key set to share (kept across configuration reloads)."""
        self._settings = settings
        self._known_roles = known_roles
        self.keys = keys if keys is not None else KeySet(settings, fetch)
        self._allowed = frozenset(settings.algorithms)
        self._audience = (
            [settings.audience] if isinstance(settings.audience, str) else list(settings.audience)
        )
        self._admin_roles = frozenset(settings.admin_roles)
        self._cache: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()
        self.verifications = 0

    @property
    def settings(self) -> JwtSettings:
        return self._settings

    async def authenticate(self, scheme: bytes, credential: bytes) -> Identity | None:
        if scheme != b"bearer" or credential.count(b".") != 2 or credential.startswith(b"bst_"):
            return None
        digest = hashlib.sha256(credential).digest()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        claims = await self.verify(credential)
        identity = self.identity(claims)
        self._cache[digest] = (identity, float(claims["exp"]) + self._settings.leeway)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return identity

    async def verify(self, token: bytes) -> dict[str, Any]:
        """The token's claims once its header, signature, issuer, audience and times are
        checked (raises :class:`AuthenticationError`, or 503 while no key is known)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationError() from None
        algorithm = header.get("alg")
        if algorithm not in self._allowed or "crit" in header:
            raise AuthenticationError()
        kid = header.get("kid")
        key = await self.keys.get(kid if isinstance(kid, str) else None)
        if key is None and not self.keys.available:
            # Not the caller's fault, and not a guess to count: the provider is unreachable.
            raise ServiceUnavailableError("The identity provider's keys are not available.")
        if key is None or not _fits(key, algorithm):
            raise AuthenticationError()
        self.verifications += 1
        settings = self._settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.jwk.key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={"require": ["exp", "iss", "aud"], "verify_signature": True},
            )
        except jwt.PyJWTError:
            raise AuthenticationError() from None
        if claims.get("iss") != settings.issuer:  # exact, whatever the library does
            raise AuthenticationError()
        return claims

    def identity(self, claims: dict[str, Any]) -> Identity:
        """The identity verified claims name: user, teams, and a role from the role claim."""
        names = self._settings.claims
        user = claims.get(names.user)
        if not isinstance(user, str) or not user:
            raise AuthenticationError()
        teams = _strings(claims.get(names.teams)) if names.teams else ()
        roles = _strings(claims.get(names.role)) if names.role else ()
        if self._admin_roles.intersection(roles):
            role = "admin"
        else:
            role = next((r for r in roles if r in self._known_roles), "user")
        return Identity(
            principal=user, role=role, credential_id=user, method=self.method, teams=teams
        )


def _strings(value: object) -> tuple[str, ...]:
    """A claim holding a string or a list of strings, as a tuple (anything else: empty)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()
