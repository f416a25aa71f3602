"""Anthropic's Messages API through the gateway, with the official ``anthropic`` client.

The fake upstream speaks Anthropic's JSON and SSE formats as vLLM serves them. The gateway
accepts the key in ``x-api-key`` (the SDK's default) or as a bearer token (``auth_token``,
what Claude Code sends), never forwards either, counts tokens from Anthropic's usage fields
(streamed and not), and answers refusals in Anthropic's error shape, so the SDK raises the
right exception.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import anthropic
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bastion.auth.apikeys import generate_key, hash_key
from tests.integration.conftest import UPSTREAM_KEY
from tests.support import fake_anthropic
from tests.support.clients import anthropic_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

HI = [{"role": "user", "content": "Hello"}]
TIGHT = generate_key()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = base_config(
        upstream.url,
        keys,
        limits={
            "per_key": {"tokens_per_minute": 1_000_000},
            "keys": {"tight": {"requests_per_minute": 1}},
        },
        roles={"no-chat": {"routes": ["embeddings"]}},
    )
    config["auth"]["api_keys"] += [
        {"name": "tight", "hash": hash_key(TIGHT), "role": "user"},
    ]
    with running_gateway(config, tmp_path_factory.mktemp("state"), UPSTREAM_KEY) as process:
        yield process


def client(gateway: GatewayProcess, key: str, *, bearer: bool = False) -> anthropic.Anthropic:
    return anthropic_client(gateway.url, key, bearer=bearer)


def tokens(gateway: GatewayProcess, admin: str) -> dict[str, float]:
    request = urllib.request.Request(
        gateway.url + "/bastion/metrics", headers={"Authorization": f"Bearer {admin}"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        text = answer.read().decode()
    return {
        sample.labels["type"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "bastion_tokens_total" and sample.labels["model"] == "test-model"
    }


@pytest.mark.parametrize("bearer", [False, True], ids=["x-api-key", "auth-token"])
def test_a_message_with_the_key_in_either_header(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys, bearer: bool
) -> None:
    reply = client(gateway, keys.user, bearer=bearer).messages.create(
        model="test-model", max_tokens=64, messages=HI
    )
    assert reply.content[0].text == fake_anthropic.TEXT  # type: ignore[union-attr]
    assert reply.usage.input_tokens == fake_anthropic.INPUT_TOKENS
    seen = upstream.seen[-1]
    assert seen.path == "/v1/messages"
    assert "x-api-key" not in seen.headers
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the upstream's own key
    assert keys.user not in str(seen.headers)


@pytest.mark.parametrize("final_input", [True, False], ids=["vllm", "anthropic-style"])
def test_a_streamed_message_is_relayed_and_its_tokens_counted(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys, final_input: bool
) -> None:
    upstream.behaviour.final_input = final_input
    before = tokens(gateway, keys.admin)
    with client(gateway, keys.user).messages.stream(
        model="test-model", max_tokens=64, messages=HI
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == fake_anthropic.TEXT
    assert final.usage.output_tokens == fake_anthropic.OUTPUT_TOKENS
    after = tokens(gateway, keys.admin)
    assert after["input"] - before.get("input", 0) == fake_anthropic.INPUT_TOKENS
    assert after["output"] - before.get("output", 0) == fake_anthropic.OUTPUT_TOKENS


def test_non_streamed_tokens_are_counted(gateway: GatewayProcess, keys: Keys) -> None:
    before = tokens(gateway, keys.admin)
    client(gateway, keys.user).messages.create(model="test-model", max_tokens=64, messages=HI)
    after = tokens(gateway, keys.admin)
    assert after["input"] - before.get("input", 0) == fake_anthropic.INPUT_TOKENS
    assert after["output"] - before.get("output", 0) == fake_anthropic.OUTPUT_TOKENS


def test_count_tokens(gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys) -> None:
    counted = client(gateway, keys.user).messages.count_tokens(model="test-model", messages=HI)
    assert counted.input_tokens == fake_anthropic.INPUT_TOKENS
    assert upstream.seen[-1].path == "/v1/messages/count_tokens"


def test_a_wrong_key_is_an_anthropic_authentication_error(
    gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client(gateway, generate_key()).messages.create(
            model="test-model", max_tokens=8, messages=HI
        )
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": caught.value.body["error"]["message"]},  # type: ignore[index]
    }
    assert upstream.seen == []


def test_refusals_raise_the_sdks_exceptions(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(gateway, keys.user).messages.create(model="no-such", max_tokens=8, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(gateway, keys.user).messages.create(
            model="test-model",
            max_tokens=8,
            messages=HI,
            extra_body={"kv_transfer_params": {"remote_host": "10.0.0.9"}},
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    tight = client(gateway, TIGHT)
    tight.messages.create(model="test-model", max_tokens=8, messages=HI)
    with pytest.raises(anthropic.RateLimitError) as limited:
        tight.messages.create(model="test-model", max_tokens=8, messages=HI)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert len(upstream.seen) == 1


def test_the_x_api_key_header_is_only_a_credential_on_anthropic_routes(
    gateway: GatewayProcess, keys: Keys
) -> None:
    request = urllib.request.Request(
        gateway.url + "/v1/chat/completions",
        data=b'{"model": "test-model", "messages": []}',
        headers={"x-api-key": keys.user, "content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    refused.value.close()
    assert refused.value.code == 401
