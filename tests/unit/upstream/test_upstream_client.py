"""The pooled upstream client against fake model servers on real sockets (127.0.0.1, port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from bastion.errors import (
    ConfigError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from bastion.settings import UpstreamClientSettings
from bastion.upstream.client import Origin, UpstreamPool, UpstreamResponse

BODY = b'{"id":"cmpl-1","object":"chat.completion"}'
WAIT = 5.0  # upper bound on anything expected to happen "soon"


# -- a fake model server ---------------------------------------------------------------------


@dataclass
class Request:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


@dataclass
class Peer:
    """One accepted connection, as the handler sees it."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read_request(self) -> Request | None:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        line, *lines = head[:-4].split(b"\r\n")
        method, target, _ = line.split(b" ")
        headers = [(n.strip(), v.strip()) for n, v in (x.split(b":", 1) for x in lines)]
        request = Request(method, target, headers, b"")
        length = int(request.header(b"content-length") or 0)
        request.body = await self.reader.readexactly(length)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_eof(self) -> None:
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class FakeUpstream:
    handler: Handler
    accepted: int = 0
    disconnected: int = 0
    requests: list[Request] = field(default_factory=list)
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def origin(self) -> Origin:
        assert self.server is not None
        return Origin("http", "127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        peer = Peer(self.accepted, reader, writer)
        self.accepted += 1
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.disconnected += 1
            self.tasks.discard(task)

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


def response(status: bytes = b"200 OK", body: bytes = BODY, *headers: bytes) -> bytes:
    head = [b"HTTP/1.1 " + status, b"content-length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll until ``condition`` holds; fail after WAIT seconds."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.005)


def ok_handler(up: list[FakeUpstream]) -> Handler:
    """Answer every request on the connection with BODY, naming the connection in x-conn."""

    async def handle(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            up[0].requests.append(request)
            await peer.send(response(b"200 OK", BODY, b"x-conn: %d" % peer.index))

    return handle


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler | None], Awaitable[FakeUpstream]]]:
    started: list[FakeUpstream] = []

    async def start(handler: Handler | None = None) -> FakeUpstream:
        holder: list[FakeUpstream] = []
        up = FakeUpstream(handler or ok_handler(holder))
        holder.append(up)
        up.server = await asyncio.start_server(up.handle, "127.0.0.1", 0, backlog=512)
        started.append(up)
        return up

    yield start
    for up in started:
        await up.aclose()


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., UpstreamPool]]:
    pools: list[UpstreamPool] = []

    def make(ssl_context: ssl.SSLContext | None = None, **settings: Any) -> UpstreamPool:
        # A regression must fail the test within seconds, not hang it for the defaults' minutes.
        settings = {"read_timeout": WAIT, "stream_idle_timeout": WAIT, **settings}
        pool = UpstreamPool(UpstreamClientSettings(**settings), ssl_context=ssl_context)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.aclose()


Serve = Callable[[Handler | None], Awaitable[FakeUpstream]]
MakePool = Callable[..., UpstreamPool]


async def get(pool: UpstreamPool, origin: Origin, method: bytes = b"GET") -> UpstreamResponse:
    return await pool.request(origin, method, b"/v1/models", [], b"")


async def fetch(pool: UpstreamPool, origin: Origin) -> tuple[int, bytes, bytes | None]:
    """One whole exchange: status, body and the x-conn header."""
    async with await get(pool, origin) as resp:
        body = await resp.read()
    return resp.status, body, dict(resp.headers).get(b"x-conn")


# -- origins -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin", "host_header"),
    [
        ("http://h:8000", Origin("http", "h", 8000), b"h:8000"),
        ("http://H:80/v1", Origin("http", "h", 80), b"h"),
        ("https://api.example.com", Origin("https", "api.example.com", 443), b"api.example.com"),
        ("https://h:8443/", Origin("https", "h", 8443), b"h:8443"),
        ("http://[::1]:8000", Origin("http", "::1", 8000), b"[::1]:8000"),
    ],
)
def test_origin_from_url(url: str, origin: Origin, host_header: bytes) -> None:
    assert Origin.from_url(url) == origin
    assert Origin.from_url(url).host_header == host_header


