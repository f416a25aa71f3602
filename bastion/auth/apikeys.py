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
from bastion.errors import AuthenticationError, StoreUnavailableError

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
    """A known key, by hash: declared in the config file, or issued by the identity store."""

    name: str
    """The principal the key stands for (a config entry's name, or the owner in the store)."""
    hash: str
    role: str
    restrictions: Restrictions | None = None
    expires_at: float | None = None
    """Unix time after which the key is refused."""
    key_id: str | None = None
    """The store's id for the key; None for keys declared in the config file."""
    teams: tuple[str, ...] = ()


class ApiKeyAuthenticator:
    """Checks ``Authorization: Bearer bst_...`` against known key hashes.

    The lookup goes by the SHA-256 digest of the presented key, and the stored digest is then
    compared with :func:`hmac.compare_digest`, so no comparison leaks how much of a key matched.

    Keys issued by the identity store come and go while the gateway runs: the store's
    synchronizer calls :meth:`replace` with the full set, and reads :attr:`used` (when each
    store key was last used) to write it back in batches. If the store cannot be reached for
    longer than its ``stale_after``, store keys are refused with 503 (a revocation could have
    been missed) while keys from the config file keep working.
    """

    method = "api_key"

    def __init__(self, records: Iterable[ApiKeyRecord]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Identity, float, str | None]] = {}
        self._by_credential: dict[str, tuple[bytes, Identity, float, str | None]] = {}
        self.used: dict[str, float] = {}
        """Store key id -> when it was last used; taken and cleared by the synchronizer."""
        self.store_valid_until = math.inf
        """Store keys are refused after this Unix time (the synchronizer moves it on)."""
        self.replace(records)

    def replace(self, records: Iterable[ApiKeyRecord]) -> None:
        """Swap in a new set of keys at once (a request sees the old set or the new one)."""
        by_digest: dict[bytes, tuple[bytes, Identity, float, str | None]] = {}
        for record in records:
            digest = bytes.fromhex(record.hash.removeprefix("sha256:"))
            identity = Identity(
                principal=record.name,
                role=record.role,
                credential_id=record.key_id or record.name,
                method=self.method,
                teams=record.teams,
                restrictions=record.restrictions,
            )
            expires = record.expires_at if record.expires_at is not None else math.inf
            by_digest[digest] = (digest, identity, expires, record.key_id)
        by_credential: dict[str, tuple[bytes, Identity, float, str | None]] = {}
        shared: set[str] = set()
        for found in by_digest.values():
            credential = found[1].credential_id
            if credential in by_credential:
                shared.add(credential)
            by_credential[credential] = found
        for credential in shared:  # a config key named like a store key's id: neither
            del by_credential[credential]
        self._by_digest = by_digest
        self._by_credential = by_credential

    def __len__(self) -> int:
        return len(self._by_digest)

    def find(self, credential_id: str) -> Identity | None:
        """The identity of the key with this credential id (a store key's id, a config key's
        name) if it is usable now: None once it is revoked, expired, its owner disabled or
        deleted. Raises 503 for a store key while the store is out of reach for too long.
        (A console session signed in with a key asks this on each use.)"""
        found = self._by_credential.get(credential_id)
        if found is None or found[2] <= time.time():
            return None
        if found[3] is not None and time.time() > self.store_valid_until:
            raise StoreUnavailableError()
        return found[1]

    async def authenticate(self, scheme: bytes, credential: bytes) -> Identity | None:
        if scheme != b"bearer" or not credential.startswith(b"bst_"):
            return None
        # The digest lookup comes first: it is cheaper than the checksum, which only matters
        # for keys that are not known anyway.
        digest = hashlib.sha256(credential).digest()
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise AuthenticationError()
        now = time.time()
        if found[2] <= now:
            raise AuthenticationError("This API key has expired.", code="expired_api_key")
        key_id = found[3]
        if key_id is not None:
            if now > self.store_valid_until:
                raise StoreUnavailableError()
            self.used[key_id] = now
        return found[1]
