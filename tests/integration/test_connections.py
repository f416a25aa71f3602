"""What a connection may hold before and after its requests: unfinished TLS handshakes end with
the request head's deadline, one address holds at most ``http.max_connections_per_address``
connections, and a caller that stops reading is dropped after ``http.write_timeout``.

Every test connects from its own loopback address (all of 127.0.0.0/8 reaches the gateway),
so that one test's connections never count against another's bound.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
import trustme

from tests.integration.conftest import UPSTREAM_KEY
from tests.integration.test_proxy import post
from tests.integration.test_security import status_of
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.support.tls import client_context, server_files

KEYS = Keys()
HEAD_TIMEOUT = 2.0
CAP = 4
STREAM = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
HEALTH = b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https(
    upstream: FakeUpstream, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    where = tmp_path_factory.mktemp("tls")
    cert, key, _ = server_files(ca, where)
    http = {"request_head_timeout": HEAD_TIMEOUT, "max_connections_per_address": CAP}
    config = base_config(upstream.url, KEYS, http=http)
    config["server"]["tls"] = {"certificate": str(cert), "key": str(key)}
    with running_gateway(config, where, UPSTREAM_KEY) as process:
        yield process


@pytest.fixture(scope="module")
def plain(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    http = {"write_timeout": 1.0, "max_connections_per_address": CAP}
    config = base_config(upstream.url, KEYS, http=http)
    with running_gateway(config, tmp_path_factory.mktemp("plain"), UPSTREAM_KEY) as process:
        yield process


def _connect(gateway: GatewayProcess, source: str, receive_buffer: int = 0) -> socket.socket:
    sock = socket.socket()
    if receive_buffer:  # before connecting, so that the window offered is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(gateway.host_port)
    return sock


def _open_for(sock: socket.socket, limit: float) -> float:
    """Seconds until the gateway closed ``sock`` (end of stream or reset), reading and
    discarding whatever it sends; fails when it is still open after ``limit`` seconds."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(1 << 20):
            sock.settimeout(max(0.01, limit - (time.monotonic() - started)))
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit}s")
    return time.monotonic() - started


def _client_hello() -> bytes:
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(to_client, to_server, server_hostname="x")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return to_server.read()


def _https_health(sock: socket.socket, ca: trustme.CA) -> bytes:
    """Finish the TLS handshake on ``sock`` and ask for /health; the answer's first bytes."""
    with client_context(ca).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(HEALTH)
        return tls.recv(100)


