from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clients import close_all
from tests.support.databases import postgres_database


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own (postgresql://...)."""
    with postgres_database() as url:
        yield url


@pytest.fixture(autouse=True)
def _close_openai_clients() -> Iterator[None]:
    yield
    close_all()
