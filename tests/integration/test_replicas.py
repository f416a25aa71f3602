"""Two gateway processes sharing one PostgreSQL store: what one does, the other sees in < 1 s."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from bastion.auth.apikeys import generate_key, hash_key
from tests.integration.conftest import UPSTREAM_KEY
from tests.integration.test_admin_api import admin
from tests.support.databases import reset_postgres
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway

ROOT = generate_key()


def status(gateway: GatewayProcess, key: str) -> int:
    request = urllib.request.Request(
        gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def seconds_until(gateway: GatewayProcess, key: str, wanted: int, limit: float = 5.0) -> float:
    started = time.monotonic()
    while status(gateway, key) != wanted:
        assert time.monotonic() - started < limit, f"never {wanted}"
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def replicas(
    upstream: FakeUpstream, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    reset_postgres(postgres_url)
    config = base_config(upstream.url, Keys())
    config["auth"] = {
        "api_keys": [{"name": "root", "hash": hash_key(ROOT), "role": "admin"}],
        # the test polls with keys a replica does not know yet: that is not guessing
        "brute_force": {"max_failures": 0},
    }
    config["store"] = {"url": postgres_url}
    with (
        running_gateway(dict(config), tmp_path_factory.mktemp("a"), UPSTREAM_KEY) as first,
        running_gateway(
            {**config, "server": dict(config["server"])},
            tmp_path_factory.mktemp("b"),
            UPSTREAM_KEY,
        ) as second,
    ):
        yield first, second


def test_a_key_revoked_through_one_replica_is_refused_by_the_other_within_a_second(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    first, second = replicas
    assert admin(first, ROOT, "POST", "users", {"name": "pat"})[0] == 201
    for attempt in range(5):
        created, issued = admin(first, ROOT, "POST", "keys", {"user": "pat", "name": f"k{attempt}"})
        assert created == 201
        key = issued["secret"]
        assert status(first, key) == 200  # the replica that wrote it knows at once
        assert seconds_until(second, key, 200) < 1.0
        revoked, _ = admin(first, ROOT, "POST", f"keys/{issued['key']['id']}/revoke")
        assert revoked == 200
        assert status(first, key) == 401
        assert seconds_until(second, key, 401) < 1.0


def test_the_replicas_share_users_and_the_audit_trail(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    first, second = replicas
    assert admin(first, ROOT, "POST", "users", {"name": "quinn"})[0] == 201
    assert admin(second, ROOT, "POST", "users", {"name": "quinn"})[0] == 409
    _, trail = admin(second, ROOT, "GET", "audit?action=user.create")
    assert "quinn" in {e["target"] for e in trail["data"]}