@pytest.mark.parametrize(
    "url", ["ftp://h", "http://", "http://u:p@h:1", "http://h:99999", "http://h/?q=1", "h:80"]
)
def test_origin_from_url_rejects(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Origin.from_url(url)
    assert "u:p" not in str(caught.value)


# -- requests and keep-alive -------------------------------------------------------------------


async def test_request_is_framed(serve: Serve, make_pool: MakePool) -> None:
    up = await serve(None)
    pool = make_pool()
    headers = [(b"content-type", b"application/json"), (b"x-a", b"1")]
    for method, body in ((b"POST", b'{"model":"m"}'), (b"POST", b""), (b"GET", b"")):
        async with await pool.request(up.origin, method, b"/v1/x?y=1", headers, body) as resp:
            assert await resp.read() == BODY
    (post, empty_post, get_) = up.requests
    assert (post.method, post.target, post.body) == (b"POST", b"/v1/x?y=1", b'{"model":"m"}')
    assert post.headers[0] == (b"host", b"127.0.0.1:%d" % up.origin.port)
    assert post.header(b"content-length") == b"13"
    assert post.headers[-2:] == headers
    assert empty_post.header(b"content-length") == b"0"
    assert get_.header(b"content-length") is None


async def test_large_request_body_is_sent_whole(serve: Serve, make_pool: MakePool) -> None:
    up = await serve(None)
    pool = make_pool()
    body = bytes(range(256)) * 4096  # 1 MiB, written apart from the head
    for _ in range(2):
        async with await pool.request(up.origin, b"POST", b"/v1/x", [], body) as resp:
            assert await resp.read() == BODY
    assert [r.body == body for r in up.requests] == [True, True]
    assert up.accepted == 1


async def test_response_headers_lowercased_in_order(serve: Serve, make_pool: MakePool) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(
            response(b"201 Created", b"x", b"X-One: 1", b"Set-Cookie: a", b"set-cookie: b")
        )

    up = await serve(handler)
    async with await get(make_pool(), up.origin) as resp:
        assert resp.status == 201
        assert resp.headers == [
            (b"content-length", b"1"),
            (b"x-one", b"1"),
            (b"set-cookie", b"a"),
            (b"set-cookie", b"b"),
        ]


async def test_sequential_requests_reuse_one_connection(serve: Serve, make_pool: MakePool) -> None:
    up = await serve(None)
    pool = make_pool()
    for _ in range(5):
        assert await fetch(pool, up.origin) == (200, BODY, b"0")
    assert up.accepted == 1
    assert pool.idle_count(up.origin) == 1


async def test_idle_connections_are_reused_last_in_first_out(
    serve: Serve, make_pool: MakePool
) -> None:
    gates = [asyncio.Event(), asyncio.Event()]

    async def handler(peer: Peer) -> None:
        first = True
        while await peer.read_request() is not None:
            if first:
                await gates[peer.index].wait()
                first = False
            await peer.send(response(b"200 OK", BODY, b"x-conn: %d" % peer.index))

    up = await serve(handler)
    pool = make_pool()
    tasks = [asyncio.create_task(fetch(pool, up.origin)) for _ in range(2)]
    await eventually(lambda: up.accepted == 2)
    gates[0].set()
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    gates[1].set()
    assert {r[2] for r in await asyncio.gather(*tasks)} == {b"0", b"1"}
    assert pool.idle_count(up.origin) == 2
    assert (await fetch(pool, up.origin))[2] == b"1"  # the last one given back
    assert (await fetch(pool, up.origin))[2] == b"1"


async def test_idle_connections_are_capped(serve: Serve, make_pool: MakePool) -> None:
    arrived = asyncio.Event()
    seen: list[int] = []

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        seen.append(peer.index)
        if len(seen) == 4:
            arrived.set()
        await arrived.wait()  # four connections are open at once
        await peer.send(response())
        await peer.wait_eof()

    up = await serve(handler)
    pool = make_pool(max_idle_connections=2)
    await asyncio.gather(*(fetch(pool, up.origin) for _ in range(4)))
    assert up.accepted == 4
    assert pool.idle_count(up.origin) == 2
    await eventually(lambda: up.disconnected == 2)


async def test_expired_idle_connection_is_not_reused(serve: Serve, make_pool: MakePool) -> None:
    up = await serve(None)
    pool = make_pool(idle_connection_ttl=0.05)
    assert (await fetch(pool, up.origin))[2] == b"0"
    await asyncio.sleep(0.1)
    assert (await fetch(pool, up.origin))[2] == b"1"
    await eventually(lambda: up.disconnected == 1)


async def test_connection_closed_by_server_while_idle_is_dropped(
    serve: Serve, make_pool: MakePool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(b"200 OK", BODY, b"x-conn: %d" % peer.index))

    up = await serve(handler)
    pool = make_pool()
    assert (await fetch(pool, up.origin))[2] == b"0"
    await eventually(lambda: pool.idle_count(up.origin) == 0)
    assert (await fetch(pool, up.origin))[2] == b"1"


async def test_connection_close_response_is_not_pooled(serve: Serve, make_pool: MakePool) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(b"200 OK", BODY, b"connection: close"))
        await peer.wait_eof()

    up = await serve(handler)
    pool = make_pool()
    assert await fetch(pool, up.origin) == (200, BODY, None)
    assert pool.idle_count(up.origin) == 0
    await eventually(lambda: up.disconnected == 1)


