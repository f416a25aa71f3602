"""With ``routes.control: admin``, vLLM's control routes reach the upstream for admins only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_proxy import raw_request
from tests.integration.test_security import request_line, status_of
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway


@pytest.fixture(scope="module")
def admin_gateway(
    upstream: FakeUpstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    state = tmp_path_factory.mktemp("state-admin")
    config = base_config(upstream.url, keys, routes={"control": "admin"})
    with running_gateway(config, Path(state)) as process:
        yield process


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/pause", "/pause"),
        ("/sleep", "/sleep"),
        ("/v1/load_lora_adapter", "/v1/load_lora_adapter"),
        ("//v1/../pause", "/pause"),
    ],
)
def test_admin_reaches_control_routes(
    admin_gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys, path: str, canonical: str
) -> None:
    answer = raw_request(admin_gateway, request_line("POST", path, keys.admin))
    assert status_of(answer) == 200
    assert upstream.seen[-1].path == canonical
    assert upstream.seen[-1].headers["authorization"] == "Bearer k"


@pytest.mark.parametrize("path", ["/pause", "/sleep", "/metrics", "/%70ause"])
def test_non_admin_gets_404_and_nothing_is_forwarded(
    admin_gateway: GatewayProcess, upstream: FakeUpstream, keys: Keys, path: str
) -> None:
    answer = raw_request(admin_gateway, request_line("POST", path, keys.user))
    assert status_of(answer) == 404
    assert upstream.seen == []


def test_unauthenticated_control_call_is_401(
    admin_gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    answer = raw_request(admin_gateway, request_line("POST", "/pause", "nope"))
    assert status_of(answer) == 401
    assert upstream.seen == []
