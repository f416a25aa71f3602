"""Console sessions: opened at sign-in, checked on every use, revoked at sign-out.

A session id is 256 random bits, given to the browser in an ``HttpOnly`` cookie and never
kept: the store holds its SHA-256 (:class:`~bastion.store.sessions.SessionLedger`), so every
worker and replica knows every session. Each session has its own CSRF token, which the
page sends back in ``X-CSRF-Token`` on every call; the cookie alone authorizes nothing.

A session is dead once it is revoked (sign-out), past ``console.session_lifetime`` since
sign-in, or unused for ``console.idle_timeout``. And its principal is checked again on every
use: a session opened with a key lives only while that key does (revoked, expired, its user
disabled or deleted: the key authenticator no longer knows it, and the session answers 401);
an OIDC session dies when a store user of its name is disabled.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from bastion.auth.apikeys import ApiKeyAuthenticator
from bastion.auth.identity import Identity
from bastion.console.headers import SESSION_COOKIE, read_cookie
from bastion.console.origin import OriginCheck
from bastion.errors import AuthenticationError, PermissionDeniedError
from bastion.pipeline.context import RequestContext
from bastion.settings import ConsoleSettings
from bastion.store.calls import StoreCalls
from bastion.store.sessions import SessionLedger, SessionRecord

__all__ = ["KEY", "OIDC", "Session", "SessionBook", "SessionGate", "check_csrf", "digest"]

KEY = "key"
OIDC = "oidc"
_TOUCH_EVERY = 60.0
"""A session's last use is written at most this often (a write per call would be waste)."""
_PRUNE_EVERY = 3600.0


def digest(secret: str) -> str:
    """What the store keeps of a session id or a sign-in state: its SHA-256, in hex."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    """A live session and who it stands for, as checked just now."""

    record: SessionRecord
    identity: Identity


class SessionBook:
    """Opens, checks and revokes sessions (the store's calls run on its threads)."""

    def __init__(
        self,
        ledger: SessionLedger,
        calls: StoreCalls,
        keys: ApiKeyAuthenticator,
        settings: ConsoleSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._calls = calls
        self._keys = keys
        self._lifetime = settings.session_lifetime
        self._idle = settings.idle_timeout
        self._clock = clock
        self._pruned = 0.0

    @property
    def lifetime(self) -> float:
        return self._lifetime

    async def open(self, identity: Identity, method: str) -> tuple[str, Session]:
        """A new session for ``identity``: the id for the cookie (shown to nobody else),
        and the session."""
        now = self._clock()
        session_id = secrets.token_urlsafe(32)
        record = SessionRecord(
            id_hash=digest(session_id),
            principal=identity.principal,
            method=method,
            credential=identity.credential_id,
            role=identity.role,
            teams=identity.teams,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self._lifetime,
            last_seen_at=now,
        )
        await self._calls.run(self._ledger.create, record)
        if now - self._pruned > _PRUNE_EVERY:
            self._pruned = now
            await self._calls.run(self._ledger.prune, now)
        return session_id, Session(record, identity)

    async def live(self, session_id: str) -> Session:
        """The session with this id if it is alive and its principal still may use it;
        otherwise 401 (always the same, whatever the reason)."""
        if not 0 < len(session_id) <= 128:
            raise AuthenticationError()
        record = await self._calls.run(self._ledger.find, digest(session_id))
        now = self._clock()
        if (
            record is None
            or record.revoked_at is not None
            or record.disabled
            or now >= record.expires_at
            or now - record.last_seen_at >= self._idle
        ):
            raise AuthenticationError()
        identity = self._identity(record)
        if identity is None:
            raise AuthenticationError()
        if now - record.last_seen_at >= _TOUCH_EVERY:
            await self._calls.run(self._ledger.touch, record.id_hash, now)
        return Session(record, identity)

    def _identity(self, record: SessionRecord) -> Identity | None:
        if record.method == KEY:
            identity = self._keys.find(record.credential)
            if identity is None or identity.principal != record.principal:
                return None
            return identity
        if record.method == OIDC:
            return Identity(
                principal=record.principal,
                role=record.role,
                credential_id=record.credential,
                method=OIDC,
                teams=record.teams,
            )
        return None

    async def revoke(self, session_id: str) -> None:
        await self._calls.run(self._ledger.revoke, digest(session_id), self._clock())


class SessionGate:
    """For the admin API: a request without an ``Authorization`` header that brings the
    session cookie is the session's principal, if it also brings the session's CSRF token
    (compared in constant time) and is not cross-site. None: no session cookie."""

    def __init__(self, book: SessionBook, origins: OriginCheck) -> None:
        self._book = book
        self._origins = origins

    async def __call__(self, ctx: RequestContext) -> Identity | None:
        headers = ctx.scope["headers"]
        session_id = read_cookie(headers, SESSION_COOKIE)
        if session_id is None:
            return None
        self._origins(ctx.method, headers)
        session = await self._book.live(session_id)
        check_csrf(headers, session.record)
        return session.identity


def check_csrf(headers: list[tuple[bytes, bytes]], record: SessionRecord) -> None:
    """403 unless the request's ``X-CSRF-Token`` is the session's."""
    token = next((v for n, v in headers if n == b"x-csrf-token"), b"")
    if not hmac.compare_digest(token, record.csrf.encode("ascii")):
        raise PermissionDeniedError(
            "This call needs the console session's X-CSRF-Token header.", code="csrf_failed"
        )