# -- the stale keep-alive race -------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "reset"])
async def test_reused_connection_closed_before_response_is_retried_once(
    serve: Serve, make_pool: MakePool, reset: bool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response(b"200 OK", BODY, b"x-conn: %d" % peer.index))
        if peer.index == 0:
            await peer.read_request()  # and close without answering, as a server timing out
            if reset:
                sock = peer.writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                peer.writer.transport.abort()
            return
        while await peer.read_request() is not None:
            await peer.send(response(b"200 OK", BODY, b"x-conn: %d" % peer.index))

    up = await serve(handler)
    pool = make_pool()
    assert (await fetch(pool, up.origin))[2] == b"0"
    assert (await fetch(pool, up.origin))[2] == b"1"
    assert up.accepted == 2


async def test_server_closing_idle_connections_fails_no_request(
    serve: Serve, make_pool: MakePool
) -> None:
    async def handler(peer: Peer) -> None:  # a keep-alive timeout of a few milliseconds
        timeout = None  # the first request is awaited however long it takes
        while True:
            try:
                async with asyncio.timeout(timeout):
                    request = await peer.read_request()
            except TimeoutError:
                return
            if request is None:
                return
            await peer.send(response())
            timeout = 0.003

    async def client(pool: UpstreamPool, origin: Origin, seed: int) -> None:
        for i in range(15):
            assert (await fetch(pool, origin))[:2] == (200, BODY)
            await asyncio.sleep((seed * 7 + i * 3) % 6 / 1000)  # around the server's timeout

    up = await serve(handler)
    pool = make_pool()
    await asyncio.gather(*(client(pool, up.origin, seed) for seed in range(20)))
    assert up.accepted > 20  # connections were closed under the client, and replaced


