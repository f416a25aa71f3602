"""Stopping the gateway with SIGTERM runs its clean-up: nothing buffered is lost."""

from __future__ import annotations

import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway


def test_sigterm_flushes_the_access_log_and_closes_the_store(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    keys = Keys()
    config = base_config(upstream.url, keys)
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        request = urllib.request.Request(
            gateway.url + "/v1/models",
            headers={"Authorization": f"Bearer {keys.user}", "X-Request-Id": "last-one"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        gateway.stop()  # at once: the access line is still buffered
        assert gateway.proc.returncode == 0, gateway.logs
        assert "caller_request_id=last-one" in gateway.logs
    # the SQLite store was closed: its write-ahead log was folded into the database
    wal = tmp_path / "bastion.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_sigterm_lets_a_stream_in_flight_finish_and_refuses_new_connections(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    keys = Keys()
    config = base_config(upstream.url, keys)
    config["server"]["drain_timeout"] = 10
    release = threading.Event()
    upstream.behaviour.hold_after_first = release
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        host, port = gateway.host_port
        stream = socket.create_connection((host, port), timeout=10)
        body = b'{"model": "test-model", "stream": true, "messages": []}'
        stream.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {keys.user}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"data:" not in received:
            received += stream.recv(65536)
        gateway.proc.send_signal(signal.SIGTERM)
        gateway.wait_for_log("Shutting down")
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            socket.create_connection((host, port), timeout=2).close()
        release.set()
        while b"[DONE]" not in received:
            piece = stream.recv(65536)
            assert piece, "the stream was cut"
            received += piece
        stream.close()
        assert gateway.proc.wait(10) == 0


def _status(url: str, key: str | None = None) -> int:
    """The status of a GET on a connection of its own."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as error:
        return error.code


def _metrics(url: str, key: str) -> str:
    request = urllib.request.Request(
        url + "/bastion/metrics", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def _open_stream(gateway: GatewayProcess, key: str) -> tuple[socket.socket, bytes]:
    """A chat stream that has received its first event (the upstream then holds it)."""
    stream = socket.create_connection(gateway.host_port, timeout=10)
    body = b'{"model": "test-model", "stream": true, "messages": []}'
    stream.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    received = b""
    while b"data:" not in received:
        received += stream.recv(65536)
    return stream, received


def _finish(stream: socket.socket, received: bytes) -> bytes:
    while b"[DONE]" not in received:
        piece = stream.recv(65536)
        assert piece, "the stream was cut"
        received += piece
    return received


def _chat(url: str, key: str) -> int:
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status)


def _wait_refused(host: str, port: int, timeout: float) -> float:
    """Poll until the listener refuses connections; the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except ConnectionRefusedError:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"the listener still accepted after {timeout} s")


def test_sigterm_turns_ready_off_and_serves_on_for_the_drain_delay(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    keys = Keys()
    config = base_config(upstream.url, keys)
    config["server"].update(drain_delay=4, drain_timeout=10)
    release = threading.Event()
    upstream.behaviour.hold_after_first = release
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        host, port = gateway.host_port
        assert _status(gateway.url + "/ready") == 200
        stream, received = _open_stream(gateway, keys.user)
        with stream:
            gateway.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            while _status(gateway.url + "/ready") != 503:  # at once, on a new connection
                assert time.monotonic() - signalled < 1.0, "/ready did not turn 503 at once"
                time.sleep(0.02)
            # the delay: new connections are accepted and their requests served
            assert _status(gateway.url + "/health") == 200
            assert _status(gateway.url + "/v1/models", keys.user) == 200
            assert _chat(gateway.url, keys.user) == 200
            assert "\nbastion_draining 1.0\n" in _metrics(gateway.url, keys.admin)
            gateway.proc.send_signal(signal.SIGHUP)  # stopping: a reload would undo nothing
            gateway.wait_for_log("SIGHUP while draining: ignored")
            assert time.monotonic() - signalled < 3.5, "too slow to check within the delay"
            refused = _wait_refused(host, port, timeout=10)
            assert refused - signalled >= 3.9  # the listener stayed open for the delay
            logs = gateway.wait_for_log("Shutting down")
            assert "SIGTERM: not ready; still serving for 4 s before draining" in logs
            release.set()  # the stream in flight still finishes, within drain_timeout
            assert b"[DONE]" in _finish(stream, received)
        assert gateway.proc.wait(10) == 0


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_cuts_the_drain_delay_short(
    upstream: FakeUpstream, tmp_path: Path, second: signal.Signals
) -> None:
    keys = Keys()
    config = base_config(upstream.url, keys)
    config["server"].update(drain_delay=60, drain_timeout=10)
    release = threading.Event()
    upstream.behaviour.hold_after_first = release
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        host, port = gateway.host_port
        stream, received = _open_stream(gateway, keys.user)
        with stream:
            gateway.proc.send_signal(signal.SIGTERM)
            gateway.wait_for_log("still serving for 60 s")
            assert _status(gateway.url + "/ready") == 503
            assert _status(gateway.url + "/v1/models", keys.user) == 200
            gateway.proc.send_signal(second)
            signalled = time.monotonic()
            _wait_refused(host, port, timeout=5)
            assert time.monotonic() - signalled < 5
            assert "drain delay cut short" in gateway.wait_for_log("Shutting down")
            release.set()  # a drain, not a forced exit: the stream in flight finishes
            assert b"[DONE]" in _finish(stream, received)
        assert gateway.proc.wait(10) == 0
