"""What a connection may hold after its requests: a caller that stops reading is dropped
after ``http.write_timeout``."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import UPSTREAM_KEY
from tests.integration.test_proxy import post
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

KEYS = Keys()
STREAM = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": True}


@pytest.fixture(scope="module")
def plain(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    http = {"write_timeout": 1.0}
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
