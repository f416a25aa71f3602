from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.store.store import Store
from tests.support.databases import reset_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bastion.db'}"
    url: str = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()
