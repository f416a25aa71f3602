"""An identity provider's signing keys (a JWKS), fetched, cached and refreshed.

The key set is fetched when first needed, again every ``jwks_refresh_interval``, and early when
a token names a key id that is not known (the provider rotated its keys), but never more often
than ``jwks_min_refresh_interval``, so tokens with made-up key ids cannot make the gateway
hammer the provider. A failed fetch keeps the keys already known.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from bastion.errors import BastionError
from bastion.settings import JwtSettings, UpstreamClientSettings
from bastion.upstream.client import UpstreamPool
from bastion.upstream.origin import Origin

__all__ = ["Fetch", "KeySet", "SigningKey", "http_call", "http_get"]

log = logging.getLogger("bastion.auth")

Fetch = Callable[[str], Awaitable[bytes]]
_FETCH_SETTINGS = UpstreamClientSettings(
    connect_timeout=5.0, read_timeout=10.0, stream_idle_timeout=10.0, max_idle_connections=0
)


async def http_call(
    method: bytes, url: str, body: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> tuple[int, bytes]:
    """One request to an identity provider on a connection of its own: status and body."""
    origin = Origin.from_url(url)
    rest = url.split("://", 1)[1]
    target = ("/" + rest.split("/", 1)[1]) if "/" in rest else "/"
    pool = UpstreamPool(_FETCH_SETTINGS)
    try:
        response = await pool.request(
            origin, method, target.encode(), [(b"accept", b"application/json"), *headers], body
        )
        content = await response.read()
    finally:
        await pool.aclose()
    return response.status, content


async def http_get(url: str) -> bytes:
    """GET ``url`` and return its body; raises :class:`BastionError` unless the status is 200."""
    status, body = await http_call(b"GET", url)
    if status != 200:
        raise BastionError(f"GET {url} answered {status}")
    return body


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A published key, with the JWK fields that say what it may verify."""

    jwk: PyJWK
    kty: str
    crv: str | None
    alg: str | None


class KeySet:
    """The provider's public keys, by key id."""

    def __init__(self, settings: JwtSettings, fetch: Fetch = http_get) -> None:
        self._settings = settings
        self._fetch = fetch
        self._keys: dict[str | None, SigningKey] = {}
        self._fetched_at = -1e9
        self._lock = asyncio.Lock()
        self._failing = False
        self.fetches = 0
        """How many times the key set was fetched (for tests and metrics)."""

    async def get(self, kid: str | None) -> SigningKey | None:
        """The key with id ``kid`` (None: a key without an id), refreshing when allowed."""
        age = time.monotonic() - self._fetched_at
        key = self._keys.get(kid)
        if key is not None and age < self._settings.jwks_refresh_interval:
            return key
        # A fetch under way is waited for (the lock), so that requests arriving while the
        # first fetch runs are not refused for want of keys about to arrive.
        if age >= self._settings.jwks_min_refresh_interval or self._lock.locked():
            await self._refresh()
        return self._keys.get(kid)

    @property
    def available(self) -> bool:
        """Whether any key is known (False until a first fetch has succeeded)."""
        return bool(self._keys)

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._settings.jwks_min_refresh_interval:
                return  # another request refreshed while this one waited
            self._fetched_at = time.monotonic()
            self.fetches += 1
            try:
                keys = _parse(orjson.loads(await self._document()))
            except (BastionError, OSError, ValueError, KeyError, TypeError) as exc:
                if not self._failing:
                    log.warning(
                        "cannot fetch the JWT signing keys (%s); keeping %d known",
                        exc,
                        len(self._keys),
                    )
                self._failing = True
                return
            if self._failing or keys.keys() != self._keys.keys():
                log.info("JWT signing keys: %d (%s)", len(keys), ", ".join(map(str, keys)))
            self._failing = False
            self._keys = keys

    async def _document(self) -> bytes:
        path = self._settings.jwks_file
        if path is not None:
            return await asyncio.to_thread(path.read_bytes)
        return await self._fetch(await self._jwks_url())

    async def _jwks_url(self) -> str:
        if self._settings.jwks_url is not None:
            return self._settings.jwks_url
        discovery = self._settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = orjson.loads(await self._fetch(discovery))
        url = document["jwks_uri"]
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ValueError("the discovery document has no usable jwks_uri")
        return url


def _parse(document: Any) -> dict[str | None, SigningKey]:
    """Signing keys of a JWKS document by key id; unusable keys are skipped."""
    keys: dict[str | None, SigningKey] = {}
    for data in document["keys"]:
        if not isinstance(data, dict) or data.get("use", "sig") != "sig":
            continue
        try:
            keys[data.get("kid")] = SigningKey(
                PyJWK(data), str(data["kty"]), data.get("crv"), data.get("alg")
            )
        except PyJWKError as exc:
            log.warning("skipping JWT key %s: %s", data.get("kid"), exc)
    return keys
