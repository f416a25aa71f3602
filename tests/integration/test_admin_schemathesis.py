"""Schemathesis against a live gateway, from the document it serves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from bastion.admin.api import description
from tests.support.admin import admin_call
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

KEYS = Keys()
SCHEMA = schemathesis.openapi.from_dict(description())
SCHEMA.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True
)
COUNT: dict[str, int] = {}


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = base_config(upstream.url, KEYS)
    config["auth"]["brute_force"] = {"max_failures": 0}
    with running_gateway(config, tmp_path_factory.mktemp("st"), "k") as process:
        for user in ("bob", "carol"):
            assert admin_call(process, KEYS.admin, "POST", "users", {"name": user})[0] == 201
        yield process


@SCHEMA.parametrize()
@settings(
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api(case: schemathesis.Case, gateway: GatewayProcess) -> None:
    name = case.operation.label
    COUNT[name] = COUNT.get(name, 0) + 1
    case.call_and_validate(
        base_url=gateway.url, headers={"Authorization": f"Bearer {KEYS.admin}"}, timeout=10
    )


def test_count() -> None:
    print(COUNT, sum(COUNT.values()))