async def test_fresh_connection_closed_before_response_is_not_retried(
    serve: Serve, make_pool: MakePool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()

    up = await serve(handler)
    with pytest.raises(UpstreamConnectError):
        await get(make_pool(), up.origin)
    assert up.accepted == 1


async def test_reused_connection_closed_mid_response_is_not_retried(
    serve: Serve, make_pool: MakePool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(response())
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-le")

    up = await serve(handler)
    pool = make_pool()
    await fetch(pool, up.origin)
    with pytest.raises(UpstreamProtocolError):
        await get(pool, up.origin)
    assert up.accepted == 1


# -- response bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reusable"),
    [
        (response(), True),
        (CHUNKED_HEAD + chunked(BODY[:10], BODY[10:]) + b"0\r\nx-trailer: t\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + BODY, False),
        (b"HTTP/1.0 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY), False),
    ],
    ids=["content-length", "chunked", "until-close", "http-1.0"],
)
async def test_body_framings(serve: Serve, make_pool: MakePool, raw: bytes, reusable: bool) -> None:
    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(raw)
            if not reusable:
                return

    up = await serve(handler)
    pool = make_pool()
    for _ in range(2):
        async with await get(pool, up.origin) as resp:
            assert await resp.read() == BODY
            assert b"x-trailer" not in dict(resp.headers)
    assert up.accepted == (1 if reusable else 2)


@pytest.mark.parametrize(
    ("method", "status"),
    [(b"HEAD", b"200 OK"), (b"GET", b"204 No Content"), (b"GET", b"304 Not Modified")],
)
async def test_responses_without_body(
    serve: Serve, make_pool: MakePool, method: bytes, status: bytes
) -> None:
    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            if request.method == b"HEAD":
                await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
            elif request.target == b"/v1/models":
                await peer.send(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")
            else:
                await peer.send(response())

    up = await serve(handler)
    pool = make_pool()
    async with await get(pool, up.origin, method) as resp:
        assert await resp.read() == b""
    assert [chunk async for chunk in resp] == []
    async with await pool.request(up.origin, b"GET", b"/next", [], b"") as resp:
        assert await resp.read() == BODY  # the same connection still parses correctly
    assert up.accepted == 1


async def test_interim_response_is_skipped(serve: Serve, make_pool: MakePool) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + response())

    up = await serve(handler)
    async with await get(make_pool(), up.origin) as resp:
        assert resp.status == 200
        assert resp.headers == [(b"content-length", b"%d" % len(BODY))]
        assert await resp.read() == BODY


async def test_invalid_response_is_a_protocol_error(serve: Serve, make_pool: MakePool) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"SSH-2.0-OpenSSH\r\n\r\n")

    up = await serve(handler)
    with pytest.raises(UpstreamProtocolError):
        await get(make_pool(), up.origin)


def answering(reply: bytes) -> Handler:
    """A model server that answers the first request with ``reply``, then waits for the
    gateway to close the connection."""

    async def handle(peer: Peer) -> None:
        await peer.read_request()
        with contextlib.suppress(ConnectionError):
            await peer.send(reply)
        await peer.wait_eof()

    return handle


@pytest.mark.parametrize(
    "status",
    [b"600 X", b"999 Nonsense", b"099 Low", b"000 Zero", b"101 Switching Protocols"],
)
async def test_a_status_outside_100_to_599_is_a_protocol_error(
    serve: Serve, make_pool: MakePool, status: bytes
) -> None:
    """llhttp accepts any three digits; a status HTTP does not define (or an unasked-for
    protocol switch) is the upstream's fault, at once: not a relayed 600, not an interim
    response waited past until read_timeout."""
    up = await serve(answering(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\nhi"))
    pool = make_pool(read_timeout=WAIT)
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamProtocolError) as caught:
        await get(pool, up.origin)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert str(up.origin.port) not in str(caught.value)
    await eventually(lambda: up.disconnected == 1)  # never reused
    assert pool.idle_count(up.origin) == 0


@pytest.mark.parametrize("status", [b"100 Continue", b"199 Whatever", b"599 Odd", b"200 OK"])
async def test_statuses_in_range_are_accepted(
    serve: Serve, make_pool: MakePool, status: bytes
) -> None:
    interim = status.startswith(b"1")
    reply = b"HTTP/1.1 " + status + b"\r\n\r\n" + response() if interim else response(status)
    up = await serve(answering(reply))
    async with await get(make_pool(), up.origin) as resp:
        assert resp.status == (200 if interim else int(status[:3]))
        assert await resp.read() == BODY


async def test_an_oversized_response_head_is_refused(serve: Serve, make_pool: MakePool) -> None:
    big = b"x-big: " + b"a" * 1_000_000
    up = await serve(answering(response(b"200 OK", BODY, big)))
    pool = make_pool(max_header_bytes=16 * 1024)
    with pytest.raises(UpstreamProtocolError) as caught:
        await get(pool, up.origin)
    assert "header" in str(caught.value)
    await eventually(lambda: up.disconnected == 1)
    assert pool.idle_count(up.origin) == 0


async def test_a_head_that_never_ends_is_refused_once_past_the_limit(
    serve: Serve, make_pool: MakePool
) -> None:
    """httptools keeps a header value until its line ends: a header that goes on and on is
    refused once the head passes the limit, neither buffered nor waited for until
    read_timeout."""
    unending = b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 40_000
    up = await serve(answering(unending))
    pool = make_pool(max_header_bytes=16 * 1024, read_timeout=WAIT)
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamProtocolError):
        await get(pool, up.origin)
    assert asyncio.get_running_loop().time() - started < 1.0
    await eventually(lambda: up.disconnected == 1)


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ([b"x-%d: v" % i for i in range(100)], False),
        ([b"x-%d: v" % i for i in range(101)], True),
        ([b"x-a: " + b"b" * 4089] * 4, False),  # 4 lines of 4096 bytes: exactly the limit
        ([b"x-a: " + b"b" * 4089] * 3 + [b"x-a: " + b"b" * 4090], True),
    ],
    ids=["100-headers", "101-headers", "16384-bytes", "16385-bytes"],
)
async def test_response_header_limits(
    serve: Serve, make_pool: MakePool, headers: list[bytes], refused: bool
) -> None:
    """The limits count like the request side's: header lines, and name + value + 4 bytes
    each (``name: value\\r\\n``)."""
    up = await serve(answering(b"\r\n".join([b"HTTP/1.1 200 OK", *headers, b""]) + b"\r\n"))
    pool = make_pool(max_header_bytes=16 * 1024, max_headers=100)
    if refused:
        with pytest.raises(UpstreamProtocolError):
            await get(pool, up.origin)
    else:
        async with await get(pool, up.origin) as resp:
            assert len(resp.headers) == len(headers)


