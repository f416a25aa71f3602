"""Roles, per-key restrictions and network rules, through the running gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from bastion.auth.apikeys import generate_key, hash_key
from tests.integration.test_proxy import post, raw_request
from tests.integration.test_security import request_line, status_of
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

KEYS = {
    name: generate_key()
    for name in ("only_a", "viewer", "operator", "lab", "proxied", "expired", "rotated_in")
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def policy_gateway(
    upstream: FakeUpstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    state = tmp_path_factory.mktemp("state-policy")
    config = base_config(upstream.url, keys, routes={"control": "admin"})
    config["models"].append({"name": "model-b", "upstreams": [{"url": upstream.url}]})
    config["network"] = {"trusted_proxies": ["127.0.0.1/32"]}
    entries = {
        "only_a": {"role": "user", "models": ["test-model"]},
        "viewer": {"role": "viewer"},
        "operator": {"role": "operator"},
        "lab": {"role": "user", "networks": ["10.0.0.0/8"]},
        "proxied": {"role": "user", "networks": ["203.0.113.0/24"]},
        "expired": {"expires": "2020-01-01T00:00:00Z"},
        "rotated_in": {"expires": "2999-01-01T00:00:00+02:00"},
    }
    config["auth"]["api_keys"] += [
        {"name": name, "hash": hash_key(KEYS[name]), **extra} for name, extra in entries.items()
    ]
    with running_gateway(config, Path(state)) as process:
        yield process


def test_a_key_limited_to_model_a_cannot_use_or_see_model_b(
    policy_gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    client = openai_client(policy_gateway.url, KEYS["only_a"])
    assert client.chat.completions.create(model="test-model", messages=HI).choices
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="model-b", messages=HI)
    assert "test-model" not in caught.value.response.text  # never what it could have had
    assert [m.id for m in client.models.list()] == ["test-model"]
    assert len(upstream.seen) == 1


def test_a_viewer_lists_models_but_cannot_infer(
    policy_gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    client = openai_client(policy_gateway.url, KEYS["viewer"])
    assert [m.id for m in client.models.list()] == ["test-model", "model-b"]
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="test-model", messages=HI)
    assert upstream.seen == []


def test_control_routes_follow_the_role(
    policy_gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    def pause(key: str) -> int:
        request = request_line("POST", "/pause", key).replace(
            b"Connection: close", b"X-Bastion-Model: test-model\r\nConnection: close"
        )
        return status_of(raw_request(policy_gateway, request))

    assert pause(KEYS["operator"]) == 200
    assert pause(keys.admin) == 200
    for key in (keys.user, KEYS["viewer"], KEYS["only_a"]):
        assert pause(key) == 404
    assert [s.path for s in upstream.seen] == ["/pause", "/pause"]
    assert "x-bastion-model" not in upstream.seen[0].headers


def test_network_restricted_keys(policy_gateway: GatewayProcess, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        openai_client(policy_gateway.url, KEYS["lab"]).models.list()
    body = {"model": "test-model", "messages": HI}
    direct = raw_request(policy_gateway, post("/v1/chat/completions", KEYS["proxied"], body))
    assert status_of(direct) == 403
    via_proxy = raw_request(
        policy_gateway,
        post("/v1/chat/completions", KEYS["proxied"], body, "X-Forwarded-For: 203.0.113.5\r\n"),
    )
    assert status_of(via_proxy) == 200
    assert "x-forwarded-for" not in upstream.seen[-1].headers


def test_expired_keys_are_refused_and_the_operator_is_told(
    policy_gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(policy_gateway.url, KEYS["expired"]).models.list()
    assert caught.value.code == "expired_api_key"
    assert [m.id for m in openai_client(policy_gateway.url, KEYS["rotated_in"]).models.list()]
    assert "API key 'expired' expired at 2020-01-01" in policy_gateway.logs
