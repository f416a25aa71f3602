"""Deadlines for the store's calls: a PostgreSQL that stops answering must not hold one forever.

A frozen server, or one cut off by the network, neither answers nor closes the connection: the
driver would wait for ever, and with it the admin call and the thread it runs in. Three layers
bound every call:

- libpq's: ``connect_timeout`` for a new connection; TCP keepalives, so that a pooled
  connection to a vanished host is found dead while idle; ``tcp_user_timeout``, so that data
  the server never acknowledges (a partition) ends the connection.
- the server's: ``statement_timeout`` cancels a statement that runs too long (a lock wait);
  ``idle_in_transaction_session_timeout`` ends the transaction of a gateway cut off in its
  middle, which would otherwise hold the revision row's lock and so every replica's writes.
- Bastion's own (:class:`Deadlines`), for a server that accepted the bytes and went silent,
  which no timeout above notices: a watchdog thread shuts down the socket of a call that has
  had no answer in time, so that the driver fails at once with a disconnection and the pool
  drops that connection. A pooled connection is checked (``SELECT 1``) within
  ``connect_timeout`` before each use, then the call's statements get ``statement_timeout``
  (and :data:`ANSWER_GRACE`).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

from bastion.settings import StoreSettings

__all__ = ["ANSWER_GRACE", "Deadlines", "postgres_connect_args"]

_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
_FRESH = "bastion_fresh"
ANSWER_GRACE = 1.0
"""Seconds past ``statement_timeout`` before a call is cut: a statement the server cancels
fails first, with the server's own error, and keeps its connection."""


def postgres_connect_args(url: str, settings: StoreSettings) -> dict[str, Any]:
    """libpq parameters for the timeouts above. One given in the URL's query string wins;
    ``options`` are added to (the URL's come last, so theirs win too)."""
    statement_ms = max(1, round(settings.statement_timeout * 1000))
    query = make_url(url).query
    server = (
        f"-c statement_timeout={statement_ms} -c idle_in_transaction_session_timeout={statement_ms}"
    )
    given = query.get("options")
    if isinstance(given, tuple):  # given more than once
        given = " ".join(given)
    args: dict[str, Any] = {
        "connect_timeout": math.ceil(settings.connect_timeout),
        **_KEEPALIVE,
        "tcp_user_timeout": statement_ms,
        "options": server if not given else f"{server} {given}",
    }
    return {name: value for name, value in args.items() if name == "options" or name not in query}


class _Call:
    """One store call in a thread: its connection once it has one, and until when it may wait."""

    __slots__ = ("connection", "cut", "expires", "limit")

    def __init__(self) -> None:
        self.connection: Any = None
        self.expires = math.inf
        self.limit = 0.0
        self.cut = False


class Deadlines:
    """Cuts the connection of a store call that has waited past its deadline (PostgreSQL).

    Attach it to an engine (:meth:`attach`), then run each call inside :meth:`call`. Calls
    outside :meth:`call` are not watched. ``cuts`` counts the connections cut.
    """

    def __init__(self, settings: StoreSettings) -> None:
        self.connect = settings.connect_timeout
        self.statement = settings.statement_timeout + ANSWER_GRACE
        self.cuts = 0
        self._local = threading.local()
        self._calls: set[_Call] = set()
        self._changed = threading.Condition()
        self._watchdog: threading.Thread | None = None
        self._closed = False
        self._dialect: Any = None

    def attach(self, engine: Engine) -> None:
        """Watch ``engine``'s connections; replaces its pool's own pre-ping (which runs
        before a call could watch it)."""
        self._dialect = engine.dialect
        event.listen(engine, "connect", _mark_fresh)
        event.listen(engine, "checkout", self._checkout)

    @contextmanager
    def call(self) -> Iterator[_Call]:
        """One store call; inside another, the outer one's deadline holds."""
        outer: _Call | None = getattr(self._local, "call", None)
        if outer is not None:
            yield outer
            return
        current = _Call()
        self._local.call = current
        try:
            yield current
        finally:
            self._local.call = None
            with self._changed:
                self._calls.discard(current)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _checkout(self, connection: Any, record: Any, _proxy: Any) -> None:
        current: _Call | None = getattr(self._local, "call", None)
        if current is None:
            return
        current.connection = connection
        if record.info.pop(_FRESH, False):
            self._arm(current, self.statement)
            return
        self._arm(current, self.connect)
        try:
            self._dialect.do_ping(connection)
        except self._dialect.loaded_dbapi.Error:
            if current.cut:
                raise  # no answer in time: the call fails, with this connection dropped
            raise DisconnectionError("the pooled connection is gone") from None
        self._arm(current, self.statement)

    def _arm(self, current: _Call, seconds: float) -> None:
        with self._changed:
            if current.cut:
                _shut(current.connection)
                return
            current.expires = time.monotonic() + seconds
            current.limit = seconds
            self._calls.add(current)
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="bastion-store-deadlines", daemon=True
                )
                self._watchdog.start()
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                now = time.monotonic()
                for late in [c for c in self._calls if c.expires <= now]:
                    self._calls.discard(late)
                    late.cut = True
                    self.cuts += 1
                    _shut(late.connection)
                soonest = min((c.expires for c in self._calls), default=math.inf)
                self._changed.wait(None if soonest == math.inf else soonest - now)


def _mark_fresh(_connection: Any, record: Any) -> None:
    record.info[_FRESH] = True


def _shut(connection: Any) -> None:
    """Shut down a psycopg connection's socket from another thread: its pending read ends
    at once. (The descriptor is duplicated, never closed under the driver's feet.)"""
    try:
        descriptor = connection.pgconn.socket
        with socket.fromfd(descriptor, socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # already closed or never opened: nothing left to cut
        return
