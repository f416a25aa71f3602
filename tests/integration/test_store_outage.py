"""A gateway whose PostgreSQL stops answering or cuts connections (through a proxy: the shared
server itself is never touched): admin calls answer 503 ``store_unavailable`` within the
store's deadline instead of hanging, HTTP Basic logins keep being served meanwhile, and the
outage is counted and logged once, however many calls fail during it."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from bastion.store.deadlines import ANSWER_GRACE
from tests.integration.conftest import UPSTREAM_KEY
from tests.support.databases import reset_postgres
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.support.pgproxy import PgProxy
from tests.unit.test_htpasswd import htpasswd

USERS = [f"user{i}" for i in range(16)]
STUCK_CALLS = 40  # more than any default executor has threads (at most 32)
CONNECT, STATEMENT = 2, 2
DEADLINE = CONNECT + STATEMENT + 2 * ANSWER_GRACE  # the longest an admin call is awaited
UNREACHABLE = "identity store unreachable"
BACK = "identity store reachable again"


@pytest.fixture(scope="module")
def proxy() -> Iterator[PgProxy]:
    opened = PgProxy()
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream,
    keys: Keys,
    proxy: PgProxy,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    reset_postgres(postgres_url)
    state = tmp_path_factory.mktemp("store-outage")
    users = state / "htpasswd"
    for user in USERS:
        htpasswd(users, user, f"{user}-password")
    config = base_config(upstream.url, keys)
    config["auth"]["htpasswd"] = {"file": str(users)}
    config["store"] = {
        "url": proxy.url(postgres_url),
        "poll_interval": 0.2,
        "connect_timeout": CONNECT,
        "statement_timeout": STATEMENT,
    }
    with running_gateway(config, Path(state), UPSTREAM_KEY) as process:
        yield process


@pytest.fixture(autouse=True)
def _healed(proxy: PgProxy) -> Iterator[None]:
    yield
    proxy.forward()


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def request(
    gateway: GatewayProcess, path: str, authorization: str, timeout: float = 30.0
) -> tuple[int, bytes, float]:
    """GET ``path``; the status, the body and the seconds it took."""
    started = time.monotonic()
    call = urllib.request.Request(gateway.url + path, headers={"Authorization": authorization})
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return response.status, response.read(), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.monotonic() - started


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{user}-password".encode()).decode()


def metric(gateway: GatewayProcess, keys: Keys, name: str) -> float:
    status, body, _ = request(gateway, "/bastion/metrics", f"Bearer {keys.admin}")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


def test_a_frozen_store_answers_503_in_time_and_basic_logins_go_on(
    gateway: GatewayProcess, keys: Keys, proxy: PgProxy
) -> None:
    logged = len(gateway.logs)
    assert request(gateway, "/admin/v1/users", f"Bearer {keys.admin}")[0] == 200
    proxy.freeze()
    with ThreadPoolExecutor(STUCK_CALLS) as pool:
        calls = [
            pool.submit(request, gateway, "/admin/v1/users", f"Bearer {keys.admin}")
            for _ in range(STUCK_CALLS)
        ]
        eventually(lambda: proxy.stalled >= 4)  # store calls are waiting on the frozen store
        logins: list[tuple[int, float]] = []
        for user in USERS:  # each is new: a bcrypt check in a worker thread
            if all(call.done() for call in calls):
                break
            status, _, took = request(gateway, "/v1/models", basic(user), timeout=10)
            logins.append((status, took))
        answers = [call.result() for call in calls]
    assert len(logins) >= 4
    assert all(status == 200 and took < 2.0 for status, took in logins), logins
    for status, body, took in answers:
        assert status == 503
        assert orjson.loads(body)["error"]["code"] == "store_unavailable"
        assert took < DEADLINE + 1.5
    assert metric(gateway, keys, "bastion_store_timeouts_total") > 0
    assert metric(gateway, keys, "bastion_store_failures_total") >= STUCK_CALLS
    proxy.forward()
    eventually(lambda: BACK in gateway.logs[logged:], timeout=15)
    assert request(gateway, "/admin/v1/users", f"Bearer {keys.admin}")[0] == 200
    during = gateway.logs[logged:]
    assert during.count(UNREACHABLE) == 1, during
    assert during.count(BACK) == 1, during


def test_a_store_that_resets_connections_is_logged_once(
    gateway: GatewayProcess, keys: Keys, proxy: PgProxy
) -> None:
    eventually(lambda: request(gateway, "/admin/v1/users", f"Bearer {keys.admin}")[0] == 200)
    logged = len(gateway.logs)
    failed = metric(gateway, keys, "bastion_store_sync_failures_total")
    proxy.drop()
    eventually(lambda: metric(gateway, keys, "bastion_store_sync_failures_total") >= failed + 10)
    assert request(gateway, "/admin/v1/users", f"Bearer {keys.admin}")[0] == 503
    proxy.forward()
    eventually(lambda: BACK in gateway.logs[logged:], timeout=15)
    during = gateway.logs[logged:]
    assert during.count(UNREACHABLE) == 1, during
    assert during.count(BACK) == 1, during
