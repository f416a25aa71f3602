"""Versioned schema migrations, applied automatically when a gateway or the CLI opens a store.

Each migration has a number and runs once, in a transaction, under a lock (a PostgreSQL
advisory lock; SQLite's write lock), so replicas starting together do not race: the first
applies it, the others find it done. ``bastion_schema`` lists what was applied.

A database newer than this code (a later version applied by an upgraded replica) is refused
rather than used: an old gateway must not write into a shape it does not know.

Adding a migration: append a function to ``MIGRATIONS`` that brings the previous version to
the new shape with explicit DDL (new tables: frozen in :mod:`bastion.store.frozen`), and
change :mod:`bastion.store.schema` to match. A migration never builds from the current
schema: a fresh install runs every migration in turn, so each must create exactly what it
created when it was released.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Connection, func, insert, select, text

from bastion.errors import ConfigError
from bastion.store import frozen, schema

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

log = logging.getLogger("bastion.store")

_LOCK_ID = 0x62617374  # "bast": the advisory lock all Bastion replicas agree on


def _v1_initial(conn: Connection) -> None:
    frozen.V1.create_all(conn)
    conn.execute(insert(schema.revision).values(id=1, revision=1))


def _v2_usage(conn: Connection) -> None:
    frozen.V2.create_all(conn)


def _v3_response_owners(conn: Connection) -> None:
    frozen.V3.create_all(conn)


def _v4_console_sessions(conn: Connection) -> None:
    frozen.V4.create_all(conn)


MIGRATIONS: tuple[tuple[str, Callable[[Connection], None]], ...] = (
    ("users, teams, api keys, audit log", _v1_initial),
    ("usage records and hourly rollups", _v2_usage),
    ("owners of stored responses", _v3_response_owners),
    ("web console sessions and sign-ins", _v4_console_sessions),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: Connection) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the number of migrations applied.

    ``conn`` must be in a transaction; the caller commits.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
    schema.metadata.create_all(conn, tables=[schema.schema_version])
    current = conn.execute(select(func.max(schema.schema_version.c.version))).scalar() or 0
    if current > SCHEMA_VERSION:
        raise ConfigError(
            f"the store's schema is version {current}, newer than this Bastion knows "
            f"({SCHEMA_VERSION}); upgrade Bastion",
            "store.url",
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        description, step = MIGRATIONS[version - 1]
        step(conn)
        conn.execute(
            insert(schema.schema_version).values(
                version=version, description=description, applied_at=time.time()
            )
        )
        log.info("store: applied migration %d (%s)", version, description)
    return SCHEMA_VERSION - current
