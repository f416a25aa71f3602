"""Console sessions: lifetime, idle time, sign-out, and the principal checked on each use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.auth.apikeys import ApiKeyAuthenticator, ApiKeyRecord, generate_key, hash_key
from bastion.auth.identity import Identity
from bastion.console.sessions import KEY, OIDC, SessionBook, check_csrf, digest
from bastion.errors import AuthenticationError, PermissionDeniedError
from bastion.settings import ConsoleSettings, StoreSettings
from bastion.store.calls import StoreCalls
from bastion.store.records import Actor
from bastion.store.sessions import SessionLedger
from bastion.store.store import Store

SECRET = generate_key()
RECORD = ApiKeyRecord("alice", hash_key(SECRET), "admin", key_id="key_a")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


Parts = tuple[SessionBook, ApiKeyAuthenticator, Clock, Store]


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    calls = StoreCalls(StoreSettings())
    keys = ApiKeyAuthenticator([RECORD])
    clock = Clock()
    settings = ConsoleSettings(session_lifetime=600, idle_timeout=120)
    yield SessionBook(SessionLedger(store), calls, keys, settings, clock), keys, clock, store
    calls.close()
    store.close()


async def _key_identity(keys: ApiKeyAuthenticator) -> Identity:
    identity = await keys.authenticate(b"bearer", SECRET.encode())
    assert identity is not None
    return identity


async def test_only_the_hash_of_the_id_is_kept_and_the_session_lives(parts: Parts) -> None:
    book, keys, _, _ = parts
    session_id, opened = await book.open(await _key_identity(keys), KEY)
    assert opened.record.id_hash == digest(session_id) != session_id
    assert len(session_id) >= 43 and len(opened.record.csrf) >= 43
    live = await book.live(session_id)
    assert live.identity.principal == "alice" and live.record.csrf == opened.record.csrf
    with pytest.raises(AuthenticationError):
        await book.live(session_id[:-1] + ("A" if session_id[-1] != "A" else "B"))


async def test_a_session_ends_after_its_lifetime_even_if_used(parts: Parts) -> None:
    book, keys, clock, _ = parts
    session_id, _ = await book.open(await _key_identity(keys), KEY)
    for _ in range(5):  # used every 100 s: never idle ...
        clock.now += 100
        await book.live(session_id)
    clock.now += 100  # ... but 600 s after sign-in it is over
    with pytest.raises(AuthenticationError):
        await book.live(session_id)


async def test_an_idle_session_ends(parts: Parts) -> None:
    book, keys, clock, _ = parts
    session_id, _ = await book.open(await _key_identity(keys), KEY)
    clock.now += 119
    await book.live(session_id)
    clock.now += 119  # the last use moved the idle clock on (written: more than a minute)
    await book.live(session_id)
    clock.now += 121
    with pytest.raises(AuthenticationError):
        await book.live(session_id)


async def test_sign_out_revokes(parts: Parts) -> None:
    book, keys, _, _ = parts
    session_id, _ = await book.open(await _key_identity(keys), KEY)
    await book.revoke(session_id)
    with pytest.raises(AuthenticationError):
        await book.live(session_id)


async def test_a_key_session_dies_with_its_key(parts: Parts) -> None:
    book, keys, _, _ = parts
    session_id, _ = await book.open(await _key_identity(keys), KEY)
    keys.replace([])  # revoked, expired, or its user disabled or deleted: gone from the set
    with pytest.raises(AuthenticationError):
        await book.live(session_id)
    keys.replace([RECORD])
    assert (await book.live(session_id)).identity.credential_id == "key_a"


async def test_an_oidc_session_dies_when_its_store_user_is_disabled(parts: Parts) -> None:
    book, _, _, store = parts
    identity = Identity("carol", "admin", "carol", "jwt", teams=("ml",))
    session_id, _ = await book.open(identity, OIDC)
    live = await book.live(session_id)
    assert (live.identity.principal, live.identity.teams, live.identity.method) == (
        "carol", ("ml",), "oidc",
    )  # fmt: skip
    actor = Actor("root", "cli", "-", "-")
    store.create_principal(actor, "carol", role="admin")
    await book.live(session_id)
    store.update_principal(actor, "carol", disabled=True)
    with pytest.raises(AuthenticationError):
        await book.live(session_id)


async def test_csrf_is_compared_whole(parts: Parts) -> None:
    book, keys, _, _ = parts
    _, session = await book.open(await _key_identity(keys), KEY)
    token = session.record.csrf.encode()
    check_csrf([(b"x-csrf-token", token)], session.record)
    for wrong in ([], [(b"x-csrf-token", b"")], [(b"x-csrf-token", token[:-1])],
                  [(b"x-csrf-token", token + b"x")]):  # fmt: skip
        with pytest.raises(PermissionDeniedError):
            check_csrf(wrong, session.record)
