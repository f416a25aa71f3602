"""The store's console tables on SQLite and PostgreSQL: sessions and OIDC sign-ins."""

from __future__ import annotations

from sqlalchemy import select

from bastion.store import schema
from bastion.store.records import Actor
from bastion.store.sessions import LoginRecord, SessionLedger, SessionRecord
from bastion.store.store import Store

ACTOR = Actor("root", "cli", "-", "-")


def _session(id_hash: str, principal: str = "alice", expires_at: float = 2000.0) -> SessionRecord:
    return SessionRecord(
        id_hash=id_hash, principal=principal, method="key", credential="key_1", role="admin",
        teams=("ml", "ops"), csrf="token", created_at=1000.0, expires_at=expires_at,
        last_seen_at=1000.0,
    )  # fmt: skip


def test_a_session_is_found_by_its_hash_and_revoked_once(store: Store) -> None:
    ledger = SessionLedger(store)
    ledger.create(_session("a" * 64))
    found = ledger.find("a" * 64)
    assert found == _session("a" * 64)  # teams round-trip, not revoked, not disabled
    assert ledger.find("b" * 64) is None
    ledger.touch("a" * 64, 1500.0)
    assert (found := ledger.find("a" * 64)) is not None and found.last_seen_at == 1500.0
    assert ledger.revoke("a" * 64, 1600.0) is True
    assert ledger.revoke("a" * 64, 1700.0) is False  # already
    assert (found := ledger.find("a" * 64)) is not None and found.revoked_at == 1600.0


def test_a_disabled_store_user_is_seen_with_the_session(store: Store) -> None:
    ledger = SessionLedger(store)
    store.create_principal(ACTOR, "carol", role="admin")
    ledger.create(_session("c" * 64, principal="carol"))
    ledger.create(_session("d" * 64, principal="nobody-in-the-store"))
    assert (found := ledger.find("c" * 64)) is not None and not found.disabled
    store.update_principal(ACTOR, "carol", disabled=True)
    assert (found := ledger.find("c" * 64)) is not None and found.disabled
    assert (found := ledger.find("d" * 64)) is not None and not found.disabled


def test_a_sign_in_is_taken_once_and_not_after_it_expires(store: Store) -> None:
    ledger = SessionLedger(store)
    ledger.start_login(LoginRecord("s" * 64, "n", "v", "http://gw/ui/oidc/callback", 2000.0))
    ledger.start_login(LoginRecord("t" * 64, "n", "v", "http://gw/ui/oidc/callback", 1000.0))
    taken = ledger.take_login("s" * 64, now=1500.0)
    assert taken is not None and (taken.nonce, taken.verifier) == ("n", "v")
    assert ledger.take_login("s" * 64, now=1500.0) is None  # used
    assert ledger.take_login("t" * 64, now=1500.0) is None  # too late (and now gone)
    with store.reading() as conn:
        assert conn.execute(select(schema.console_logins)).all() == []


def test_prune_forgets_ended_sessions_and_abandoned_sign_ins(store: Store) -> None:
    ledger = SessionLedger(store)
    ledger.create(_session("1" * 64, expires_at=1200.0))  # ended
    ledger.create(_session("2" * 64, expires_at=9000.0))  # live
    ledger.create(_session("3" * 64, expires_at=9000.0))
    ledger.revoke("3" * 64, 1100.0)  # signed out
    ledger.start_login(LoginRecord("x" * 64, "n", "v", "http://gw/cb", 1200.0))
    assert ledger.prune(now=1500.0) == 3
    assert ledger.find("2" * 64) is not None
    assert ledger.find("1" * 64) is None and ledger.find("3" * 64) is None