def test_unfinished_tls_handshakes_are_closed_by_the_head_deadline(https: GatewayProcess) -> None:
    silent = [_connect(https, "127.0.0.2") for _ in range(CAP // 2)]  # never send a ClientHello
    partial = [_connect(https, "127.0.0.2") for _ in range(CAP // 2)]
    hello = _client_hello()
    for sock in partial:
        sock.sendall(hello[: len(hello) // 2])
    opened = time.monotonic()
    for sock in silent + partial:
        _open_for(sock, HEAD_TIMEOUT + 2)
        lasted = time.monotonic() - opened
        assert HEAD_TIMEOUT - 0.3 < lasted < HEAD_TIMEOUT + 1.0
        sock.close()


def test_the_tls_handshake_counts_against_the_head_deadline(
    https: GatewayProcess, ca: trustme.CA
) -> None:
    sock = _connect(https, "127.0.0.3")
    opened = time.monotonic()
    time.sleep(HEAD_TIMEOUT * 0.6)  # a slow client: its handshake begins late
    with client_context(ca).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        answer = b""
        while chunk := tls.recv(65536):  # it sends no request: 408, counted from the accept
            answer += chunk
    assert status_of(answer) == 408
    assert time.monotonic() - opened < HEAD_TIMEOUT + 0.6


def _metric(gateway: GatewayProcess, name: str, context: ssl.SSLContext | None = None) -> float:
    request = urllib.request.Request(
        gateway.url + "/bastion/metrics", headers={"Authorization": f"Bearer {KEYS.admin}"}
    )
    with urllib.request.urlopen(request, timeout=5, context=context) as answer:
        text: str = answer.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_tls_connections_over_the_address_bound_are_closed_at_once(
    https: GatewayProcess, ca: trustme.CA
) -> None:
    refused_before = _metric(https, "bastion_connections_refused_total ", client_context(ca))
    held = [_connect(https, "127.0.0.4") for _ in range(CAP)]  # no handshake yet
    for _ in range(3):
        with _connect(https, "127.0.0.4") as extra:
            assert _open_for(extra, 0.5) < 0.5
    with _connect(https, "127.0.0.5") as elsewhere:  # another address is not affected
        assert _https_health(elsewhere, ca).startswith(b"HTTP/1.1 200 ")
    for sock in held:  # the first ones still work once they complete their handshake
        assert _https_health(sock, ca).startswith(b"HTTP/1.1 200 ")
    refused = _metric(https, "bastion_connections_refused_total ", client_context(ca))
    assert refused - refused_before == 3
    assert https.logs.count("client 127.0.0.4 holds") == 1  # one line, not one per connection


def test_plain_connections_over_the_address_bound_are_closed_at_once(
    plain: GatewayProcess,
) -> None:
    held = [_connect(plain, "127.0.0.6") for _ in range(CAP)]
    with _connect(plain, "127.0.0.6") as extra:
        assert _open_for(extra, 0.5) < 0.5
    held[0].sendall(HEALTH)
    assert held[0].recv(100).startswith(b"HTTP/1.1 200 ")
    held[0].close()
    deadline = time.monotonic() + 2  # the gateway sees the close and frees the place
    while True:
        with _connect(plain, "127.0.0.6") as again:
            again.sendall(HEALTH)
            with contextlib.suppress(ConnectionResetError):
                if again.recv(100).startswith(b"HTTP/1.1 200 "):
                    break
        assert time.monotonic() < deadline, "the closed connection's place was never freed"
        time.sleep(0.02)
    for sock in held[1:]:
        sock.close()


def test_a_caller_that_stops_reading_is_dropped_after_the_write_timeout(
    plain: GatewayProcess, upstream: FakeUpstream
) -> None:
    upstream.behaviour.flood_bytes = 1 << 30  # far more than any buffer holds
    sock = _connect(plain, "127.0.0.7", receive_buffer=65536)
    sock.sendall(post("/v1/chat/completions", KEYS.user, STREAM))
    sent = time.monotonic()
    deadline = sent + 6
    while not upstream.disconnects and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.disconnects, "the upstream request was never closed"
    assert upstream.disconnects[0] - sent < 3.5  # buffers fill, then 1 s unread
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):  # what was in flight, then the end
            received += chunk[-16:]
    sock.close()
    assert not received.endswith(b"0\r\n\r\n")  # cut, not finished


def test_a_slow_reader_is_not_dropped(plain: GatewayProcess, upstream: FakeUpstream) -> None:
    total = 24 << 20
    upstream.behaviour.flood_bytes = total
    with _connect(plain, "127.0.0.8", receive_buffer=65536) as sock:
        sock.sendall(post("/v1/chat/completions", KEYS.user, STREAM))
        tail = b""
        while not tail.endswith(b"0\r\n\r\n"):
            time.sleep(0.4)  # each pause is shorter than the write timeout
            got = 0
            while got < 4 << 20 and not tail.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(1 << 20)
                assert chunk, "the gateway closed the connection"
                got += len(chunk)
                tail = (tail + chunk)[-16:]
    assert upstream.flood_sent >= total
    assert upstream.disconnects == []


def test_a_caller_that_reads_again_is_not_dropped_later(
    plain: GatewayProcess, upstream: FakeUpstream
) -> None:
    """The write deadline ends when the caller drains its connection: a stream that then goes
    quiet for longer than the timeout is not cut."""
    upstream.behaviour.big_event_bytes = 16 << 20
    upstream.behaviour.hold_after_first = release = threading.Event()
    with _connect(plain, "127.0.0.9", receive_buffer=65536) as sock:
        sock.sendall(post("/v1/chat/completions", KEYS.user, STREAM))
        time.sleep(0.5)  # unread for a while: the gateway's writes pause
        tail = b""
        while b"tok0" not in tail:  # the big event, then the first token
            tail = (tail + sock.recv(1 << 20))[-64:]
        time.sleep(1.5)  # the upstream is silent: nothing waits to be written
        release.set()
        while not tail.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, "the gateway closed the connection"
            tail = (tail + chunk)[-64:]
    assert upstream.disconnects == []
