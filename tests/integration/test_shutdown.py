"""Stopping the gateway with SIGTERM runs its clean-up: nothing buffered is lost."""

from __future__ import annotations

import signal
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Keys, base_config, running_gateway


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
