"""The identity store: users, service accounts, teams, API keys and the audit trail.

One class over SQLAlchemy Core, the same code for SQLite (the default, a file in the state
directory) and PostgreSQL (several replicas). Its methods are blocking; the gateway calls them
from a worker thread, never on the request path (requests read the in-process cache that
:mod:`bastion.store.sync` keeps).

Every change that a gateway's cache must see bumps the store's *revision* in the same
transaction, as its first statement: on PostgreSQL that row lock orders concurrent writers, so
a reader that sees revision N also sees every change up to N. Each administrative change is
written to the audit trail in the same transaction as the change itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from bastion.auth.apikeys import display_prefix, generate_key, hash_key
from bastion.errors import (
    BadRequestError,
    ConfigError,
    ConflictError,
    NotFoundError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from bastion.settings import Secret, StoreSettings
from bastion.store import schema
from bastion.store.deadlines import Deadlines, postgres_connect_args
from bastion.store.migrations import migrate
from bastion.store.records import (
    Actor,
    AuditEvent,
    AuditQuery,
    KeyGrant,
    Principal,
    Snapshot,
    StoredKey,
    Team,
)

__all__ = [
    "CONNECTIONS",
    "KINDS",
    "NAME_PATTERN",
    "NAME_RULE",
    "Store",
    "database_url",
    "valid_name",
]

KINDS = ("user", "service")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}"
"""The names of users, teams and keys (read alike by Python and by JSON Schema)."""
NAME_RULE = "1 to 128 letters, digits or . _ @ + - (starting with a letter or digit)"
_NAME = re.compile(NAME_PATTERN)
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_MAX_AUDIT_QUERY = 10_000
CONNECTIONS = 8
"""The most PostgreSQL connections one store opens (a pool of 4, and 4 more at busy times)."""
_POOL_SIZE = 4

p, t, tm, k, a = (
    schema.principals,
    schema.teams,
    schema.team_members,
    schema.api_keys,
    schema.audit_log,
)


def valid_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequestError(f"a {what} name is {NAME_RULE}", param="name")
    return name


def _bounded(text: str | None, limit: int, param: str) -> None:
    """The same limits on SQLite (which would store anything) and PostgreSQL (which refuses)."""
    if text is not None and (not isinstance(text, str) or len(text) > limit):
        raise BadRequestError(f"{param} is at most {limit} characters", param=param)


def _new_id(kind: str) -> str:
    return kind + "_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


def _dump(values: Sequence[str] | None) -> str | None:
    return None if values is None else orjson.dumps(list(values)).decode()


def _load(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(orjson.loads(text))


def database_url(settings: StoreSettings, state_dir: Path) -> str:
    """The SQLAlchemy URL for ``store.url`` (None: SQLite in the state dir); a secret is read
    here, once."""
    url = settings.url.resolve() if isinstance(settings.url, Secret) else settings.url
    if url is None:
        return f"sqlite:///{state_dir / 'bastion.db'}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def _sqlite_file(url: str) -> Path | None:
    path = url.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") or path == url else Path(path)


def _engine(url: str, settings: StoreSettings, deadlines: Deadlines) -> Engine:
    if url.startswith("sqlite"):
        path = _sqlite_file(url)
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # private from the start
        # a statement waits this long for another writer's lock (the CLI, another process)
        busy = settings.statement_timeout
        engine = create_engine(url, connect_args={"timeout": busy})
        event.listen(engine, "connect", functools.partial(_sqlite_connect, busy_ms=busy * 1000))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql"):
        engine = create_engine(
            url,
            pool_size=_POOL_SIZE,
            max_overflow=CONNECTIONS - _POOL_SIZE,
            pool_timeout=settings.connect_timeout,  # waiting for a free connection
            connect_args=postgres_connect_args(url, settings),
        )
        deadlines.attach(engine)  # also checks a pooled connection before use, in time
        return engine
    raise ConfigError("give a postgresql:// URL, or leave it unset for SQLite", "store.url")


def _sqlite_begin(conn: Connection) -> None:
    # A transaction that reads before it writes (a migration) must take the write lock at
    # BEGIN: upgrading a read lock fails at once, without waiting, if another writer came first.
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_connect(dbapi_connection: Any, _record: Any, *, busy_ms: float) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own handling defers it
    # past DDL); WAL lets the gateway read while the CLI writes.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            # Two connections turning a new file to WAL at once: SQLite refuses one at once
            # (no busy wait, that could deadlock); it tries again.
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    cursor.execute("PRAGMA cache_size=-1024")  # 1 MiB per connection: bounded memory
    cursor.close()


class Store:
    """Blocking store operations; safe to call from several threads at once. Each call ends
    within ``settings``' deadlines, even if the database stops answering (see
    :mod:`bastion.store.deadlines`)."""

    def __init__(self, url: str, settings: StoreSettings | None = None) -> None:
        self.url = url
        chosen = settings if settings is not None else StoreSettings()
        self._deadlines = Deadlines(chosen)
        self._engine = _engine(url, chosen, self._deadlines)
        self.dialect = self._engine.dialect.name

    @classmethod
    def open(cls, url: str, settings: StoreSettings | None = None) -> Store:
        """Connect and apply pending migrations (raises StoreUnavailableError if unreachable;
        a migration must fit in ``statement_timeout`` like any call)."""
        store = cls(url, settings)
        try:
            with (
                store._watched("cannot open the store"),
                store._engine.execution_options(sqlite_immediate=True).begin() as conn,
            ):
                migrate(conn)
        except BaseException:  # unreachable, or newer than this code (ConfigError)
            store.close()
            raise
        return store

    def close(self) -> None:
        self._engine.dispose()
        self._deadlines.close()

    @property
    def timeouts(self) -> int:
        """Calls whose connection was cut at their deadline (the database did not answer)."""
        return self._deadlines.cuts

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self._engine.url.render_as_string(hide_password=True)

    # -- transactions -----------------------------------------------------------------

    @contextmanager
    def _watched(self, failing: str = "the store failed") -> Iterator[None]:
        """One call, within its deadlines; a database failure becomes StoreUnavailableError
        (StoreTimeoutError when the call got no answer in time)."""
        with self._deadlines.call() as call:
            try:
                yield
            except (DBAPIError, SQLAlchemyError) as exc:
                if call.cut:
                    message = f"{failing}: no answer within {call.limit:g} s"
                    raise StoreTimeoutError(message) from None
                raise StoreUnavailableError(f"{failing}: {_reason(exc)}") from None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._watched(), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self, bump: bool = True) -> Iterator[Connection]:
        with self._watched():
            try:
                with self._engine.begin() as conn:
                    if bump:  # first, so that it takes the row lock that orders writers
                        conn.execute(
                            update(schema.revision)
                            .where(schema.revision.c.id == 1)
                            .values(revision=schema.revision.c.revision + 1)
                        )
                    yield conn
            except IntegrityError:
                raise ConflictError("That conflicts with something that already exists.") from None

    def reading(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for reads (for the store's companion modules: usage)."""
        return self._read()

    def writing(self) -> contextlib.AbstractContextManager[Connection]:
        """A transaction that does not bump the revision (usage, audit: nothing to reload)."""
        return self._write(bump=False)

    # -- what the gateway's cache reads ------------------------------------------------

    def revision(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(schema.revision.c.revision)).scalar_one())

    def snapshot(self) -> Snapshot:
        """Every key that is not revoked and whose owner is enabled, with the owner's facts."""
        with self._read() as conn:
            # The revision is read first: rows read after it are at least that new, so the
            # next poll can only reload too often, never miss a change.
            current = int(conn.execute(select(schema.revision.c.revision)).scalar_one())
            teams = self._teams_by_principal(conn)
            rows = conn.execute(
                select(k, p.c.name.label("owner"), p.c.kind, p.c.role)
                .join(p, p.c.id == k.c.principal_id)
                .where(k.c.revoked_at.is_(None), p.c.disabled.is_(False))
            ).all()
        grants = tuple(
            KeyGrant(
                id=row.id,
                digest=bytes.fromhex(row.digest),
                principal=row.owner,
                kind=row.kind,
                role=row.role,
                teams=teams.get(row.principal_id, ()),
                models=_load(row.models),
                routes=_load(row.routes),
                networks=_load(row.networks),
                expires_at=row.expires_at,
            )
            for row in rows
        )
        return Snapshot(current, grants)

    def touch_keys(self, last_used: Mapping[str, float]) -> None:
        """Record when keys were last used (no revision bump: caches do not need it)."""
        if not last_used:
            return
        with self._write(bump=False) as conn:
            conn.execute(
                update(k).where(k.c.id == bindparam("kid")).values(last_used_at=bindparam("used")),
                [{"kid": kid, "used": used} for kid, used in last_used.items()],
            )

    # -- principals ----------------------------------------------------------------------

    def create_principal(
        self, actor: Actor, name: str, *, role: str, kind: str = "user", description: str = ""
    ) -> Principal:
        valid_name(name, "user")
        _bounded(role, 64, "role")
        _bounded(description, 500, "description")
        if kind not in KINDS:
            raise BadRequestError("kind is 'user' or 'service'", param="kind")
        now = time.time()
        with self._write() as conn:
            if self._principal_row(conn, name) is not None:
                raise ConflictError(f"A user named {name!r} already exists.")
            conn.execute(
                insert(p).values(
                    id=_new_id("usr"),
                    name=name,
                    kind=kind,
                    role=role,
                    description=description,
                    disabled=False,
                    created_at=now,
                    updated_at=now,
                    created_by=actor.name,
                )
            )
            self._audit(conn, actor, "user.create", name, {"role": role, "kind": kind})
            return self._principal(conn, name)

    def principal(self, name: str) -> Principal:
        with self._read() as conn:
            return self._principal(conn, name)

    def principals(self) -> list[Principal]:
        with self._read() as conn:
            teams = self._teams_by_principal(conn)
            rows = conn.execute(select(p).order_by(p.c.name)).all()
        return [_principal(row, teams.get(row.id, ())) for row in rows]

    def update_principal(
        self,
        actor: Actor,
        name: str,
        *,
        role: str | None = None,
        disabled: bool | None = None,
        description: str | None = None,
    ) -> Principal:
        _bounded(role, 64, "role")
        _bounded(description, 500, "description")
        changes: dict[str, Any] = {}
        if role is not None:
            changes["role"] = role
        if disabled is not None:
            changes["disabled"] = disabled
        if description is not None:
            changes["description"] = description
        if not changes:
            raise BadRequestError("nothing to change")
        with self._write() as conn:
            row = self._require_principal(conn, name)
            conn.execute(
                update(p).where(p.c.id == row.id).values(updated_at=time.time(), **changes)
            )
            self._audit(conn, actor, "user.update", name, changes)
            return self._principal(conn, name)

    def delete_principal(self, actor: Actor, name: str) -> None:
        """Delete a user with its keys and team memberships (audit lines stay)."""
        with self._write() as conn:
            row = self._require_principal(conn, name)
            # Explicit, not only ON DELETE CASCADE: it must hold whatever the engine's settings.
            conn.execute(delete(k).where(k.c.principal_id == row.id))
            conn.execute(delete(tm).where(tm.c.principal_id == row.id))
            conn.execute(delete(p).where(p.c.id == row.id))
            self._audit(conn, actor, "user.delete", name)

    def is_empty(self) -> bool:
        """True until the first user is created (the gateway then bootstraps an admin)."""
        with self._read() as conn:
            return conn.execute(select(p.c.id).limit(1)).first() is None

    # -- teams ---------------------------------------------------------------------------

    def create_team(self, actor: Actor, name: str, *, description: str = "") -> Team:
        valid_name(name, "team")
        _bounded(description, 500, "description")
        with self._write() as conn:
            if conn.execute(select(t.c.id).where(t.c.name == name)).first() is not None:
                raise ConflictError(f"A team named {name!r} already exists.")
            conn.execute(
                insert(t).values(
                    id=_new_id("team"),
                    name=name,
                    description=description,
                    created_at=time.time(),
                    created_by=actor.name,
                )
            )
            self._audit(conn, actor, "team.create", name)
            return self._team(conn, name)

    def team(self, name: str) -> Team:
        with self._read() as conn:
            return self._team(conn, name)

    def teams(self) -> list[Team]:
        with self._read() as conn:
            members: dict[str, list[str]] = {}
            for team_id, member in conn.execute(
                select(tm.c.team_id, p.c.name).join(p, p.c.id == tm.c.principal_id)
            ):
                members.setdefault(team_id, []).append(member)
            rows = conn.execute(select(t).order_by(t.c.name)).all()
        return [_team(row, sorted(members.get(row.id, ()))) for row in rows]

    def delete_team(self, actor: Actor, name: str) -> None:
        with self._write() as conn:
            team_id = self._require_team(conn, name)
            conn.execute(delete(tm).where(tm.c.team_id == team_id))
            conn.execute(delete(t).where(t.c.id == team_id))
            self._audit(conn, actor, "team.delete", name)

    def add_member(self, actor: Actor, team: str, user: str) -> Team:
        with self._write() as conn:
            team_id = self._require_team(conn, team)
            row = self._require_principal(conn, user)
            present = conn.execute(
                select(tm.c.team_id).where(tm.c.team_id == team_id, tm.c.principal_id == row.id)
            ).first()
            if present is None:
                conn.execute(insert(tm).values(team_id=team_id, principal_id=row.id))
            self._audit(conn, actor, "team.add_member", team, {"user": user})
            return self._team(conn, team)

    def remove_member(self, actor: Actor, team: str, user: str) -> Team:
        with self._write() as conn:
            team_id = self._require_team(conn, team)
            row = self._require_principal(conn, user)
            gone = conn.execute(
                delete(tm).where(tm.c.team_id == team_id, tm.c.principal_id == row.id)
            ).rowcount
            if not gone:
                raise NotFoundError(f"{user!r} is not a member of {team!r}.")
            self._audit(conn, actor, "team.remove_member", team, {"user": user})
            return self._team(conn, team)

    # -- keys ----------------------------------------------------------------------------

    def create_key(
        self,
        actor: Actor,
        owner: str,
        *,
        name: str = "default",
        models: Sequence[str] | None = None,
        routes: Sequence[str] | None = None,
        networks: Sequence[str] | None = None,
        expires_at: float | None = None,
    ) -> tuple[StoredKey, str]:
        """A new key for ``owner``; returns it with the plaintext key (shown once, not kept)."""
        valid_name(name, "key")
        with self._write() as conn:
            row = self._require_principal(conn, owner)
            key_id, secret = self._insert_key(
                conn, actor, row.id, name, models, routes, networks, expires_at, None
            )
            self._audit(
                conn, actor, "key.create", key_id, {"user": owner, "name": name,
                                                    "expires_at": expires_at}
            )  # fmt: skip
            return self._key(conn, key_id), secret

    def key(self, key_id: str) -> StoredKey:
        with self._read() as conn:
            return self._key(conn, key_id)

    def keys(self, owner: str | None = None, *, include_revoked: bool = False) -> list[StoredKey]:
        query = select(k, p.c.name.label("owner")).join(p, p.c.id == k.c.principal_id)
        if owner is not None:
            query = query.where(p.c.name == owner)
        if not include_revoked:
            query = query.where(k.c.revoked_at.is_(None))
        with self._read() as conn:
            if owner is not None:
                self._require_principal(conn, owner)
            rows = conn.execute(query.order_by(k.c.created_at, k.c.id)).all()
        return [_key(row) for row in rows]

    def revoke_key(self, actor: Actor, key_id: str) -> StoredKey:
        with self._write() as conn:
            found = self._key(conn, key_id)
            if found.revoked_at is None:
                conn.execute(update(k).where(k.c.id == key_id).values(revoked_at=time.time()))
            self._audit(conn, actor, "key.revoke", key_id, {"user": found.principal})
            return self._key(conn, key_id)

    def rotate_key(self, actor: Actor, key_id: str, *, overlap: float) -> tuple[StoredKey, str]:
        """A new key with the same owner and restrictions; the old one works for ``overlap``
        seconds more (0: revoked now). Returns the new key and its plaintext."""
        now = time.time()
        with self._write() as conn:
            old = self._key(conn, key_id)
            if old.state(now) != "active":
                raise ConflictError(
                    f"Key {key_id} is {old.state(now)}; only an active key rotates."
                )
            owner = self._require_principal(conn, old.principal)
            new_id, secret = self._insert_key(
                conn, actor, owner.id, old.name, old.models, old.routes, old.networks,
                old.expires_at, old.id,
            )  # fmt: skip
            if overlap <= 0:
                conn.execute(update(k).where(k.c.id == key_id).values(revoked_at=now))
            else:
                ends = (
                    now + overlap if old.expires_at is None else min(old.expires_at, now + overlap)
                )
                conn.execute(update(k).where(k.c.id == key_id).values(expires_at=ends))
            self._audit(conn, actor, "key.rotate", key_id, {"new_key": new_id, "overlap": overlap})
            return self._key(conn, new_id), secret

    def _insert_key(
        self,
        conn: Connection,
        actor: Actor,
        principal_id: str,
        name: str,
        models: Sequence[str] | None,
        routes: Sequence[str] | None,
        networks: Sequence[str] | None,
        expires_at: float | None,
        rotated_from: str | None,
    ) -> tuple[str, str]:
        secret = generate_key()
        key_id = _new_id("key")
        conn.execute(
            insert(k).values(
                id=key_id,
                principal_id=principal_id,
                name=name,
                prefix=display_prefix(secret),
                digest=hash_key(secret).removeprefix("sha256:"),
                models=_dump(models),
                routes=_dump(routes),
                networks=_dump(networks),
                created_at=time.time(),
                created_by=actor.name,
                expires_at=expires_at,
                rotated_from=rotated_from,
            )
        )
        return key_id, secret

    # -- audit ---------------------------------------------------------------------------

    def append_audit(self, events: Iterable[AuditEvent]) -> int:
        """Write events recorded elsewhere (refused requests), in one transaction."""
        rows = [_audit_row(e) for e in events]
        if rows:
            with self._write(bump=False) as conn:
                conn.execute(insert(a), rows)
        return len(rows)

    def audit(self, query: AuditQuery) -> list[AuditEvent]:
        conditions = []
        if query.since is not None:
            conditions.append(a.c.at >= query.since)
        if query.until is not None:
            conditions.append(a.c.at < query.until)
        if query.actor is not None:
            conditions.append(a.c.actor == query.actor)
        if query.action is not None:
            if query.action.endswith("."):
                conditions.append(a.c.action.startswith(query.action, autoescape=True))
            else:
                conditions.append(a.c.action == query.action)
        if query.outcome is not None:
            conditions.append(a.c.outcome == query.outcome)
        limit = max(1, min(query.limit, _MAX_AUDIT_QUERY))
        statement = select(a).where(and_(True, *conditions)).order_by(a.c.id.desc()).limit(limit)
        with self._read() as conn:
            rows = conn.execute(statement).all()
        return [_audit_event(row) for row in rows]

    def _audit(
        self,
        conn: Connection,
        actor: Actor,
        action: str,
        target: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        event_ = AuditEvent(
            at=time.time(),
            actor=actor.name,
            action=action,
            target=target,
            outcome="ok",
            credential=actor.credential,
            address=actor.address,
            request_id=actor.request_id,
            detail=detail,
        )
        conn.execute(insert(a).values(**_audit_row(event_)))

    # -- row helpers -----------------------------------------------------------------------

    @staticmethod
    def _principal_row(conn: Connection, name: str) -> Row[Any] | None:
        return conn.execute(select(p).where(p.c.name == name)).first()

    def _require_principal(self, conn: Connection, name: str) -> Row[Any]:
        row = self._principal_row(conn, name) if isinstance(name, str) else None
        if row is None:
            raise NotFoundError(f"No user named {name!r}.")
        return row

    def _principal(self, conn: Connection, name: str) -> Principal:
        row = self._require_principal(conn, name)
        names = conn.execute(
            select(t.c.name)
            .join(tm, tm.c.team_id == t.c.id)
            .where(tm.c.principal_id == row.id)
            .order_by(t.c.name)
        ).scalars()
        return _principal(row, tuple(names))

    @staticmethod
    def _teams_by_principal(conn: Connection) -> dict[str, tuple[str, ...]]:
        found: dict[str, list[str]] = {}
        for principal_id, name in conn.execute(
            select(tm.c.principal_id, t.c.name).join(t, t.c.id == tm.c.team_id).order_by(t.c.name)
        ):
            found.setdefault(principal_id, []).append(name)
        return {key: tuple(value) for key, value in found.items()}

    @staticmethod
    def _require_team(conn: Connection, name: str) -> str:
        team_id = conn.execute(select(t.c.id).where(t.c.name == name)).scalar()
        if team_id is None:
            raise NotFoundError(f"No team named {name!r}.")
        return str(team_id)

    def _team(self, conn: Connection, name: str) -> Team:
        row = conn.execute(select(t).where(t.c.name == name)).first()
        if row is None:
            raise NotFoundError(f"No team named {name!r}.")
        members = conn.execute(
            select(p.c.name)
            .join(tm, tm.c.principal_id == p.c.id)
            .where(tm.c.team_id == row.id)
            .order_by(p.c.name)
        ).scalars()
        return _team(row, list(members))

    @staticmethod
    def _key(conn: Connection, key_id: str) -> StoredKey:
        row = conn.execute(
            select(k, p.c.name.label("owner"))
            .join(p, p.c.id == k.c.principal_id)
            .where(k.c.id == key_id)
        ).first()
        if row is None:
            raise NotFoundError(f"No key with id {key_id!r}.")
        return _key(row)


def _reason(exc: BaseException) -> str:
    """A database error in a line, without the statement or its parameters."""
    original = getattr(exc, "orig", None) or exc
    return (
        str(original).strip().splitlines()[0][:200]
        if str(original).strip()
        else type(original).__name__
    )


def _principal(row: Row[Any], teams: Sequence[str]) -> Principal:
    return Principal(
        id=row.id,
        name=row.name,
        kind=row.kind,
        role=row.role,
        description=row.description,
        disabled=bool(row.disabled),
        created_at=row.created_at,
        updated_at=row.updated_at,
        created_by=row.created_by,
        teams=tuple(teams),
    )


def _team(row: Row[Any], members: Sequence[str]) -> Team:
    return Team(
        id=row.id,
        name=row.name,
        description=row.description,
        created_at=row.created_at,
        created_by=row.created_by,
        members=tuple(members),
    )


def _key(row: Row[Any]) -> StoredKey:
    return StoredKey(
        id=row.id,
        principal=row.owner,
        name=row.name,
        prefix=row.prefix,
        models=_load(row.models),
        routes=_load(row.routes),
        networks=_load(row.networks),
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        rotated_from=row.rotated_from,
    )


def _audit_row(event_: AuditEvent) -> dict[str, Any]:
    return {
        "at": event_.at,
        "actor": event_.actor[:160],
        "credential": event_.credential[:64],
        "action": event_.action[:64],
        "target": event_.target[:200],
        "outcome": event_.outcome[:16],
        "status": event_.status,
        "address": event_.address[:64],
        "request_id": event_.request_id[:128],
        "detail": None if event_.detail is None else orjson.dumps(event_.detail).decode(),
    }


def _audit_event(row: Row[Any]) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        at=row.at,
        actor=row.actor,
        credential=row.credential,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        status=row.status,
        address=row.address,
        request_id=row.request_id,
        detail=None if row.detail is None else orjson.loads(row.detail),
    )
