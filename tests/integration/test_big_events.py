"""An upstream event far larger than usual (50 MB before its blank line) goes through without
stalling the gateway for other callers or swelling its memory, and the stream's usage after
it is still read."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

MiB = 2**20


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    # a token limit: the gateway reads every stream for its usage
    config = base_config(upstream.url, keys, limits={"per_key": {"tokens_per_minute": 10**9}})
    with running_gateway(config, tmp_path_factory.mktemp("big"), UPSTREAM_KEY) as process:
        yield process


def memory_kib(pid: int) -> dict[str, int]:
    """The process's resident memory now (VmRSS) and at its peak (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


class StreamReader(threading.Thread):
    """Reads one streamed chat completion to its end on a raw socket, keeping counts only."""

    def __init__(self, gateway: GatewayProcess, key: str) -> None:
        super().__init__(daemon=True)
        body = orjson.dumps(
            {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
        )
        self.request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        self.sock = socket.create_connection(gateway.host_port, timeout=60)
        self.received = 0
        self.xs = 0
        self.tail = b""

    def run(self) -> None:
        with self.sock:
            self.sock.sendall(self.request)
            while chunk := self.sock.recv(1 << 20):
                self.received += len(chunk)
                self.xs += chunk.count(b"x")
                self.tail = (self.tail + chunk)[-4096:]


def test_a_50_mb_event_neither_stalls_other_callers_nor_swells_memory(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    size = 50 * MiB
    upstream.behaviour.big_event_bytes = size
    upstream.behaviour.gap = 0.001  # the event takes a second or more to arrive
    before = memory_kib(gateway.proc.pid)
    reader = StreamReader(gateway, keys.user)
    other = http.client.HTTPConnection(*gateway.host_port, timeout=5)
    body = orjson.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    headers = {"Authorization": f"Bearer {keys.user}", "Content-Type": "application/json"}
    slowest, answered = 0.0, 0
    reader.start()
    try:
        while reader.is_alive() and slowest < 1.0:
            started = time.monotonic()
            other.request("POST", "/v1/chat/completions", body, headers)
            answer = other.getresponse()
            assert answer.status == 200 and b"Hello from upstream" in answer.read()
            slowest = max(slowest, time.monotonic() - started)
            answered += 1
        peak = memory_kib(gateway.proc.pid)["VmHWM"]
    finally:
        other.close()
        if reader.is_alive():  # a failed run: do not wait for the rest of the stream
            reader.sock.shutdown(socket.SHUT_RDWR)
        reader.join(10)
    assert slowest < 1.0, f"another caller waited {slowest:.1f} s"
    assert answered >= 1
    assert reader.xs >= size  # the whole event arrived (the x's of the event's text)
    assert reader.tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert b'"usage"' not in reader.tail  # read by the gateway, and not shown to this caller
    assert (peak - before["VmRSS"]) * 1024 < 32 * MiB, (before, peak)
