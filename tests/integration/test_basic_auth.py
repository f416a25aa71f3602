"""HTTP Basic from an Apache htpasswd file, through the running gateway."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_proxy import raw_request
from tests.integration.test_security import status_of
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.unit.test_htpasswd import htpasswd


@pytest.fixture(scope="module")
def basic_gateway(
    upstream: FakeUpstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    state = tmp_path_factory.mktemp("state-basic")
    users = state / "htpasswd"
    htpasswd(users, "alice", "alice-password-1")
    htpasswd(users, "bob", "bob-password-2", "apr1")
    config = base_config(upstream.url, keys)
    config["auth"]["htpasswd"] = {"file": str(users), "admins": ["bob"]}
    with running_gateway(config, Path(state)) as process:
        yield process


def chat(user: str, password: str) -> bytes:
    body = b'{"model": "test-model", "messages": []}'
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Basic {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def test_htpasswd_users_log_in_with_basic(
    basic_gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    for _ in range(3):
        assert status_of(raw_request(basic_gateway, chat("alice", "alice-password-1"))) == 200
    assert status_of(raw_request(basic_gateway, chat("bob", "bob-password-2"))) == 200
    assert len(upstream.seen) == 4
    for seen in upstream.seen:  # the caller's credentials never reach the upstream
        assert seen.headers["authorization"] == "Bearer k"
    api_key_answer = raw_request(
        basic_gateway,
        chat("x", "y").replace(
            b"Basic " + base64.b64encode(b"x:y"), b"Bearer " + keys.user.encode()
        ),
    )
    assert status_of(api_key_answer) == 200  # API keys keep working beside htpasswd


def test_wrong_password_or_user_is_401(
    basic_gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    for user, password in (("alice", "nope"), ("mallory", "alice-password-1"), ("bob", "")):
        answer = raw_request(basic_gateway, chat(user, password))
        assert status_of(answer) == 401
        assert b"alice-password-1" not in answer
    assert upstream.seen == []


def test_passwords_never_reach_the_log(basic_gateway: GatewayProcess) -> None:
    basic_gateway.wait_for_log("principal=alice")
    logs = basic_gateway.wait_for_log("principal=bob")
    for secret in ("alice-password-1", "bob-password-2", "$2y$", "$apr1$"):
        assert secret not in logs
    assert "1 users have weak hashes" in logs
