"""bench/floor.py: both floors relay what the benchmark's fake upstream answers, whole and
streamed, as real processes (the figures they give are only worth anything if they do)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, "exited early"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _serving(module: str, *args: str) -> Iterator[int]:
    """Run ``python -m module --port P args`` until the test is done; yield P once it listens."""
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *args], cwd=ROOT)
    try:
        _wait(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    yield from _serving("bench.fake_upstream", "--ttft-ms", "1", "--gap-ms", "1", "--events", "5")


@pytest.fixture(params=["uvicorn", "raw"])
def floor(request: pytest.FixtureRequest, upstream: int) -> Iterator[int]:
    upstream_url = f"http://127.0.0.1:{upstream}"
    yield from _serving("bench.floor", "--upstream", upstream_url, "--server", request.param)


def _post(port: int, body: dict[str, object]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(),
                     {"content-type": "application/json"})  # fmt: skip
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_a_whole_answer_is_relayed_as_the_upstream_gave_it(floor: int, upstream: int) -> None:
    status, _, body = _post(floor, CHAT)
    direct = _post(upstream, CHAT)
    assert (status, json.loads(body)["choices"]) == (direct[0], json.loads(direct[2])["choices"])


def test_a_stream_is_relayed_event_by_event(floor: int, upstream: int) -> None:
    status, headers, body = _post(floor, {**CHAT, "stream": True})
    assert status == 200
    assert {k.lower(): v for k, v in headers.items()}["transfer-encoding"] == "chunked"
    assert body == _post(upstream, {**CHAT, "stream": True})[2]
    assert body.rstrip().endswith(b"data: [DONE]")


def test_several_requests_share_one_connection(floor: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", floor, timeout=10)
    try:
        for _ in range(3):
            conn.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["choices"]
    finally:
        conn.close()
