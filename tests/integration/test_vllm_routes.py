"""vLLM's routes through the gateway, as docs/vllm-api.md decides them; WebSocket handshakes."""

from __future__ import annotations

import base64
import os
import socket
import time

import orjson
import pytest

from bastion.upstream.vllm_api import ROUTES, Decision, VllmRoute
from tests.integration.test_proxy import post, raw_request
from tests.integration.test_security import status_of
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys

NEVER = [r for r in ROUTES if r.decision is Decision.NEVER]
CONTROL = [r for r in ROUTES if r.decision is Decision.CONTROL]


def ask(method: str, path: str, key: str | None, extra: str = "") -> bytes:
    credential = f"Authorization: Bearer {key}\r\n" if key else ""
    head = f"{method} {path} HTTP/1.1\r\nHost: gw\r\n{credential}{extra}Connection: close\r\n\r\n"
    return head.encode()


def handshake(path: str, key: str | None = None) -> bytes:
    """A WebSocket opening handshake (RFC 6455), as a browser or the OpenAI SDK sends it."""
    nonce = base64.b64encode(os.urandom(16)).decode()
    extra = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
    )
    return ask("GET", path, key, extra).replace(b"Connection: close\r\n", b"")


@pytest.mark.parametrize("route", NEVER + CONTROL, ids=lambda r: r.name)
def test_never_and_closed_control_routes_are_404_for_everyone(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys, route: VllmRoute
) -> None:
    """Control routes too: this gateway runs with ``routes.control: deny``, the default."""
    path = route.sample_path()
    for key in (keys.user, keys.admin):
        for request in (post(path, key, {"model": "test-model"}), ask("GET", path, key)):
            answer = raw_request(gateway, request)
            assert status_of(answer) == 404, answer
    assert upstream.seen == []


@pytest.mark.parametrize("path", ["/v1/decisions", "/v1/systemone", "/generative_scoring"])
def test_new_inference_routes_are_forwarded_by_model(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys, path: str
) -> None:
    answer = raw_request(gateway, post(path, keys.user, {"model": "test-model", "input": "x"}))
    assert status_of(answer) == 200
    assert [s.path for s in upstream.seen] == [path]


def test_wrong_method_without_a_credential_is_401_not_405(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    """A caller without a credential learns nothing of the table beyond /health and /ready."""
    assert status_of(raw_request(gateway, ask("GET", "/v1/chat/completions", None))) == 401
    assert status_of(raw_request(gateway, ask("GET", "/v1/chat/completions", "bst_x"))) == 401
    assert status_of(raw_request(gateway, ask("GET", "/v1/chat/completions", keys.user))) == 405
    assert status_of(raw_request(gateway, ask("POST", "/health", None))) == 405
    assert upstream.seen == []


def test_sagemakers_adapter_header_never_reaches_the_upstream(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    extra = "X-Amzn-SageMaker-Adapter-Identifier: other-lora\r\n"
    answer = raw_request(gateway, post("/invocations", keys.user, {"model": "test-model"}, extra))
    assert status_of(answer) == 200
    assert "x-amzn-sagemaker-adapter-identifier" not in upstream.seen[0].headers


@pytest.mark.parametrize("path", ["/v1/realtime", "/v1/chat/completions", "/nowhere"])
def test_a_websocket_handshake_gets_a_clear_501(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys, path: str
) -> None:
    with socket.create_connection(gateway.host_port, timeout=5) as sock:
        sock.sendall(handshake(path, keys.user))
        answer = b""
        while chunk := sock.recv(65536):  # the gateway closes the connection after it
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n")
    assert b"sec-websocket-accept" not in answer.lower()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head
    assert orjson.loads(body) == {
        "error": {
            "message": "WebSocket endpoints (such as /v1/realtime) are not served by this gateway.",
            "type": "invalid_request_error",
            "param": None,
            "code": "websocket_not_supported",
        }
    }
    assert upstream.seen == []


def test_a_websocket_handshake_never_runs_the_request(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    """Refused on its head: the request is not also handed to the application (which would
    answer a closed connection and log a request the caller never saw answered)."""
    line = '"GET /v1/models" 200'
    before = gateway.logs.count(line)
    raw_request(gateway, handshake("/v1/models", keys.user))
    assert status_of(raw_request(gateway, ask("GET", "/v1/models", keys.user))) == 200
    deadline = time.monotonic() + 5
    while gateway.logs.count(line) == before:  # lines are written in order, in batches
        assert time.monotonic() < deadline, gateway.logs
        time.sleep(0.02)
    assert gateway.logs.count(line) == before + 1
    assert "Traceback" not in gateway.logs
