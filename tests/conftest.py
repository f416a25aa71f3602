from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.clients import close_all
from tests.support.databases import postgres_database


@pytest.fixture(scope="session", autouse=True)
def _no_bastion_variables() -> Iterator[None]:
    """The tests run without the caller's ``BASTION_*`` variables: the gateways they start
    (and ``main()`` called in-process) would take them as settings. Variables the tests
    themselves read (``BASTION_TEST_POSTGRES``) were read when their modules were imported."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith("BASTION_"):
                patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own (postgresql://...)."""
    with postgres_database() as url:
        yield url


@pytest.fixture(autouse=True)
def _close_openai_clients() -> Iterator[None]:
    yield
    close_all()
