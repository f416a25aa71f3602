"""Looking at a store's database from outside the store: raw rows, fresh databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, select

from tests.support.databases import reset_postgres


def dump_database(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table in the database at ``url``, by table name."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            reflected = MetaData()
            reflected.reflect(conn)
            return {
                table.name: [dict(row._mapping) for row in conn.execute(select(table))]
                for table in reflected.sorted_tables
            }
    finally:
        engine.dispose()


def fresh_database(store_url: str, tmp_path: Path, round_: int) -> str:
    """An empty database of the same kind as ``store_url``: a new SQLite file, or the
    session's PostgreSQL database emptied again."""
    if store_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / f'fresh-{round_}.db'}"
    reset_postgres(store_url.replace("postgresql+psycopg://", "postgresql://", 1))
    return store_url