async def test_interim_responses_count_toward_the_head_limits(
    serve: Serve, make_pool: MakePool
) -> None:
    """An upstream cannot get round the limits with a stream of 1xx heads."""
    interim = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    up = await serve(answering(interim * 20 + response()))
    with pytest.raises(UpstreamProtocolError):
        await get(make_pool(max_headers=10), up.origin)


@pytest.mark.parametrize("iterate", [False, True])
async def test_body_cut_short_is_a_protocol_error(
    serve: Serve, make_pool: MakePool, iterate: bool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")

    up = await serve(handler)
    pool = make_pool()
    async with await get(pool, up.origin) as resp:
        if iterate:
            assert await anext(aiter(resp)) == b"0123456789"
        with pytest.raises(UpstreamProtocolError):
            await (anext(aiter(resp)) if iterate else resp.read())
    assert pool.idle_count(up.origin) == 0


# -- streaming and backpressure ------------------------------------------------------------------


async def test_stream_pieces_arrive_as_they_are_sent(serve: Serve, make_pool: MakePool) -> None:
    received_first = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + chunked(b"data: 1\n\n"))
        async with asyncio.timeout(WAIT):  # a client buffering the stream would never get here
            await received_first.wait()
        await peer.send(chunked(b"data: 2\n\n") + b"0\r\n\r\n")

    up = await serve(handler)
    pieces = []
    async with await get(make_pool(), up.origin) as resp:
        async for piece in resp:
            pieces.append(piece)
            received_first.set()
    assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_slow_consumer_pauses_the_socket(serve: Serve, make_pool: MakePool) -> None:
    total = 64 * 1024 * 1024  # more than the kernel buffers on both sides hold
    sent = 0

    async def handler(peer: Peer) -> None:
        nonlocal sent
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        piece = b"x" * 65536
        while sent < total:
            await peer.send(piece)
            sent += len(piece)

    up = await serve(handler)
    async with await get(make_pool(), up.origin) as resp:
        received = len(await anext(aiter(resp)))
        await asyncio.sleep(0.3)  # a slow consumer
        assert sent < total
        assert resp._buffered <= 1024 * 1024  # bounded by the high-water mark plus one read
        async for piece in resp:
            received += len(piece)
    assert received == total


