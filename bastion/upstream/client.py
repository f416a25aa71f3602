"""A lean, pooled, keep-alive HTTP/1.1 client for talking to model servers.

One :class:`UpstreamPool` is created per gateway process and carries every forwarded request.
It is built on an :class:`asyncio.Protocol` per connection and ``httptools``' response parser
(llhttp), because the general-purpose clients cost several times more CPU per request than the
rest of the gateway together (see ``shared/notes/python-proxy-floor.md``).

The life of a request::

    request()  ->  idle connection (LIFO) or a new one  ->  write the request
               ->  wait for the response head (read_timeout)  ->  UpstreamResponse
    response   ->  body pieces as they arrive (stream_idle_timeout between pieces)
               ->  body complete: the connection goes back to the pool, or is closed

A response head is checked before anything of it reaches the caller: a status outside
100..599 (llhttp accepts any three digits) or an unasked-for ``101``, or a head past
``max_headers`` header lines or ``max_header_bytes`` (counted as the request side counts, interim
responses included; a head still arriving is cut off just past that, since httptools would
buffer a header value until its line ends), makes the exchange fail and closes the connection.
1xx interim responses are skipped.

Every failure below this module (socket errors, timeouts, invalid responses) is translated into
:class:`~bastion.errors.UpstreamError` in one place, :func:`_upstream_error`; the messages never
carry the upstream's address, the original exception stays in ``__cause__``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

from bastion.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from bastion.settings import UpstreamClientSettings
from bastion.upstream.origin import Origin

__all__ = ["Origin", "UpstreamPool", "UpstreamResponse"]

_logger = logging.getLogger(__name__)

_NO_BODY_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))
_HIGH_WATER = 64 * 1024
"""Body bytes buffered but not yet consumed above which the socket stops being read."""
_COPY_LIMIT = 64 * 1024
"""A request body larger than this is written on its own rather than joined to the head."""
_NEVER = float("inf")
_CLOSE_WAIT = 5.0
"""How long :meth:`UpstreamPool.aclose` waits for transports to report they are closed."""
_STATUS_LINE_SLACK = 1024
"""Bytes allowed beyond ``max_header_bytes`` (which counts header lines) for the status
lines, before a head that has not ended is refused."""


class _StaleConnectionError(Exception):
    """A reused connection closed before any byte of the response: the request may be retried."""


class _TruncatedError(Exception):
    """The connection ended, or was ended, in the middle of a response."""


class _InvalidHeadError(Exception):
    """The response head breaks HTTP or a limit; raised in a parser callback to stop parsing.
    Its message is written for the caller."""


def _upstream_error(exc: BaseException, origin: Origin) -> UpstreamError:
    """Translate a failure from below into Bastion's error: the one place this happens."""
    error: UpstreamError
    if isinstance(exc, TimeoutError):  # before OSError, of which it is a subclass
        error = UpstreamTimeoutError()
    elif isinstance(exc, _InvalidHeadError):
        error = UpstreamProtocolError(f"The model server sent an invalid response: {exc}.")
    elif isinstance(exc, _TruncatedError | HttpParserError | HttpParserUpgrade):
        error = UpstreamProtocolError()
    else:
        error = UpstreamConnectError()
    error.__cause__ = exc
    error.__suppress_context__ = True
    if _logger.isEnabledFor(logging.DEBUG):
        _logger.debug("upstream %s://%s: %r", origin.scheme, origin.host_header.decode(), exc)
    return error


