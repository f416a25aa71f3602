"""``/ready``: 200 until the process drains, whatever one model's upstreams say; ``?verbose``
shows operators the per-model view, behind the ``metrics`` permission."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from bastion.app import Services, build_gateway
from bastion.auth.apikeys import ApiKeyRecord, generate_key, hash_key
from bastion.errors import StoreUnavailableError
from bastion.pipeline.gateway import Gateway
from bastion.pipeline.readiness import verbose_asked
from bastion.settings import ModelSettings, Settings, UpstreamTarget, parse_settings
from bastion.store.store import Store
from bastion.upstream.client import UpstreamPool
from bastion.upstream.origin import Origin


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Answer:
    status: int
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Setup:
    gateway: Gateway
    services: Services
    user: str
    admin: str
    ports: tuple[int, int, int]  # the up model's one, the down model's two


async def ask(
    gateway: Gateway,
    path: str,
    query: bytes = b"",
    key: str | None = None,
    method: str = "GET",
    body: bytes = b"",
) -> Answer:
    headers = [(b"authorization", b"Bearer " + key.encode())] if key is not None else []
    if body:
        headers.append((b"content-type", b"application/json"))
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 1),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the caller stays
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gateway(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return Answer(status, b"".join(m.get("body", b"") for m in sent[1:]))


async def make(settings: Settings, store: Store | None = None) -> AsyncIterator[Setup]:
    user, admin = generate_key(), generate_key()
    keys = [ApiKeyRecord("u", hash_key(user), "user"), ApiKeyRecord("a", hash_key(admin), "admin")]
    pool = UpstreamPool(settings.upstream)
    services = Services(settings, keys=keys, pool=pool, store=store)
    ports = (closed_port(), closed_port(), closed_port())
    models = (
        ModelSettings(name="up", upstreams=(UpstreamTarget(url=f"http://127.0.0.1:{ports[0]}"),)),
        ModelSettings(
            name="down",
            upstreams=tuple(UpstreamTarget(url=f"http://127.0.0.1:{p}") for p in ports[1:]),
        ),
    )
    gateway = build_gateway(settings, services, models)
    services.adopt(gateway)
    try:
        yield Setup(gateway, services, user, admin, ports)
    finally:
        await services.stop()
        await pool.aclose()


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    async for made in make(parse_settings({})):
        yield made


def health(setup: Setup, port: int, passed: bool) -> None:
    upstreams = {u.origin: u for u in setup.services.upstreams.all()}
    upstream = upstreams[Origin.from_url(f"http://127.0.0.1:{port}")]
    if passed:
        upstream.check_passed(1)
    else:
        upstream.check_failed(1)


async def test_ready_while_one_models_upstreams_are_all_down(setup: Setup) -> None:
    up, down_a, down_b = setup.ports
    health(setup, up, passed=True)
    health(setup, down_a, passed=False)
    health(setup, down_b, passed=False)
    answer = await ask(setup.gateway, "/ready")
    assert (answer.status, answer.body) == (200, b'{"status":"ready"}')
    # that model's callers still get 503 no_healthy_upstream
    chat = b'{"model": "down", "messages": [{"role": "user", "content": "hi"}]}'
    refused = await ask(setup.gateway, "/v1/chat/completions", b"", setup.user, "POST", chat)
    assert refused.status == 503
    assert refused.json["error"]["code"] == "no_healthy_upstream"


async def test_ready_before_any_health_check_answered(setup: Setup) -> None:
    assert (await ask(setup.gateway, "/ready")).status == 200


async def test_draining_turns_ready_to_503(setup: Setup) -> None:
    setup.services.draining = True
    answer = await ask(setup.gateway, "/ready")
    assert (answer.status, answer.body) == (503, b'{"status":"draining"}')
    verbose = await ask(setup.gateway, "/ready", b"verbose", setup.admin)
    assert verbose.status == 503
    assert verbose.json["status"] == "draining"
    assert verbose.json["draining"] is True
    assert (await ask(setup.gateway, "/health")).status == 200  # liveness is not readiness


async def test_verbose_needs_the_metrics_permission(setup: Setup) -> None:
    anonymous = await ask(setup.gateway, "/ready", b"verbose")
    assert anonymous.status == 401
    assert b"down" not in anonymous.body
    user = await ask(setup.gateway, "/ready", b"verbose=1", setup.user)  # no metrics permission
    assert user.status == 403
    assert b"down" not in user.body
    assert (await ask(setup.gateway, "/ready", b"verbose", setup.admin)).status == 200


async def test_verbose_shows_each_models_healthy_upstreams(setup: Setup) -> None:
    up, down_a, down_b = setup.ports
    health(setup, up, passed=True)
    health(setup, down_a, passed=False)
    answer = await ask(setup.gateway, "/ready", b"verbose", setup.admin)
    assert answer.status == 200
    assert answer.json == {
        "status": "ready",
        "draining": False,
        "store": "off",
        "limits": {"backend": "memory", "state": "ok"},
        "health_checks": True,
        "models": {"up": {"healthy": 1, "total": 1}, "down": {"healthy": 0, "total": 2}},
    }
    assert b"127.0.0.1" not in answer.body  # no upstream address, ever
    health(setup, down_b, passed=True)
    again = await ask(setup.gateway, "/ready", b"verbose", setup.admin)
    assert again.json["models"]["down"] == {"healthy": 1, "total": 2}


async def test_verbose_shows_a_failing_limiter_and_its_failure_mode() -> None:
    settings = parse_settings(
        {
            "limits": {
                "backend": "redis",
                "redis": {"url": f"redis://127.0.0.1:{closed_port()}/0", "timeout": 0.5},
                "on_backend_failure": "open",
                "per_key": {"requests_per_minute": 100},
            }
        }
    )
    async for setup in make(settings):
        first = await ask(setup.gateway, "/ready", b"verbose", setup.admin)
        assert first.json["limits"] == {
            "backend": "redis",
            "state": "ok",
            "on_backend_failure": "open",
        }
        chat = b'{"model": "up", "messages": [{"role": "user", "content": "hi"}]}'
        # admitted from memory (open), then refused by the model's unreachable upstream
        sent = await ask(setup.gateway, "/v1/chat/completions", b"", setup.user, "POST", chat)
        assert sent.json["error"]["code"] == "upstream_unreachable"
        answer = await ask(setup.gateway, "/ready", b"verbose", setup.admin)
        assert answer.status == 200  # a failing limiter with a decided failure mode: still ready
        assert answer.json["limits"]["state"] == "failing"


async def test_verbose_shows_the_store(tmp_path: Path) -> None:
    settings = parse_settings({})
    store = Store.open(f"sqlite:///{tmp_path / 'bastion.db'}", settings.store)
    try:
        async for setup in make(settings, store):
            answer = await ask(setup.gateway, "/ready", b"verbose", setup.admin)
            assert answer.json["store"] == "ok"
            calls = setup.services.store_calls
            assert calls is not None
            calls.outage.failed(StoreUnavailableError("the store failed"))
            answer = await ask(setup.gateway, "/ready", b"verbose", setup.admin)
            assert (answer.status, answer.json["store"]) == (200, "unreachable")
    finally:
        store.close()


def test_verbose_asked() -> None:
    assert verbose_asked(b"verbose")
    assert verbose_asked(b"a=1&verbose=true")
    assert verbose_asked(b"verbose=")
    assert not verbose_asked(b"")
    assert not verbose_asked(b"verbosely")
    assert not verbose_asked(b"not_verbose=1")
