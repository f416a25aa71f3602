"""Deny by default: unknown and control paths, path and Host tricks, limits on bad input."""

from __future__ import annotations

import socket
import time

import openai
import pytest

from bastion.auth.apikeys import generate_key, hash_key
from tests.integration.conftest import UPSTREAM_KEY
from tests.integration.test_proxy import client, post, raw_request
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "x"}]}


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def request_line(method: str, target: str, key: str, host: str = "gw") -> bytes:
    body = b'{"model": "test-model", "messages": []}'
    return (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


UNKNOWN = [
    "/",
    "/admin",
    "/v2/models",
    "/v1/chat/completions/extra",
    "/v1/files",
    "/docs",
    "/openapi.json",
    "/v1/chat",
    "/health/x",
]
CONTROL = [
    "/pause",
    "/resume",
    "/update_weights",
    "/collective_rpc",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/sleep",
    "/wake_up",
    "/reset_prefix_cache",
    "/scale_elastic_ep",
    "/metrics",
    "/server_info",
]
TRICKS_TO_PAUSE = [
    "//pause",
    "/v1/../pause",
    "/v1/%2e%2e/pause",
    "/v1/%2E%2E/pause",
    "/%70ause",
    "/pause/",
    "/./pause",
    "/v1/chat/completions/../../pause",
    "/v1%2f..%2fpause",
    "/v1/..%2fpause",
    "///pause//",
    "/v1/chat/../../../../pause",
]
TRICKS_TO_CHAT = [
    "//v1/chat/completions",
    "/v1/chat/completions/",
    "/v1/./chat/completions",
    "/v1/%63hat/completions",
    "/v1//chat//completions",
    "/x/../v1/chat/completions",
    "/v1%2fchat%2fcompletions",
]


@pytest.mark.parametrize("path", UNKNOWN + CONTROL + TRICKS_TO_PAUSE)
@pytest.mark.parametrize("role", ["user", "admin", "nobody"])
def test_unknown_and_control_paths_are_404_and_never_forwarded(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys, path: str, role: str
) -> None:
    key = {"user": keys.user, "admin": keys.admin, "nobody": "none"}[role]
    for method in ("GET", "POST"):
        answer = raw_request(gateway, request_line(method, path, key))
        assert status_of(answer) == 404, answer
        assert b'"code":"not_found"' in answer
    assert upstream.seen == []


@pytest.mark.parametrize("path", TRICKS_TO_CHAT)
def test_path_tricks_to_an_allowed_route_are_forwarded_in_canonical_form(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys, path: str
) -> None:
    answer = raw_request(gateway, request_line("POST", path, keys.user))
    assert status_of(answer) == 200
    assert upstream.seen[-1].path == "/v1/chat/completions"


@pytest.mark.parametrize("host", ["evil/pause?", "gw/v1/../pause", "127.0.0.1?x=/pause", "a#b"])
def test_host_header_never_changes_a_decision(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys, host: str
) -> None:
    assert status_of(raw_request(gateway, request_line("POST", "/pause", keys.admin, host))) == 404
    answer = raw_request(gateway, request_line("POST", "/v1/chat/completions", keys.user, host))
    assert status_of(answer) == 200
    assert [s.path for s in upstream.seen] == ["/v1/chat/completions"]
    assert upstream.seen[0].headers["host"] == upstream.url.removeprefix("http://")


def test_wrong_method_is_405(gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys) -> None:
    answer = raw_request(gateway, request_line("GET", "/v1/chat/completions", keys.user))
    assert status_of(answer) == 405
    assert b"allow: POST" in answer
    assert upstream.seen == []


def test_missing_or_wrong_key_is_401(gateway: GatewayProcess, upstream: FakeUpstream) -> None:
    unknown_but_well_formed = generate_key()
    broken_checksum = unknown_but_well_formed[:-1] + (
        "A" if unknown_but_well_formed[-1] != "A" else "B"
    )
    for key in (unknown_but_well_formed, broken_checksum, "sk-whatever", "bst_"):
        with pytest.raises(openai.AuthenticationError) as caught:
            client(gateway, key).chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert key not in caught.value.response.text
    answer = raw_request(
        gateway,
        post("/v1/chat/completions", "x", CHAT).replace(b"Authorization: Bearer x\r\n", b""),
    )
    assert status_of(answer) == 401
    assert upstream.seen == []


ODDITIES = [
    "' OR '1'='1",
    "bst_\x00\x00",
    "bst_" + "A" * 65536,
    "bst_ünïcødé",
    "Basic Zm9vOmJhcg==",
    "Bearer",
    "%00",
    "bst_" + "'" * 38,
]


@pytest.mark.parametrize("credential", ODDITIES)
def test_odd_credentials_give_a_plain_401(
    gateway: GatewayProcess, upstream: FakeUpstream, credential: str
) -> None:
    payload = b'{"model":"test-model"}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
        + credential.encode("utf-8", "surrogateescape")
        + b"\r\nContent-Type: application/json\r\nContent-Length: 22\r\nConnection: close\r\n\r\n"
    )
    answer = raw_request(gateway, head + payload)
    assert status_of(answer) in (400, 401, 431)
    if status_of(answer) == 401:
        assert b'"type":"authentication_error"' in answer
    assert upstream.seen == []


