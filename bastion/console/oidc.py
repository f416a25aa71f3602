"""Console sign-in through an OpenID Connect provider: the authorization code flow.

``start`` sends the browser to the provider with a fresh ``state`` (which the browser also
keeps in a short-lived cookie, so the flow's end must happen in the browser that began it),
a ``nonce`` (which the id token must carry back) and a PKCE challenge (S256: only who holds
the verifier can redeem the code). The verifier and nonce are kept in the store under the
SHA-256 of the state, for ``console.oidc.login_timeout``, and taken once.

``finish`` checks the state against the cookie (constant time), takes the sign-in from the
store, redeems the code at the token endpoint (a POST from the gateway, with the verifier
and, for a confidential client, its secret), verifies the id token exactly as a bearer JWT
(:class:`~bastion.auth.tokens.JwtAuthenticator`: algorithm list, key type, signature,
issuer, audience = the client id, expiry) and then its nonce. The identity comes from the
same claims as ``auth.jwt``'s. Every refusal carries a short code for the page; nothing the
provider said is ever shown.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from bastion.auth.identity import Identity
from bastion.auth.tokens import JwtAuthenticator
from bastion.console.sessions import digest
from bastion.errors import (
    AuthenticationError,
    BastionError,
    ServiceUnavailableError,
)
from bastion.settings import ConsoleOidcSettings, JwtClaims, JwtSettings
from bastion.store.calls import StoreCalls
from bastion.store.sessions import LoginRecord, SessionLedger

__all__ = ["Call", "OidcSignIn", "id_token_settings"]

Call = Callable[[bytes, str, bytes, tuple[tuple[bytes, bytes], ...]], Awaitable[tuple[int, bytes]]]
"""One HTTP request to the provider: method, URL, body, headers -> status, body
(:func:`bastion.auth.jwks.http_call`)."""
_METADATA_TTL = 3600.0
_MAX_PARAM = 2048


def id_token_settings(oidc: ConsoleOidcSettings, jwt: JwtSettings | None) -> JwtSettings:
    """How the console's id tokens are verified: ``auth.jwt``'s provider, or the separate
    ``issuer``; the audience is always the console's client id."""
    if oidc.issuer is None:
        assert jwt is not None  # the settings refuse console.oidc without either
        return jwt.model_copy(update={"audience": oidc.client_id})
    return JwtSettings(
        issuer=oidc.issuer,
        audience=oidc.client_id,
        algorithms=oidc.algorithms,
        claims=oidc.claims or JwtClaims(),
        admin_roles=oidc.admin_roles if oidc.admin_roles is not None else ("admin",),
    )


def _challenge(verifier: str) -> str:
    """PKCE S256: BASE64URL(SHA-256(verifier)), without padding (RFC 7636)."""
    hashed = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(hashed).rstrip(b"=").decode("ascii")


def _refused(code: str) -> AuthenticationError:
    return AuthenticationError("The sign-in was refused.", code=code)


@dataclass(frozen=True, slots=True)
class _Metadata:
    authorization_endpoint: str
    token_endpoint: str
    fetched_at: float


class OidcSignIn:
    """The authorization code flow with PKCE against one provider."""

    def __init__(
        self,
        settings: ConsoleOidcSettings,
        verifier: JwtAuthenticator,
        ledger: SessionLedger,
        calls: StoreCalls,
        call: Call,
        client_secret: str | None = None,
    ) -> None:
        self._settings = settings
        self._issuer = verifier.settings.issuer
        self._verifier = verifier
        self._ledger = ledger
        self._calls = calls
        self._call = call
        self._secret = client_secret
        self._metadata: _Metadata | None = None

    @property
    def login_timeout(self) -> float:
        return self._settings.login_timeout

    async def start(self, redirect_uri: str) -> tuple[str, str]:
        """Where to send the browser, and the state to bind to it (its cookie)."""
        metadata = await self._discover()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        expires = time.time() + self._settings.login_timeout
        record = LoginRecord(digest(state), nonce, verifier, redirect_uri, expires)
        await self._calls.run(self._ledger.start_login, record)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._settings.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self._settings.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": _challenge(verifier),
                "code_challenge_method": "S256",
            },
            quote_via=quote,
        )
        endpoint = metadata.authorization_endpoint
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", state

    async def finish(self, state: str, code: str, bound: str | None) -> Identity:
        """The identity of a sign-in that came back with ``code`` and ``state``; ``bound``:
        the state the browser's cookie holds."""
        if not (0 < len(state) <= _MAX_PARAM and 0 < len(code) <= _MAX_PARAM):
            raise _refused("bad_request")
        if bound is None or not hmac.compare_digest(state.encode(), bound.encode()):
            raise _refused("state_mismatch")
        login = await self._calls.run(self._ledger.take_login, digest(state))
        if login is None:
            raise _refused("state_unknown")
        token = await self._redeem(code, login)
        claims = await self._verifier.verify(token.encode("ascii"))
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(
            nonce.encode(), login.nonce.encode()
        ):
            raise _refused("nonce_mismatch")
        audience = claims.get("aud")
        several = isinstance(audience, list) and len(audience) > 1
        if several and claims.get("azp") != self._settings.client_id:  # OIDC Core 3.1.3.7
            raise _refused("wrong_audience")
        return self._verifier.identity(claims)

    async def _redeem(self, code: str, login: LoginRecord) -> str:
        """The id token the token endpoint gives for the code (POST, form-encoded)."""
        metadata = await self._discover()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": login.redirect_uri,
            "code_verifier": login.verifier,
            "client_id": self._settings.client_id,
        }
        headers = [(b"content-type", b"application/x-www-form-urlencoded")]
        if self._secret is not None:
            pair = f"{quote(self._settings.client_id, safe='')}:{quote(self._secret, safe='')}"
            headers.append((b"authorization", b"Basic " + base64.b64encode(pair.encode())))
        status, body = await self._request(
            b"POST", metadata.token_endpoint, urlencode(form).encode(), tuple(headers)
        )
        if status != 200:
            raise _refused("token_refused")
        answer = _json_object(body)
        token = answer.get("id_token") if answer is not None else None
        if not isinstance(token, str) or not token.isascii():
            raise _refused("no_id_token")
        return token

    async def _discover(self) -> _Metadata:
        """The provider's endpoints, from its discovery document (kept an hour)."""
        known = self._metadata
        if known is not None and time.monotonic() - known.fetched_at < _METADATA_TTL:
            return known
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        status, body = await self._request(b"GET", url, b"", ())
        document = _json_object(body) if status == 200 else None
        if document is None or document.get("issuer") != self._issuer:
            raise ServiceUnavailableError(
                "The identity provider's configuration is not usable.", code="provider_unusable"
            )
        endpoints = [document.get(n) for n in ("authorization_endpoint", "token_endpoint")]
        if not all(isinstance(e, str) and e.startswith(("https://", "http://")) for e in endpoints):
            raise ServiceUnavailableError(
                "The identity provider's configuration is not usable.", code="provider_unusable"
            )
        self._metadata = _Metadata(str(endpoints[0]), str(endpoints[1]), time.monotonic())
        return self._metadata

    async def _request(
        self, method: bytes, url: str, body: bytes, headers: tuple[tuple[bytes, bytes], ...]
    ) -> tuple[int, bytes]:
        try:
            return await self._call(method, url, body, headers)
        except (BastionError, OSError) as exc:  # unreachable, refused, or a bad answer
            raise ServiceUnavailableError(
                "The identity provider cannot be reached.", code="provider_unreachable"
            ) from exc


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None
