"""The HTTP/1.1 server protocol: uvicorn's httptools protocol with limits on the connection and
the request head.

uvicorn calls the application only once a request's head is complete, so the head's limits
must live in the protocol: how long the head may take to arrive (408, against slow-loris
clients), how many header lines and bytes it may carry (431), how long its target may be
(414), and that it is a plain request for a path (no CONNECT, no upgrade, no proxy-style
target). The connection's limits live here too, because they apply before any request: how
many connections one address may hold, the TLS handshake (done here, so that it counts
against the head's deadline), and how long a caller may leave the gateway's writes unread.
Everything else is uvicorn's. Under mutual TLS it also keeps each connection's verified
client certificate for the application (``Downstream.peer_certificate``).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import ssl
import urllib.parse
from collections.abc import Callable
from typing import Any, ClassVar, cast

import httptools
import uvloop
import uvloop.loop
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bastion.errors import (
    BadRequestError,
    GatewayError,
    HeadersTooLargeError,
    MethodNotAllowedError,
    RequestTimeoutError,
)
from bastion.pipeline.responses import error_body
from bastion.server.cycle import Cycle
from bastion.server.deadlines import DeadlineWatch
from bastion.server.downstream import CorkableTransport, DownstreamConnection
from bastion.settings import HttpSettings
from bastion.types import DOWNSTREAM_SCOPE_KEY, RESPOND_SCOPE_KEY

__all__ = ["AddressLimit", "ConnectionCounts", "GuardedHttpToolsProtocol", "protocol_class"]

log = logging.getLogger("bastion.server")


class UriTooLongError(GatewayError):
    status = 414
    type = "invalid_request_error"
    code = "uri_too_long"
    default_message = "The request target is too long."


class WebSocketRefusedError(GatewayError):
    status = 501
    type = "invalid_request_error"
    code = "websocket_not_supported"
    default_message = "WebSocket endpoints (such as /v1/realtime) are not served by this gateway."


class _HeadRefused(Exception):
    """Raised inside a parser callback to stop parsing a head that broke a limit."""


_REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
}


_LOG_INTERVAL = 60.0
"""An address over the bound is reported at most once in this many seconds."""
_LOGGED_KEPT = 1024
"""Past this many addresses reported, those reported longer ago than the interval are forgotten."""


class AddressLimit:
    """Concurrent connections per client address, at most ``limit`` each
    (``http.max_connections_per_address``).

    A connection is counted from the moment it is accepted, before any TLS handshake or byte
    of HTTP, so that connections which never say anything count as much as busy ones.
    ``refused`` counts the connections turned away (a metric reads it); each address over the
    bound is logged once a minute, not once per connection: a flood of refusals must not
    become a flood of log lines.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refused = 0
        self._open: dict[str, int] = {}
        self._logged: dict[str, float] = {}

    def admit(self, address: str | None, now: float) -> bool:
        """Count a new connection from ``address``; False, and nothing counted, when the
        address already holds ``limit`` connections (or is unknown: a connection whose
        address cannot be read is closed, not let through uncounted)."""
        if address is not None:
            held = self._open.get(address, 0)
            if held < self.limit:
                self._open[address] = held + 1
                return True
        self.refused += 1
        self._report(address, now)
        return False

    def release(self, address: str) -> None:
        """One connection from ``address``, admitted earlier, has closed."""
        held = self._open[address] - 1
        if held:
            self._open[address] = held
        else:
            del self._open[address]

    def held(self, address: str) -> int:
        return self._open.get(address, 0)

    def _report(self, address: str | None, now: float) -> None:
        key = address or "?"
        last = self._logged.get(key)
        if last is not None and now - last < _LOG_INTERVAL:
            return
        if len(self._logged) >= _LOGGED_KEPT:
            self._logged = {a: t for a, t in self._logged.items() if now - t < _LOG_INTERVAL}
        self._logged[key] = now
        log.warning(
            "client %s holds %d connections (http.max_connections_per_address): further "
            "ones are closed at once (reported once a minute per address)",
            key,
            self.limit,
        )


def _head_watch(limits: HttpSettings) -> DeadlineWatch[GuardedHttpToolsProtocol]:
    return DeadlineWatch(limits.request_head_timeout, lambda conn: conn.on_head_timeout())


def _write_watch(limits: HttpSettings) -> DeadlineWatch[GuardedHttpToolsProtocol]:
    return DeadlineWatch(limits.write_timeout, lambda conn: conn.on_write_timeout())