def _encode_request(
    host: bytes, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[bytes, bytes]:
    """The request as (data, rest): one piece for a small body, head and body for a large one."""
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    if body or method not in _NO_BODY_METHODS:
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    if len(body) > _COPY_LIMIT:  # not worth copying into one buffer
        return b"".join(parts), body
    parts.append(body)
    return b"".join(parts), b""


def _until_close(response: UpstreamResponse) -> bool:
    """Whether the body is delimited by the end of the connection (no length, not chunked)."""
    for name, value in response.headers:
        if name == b"content-length":
            return False
        if name == b"transfer-encoding" and value.rstrip().lower().endswith(b"chunked"):
            return False
    return True


class UpstreamResponse:
    """A response whose head has arrived; the body follows through :meth:`read` or iteration.

    The connection goes back to the pool by itself once the body is complete (the unread part
    stays with the response). Always :meth:`close` the response all the same, or use
    ``async with``: when the body is not complete, closing is what closes the connection, so
    the model server sees the request abandoned and stops working on it.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_idle_timeout",
        "_loop",
        "_relayed",
        "_sink",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], conn: _Connection) -> None:
        self.status = status
        self.headers = headers
        """Header names lower-cased, in the order received, repeated names kept."""
        self._conn: _Connection | None = conn
        self._loop = conn._loop
        self._idle_timeout = conn._pool._stream_idle_timeout
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[bytes], None] | None = None
        self._relayed: asyncio.Future[None] | None = None

    async def read(self) -> bytes:
        """Return the whole remaining body.

        Raises :class:`~bastion.errors.UpstreamTimeoutError` when no byte arrives for
        ``stream_idle_timeout``, :class:`~bastion.errors.UpstreamProtocolError` when the body
        is cut short or invalid.
        """
        parts: list[bytes] = []
        while True:
            if self._chunks:
                parts.append(self._take())
            if self._done:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if self._error is not None:
                raise self._error
            await self._wait()

    def __aiter__(self) -> AsyncIterator[bytes]:
        """Iterate over the body as it arrives, transfer coding removed, never buffered to the end.

        Each piece holds everything received since the previous one. Errors are those of
        :meth:`read`.
        """
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                return self._take()
            if self._done:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            await self._wait()

    def close(self) -> None:
        """Release the response; idempotent.

        A fully received body has already given its connection back to the pool (or closed it
        when it cannot be reused); otherwise the connection is closed at once, so the model
        server sees the request abandoned. Reading after that raises
        :class:`~bastion.errors.UpstreamProtocolError`.
        """
        conn = self._conn
        if conn is not None:
            conn._fail(_TruncatedError("response closed before its body ended"))

    def relay(self, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
        """Hand each body piece to ``sink`` straight from the socket callback, as it arrives.

        This is the streaming fast path: no task wakes up per piece, the piece goes from the
        upstream connection's parser to ``sink`` (which writes it to the caller) in one call.
        The returned future resolves when the body is complete, or fails with the error of
        :meth:`read`. ``stream_idle_timeout`` applies between pieces, except while reading is
        paused with :meth:`pause_reading` (the caller is slow, not the upstream).
        """
        future: asyncio.Future[None] = self._loop.create_future()
        if self._chunks:
            sink(self._take())
        if self._done:
            future.set_result(None)
        elif self._error is not None:
            future.set_exception(self._error)
        else:
            self._sink = sink
            self._relayed = future
            conn = cast(_Connection, self._conn)
            if not conn._paused:
                conn._deadline = time.monotonic() + self._idle_timeout
        return future

    def pause_reading(self) -> None:
        """Stop reading the upstream socket (backpressure from a slow caller)."""
        conn = self._conn
        if conn is not None and not conn._paused and conn._transport is not None:
            conn._paused = True
            conn._deadline = _NEVER
            conn._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the upstream socket again after :meth:`pause_reading`."""
        conn = self._conn
        if conn is not None and conn._paused:
            conn._resume()
            if self._sink is not None:
                conn._deadline = time.monotonic() + self._idle_timeout

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- fed by the connection ------------------------------------------------------------

    def _take(self) -> bytes:
        chunks = self._chunks
        self._chunks = []
        self._buffered = 0
        conn = self._conn
        if conn is not None and conn._paused:
            conn._resume()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _end(self, error: UpstreamError | None) -> None:
        self._conn = None
        if error is None:
            self._done = True
        else:
            self._error = error
        self._sink = None
        relayed = self._relayed
        if relayed is not None and not relayed.done():
            if error is None:
                relayed.set_result(None)
            else:
                relayed.set_exception(error)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        conn = cast(_Connection, self._conn)  # attached while the body is incomplete
        conn._deadline = time.monotonic() + self._idle_timeout  # enforced by the pool's sweep
        self._waiter = waiter = self._loop.create_future()
        try:
            await waiter
        except asyncio.CancelledError:
            self.close()
            raise
        finally:
            conn._deadline = _NEVER
            self._waiter = None


class _Connection(asyncio.Protocol):
    """One connection to an origin: writes requests, feeds the parser, hands out responses.

    Between requests it sits in the pool. Its state for the request in flight: ``_waiter``
    until the head arrives, then ``_response`` until the body is complete.
    """

    __slots__ = (
        "_closed",
        "_deadline",
        "_got_bytes",
        "_head_bytes",
        "_header_bytes",
        "_header_count",
        "_headers",
        "_idle_since",
        "_interim",
        "_is_head",
        "_loop",
        "_lost",
        "_origin",
        "_parser",
        "_paused",
        "_pool",
        "_pooled",
        "_reset_parser",
        "_response",
        "_reused",
        "_stack",
        "_transport",
        "_waiter",
    )

    def __init__(self, pool: UpstreamPool, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._origin = origin
        self._stack = pool._idle.setdefault(origin, deque())  # where it waits when idle
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._deadline = _NEVER  # when the wait for the head, or a body piece, times out
        self._response: UpstreamResponse | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._got_bytes = False  # any byte of the response in flight
        self._head_bytes = 0  # bytes received while waiting for the response head
        self._header_bytes = 0  # header lines' bytes (name + value + 4 each), and their
        self._header_count = 0  # number, interim responses included
        self._is_head = False
        self._interim = False  # inside a 1xx interim response
        self._reset_parser = False
        self._reused = False
        self._paused = False
        self._closed = False
        self._pooled = False
        self._idle_since = 0.0
        self._lost: asyncio.Future[None] | None = None

    def send(self, data: tuple[bytes, bytes], is_head: bool) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future resolves with the response once its head is in."""
        waiter: asyncio.Future[UpstreamResponse] = self._loop.create_future()
        transport = self._transport
        if self._closed or transport is None:
            cause = ConnectionResetError("closed before the request was sent")
            waiter.set_exception(_upstream_error(cause, self._origin))
            return waiter
        self._waiter = waiter
        if self._headers:
            self._headers = []
        self._got_bytes = False
        self._head_bytes = self._header_bytes = self._header_count = 0
        self._is_head = is_head
        self._deadline = time.monotonic() + self._pool._read_timeout
        self._pool._watch(self)
        transport.write(data[0])
        if data[1]:
            transport.write(data[1])
        return waiter

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None and self._response is None:
            self._shut()  # nothing was asked: the connection is out of step, never reuse it
            return
        self._got_bytes = True
        heading = self._waiter is not None
        if heading:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            refused = exc.__context__ if isinstance(exc, HttpParserCallbackError) else None
            self._fail(refused if isinstance(refused, _InvalidHeadError) else exc)
        else:
            if heading and self._waiter is not None and self._head_bytes > self._pool._head_limit:
                # httptools keeps a header value until its line ends: cut off a head still coming
                self._fail(_InvalidHeadError("its headers are too large"))
        if self._reset_parser:
            self._reset_parser = False
            self._parser = HttpResponseParser(self)

    def eof_received(self) -> bool:
        self._on_close(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_close(exc)
        self._closed = True
        self._pool._conns.discard(self)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted as the request side counts (``name: value\r\n``), interim heads included
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        pool = self._pool
        if self._header_count > pool._max_headers or self._header_bytes > pool._max_header_bytes:
            raise _InvalidHeadError("its headers are too large")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status: int = self._parser.get_status_code()
        if status < 200:  # 1xx interim response: skip it, the real one follows
            if status < 100 or status == 101:  # llhttp takes any 3 digits; no upgrade is asked
                raise _InvalidHeadError(f"status {status}")
            self._interim = True
            self._headers = []
            return
        if status > 599:  # not an HTTP status: there is nothing to relay
            raise _InvalidHeadError(f"status {status}")
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # unsolicited, or the caller left: either way the connection gets closed
        self._waiter = None
        self._deadline = _NEVER
        self._response = response = UpstreamResponse(status, self._headers, self)
        self._headers = []  # trailers of a chunked body must not land in the response's list
        waiter.set_result(response)
        if self._is_head:
            # llhttp cannot be told the request was HEAD and would wait for a body: take a
            # fresh parser for the next response on this connection.
            self._reset_parser = True
            self._finish(self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None:
            return
        sink = response._sink
        if sink is not None:
            if not self._paused:
                self._deadline = time.monotonic() + response._idle_timeout
            sink(body)
            return
        response._chunks.append(body)
        response._buffered += len(body)
        if response._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            cast(asyncio.Transport, self._transport).pause_reading()
        waiter = response._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self._response is not None:
            self._finish(self._parser.should_keep_alive())

    # -- state changes ----------------------------------------------------------------------

    def _finish(self, keep_alive: bool) -> None:
        """The response is complete: give the connection back to the pool, or close it."""
        response = self._response
        self._response = None
        self._reused = True
        self._pool._active.discard(self)
        if response is not None:
            response._end(None)
        if self._paused:
            self._resume()
        if keep_alive and not self._closed:
            self._pool._checkin(self)
        else:
            self._shut(graceful=True)

    def _on_close(self, exc: Exception | None) -> None:
        if self._waiter is None and self._response is None:
            self._shut()
        elif self._response is not None and exc is None and _until_close(self._response):
            self._finish(keep_alive=False)  # a body delimited by the end of the connection
        elif self._waiter is not None and not self._got_bytes:
            if self._reused:
                # The server closed an idle kept-alive connection as our request was on its
                # way, so it never started on it: the pool may send it again.
                self._fail(_StaleConnectionError())
            else:
                self._fail(exc or ConnectionResetError("closed before the response"))
        else:
            cause = _TruncatedError("connection closed in the middle of a response")
            cause.__cause__ = exc
            self._fail(cause)

    def _expire(self) -> None:
        if self._waiter is not None:
            self._fail(TimeoutError("no response head within read_timeout"))
        else:
            self._fail(TimeoutError("no body bytes within stream_idle_timeout"))

    def _fail(self, cause: BaseException) -> None:
        """The exchange failed: tell whoever waits for it, and close the connection."""
        waiter, response = self._waiter, self._response
        self._waiter = self._response = None
        if waiter is not None:
            if not waiter.done():
                stale = isinstance(cause, _StaleConnectionError)
                waiter.set_exception(cause if stale else _upstream_error(cause, self._origin))
        elif response is not None:
            response._end(_upstream_error(cause, self._origin))
        self._shut()

    def _resume(self) -> None:
        self._paused = False
        if not self._closed and self._transport is not None:
            self._transport.resume_reading()

    def _shut(self, graceful: bool = False) -> None:
        """Make the connection unusable and close its transport (idempotent)."""
        if self._pooled:
            self._pool._unpool(self)
        self._pool._active.discard(self)
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            if graceful:
                self._transport.close()
            else:
                self._transport.abort()

    def _lost_future(self) -> asyncio.Future[None]:
        if self._lost is None:
            self._lost = self._loop.create_future()
        return self._lost


class UpstreamPool:
    """Keep-alive connections to model servers, shared by every request of the process.

    Idle connections are reused last-in first-out (the most recently used is the least likely
    to have been closed by the server), at most ``max_idle_connections`` per origin, none older
    than ``idle_connection_ttl``; one that the server closed while idle is dropped at once.

    A server may close an idle keep-alive connection just as a request is written to it. So
    when a *reused* connection ends (EOF or reset) before any byte of the response arrived, the
    request is sent once more, on a fresh connection: that race is by far the usual cause, and
    then the server never started on the request. Nothing is retried once a response byte has
    arrived, after a timeout, or when the connection was a fresh one.

    Timeouts are enforced by one timer per pool that sweeps the requests in flight every
    ``min(read_timeout, stream_idle_timeout) / 10`` seconds (at most 1 s), not by a timer per
    wait. A pool belongs to the event loop it is first used on.
    """

    def __init__(
        self, settings: UpstreamClientSettings, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._connect_timeout = settings.connect_timeout
        self._read_timeout = settings.read_timeout
        self._stream_idle_timeout = settings.stream_idle_timeout
        self._max_idle = settings.max_idle_connections
        self._ttl = settings.idle_connection_ttl
        self._max_header_bytes = settings.max_header_bytes
        self._max_headers = settings.max_headers
        self._head_limit = settings.max_header_bytes + _STATUS_LINE_SLACK
        self._ssl_context = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._conns: set[_Connection] = set()
        self._active: set[_Connection] = set()  # a request in flight: watched for timeouts
        self._tick = max(0.01, min(1.0, min(self._read_timeout, self._stream_idle_timeout) / 10))
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> UpstreamResponse:
        """Send one request and return as soon as the response head has arrived.

        ``headers`` must be complete and valid except ``host`` and ``content-length``, which
        are added here (``content-length`` is left out only for an empty GET, HEAD, OPTIONS or
        TRACE). Raises :class:`~bastion.errors.UpstreamConnectError` (no connection, or it
        closed before any response byte), :class:`~bastion.errors.UpstreamTimeoutError`
        (``connect_timeout``, or ``read_timeout`` waiting for the head) and
        :class:`~bastion.errors.UpstreamProtocolError` (invalid response). If the calling task
        is cancelled, the connection is closed.
        """
        data = _encode_request(origin._host_header, method, target, headers, body)
        is_head = method == b"HEAD"
        conn = self._checkout(origin)
        while True:
            if conn is None:
                conn = await self._connect(origin)
            waiter = conn.send(data, is_head)
            try:
                return await waiter
            except _StaleConnectionError:
                _logger.debug("kept-alive upstream connection was closed; retrying once")
                conn = None  # only reused connections go stale, so this retries once at most
            except BaseException:
                conn._shut()
                raise

    def idle_count(self, origin: Origin) -> int:
        """How many idle connections to ``origin`` wait in the pool."""
        return len(self._idle.get(origin, ()))

    async def aclose(self) -> None:
        """Close every connection, idle or busy, and refuse further requests."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        conns = list(self._conns)
        lost = [conn._lost_future() for conn in conns]
        for conn in conns:
            conn._shut()
        if lost:
            await asyncio.wait(lost, timeout=_CLOSE_WAIT)

    # -- connections ------------------------------------------------------------------------

    async def _connect(self, origin: Origin) -> _Connection:
        if self._closed:
            raise _upstream_error(ConnectionRefusedError("the pool is closed"), origin)
        loop = asyncio.get_running_loop()
        conn = _Connection(self, origin, loop)
        context = None
        if origin.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
        except OSError as exc:  # TimeoutError, refused, unreachable, DNS, TLS
            raise _upstream_error(exc, origin) from exc
        self._conns.add(conn)
        return conn

    def _checkout(self, origin: Origin) -> _Connection | None:
        # A connection that closed while idle has already left its stack (``_shut``).
        stack = self._idle.get(origin)
        if stack:
            conn = stack.pop()
            conn._pooled = False
            if time.monotonic() - conn._idle_since <= self._ttl:
                return conn
            conn._shut(graceful=True)
            while stack:  # last in, first out: the rest are older still
                stack[0]._shut(graceful=True)
        return None

    def _checkin(self, conn: _Connection) -> None:
        if self._closed or self._max_idle == 0:
            conn._shut(graceful=True)
            return
        stack = conn._stack
        now = time.monotonic()
        while stack and (len(stack) >= self._max_idle or now - stack[0]._idle_since > self._ttl):
            stack[0]._shut(graceful=True)  # the oldest
        conn._idle_since = now
        conn._pooled = True
        stack.append(conn)

    def _watch(self, conn: _Connection) -> None:
        self._active.add(conn)
        if self._sweeper is None:
            self._sweeper = conn._loop.call_later(self._tick, self._sweep)

    def _sweep(self) -> None:
        """Fail the exchanges past their deadline: one timer per pool, not one per wait."""
        now = time.monotonic()
        for conn in [c for c in self._active if c._deadline <= now]:
            conn._expire()
        if self._active:
            self._sweeper = asyncio.get_running_loop().call_later(self._tick, self._sweep)
        else:
            self._sweeper = None

    def _unpool(self, conn: _Connection) -> None:
        conn._pooled = False
        conn._stack.remove(conn)
