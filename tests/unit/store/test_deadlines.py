"""A PostgreSQL that stops answering (frozen, partitioned) or cuts connections: every store
call ends within its deadline, with StoreUnavailableError, and the store recovers after.

The faults are made by a proxy (tests/support/pgproxy.py); the shared server is not touched.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bastion.errors import StoreTimeoutError, StoreUnavailableError
from bastion.settings import StoreSettings
from bastion.store.deadlines import ANSWER_GRACE, postgres_connect_args
from bastion.store.records import Actor
from bastion.store.store import Store
from tests.support.databases import reset_postgres
from tests.support.pgproxy import PgProxy

ME = Actor("tester")
FAST = StoreSettings(connect_timeout=2, statement_timeout=1)
SLACK = 1.0  # thread start, scheduling on a busy machine


@pytest.fixture
def proxy() -> Iterator[PgProxy]:
    opened = PgProxy()
    yield opened
    opened.forward()
    opened.close()


@pytest.fixture
def direct(postgres_url: str) -> str:
    """The test database, migrated, reached directly."""
    reset_postgres(postgres_url)
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    Store.open(url).close()
    return url


@pytest.fixture
def url(direct: str, proxy: PgProxy) -> str:
    """The same database through the proxy."""
    return proxy.url(direct)


def failing(proxy: PgProxy, call: Callable[[], Any], limit: float = 20) -> tuple[Exception, float]:
    """Run ``call`` in a thread: the StoreUnavailableError it raised and how long it took.
    A call still running after ``limit`` fails the test (the proxy is then healed to free it)."""
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        try:
            future.result(timeout=limit)
        except StoreUnavailableError as exc:
            return exc, time.monotonic() - started
        except TimeoutError:
            raise AssertionError(f"the store call was still waiting after {limit} s") from None
        finally:
            proxy.forward()
    raise AssertionError("the store call succeeded against a broken store")


def test_a_frozen_store_fails_a_call_on_a_pooled_connection(url: str, proxy: PgProxy) -> None:
    store = Store.open(url)  # the default settings: connect_timeout 5 s
    try:
        store.principals()  # leaves a connection in the pool
        proxy.freeze()
        error, took = failing(proxy, store.principals)
        assert isinstance(error, StoreTimeoutError)
        assert "no answer within 5 s" in error.message
        assert 5 <= took < 5 + SLACK  # checking a pooled connection is part of connecting
        assert store.principals() == []  # recovers without a restart
        assert store.timeouts == 1
    finally:
        store.close()


def test_a_frozen_store_fails_a_new_connection_at_connect_timeout(url: str, proxy: PgProxy) -> None:
    store = Store(url, FAST)  # nothing pooled yet
    try:
        proxy.freeze()
        error, took = failing(proxy, store.principals)
        assert "timeout" in error.message
        assert took < FAST.connect_timeout + SLACK
        assert store.principals() == []
    finally:
        store.close()


def revision_locked(direct: str) -> psycopg.Connection[Any]:
    """A transaction of another client's holding the revision row (every writer queues)."""
    holder = psycopg.connect(direct.replace("+psycopg", ""))
    holder.execute("SELECT revision FROM bastion_revision WHERE id = 1 FOR UPDATE")
    return holder


def waiting_on_a_lock(direct: str) -> bool:
    with psycopg.connect(direct.replace("+psycopg", ""), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ).fetchone()
    return row is not None and row[0] > 0


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def test_a_store_frozen_in_the_middle_of_a_call_is_cut_at_its_deadline(
    url: str, direct: str, proxy: PgProxy
) -> None:
    """The server did the statement, but its answer never arrives (a partition): only the
    client's own deadline ends the call; and the server ends the abandoned transaction, so
    the revision row's lock does not hold every other writer."""
    settings = StoreSettings(connect_timeout=2, statement_timeout=3)
    store = Store(url, settings)
    holder = revision_locked(direct)
    try:
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            future = pool.submit(store.create_team, ME, "blue")
            eventually(lambda: waiting_on_a_lock(direct))
            proxy.freeze()
            holder.commit()  # the server goes on; its answer is held by the freeze
            with pytest.raises(StoreTimeoutError):
                future.result(timeout=20)
            took = time.monotonic() - started
        assert took < settings.statement_timeout + ANSWER_GRACE + SLACK
        other = Store(direct, settings)  # another replica, not cut off
        try:
            other.create_team(ME, "green")  # waits at most for the server to end the other
            assert [t.name for t in other.teams()] == ["green"]
        finally:
            other.close()
    finally:
        holder.close()
        store.close()


def test_postgresql_cancels_a_statement_past_statement_timeout(direct: str) -> None:
    store = Store(direct, FAST)
    holder = revision_locked(direct)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as raised:
            store.create_team(ME, "blue")
        assert "statement timeout" in raised.value.message  # the server's, not a cut
        assert not isinstance(raised.value, StoreTimeoutError)
        assert time.monotonic() - started < FAST.statement_timeout + SLACK
        holder.commit()
        assert store.create_team(ME, "blue").name == "blue"  # the connection survived
    finally:
        holder.close()
        store.close()


def test_a_store_that_resets_connections_fails_at_once_and_recovers(
    url: str, proxy: PgProxy
) -> None:
    store = Store(url, FAST)
    try:
        store.principals()
        proxy.drop()
        error, took = failing(proxy, store.principals)
        assert not isinstance(error, StoreTimeoutError)
        assert took < 1.0
        proxy.forward()
        assert store.principals() == []  # the dead pooled connection is replaced
    finally:
        store.close()


def test_libpq_gets_the_timeouts_and_the_url_can_override_them() -> None:
    args = postgres_connect_args("postgresql+psycopg://db/bastion", FAST)
    assert args["connect_timeout"] == 2
    assert args["keepalives"] == 1 and args["keepalives_idle"] > 0
    assert args["tcp_user_timeout"] == 1000
    assert args["options"] == (
        "-c statement_timeout=1000 -c idle_in_transaction_session_timeout=1000"
    )
    given = postgres_connect_args(
        "postgresql+psycopg://db/bastion?connect_timeout=9&options=-c%20search_path%3Dx", FAST
    )
    assert "connect_timeout" not in given  # the URL's own value stays
    assert given["options"].endswith("-c search_path=x")


def test_sqlite_waits_for_a_writer_no_longer_than_statement_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store.open(f"sqlite:///{path}").close()
    store = Store(f"sqlite:///{path}", StoreSettings(statement_timeout=0.5))
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="locked"):
            store.create_team(ME, "blue")
        assert 0.4 < time.monotonic() - started < 0.5 + SLACK
    finally:
        writer.rollback()
        writer.close()
        store.close()
