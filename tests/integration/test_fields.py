"""Guarded body fields through a real gateway, with the official openai client as the caller."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import orjson
import pytest

from tests.integration.conftest import UPSTREAM_KEY
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = base_config(
        upstream.url,
        keys,
        fields={"allow": {"admin": ["kv_transfer_params"]}, "cache_salt": "user"},
        limits={"priority": {"roles": {"admin": 0, "user": 10}}},
    )
    with running_gateway(config, tmp_path_factory.mktemp("state"), UPSTREAM_KEY) as process:
        yield process


def sent(upstream: FakeUpstream) -> dict[str, object]:
    body: dict[str, object] = orjson.loads(upstream.seen[-1].body)
    return body


def test_engine_internals_are_refused_and_nothing_is_forwarded(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    client = openai_client(gateway.url, keys.user)
    for field, value in (
        ("kv_transfer_params", {"remote_host": "10.0.0.9", "remote_port": 5557}),
        ("cache_salt", "someone-elses"),
        ("request_id", "chatcmpl-guessed"),
        ("chat_template", "{{ raise_exception('x') }}"),
        ("mm_processor_kwargs", {"max_pixels": 10**9}),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="test-model", messages=HI, extra_body={field: value}
            )
        assert caught.value.body["param"] == field  # type: ignore[index]
        assert caught.value.body["code"] == "field_not_allowed"  # type: ignore[index]
    assert upstream.seen == []


def test_a_callers_priority_is_replaced_and_the_salt_is_the_gateways(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    client = openai_client(gateway.url, keys.user)
    client.chat.completions.create(model="test-model", messages=HI, extra_body={"priority": -99})
    user_body = sent(upstream)
    assert user_body["priority"] == 10
    openai_client(gateway.url, keys.admin).chat.completions.create(model="test-model", messages=HI)
    admin_body = sent(upstream)
    assert isinstance(user_body["cache_salt"], str) and len(user_body["cache_salt"]) == 32
    assert admin_body["cache_salt"] != user_body["cache_salt"]


def test_an_allowed_role_may_send_the_field(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    params = {"do_remote_decode": True}
    openai_client(gateway.url, keys.admin).chat.completions.create(
        model="test-model", messages=HI, extra_body={"kv_transfer_params": params}
    )
    assert sent(upstream)["kv_transfer_params"] == params


def test_a_media_url_into_the_network_is_refused(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    part = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/"}}
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(gateway.url, keys.user).chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": [part]}],  # type: ignore[list-item]
        )
    assert caught.value.body["code"] == "media_url_not_allowed"  # type: ignore[index]
    assert upstream.seen == []


def test_headers_that_steer_the_engine_are_not_forwarded(
    gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    steering = {
        "X-Vllm-Priority": "-1000",
        "X-Data-Parallel-Rank": "3",
        "X-Session-Id": "someone-else",
        "X-Amzn-SageMaker-Adapter-Identifier": "other-lora",
        "Endpoint-Load-Metrics-Format": "JSON",
    }
    openai_client(gateway.url, keys.user).chat.completions.create(
        model="test-model", messages=HI, extra_headers=steering
    )
    forwarded = {name.lower() for name in upstream.seen[-1].headers}
    assert forwarded.isdisjoint(name.lower() for name in steering)