def test_unknown_model_is_404_model_not_found(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway, keys.user).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert upstream.seen == []


def test_oversized_body_is_413(gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys) -> None:
    big = {"model": "test-model", "prompt": "x" * 70000}
    assert status_of(raw_request(gateway, post("/v1/completions", keys.user, big))) == 413
    chunked = (
        b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
        + keys.user.encode()
        + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (8192, b"x" * 8192) for _ in range(10))
        + b"0\r\n\r\n"
    )
    assert status_of(raw_request(gateway, chunked)) == 413
    assert upstream.seen == []


def test_malformed_json_is_400(gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys) -> None:
    for body in (b"{not json", b"[1, 2]", b"", b'{"model": 5}'):
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
            f"{keys.user}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        assert status_of(raw_request(gateway, head + body)) == 400
    assert upstream.seen == []


def test_slow_request_head_gets_408_within_the_deadline(gateway: GatewayProcess) -> None:
    with socket.create_connection(gateway.host_port, timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
        answer = b""
        try:
            for _ in range(10):
                sock.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.25)
        except OSError:
            pass
        while chunk := sock.recv(65536):
            answer += chunk
        elapsed = time.monotonic() - started
    assert status_of(answer) == 408
    assert elapsed < 2.0  # the deadline is 1 s


def test_slow_request_body_gets_408(gateway: GatewayProcess, keys: Keys) -> None:
    with socket.create_connection(gateway.host_port, timeout=5) as sock:
        sock.sendall(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
                f"{keys.user}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
                "\r\n{"
            ).encode()
        )
        answer = sock.recv(65536)
    assert status_of(answer) == 408


def test_too_many_headers_is_431(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    extra = "".join(f"X-H{i}: v\r\n" for i in range(60))
    answer = raw_request(gateway, post("/v1/chat/completions", keys.user, CHAT, extra))
    assert status_of(answer) == 431
    huge = "X-Big: " + "v" * 20000 + "\r\n"
    assert (
        status_of(raw_request(gateway, post("/v1/chat/completions", keys.user, CHAT, huge))) == 431
    )
    assert upstream.seen == []


def test_health_needs_no_credential_and_reveals_nothing(gateway: GatewayProcess) -> None:
    answer = raw_request(gateway, b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert answer.endswith(b'{"status":"ok"}')


def test_ready_is_about_the_gateway_not_one_models_upstreams(gateway: GatewayProcess) -> None:
    # one of the configured models (down-model) has no reachable upstream: the gateway still
    # serves the others, so it stays in its load balancer
    answer = raw_request(gateway, b"GET /ready HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert answer.endswith(b'{"status":"ready"}')


def test_verbose_ready_needs_a_credential_and_shows_no_address(
    gateway: GatewayProcess, keys: Keys
) -> None:
    head = b"GET /ready?verbose HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
    anonymous = raw_request(gateway, head + b"\r\n")
    assert status_of(anonymous) == 401
    assert b"down-model" not in anonymous
    user = raw_request(gateway, head + f"Authorization: Bearer {keys.user}\r\n\r\n".encode())
    assert status_of(user) == 403  # the metrics permission is needed
    admin = raw_request(gateway, head + f"Authorization: Bearer {keys.admin}\r\n\r\n".encode())
    assert status_of(admin) == 200
    body = admin.split(b"\r\n\r\n", 1)[1]
    assert b'"down-model":{"healthy":0,"total":1}' in body
    assert b"127.0.0.1" not in body


def test_models_are_listed_from_the_config(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    names = [m.id for m in client(gateway, keys.user).models.list()]
    assert names == ["test-model", "down-model", "renamed"]
    assert upstream.seen == []


def test_no_secret_in_logs(gateway: GatewayProcess, keys: Keys) -> None:
    # runs after the tests above in this module, which used every key
    logs = gateway.logs
    assert "authentication failed" in logs
    for secret in (
        keys.user,
        keys.admin,
        hash_key(keys.user),
        hash_key(keys.admin),
        UPSTREAM_KEY,
        hash_key(keys.user).removeprefix("sha256:"),
    ):
        assert secret not in logs
