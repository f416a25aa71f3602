"""Web console sessions and OIDC sign-ins under way, kept in the store so that every worker
and every replica knows them (blocking; run through :class:`~bastion.store.calls.StoreCalls`).

Only the SHA-256 of a session id, or of a sign-in's ``state``, is ever written: someone who
reads the table cannot use what they read. A session row says who signed in and how, when it
ends, and whether it was revoked; the console (:mod:`bastion.console.sessions`) decides
whether it is still good. A sign-in row is taken (read and deleted) once: a ``state`` can
never be replayed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlalchemy import delete, insert, or_, select, update

from bastion.store import schema
from bastion.store.store import Store

__all__ = ["LoginRecord", "SessionLedger", "SessionRecord"]

s = schema.console_sessions
lg = schema.console_logins
p = schema.principals


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One console session as stored (``id_hash``: the SHA-256 hex of its id)."""

    id_hash: str
    principal: str
    method: str
    """``key`` (signed in with an API key) or ``oidc``."""
    credential: str
    """The key's credential id (a store key's id, a config key's name), or the OIDC subject."""
    role: str
    teams: tuple[str, ...]
    csrf: str
    created_at: float
    expires_at: float
    last_seen_at: float
    revoked_at: float | None = None
    disabled: bool = False
    """The principal is a store user that is disabled now (read with the session)."""


@dataclass(frozen=True, slots=True)
class LoginRecord:
    """An OIDC sign-in the browser was sent to the provider for."""

    state_hash: str
    nonce: str
    verifier: str
    """The PKCE code verifier (useless without the code, which only the browser gets)."""
    redirect_uri: str
    expires_at: float


class SessionLedger:
    """The store's console tables."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def create(self, record: SessionRecord) -> None:
        row = {
            "id_hash": record.id_hash,
            "principal": record.principal,
            "method": record.method,
            "credential": record.credential,
            "role": record.role,
            "teams": json.dumps(list(record.teams)),
            "csrf": record.csrf,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "last_seen_at": record.last_seen_at,
        }
        with self._store.writing() as conn:
            conn.execute(insert(s).values(**row))

    def find(self, id_hash: str) -> SessionRecord | None:
        """The session, with whether its principal is a disabled store user (None: unknown)."""
        statement = (
            select(s, p.c.disabled)
            .select_from(s.outerjoin(p, p.c.name == s.c.principal))
            .where(s.c.id_hash == id_hash)
        )
        with self._store.reading() as conn:
            row = conn.execute(statement).first()
        if row is None:
            return None
        return SessionRecord(
            id_hash=row.id_hash,
            principal=row.principal,
            method=row.method,
            credential=row.credential,
            role=row.role,
            teams=tuple(json.loads(row.teams)),
            csrf=row.csrf,
            created_at=row.created_at,
            expires_at=row.expires_at,
            last_seen_at=row.last_seen_at,
            revoked_at=row.revoked_at,
            disabled=bool(row.disabled),
        )

    def touch(self, id_hash: str, now: float) -> None:
        """The session was used (it stays alive ``idle_timeout`` longer)."""
        with self._store.writing() as conn:
            conn.execute(update(s).where(s.c.id_hash == id_hash).values(last_seen_at=now))

    def revoke(self, id_hash: str, now: float | None = None) -> bool:
        """End a session now (sign-out); True when a live one was revoked."""
        at = time.time() if now is None else now
        with self._store.writing() as conn:
            result = conn.execute(
                update(s).where(s.c.id_hash == id_hash, s.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )  # fmt: skip
        return bool(result.rowcount)

    def start_login(self, record: LoginRecord) -> None:
        with self._store.writing() as conn:
            conn.execute(
                insert(lg).values(
                    state_hash=record.state_hash,
                    nonce=record.nonce,
                    verifier=record.verifier,
                    redirect_uri=record.redirect_uri,
                    expires_at=record.expires_at,
                )
            )

    def take_login(self, state_hash: str, now: float | None = None) -> LoginRecord | None:
        """The sign-in for this state, deleted as it is read (None: unknown or expired)."""
        at = time.time() if now is None else now
        with self._store.writing() as conn:
            row = conn.execute(select(lg).where(lg.c.state_hash == state_hash)).first()
            if row is None:
                return None
            deleted = conn.execute(delete(lg).where(lg.c.state_hash == state_hash)).rowcount
        if not deleted or row.expires_at <= at:  # another replica took it first, or too late
            return None
        return LoginRecord(
            row.state_hash, row.nonce, row.verifier, row.redirect_uri, row.expires_at
        )

    def prune(self, now: float | None = None) -> int:
        """Forget ended sessions and abandoned sign-ins; how many rows went."""
        at = time.time() if now is None else now
        with self._store.writing() as conn:
            gone = conn.execute(
                delete(s).where(or_(s.c.expires_at <= at, s.c.revoked_at.is_not(None)))
            ).rowcount
            gone += conn.execute(delete(lg).where(lg.c.expires_at <= at)).rowcount
        return int(gone or 0)