def _idle_watch(limits: HttpSettings) -> DeadlineWatch[GuardedHttpToolsProtocol]:
    return DeadlineWatch(limits.keep_alive_timeout, lambda conn: conn.on_idle_timeout())


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One instance per connection; the class carries the limits (see :func:`protocol_class`).

    uvicorn's ``connection_made`` runs once the connection is ready for HTTP: at once for
    plain TCP, after the handshake under TLS (see :meth:`connection_made`). Until then the
    connection has no ``downstream``.
    """

    limits: ClassVar[HttpSettings] = HttpSettings()
    head_watch: ClassVar[DeadlineWatch[GuardedHttpToolsProtocol]] = _head_watch(limits)
    write_watch: ClassVar[DeadlineWatch[GuardedHttpToolsProtocol]] = _write_watch(limits)
    idle_watch: ClassVar[DeadlineWatch[GuardedHttpToolsProtocol]] = _idle_watch(limits)
    """Kept-alive connections between requests (``http.keep_alive_timeout``): uvicorn arms
    a timer per response for it, which cost as much as a header's parsing per request."""
    address_limit: ClassVar[AddressLimit | None] = None
    tls: ClassVar[ssl.SSLContext | None] = None
    """The server's TLS context: connections are plain TCP until this protocol's handshake."""
    peer_certificates: ClassVar[bool] = False
    """Keep the client certificate of each connection (only TLS with a client CA has one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: GatewayError | None = None
        self._address: str | None = None
        self._tcp: asyncio.Transport | None = None
        self.downstream: DownstreamConnection | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A TCP connection was accepted: count it against its address's bound, start the
        head's deadline and, under TLS, the handshake, which must finish within it. Under TLS
        this is called again, by the TLS layer, once the handshake is done."""
        if self._tcp is not None:
            self._tcp = None
            self._ready(transport)
            return
        if not self._admit(transport):
            transport.abort()
            return
        self.head_watch.arm(self, self.loop)
        if self.tls is None:
            self._ready(transport)
        else:
            self._start_tls(transport, self.tls)

    def _admit(self, transport: asyncio.Transport) -> bool:
        limit = self.address_limit
        if limit is None:
            return True
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else None
        if not limit.admit(address, self.loop.time()):
            return False
        self._address = address
        return True

    def _start_tls(self, tcp: asyncio.Transport, context: ssl.SSLContext) -> None:
        """Put the loop's TLS layer between the socket and this protocol, as the loop's
        ``create_server(ssl=...)`` would have done before calling ``connection_made``.

        It must happen now, not in a task (``loop.start_tls``): the loop starts reading as
        soon as ``connection_made`` returns, and the ClientHello is usually there already.
        """
        self._tcp = tcp
        handshake = self.loop.create_future()
        handshake.add_done_callback(self._handshake_done)
        layer = _tls_layer(self.loop)(
            self.loop,
            self,
            context,
            handshake,
            server_side=True,
            ssl_handshake_timeout=self.limits.request_head_timeout,
        )
        tcp.set_protocol(layer)
        layer.connection_made(tcp)

    def _handshake_done(self, handshake: asyncio.Future[None]) -> None:
        if not handshake.cancelled():
            handshake.exception()  # a failed handshake is the caller's affair: not logged
        if self.downstream is not None:  # done: this protocol's connection_made ran
            return
        if self._tcp is not None:  # refused, timed out or closed before it was done
            self._tcp.abort()
        self._release()

    def _ready(self, transport: asyncio.Transport) -> None:
        """The connection is ready for HTTP: uvicorn's ``connection_made``."""
        corkable = CorkableTransport(transport)
        super().connection_made(corkable)
        self.downstream = DownstreamConnection(corkable)
        if self.peer_certificates:  # the handshake is over: the certificate was verified
            self.downstream.peer_certificate = transport.get_extra_info("peercert") or None

    def _release(self) -> None:
        address, self._address = self._address, None
        if address is not None and self.address_limit is not None:
            self.address_limit.release(address)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self.head_watch.disarm(self)
        self.write_watch.disarm(self)
        self.idle_watch.disarm(self)
        if self.downstream is None:  # refused, or its TLS handshake never finished
            return
        super().connection_lost(exc)
        self.downstream.lost()
        if self.cycle is not None:  # an unfinished response: its scope holds its ``respond``
            cast(dict[str, Any], self.cycle.scope).pop(RESPOND_SCOPE_KEY, None)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_watch.arm(self, self.loop)
        if self.downstream is not None:
            self.downstream.pause_writing()

    def resume_writing(self) -> None:
        self.write_watch.disarm(self)
        super().resume_writing()
        if self.downstream is not None:
            self.downstream.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._refusal is None:
                raise
            self._send_refusal(self._refusal)
        except httptools.HttpParserUpgrade:  # refused in on_headers_complete; kept as a net
            self._send_refusal(BadRequestError("Protocol upgrades are not supported."))
        except httptools.HttpParserError:
            self._send_refusal(BadRequestError("Invalid HTTP request."))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._header_count = 0
        if self not in self.head_watch.waiting:
            self.head_watch.arm(self, self.loop)

    def _unset_keepalive_if_required(self) -> None:
        """A kept-alive connection is busy again (uvicorn cancels its timer here)."""
        self.idle_watch.disarm(self)

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive deadline in the idle watch instead of a timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.idle_watch.disarm(self)
        self.flow.resume_reading()
        if self.pipeline:  # pipelined requests: start the next one
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_watch.arm(self, self.loop)

    def on_idle_timeout(self) -> None:
        """Called by the idle watch when a kept-alive connection has been idle too long."""
        if not self.transport.is_closing():
            self.transport.close()

    # data_received, on_url and on_header do uvicorn's work themselves (one Python call per
    # callback, not two); tests/unit/test_uvicorn_internals.py fails when uvicorn's versions
    # change, so that a change there is carried over here.

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            self._refuse(UriTooLongError())

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_bytes += len(name) + len(value) + 4
        limits = self.limits
        if self._header_count > limits.max_headers or self._head_bytes > limits.max_header_bytes:
            self._refuse(HeadersTooLargeError())
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace; not the value's (RFC 9110)
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_watch.disarm(self)
        if self.parser.should_upgrade():  # CONNECT, or "Connection: upgrade" with "Upgrade"
            self._refuse(_upgrade_refusal(self.parser.get_method(), self.headers))
        if self.url[:1] != b"/":  # absolute-form, asterisk-form: not a request for a path
            self._refuse(BadRequestError(_NOT_A_PATH, code="invalid_target"))
        scope = cast(dict[str, Any], self.scope)
        scope[DOWNSTREAM_SCOPE_KEY] = self.downstream
        self._start_cycle(scope)

    def _start_cycle(self, scope: dict[str, Any]) -> None:
        """uvicorn's ``on_headers_complete`` from the parsed head on, making Bastion's
        :class:`Cycle` itself. (Turning uvicorn's cycle into one afterwards, by assigning its
        ``__class__``, cost more than the cheaper ``send`` saved: CPython then keeps the
        object's attributes in a dict of its own, off the fast path.) Upgrades never get
        here: they were refused above."""
        parser = self.parser
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed_url.query or b""
        app = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        existing = self.cycle
        self.cycle = cycle = Cycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        scope[RESPOND_SCOPE_KEY] = cycle.respond
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: it waits for the one in progress
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def _refuse(self, error: GatewayError) -> None:
        self._refusal = error
        raise _HeadRefused()

    def on_head_timeout(self) -> None:
        """Called by the head watch when this connection's request head is overdue."""
        if self.downstream is None:  # still in its TLS handshake: nothing to answer with
            if self._tcp is not None:
                self._tcp.abort()
            return
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served; its head arrived in time
        self._refusal = RequestTimeoutError()
        self._send_refusal(self._refusal)

    def on_write_timeout(self) -> None:
        """Called by the write watch when the caller has taken none of the gateway's writes
        for ``http.write_timeout``: the connection is dropped, which ends its request as a
        disconnect does (the upstream request is closed)."""
        self.transport.abort()

    def _send_refusal(self, error: GatewayError) -> None:
        body = error_body(error)
        head = b"HTTP/1.1 %d %s\r\n" % (error.status, _REASONS.get(error.status, b"Error"))
        self.transport.write(
            head
            + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
            + body
        )
        self.transport.close()


