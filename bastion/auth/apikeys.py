"""API keys: their format, generation, hashing, and the authenticator that checks them.

A key reads ``bst_`` + 32 random base62 characters (190 bits) + a 6-character base62 CRC-32
checksum of those 32 characters. The prefix lets secret scanners find leaked keys; the
checksum lets the gateway refuse a mistyped or made-up key without any lookup. With this much
entropy a fast hash is the right one (no password stretching is needed): the config and the
state directory keep ``sha256:<hex>`` only, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from bastion.auth.identity import Identity, Restrictions
from bastion.errors import AuthenticationError

__all__ = [
    "KEY_PREFIX",
    "ApiKeyAuthenticator",
    "ApiKeyRecord",
    "display_prefix",
    "generate_key",
    "has_valid_checksum",
    "hash_key",
]

KEY_PREFIX = "bst_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ALPHABET_BYTES = frozenset(_ALPHABET.encode())
_BODY_LEN = 32
_CHECK_LEN = 6
KEY_LENGTH = len(KEY_PREFIX) + _BODY_LEN + _CHECK_LEN


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits))


def _checksum(body: bytes) -> str:
    return _base62(zlib.crc32(body), _CHECK_LEN)


def generate_key() -> str:
    """Return a new random API key (shown once; store only :func:`hash_key` of it)."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LEN))
    return KEY_PREFIX + body + _checksum(body.encode())


def has_valid_checksum(key: bytes) -> bool:
    """True when ``key`` has the shape of a Bastion key and its checksum matches."""
    if len(key) != KEY_LENGTH or not key.startswith(b"bst_"):
        return False
    body = key[4 : 4 + _BODY_LEN]
    if not _ALPHABET_BYTES.issuperset(body):
        return False
    return hmac.compare_digest(_checksum(body).encode(), key[4 + _BODY_LEN :])


def hash_key(key: str | bytes) -> str:
    """The stored form of a key: ``sha256:`` and the hex digest."""
    raw = key.encode() if isinstance(key, str) else key
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def display_prefix(key: str) -> str:
    """A short, non-secret id for a key, safe to show and log (``bst_Ab3d``)."""
    return key[: len(KEY_PREFIX) + 4]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A known key, by hash: what the config file or the state directory declares."""

    name: str
    hash: str
    role: str
    restrictions: Restrictions | None = None
    expires_at: float | None = None
    """Unix time after which the key is refused."""


class ApiKeyAuthenticator:
    """Checks ``Authorization: Bearer bst_...`` against known key hashes.

    The lookup goes by the SHA-256 digest of the presented key, and the stored digest is then
    compared with :func:`hmac.compare_digest`, so no comparison leaks how much of a key matched.
    """

    method = "api_key"

    def __init__(self, records: Iterable[ApiKeyRecord]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Identity, float]] = {}
        for record in records:
            digest = bytes.fromhex(record.hash.removeprefix("sha256:"))
            identity = Identity(
                principal=record.name,
                role=record.role,
                credential_id=record.name,
                method=self.method,
                restrictions=record.restrictions,
            )
            expires = record.expires_at if record.expires_at is not None else math.inf
            self._by_digest[digest] = (digest, identity, expires)

    def __len__(self) -> int:
        return len(self._by_digest)

    async def authenticate(self, scheme: bytes, credential: bytes) -> Identity | None:
        if scheme != b"bearer" or not credential.startswith(b"bst_"):
            return None
        # The digest lookup comes first: it is cheaper than the checksum, which only matters
        # for keys that are not known anyway.
        digest = hashlib.sha256(credential).digest()
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise AuthenticationError()
        if found[2] <= time.time():
            raise AuthenticationError("This API key has expired.", code="expired_api_key")
        return found[1]
