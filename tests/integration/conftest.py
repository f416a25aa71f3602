from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

UPSTREAM_KEY = "upstream-secret-123"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = base_config(
        upstream.url,
        keys,
        http={
            "request_head_timeout": 1.0,
            "request_body_timeout": 1.0,
            "max_body_bytes": 65536,
            "max_headers": 50,
        },
        upstream={"read_timeout": 1.0, "stream_idle_timeout": 1.0, "connect_timeout": 1.0},
    )
    config["models"] += [
        {"name": "down-model", "upstreams": [{"url": f"http://127.0.0.1:{closed_port()}"}]},
        {"name": "renamed", "upstream_model": "real-name", "upstreams": [{"url": upstream.url}]},
    ]
    with running_gateway(config, tmp_path_factory.mktemp("state"), UPSTREAM_KEY) as process:
        yield process