async def test_relay_hands_pieces_to_the_sink_as_they_arrive(
    serve: Serve, make_pool: MakePool
) -> None:
    pieces: list[bytes] = []
    got_first = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + chunked(b"data: 1\n\n"))
        async with asyncio.timeout(WAIT):
            await got_first.wait()
        await peer.send(chunked(b"data: 2\n\n") + b"0\r\n\r\n")

    def sink(piece: bytes) -> None:
        pieces.append(piece)
        got_first.set()

    up = await serve(handler)
    pool = make_pool()
    async with await get(pool, up.origin) as resp:
        await resp.relay(sink)
    assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]
    assert pool.idle_count(up.origin) == 1  # complete: the connection went back to the pool


async def test_relay_reports_a_cut_body_and_an_idle_stream(
    serve: Serve, make_pool: MakePool
) -> None:
    async def cut(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + chunked(b"data: 1\n\n"))

    async def stall(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + chunked(b"data: 1\n\n"))
        await peer.wait_eof()

    pool = make_pool(stream_idle_timeout=0.2)
    for handler, error in ((cut, UpstreamProtocolError), (stall, UpstreamTimeoutError)):
        up = await serve(handler)
        pieces: list[bytes] = []
        async with await get(pool, up.origin) as resp:
            with pytest.raises(error):
                await resp.relay(pieces.append)
        assert pieces == [b"data: 1\n\n"]


async def test_relay_pause_stops_reading_and_the_idle_clock(
    serve: Serve, make_pool: MakePool
) -> None:
    total = 64 * 1024 * 1024
    sent = 0

    async def handler(peer: Peer) -> None:
        nonlocal sent
        await peer.read_request()
        await peer.send(CHUNKED_HEAD)
        piece = chunked(b"x" * 65536)
        while sent < total:
            await peer.send(piece)
            sent += 65536
        await peer.send(b"0\r\n\r\n")

    up = await serve(handler)
    received = 0
    async with await get(make_pool(stream_idle_timeout=0.2), up.origin) as resp:

        def sink(piece: bytes) -> None:
            nonlocal received
            received += len(piece)
            resp.pause_reading()  # a caller that never keeps up

        relayed = resp.relay(sink)
        await eventually(lambda: received > 0)
        await asyncio.sleep(0.5)  # paused longer than stream_idle_timeout: no timeout
        assert not relayed.done()
        assert sent < total
        while not relayed.done():
            resp.resume_reading()
            await asyncio.sleep(0)
        await relayed
    assert received == total


async def test_close_before_body_end_closes_connection(serve: Serve, make_pool: MakePool) -> None:
    saw_eof = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + chunked(b"data: 1\n\n"))
        await peer.wait_eof()
        saw_eof.set()

    up = await serve(handler)
    pool = make_pool()
    resp = await get(pool, up.origin)
    assert await anext(aiter(resp)) == b"data: 1\n\n"
    resp.close()
    resp.close()
    await asyncio.wait_for(saw_eof.wait(), 1.0)
    assert pool.idle_count(up.origin) == 0
    with pytest.raises(UpstreamProtocolError):
        await resp.read()


