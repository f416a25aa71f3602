from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clients import close_all


@pytest.fixture(autouse=True)
def _close_openai_clients() -> Iterator[None]:
    yield
    close_all()
