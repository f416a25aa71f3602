from __future__ import annotations

import time

import pytest

from bastion.auth.apikeys import (
    KEY_PREFIX,
    ApiKeyAuthenticator,
    ApiKeyRecord,
    display_prefix,
    generate_key,
    has_valid_checksum,
    hash_key,
)
from bastion.errors import AuthenticationError


def test_generated_keys_have_prefix_checksum_and_are_unique() -> None:
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        assert len(key) == 42
        assert has_valid_checksum(key.encode())


def test_a_single_typo_breaks_the_checksum() -> None:
    key = generate_key()
    for position in range(4, len(key)):
        replacement = "a" if key[position] != "a" else "b"
        typo = key[:position] + replacement + key[position + 1 :]
        assert not has_valid_checksum(typo.encode())


def test_hash_is_sha256_and_display_prefix_is_short() -> None:
    key = generate_key()
    assert hash_key(key).startswith("sha256:") and len(hash_key(key)) == 71
    assert display_prefix(key) == key[:8]


async def test_authenticator_accepts_known_and_refuses_others() -> None:
    key, other = generate_key(), generate_key()
    auth = ApiKeyAuthenticator([ApiKeyRecord("alice", hash_key(key), "user")])
    identity = await auth.authenticate(b"bearer", key.encode())
    assert identity is not None and identity.principal == "alice" and identity.role == "user"
    with pytest.raises(AuthenticationError):
        await auth.authenticate(b"bearer", other.encode())
    with pytest.raises(AuthenticationError):
        await auth.authenticate(b"bearer", key[:-1].encode() + b"!")
    assert await auth.authenticate(b"basic", key.encode()) is None
    assert await auth.authenticate(b"bearer", b"sk-not-ours") is None


async def test_expired_keys_are_refused() -> None:
    old, new = generate_key(), generate_key()
    auth = ApiKeyAuthenticator(
        [
            ApiKeyRecord("old", hash_key(old), "user", expires_at=time.time() - 1),
            ApiKeyRecord("new", hash_key(new), "user", expires_at=time.time() + 3600),
        ]
    )
    with pytest.raises(AuthenticationError) as caught:
        await auth.authenticate(b"bearer", old.encode())
    assert caught.value.code == "expired_api_key"
    assert await auth.authenticate(b"bearer", new.encode()) is not None