# -- timeouts, failures, cancellation ----------------------------------------------------------


async def silent(peer: Peer) -> None:
    await peer.read_request()
    await peer.wait_eof()


async def test_read_timeout(serve: Serve, make_pool: MakePool) -> None:
    up = await serve(silent)
    pool = make_pool(read_timeout=0.2)
    with pytest.raises(UpstreamTimeoutError) as caught:
        await get(pool, up.origin)
    assert str(up.origin.port) not in str(caught.value)
    await eventually(lambda: up.disconnected == 1)


async def test_stream_idle_timeout(serve: Serve, make_pool: MakePool) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + chunked(b"data: 1\n\n"))
        await peer.wait_eof()

    up = await serve(handler)
    async with await get(make_pool(stream_idle_timeout=0.2), up.origin) as resp:
        assert await anext(aiter(resp)) == b"data: 1\n\n"
        with pytest.raises(UpstreamTimeoutError):
            await anext(aiter(resp))
    await eventually(lambda: up.disconnected == 1)


async def test_connect_timeout(make_pool: MakePool, monkeypatch: pytest.MonkeyPatch) -> None:
    async def never_connects(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(WAIT)

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never_connects)
    with pytest.raises(UpstreamTimeoutError):
        await get(make_pool(connect_timeout=0.1), Origin("http", "127.0.0.1", 9))


async def test_connection_refused(make_pool: MakePool) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UpstreamConnectError) as caught:
        await get(make_pool(), Origin("http", "127.0.0.1", port))
    assert "127.0.0.1" not in str(caught.value)
    assert str(port) not in str(caught.value)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_cancelled_request_closes_connection(serve: Serve, make_pool: MakePool) -> None:
    up = await serve(silent)
    pool = make_pool()
    task = asyncio.create_task(get(pool, up.origin))
    await eventually(lambda: up.accepted == 1)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: up.disconnected == 1)
    assert pool.idle_count(up.origin) == 0


async def test_cancelled_stream_reader_closes_connection(serve: Serve, make_pool: MakePool) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD)
        await peer.wait_eof()

    up = await serve(handler)
    resp = await get(make_pool(), up.origin)
    task = asyncio.create_task(resp.read())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: up.disconnected == 1)


async def test_aclose_closes_idle_connections(serve: Serve, make_pool: MakePool) -> None:
    up = await serve(None)
    pool = make_pool()
    await fetch(pool, up.origin)
    await pool.aclose()
    await eventually(lambda: up.disconnected == 1)
    assert pool.idle_count(up.origin) == 0
    with pytest.raises(UpstreamConnectError):
        await get(pool, up.origin)


# -- load and TLS ------------------------------------------------------------------------------


async def test_many_concurrent_requests(serve: Serve, make_pool: MakePool) -> None:
    up = await serve(None)
    pool = make_pool()
    for _ in range(2):
        results = await asyncio.gather(*(fetch(pool, up.origin) for _ in range(200)))
        assert all(r[:2] == (200, BODY) for r in results)
    assert up.accepted <= 200  # the second round only reused connections
    assert pool.idle_count(up.origin) == up.accepted


async def test_https_with_given_context(make_pool: MakePool) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    holder: list[FakeUpstream] = []
    up = FakeUpstream(ok_handler(holder))
    holder.append(up)
    up.server = await asyncio.start_server(up.handle, "127.0.0.1", 0, ssl=server_context)
    try:
        origin = Origin("https", "localhost", up.origin.port)
        pool = make_pool(client_context)
        assert await fetch(pool, origin) == (200, BODY, b"0")
        assert await fetch(pool, origin) == (200, BODY, b"0")
        assert up.requests[0].header(b"host") == b"localhost:%d" % origin.port
        with pytest.raises(UpstreamConnectError):  # the default context does not trust it
            await get(make_pool(), origin)
        await pool.aclose()
    finally:
        await up.aclose()
