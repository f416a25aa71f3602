"""The migrations build exactly the current schema, and a store installed at migration 1 is
upgraded in place: migrations never build from today's schema objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, create_engine, insert, inspect, select, text

from bastion.store import frozen, schema
from bastion.store.migrations import MIGRATIONS, SCHEMA_VERSION, migrate
from bastion.store.store import Store
from tests.support.databases import reset_postgres


def shape(url: str) -> dict[str, Any]:
    """Every table's columns (name, type, nullable), keys, indexes and comment, as the
    database itself reports them."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = inspect(conn)
            return {
                table: {
                    "columns": [
                        (c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)
                    ],
                    "primary": found.get_pk_constraint(table)["constrained_columns"],
                    "foreign": sorted(
                        (tuple(f["constrained_columns"]), f["referred_table"])
                        for f in found.get_foreign_keys(table)
                    ),
                    "indexes": sorted(
                        (tuple(i["column_names"]), bool(i["unique"]))
                        for i in found.get_indexes(table)
                    ),
                    "unique": sorted(
                        tuple(u["column_names"]) for u in found.get_unique_constraints(table)
                    ),
                    "comment": _comment(found, table),
                }
                for table in sorted(found.get_table_names())
            }
    finally:
        engine.dispose()


def _comment(found: Any, table: str) -> str | None:
    try:
        text_: str | None = found.get_table_comment(table)["text"]
    except NotImplementedError:  # SQLite keeps no table comments
        return None
    return text_


def emptied(url: str) -> Callable[[], None]:
    def empty() -> None:
        if url.startswith("sqlite:///"):
            engine = create_engine(url)
            with engine.begin() as conn:
                for table in inspect(conn).get_table_names():
                    conn.execute(text(f'DROP TABLE "{table}"'))
            engine.dispose()
        else:
            reset_postgres(url.replace("postgresql+psycopg://", "postgresql://", 1))

    return empty


def test_the_migrations_build_exactly_the_current_schema(store_url: str) -> None:
    Store.open(store_url).close()
    migrated = shape(store_url)
    emptied(store_url)()
    engine = create_engine(store_url)
    with engine.begin() as conn:
        schema.metadata.create_all(conn)
    engine.dispose()
    assert migrated == shape(store_url)


def test_a_store_installed_at_migration_1_is_upgraded_in_place(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        _install_version_1(conn)
        conn.execute(
            insert(schema.principals).values(
                id="usr_1", name="alice", kind="user", role="user", description="",
                disabled=False, created_at=1.0, updated_at=1.0, created_by="test",
            )
        )  # fmt: skip
    with engine.begin() as conn:
        assert migrate(conn) == SCHEMA_VERSION - 1
    with engine.connect() as conn:
        assert conn.execute(select(schema.principals.c.name)).scalars().all() == ["alice"]
        versions = conn.execute(select(schema.schema_version.c.version)).scalars().all()
    engine.dispose()
    assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
    assert "response_owners" in shape(store_url)


def test_migration_1_does_not_create_later_tables() -> None:
    later = {t for m in (frozen.V2, frozen.V3, frozen.V4) for t in m.tables}
    assert later.isdisjoint(frozen.V1.tables)
    assert set(schema.metadata.tables) - {"bastion_schema"} == {
        t for m in (frozen.V1, frozen.V2, frozen.V3, frozen.V4) for t in m.tables
    }


def _install_version_1(conn: Connection) -> None:
    """What a gateway of migration 1's release left: version 1 applied, nothing after."""
    schema.metadata.create_all(conn, tables=[schema.schema_version])
    description, step = MIGRATIONS[0]
    step(conn)
    conn.execute(
        insert(schema.schema_version).values(version=1, description=description, applied_at=1.0)
    )
