"""Repeated authentication failures from one address turn it away for a while."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from bastion.auth.apikeys import generate_key
from tests.support.clients import openai_client
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway


@pytest.fixture(scope="module")
def guarded_gateway(
    upstream: FakeUpstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    state = tmp_path_factory.mktemp("state-guard")
    config = base_config(upstream.url, keys)
    config["auth"]["brute_force"] = {"max_failures": 3, "window": 60, "block": 30}
    with running_gateway(config, Path(state)) as process:
        yield process


def test_guessing_gets_the_address_blocked(
    guarded_gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys
) -> None:
    for _ in range(3):
        with pytest.raises(openai.AuthenticationError):
            openai_client(guarded_gateway.url, generate_key()).models.list()
    with pytest.raises(openai.RateLimitError) as caught:  # even with a good key, for a while
        openai_client(guarded_gateway.url, keys.user).models.list()
    assert caught.value.response.headers["retry-after"] == "30"
    assert "blocking 127.0.0.1 for 30 s" in guarded_gateway.logs
    assert upstream.seen == []