_NOT_A_PATH = "The request target must be a path: this gateway is not a proxy."


def _upgrade_refusal(method: bytes, headers: list[tuple[bytes, bytes]]) -> GatewayError:
    if method == b"CONNECT":
        return MethodNotAllowedError("CONNECT is not supported: this gateway is not a proxy.")
    if any(name == b"upgrade" and b"websocket" in value.lower() for name, value in headers):
        return WebSocketRefusedError()
    return BadRequestError("Protocol upgrades are not supported.")


class ConnectionCounts:
    """What the server's connections count, for metrics read at scrape time."""

    def __init__(self, protocol: type[GuardedHttpToolsProtocol]) -> None:
        self._protocol = protocol

    @property
    def refused_connections(self) -> int:
        limit = self._protocol.address_limit
        return limit.refused if limit is not None else 0

    @property
    def write_timeouts(self) -> int:
        return self._protocol.write_watch.expired


def _tls_layer(loop: asyncio.AbstractEventLoop) -> Callable[..., asyncio.BaseProtocol]:
    """The TLS protocol class of ``loop``: the one its ``create_server(ssl=...)`` wraps every
    accepted connection in (uvloop's is its own, compiled, class)."""
    if isinstance(loop, uvloop.Loop):
        return cast(Callable[..., asyncio.BaseProtocol], uvloop.loop.SSLProtocol)  # type: ignore[attr-defined]
    return asyncio.sslproto.SSLProtocol


def protocol_class(
    limits: HttpSettings,
    *,
    tls: ssl.SSLContext | None = None,
    peer_certificates: bool = False,
) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to ``limits`` (uvicorn instantiates the class it is given);
    ``tls`` is the server's TLS context (the protocol does the handshake: uvicorn is given
    none); ``peer_certificates`` when that context verifies client certificates."""
    cap = limits.max_connections_per_address
    attributes = {
        "limits": limits,
        "head_watch": _head_watch(limits),
        "write_watch": _write_watch(limits),
        "idle_watch": _idle_watch(limits),
        "address_limit": AddressLimit(cap) if cap is not None else None,
        "tls": tls,
        "peer_certificates": peer_certificates,
    }
    return type("BastionHttpProtocol", (GuardedHttpToolsProtocol,), attributes)
