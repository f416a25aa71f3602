"""Schema migrations on SQLite and PostgreSQL: applied once, refused when the database is newer,
safe when replicas open a fresh database at the same moment."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, inspect

from bastion.errors import BastionError, ConfigError
from bastion.store import schema
from bastion.store.migrations import MIGRATIONS, SCHEMA_VERSION, migrate
from bastion.store.records import Actor
from bastion.store.store import Store
from tests.unit.store.dbtools import dump_database, fresh_database


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """A plain engine on the test database, outside any Store."""
    plain = create_engine(store_url)
    yield plain
    plain.dispose()


def schema_rows(url: str) -> list[tuple[int, str, float]]:
    rows = dump_database(url).get("bastion_schema", [])
    return sorted((r["version"], r["description"], r["applied_at"]) for r in rows)


def test_a_fresh_database_gets_the_current_schema(store_url: str) -> None:
    before = time.time()
    store = Store.open(store_url)
    after = time.time()
    try:
        rows = schema_rows(store_url)
        assert [(version, description) for version, description, _ in rows] == [
            (number, description) for number, (description, _) in enumerate(MIGRATIONS, 1)
        ]
        assert rows[-1][0] == SCHEMA_VERSION
        assert all(before <= applied <= after for _, _, applied in rows)
        assert store.revision() == 1
        assert dump_database(store_url)["bastion_revision"] == [{"id": 1, "revision": 1}]
    finally:
        store.close()


def test_opening_again_applies_nothing(store_url: str, engine: Engine) -> None:
    Store.open(store_url).close()
    first = schema_rows(store_url)
    Store.open(store_url).close()
    assert schema_rows(store_url) == first
    with engine.begin() as conn:
        assert migrate(conn) == 0
    assert schema_rows(store_url) == first
    assert dump_database(store_url)["bastion_revision"] == [{"id": 1, "revision": 1}]


def test_migrate_reports_what_it_applied(store_url: str, engine: Engine) -> None:
    with engine.begin() as conn:
        assert migrate(conn) == SCHEMA_VERSION
    with engine.begin() as conn:
        assert migrate(conn) == 0
    assert len(schema_rows(store_url)) == SCHEMA_VERSION


def test_reopening_keeps_the_data(store_url: str) -> None:
    store = Store.open(store_url)
    store.create_principal(Actor("admin"), "alice", role="user")
    key, _ = store.create_key(Actor("admin"), "alice")
    revision = store.revision()
    store.close()
    again = Store.open(store_url)
    try:
        assert [p.name for p in again.principals()] == ["alice"]
        assert again.key(key.id) == key
        assert again.revision() == revision
    finally:
        again.close()


def test_a_newer_database_is_refused(store_url: str, engine: Engine) -> None:
    Store.open(store_url).close()
    with engine.begin() as conn:
        conn.execute(
            insert(schema.schema_version).values(
                version=SCHEMA_VERSION + 1, description="from the future", applied_at=time.time()
            )
        )
    before = dump_database(store_url)
    with pytest.raises(ConfigError) as caught:
        Store.open(store_url)
    assert caught.value.key == "store.url"
    assert str(SCHEMA_VERSION + 1) in str(caught.value)
    assert dump_database(store_url) == before  # nothing was changed on the way
    # The refused store let its connections go: a leaked one warns when collected (and
    # warnings are errors here).
    del caught
    gc.collect()


def test_a_newer_database_is_refused_by_migrate(store_url: str, engine: Engine) -> None:
    with engine.begin() as conn:
        migrate(conn)
        conn.execute(
            insert(schema.schema_version).values(
                version=SCHEMA_VERSION + 5, description="later", applied_at=time.time()
            )
        )
    with engine.begin() as conn, pytest.raises(ConfigError):
        migrate(conn)


def open_together(url: str, openers: int) -> tuple[list[Store], list[BaseException]]:
    """``Store.open(url)`` from ``openers`` threads released at the same moment."""
    start = threading.Barrier(openers)
    opened: list[Store] = []
    failed: list[BaseException] = []
    lock = threading.Lock()

    def open_store() -> None:
        start.wait()
        try:
            store = Store.open(url)
        except BastionError as exc:
            with lock:
                failed.append(exc)
        else:
            with lock:
                opened.append(store)

    threads = [threading.Thread(target=open_store) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return opened, failed


@pytest.mark.parametrize("openers", [2, 4])
def test_replicas_opening_a_fresh_database_together(
    store_url: str, tmp_path: Path, openers: int
) -> None:
    # SQLite's races (turning a new file to WAL, upgrading a read lock) show up in a few
    # percent of tries only: many cheap rounds there, a few on PostgreSQL.
    rounds = 40 if store_url.startswith("sqlite") else 5
    for round_ in range(rounds):
        url = fresh_database(store_url, tmp_path, round_)
        opened, failed = open_together(url, openers)
        try:
            assert failed == [], f"round {round_}"
            assert len(opened) == openers
            versions = [version for version, _, _ in schema_rows(url)]
            assert versions == list(range(1, SCHEMA_VERSION + 1))
            assert dump_database(url)["bastion_revision"] == [{"id": 1, "revision": 1}]
            assert all(store.revision() == 1 for store in opened)
        finally:
            for store in opened:
                store.close()


def test_the_tables_match_the_schema(store_url: str, engine: Engine) -> None:
    Store.open(store_url).close()
    found = inspect(engine)
    assert set(found.get_table_names()) == set(schema.metadata.tables)
    for name, table in schema.metadata.tables.items():
        columns = {column["name"]: column for column in found.get_columns(name)}
        assert list(columns) == [column.name for column in table.columns], name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, f"{name}.{column.name}"
        assert found.get_pk_constraint(name)["constrained_columns"] == [
            column.name for column in table.primary_key.columns
        ], name
        unique = {tuple(c["column_names"]) for c in found.get_unique_constraints(name)}
        unique |= {tuple(i["column_names"]) for i in found.get_indexes(name) if i["unique"]}
        for column in table.columns:
            if column.unique:
                assert (column.name,) in unique, f"{name}.{column.name} should be unique"
        foreign = {
            (tuple(fk["constrained_columns"]), fk["referred_table"])
            for fk in found.get_foreign_keys(name)
        }
        assert foreign == {
            ((fk.parent.name,), fk.column.table.name) for fk in table.foreign_keys
        }, name


def test_an_unknown_database_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Store.open("mysql://root@localhost/bastion")
    assert caught.value.key == "store.url"


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bastion.db"
    Store.open(f"sqlite:///{path}").close()
    assert path.stat().st_mode & 0o077 == 0
    assert path.parent.stat().st_mode & 0o077 == 0


def test_store_reads_what_another_store_wrote(store_url: str) -> None:
    writer, reader = Store.open(store_url), Store.open(store_url)
    try:
        writer.create_principal(Actor("admin"), "alice", role="user")
        assert [p.name for p in reader.principals()] == ["alice"]
        assert reader.revision() == writer.revision() == 2
    finally:
        writer.close()
        reader.close()
