"""A lean Redis client for the limiter: one pipelined connection, RESP2 parsed by hiredis.

The limiter asks Redis one Lua script per decision. A general-purpose client (redis-py) spends
several times the gateway's own per-request budget on each call: a connection pool checkout,
command objects, response callbacks. Here a call is an encoded command written to the one
connection and a future that the next reply resolves. Redis answers the commands of a
connection in order, so replies are matched first in, first out; any number of calls may be in
flight at once (pipelining), which is also how several hundred concurrent decisions share one
connection without waiting for each other.

A call that is cancelled (a timeout) leaves its future in the queue: its reply, when it comes,
is dropped, so the order is never lost. A connection that fails fails every call in flight on
it; the next call opens a new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis

from bastion.errors import ConfigError

__all__ = [
    "RedisAddress",
    "RedisConnectionError",
    "RedisReplyError",
    "RespClient",
    "Script",
    "encode",
]


class RedisReplyError(Exception):
    """An error reply (``NOSCRIPT ...``, ``WRONGTYPE ...``, a script's error)."""


class RedisConnectionError(ConnectionError):
    """The connection failed or closed before the reply came."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ConfigError("must be redis://host:port/db or rediss://...", "limits.redis.url")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"invalid port: {exc}", "limits.redis.url") from None
        path = parts.path.strip("/")
        if path and not (path.isascii() and path.isdigit()):
            raise ConfigError("the database is a number (redis://host:6379/0)", "limits.redis.url")
        return cls(
            host=parts.hostname,
            port=6379 if port is None else port,
            db=int(path or 0),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=parts.scheme == "rediss",
        )


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script, called by its SHA-1 and sent whole only when Redis does not know it."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.text.encode()).hexdigest()  # noqa: S324 - Redis's own name
        object.__setattr__(self, "sha", sha)


def encode(args: tuple[str | int | bytes, ...]) -> bytes:
    """One command in RESP2: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """One connection. Commands sent in the same turn of the event loop leave in one write
    (under load, many decisions at once cost one system call, not one each)."""

    __slots__ = ("closed", "outgoing", "reader", "transport", "waiters")

    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=RedisReplyError)
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                waiter = self.waiters.popleft()
                if waiter.done():  # its caller gave up; the order is kept all the same
                    continue
                if isinstance(reply, RedisReplyError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked
            self.fail(RedisConnectionError(f"invalid reply from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_waiters(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def send(self, data: bytes, count: int) -> list[asyncio.Future[Any]]:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("connection to Redis closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(count)]
        self.waiters.extend(futures)
        if not self.outgoing:
            loop.call_soon(self._flush)
        self.outgoing.append(data)
        return futures

    def _flush(self) -> None:
        data, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(data[0] if len(data) == 1 else b"".join(data))

    def fail(self, error: Exception) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_waiters(error)

    def _fail_waiters(self, error: Exception) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class RespClient:
    """Calls on one Redis connection, opened on first use and again after a failure.

    Callers bound their calls with ``asyncio.timeout``; after a timeout they should call
    :meth:`reset` (the connection may be dead; a new one is opened on the next call).
    """

    def __init__(
        self, url: str, *, connect_timeout: float = 1.0, scripts: Sequence[Script] = ()
    ) -> None:
        """``scripts`` are loaded on every new connection, so that calls by SHA succeed
        from the first one (and after a Redis restart)."""
        self._address = RedisAddress.from_url(url)
        self._connect_timeout = connect_timeout
        self._scripts = tuple(scripts)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self._closed = False

    async def execute(self, *args: str | int | bytes) -> Any:
        """Send one command; its reply (bytes, int, None, a list) or :class:`RedisReplyError`."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        return await conn.send(encode(args), 1)[0]

    async def pipeline(self, commands: list[tuple[str | int | bytes, ...]]) -> list[Any]:
        """Send several commands in one write; each reply, or the exception it raised."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        futures = conn.send(b"".join(encode(c) for c in commands), len(commands))
        return list(await asyncio.gather(*futures, return_exceptions=True))

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run ``script`` by its SHA; sent whole once if Redis does not know it (a restart or
        ``SCRIPT FLUSH`` forgets scripts)."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.load(script)
        return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def load(self, script: Script) -> None:
        """``SCRIPT LOAD``, once however many callers found the script missing at once."""
        loading = self._loading.get(script.sha)
        if loading is None:
            loading = asyncio.ensure_future(self.execute("SCRIPT", "LOAD", script.text))
            self._loading[script.sha] = loading
            loading.add_done_callback(lambda _: self._loading.pop(script.sha, None))
        await asyncio.shield(loading)

    def reset(self) -> None:
        """Drop the connection (after a timeout its state is unknown); calls in flight fail."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.fail(RedisConnectionError("connection to Redis reset"))

    async def aclose(self) -> None:
        self._closed = True
        self.reset()
        if self._connecting is not None:  # ends within connect_timeout, dropping its connection
            await asyncio.wait([self._connecting])

    async def _connection(self) -> _Connection:
        """The open connection, or a new one; concurrent callers share one attempt (which
        goes on if the caller that started it gives up)."""
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(self._opened)
        return await asyncio.shield(connecting)

    def _opened(self, attempt: asyncio.Future[_Connection]) -> None:
        """A connection attempt ended: the next call starts afresh (its failure is seen here,
        since its callers may all have given up)."""
        if self._connecting is attempt:
            self._connecting = None
        if not attempt.cancelled():
            attempt.exception()

    async def _open(self) -> _Connection:
        address = self._address
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if address.tls else None
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    address.host,
                    address.port,
                    ssl=context,
                    server_hostname=address.host if context else None,
                )
                await self._set_up(conn)
        except BaseException:
            if conn is not None:
                conn.fail(RedisConnectionError("connection to Redis abandoned"))
            raise
        if self._closed:  # closed while connecting
            conn.fail(RedisConnectionError("the Redis client is closed"))
            raise RedisConnectionError("the Redis client is closed")
        self._conn = conn
        return conn

    async def _set_up(self, conn: _Connection) -> None:
        """Log in, choose the database and load the scripts, in one round trip."""
        address = self._address
        setup: list[tuple[str | int | bytes, ...]] = []
        if address.password is not None:
            setup.append(("AUTH", *filter(None, (address.username,)), address.password))
        if address.db:
            setup.append(("SELECT", address.db))
        setup += [("SCRIPT", "LOAD", script.text) for script in self._scripts]
        if not setup:  # a round trip all the same: a hung server still accepts connections
            setup.append(("PING",))
        replies = await asyncio.gather(
            *conn.send(b"".join(encode(c) for c in setup), len(setup)), return_exceptions=True
        )
        for reply in replies:
            if isinstance(reply, BaseException):
                raise RedisConnectionError(f"Redis refused the connection: {reply}")
