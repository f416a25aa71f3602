"""A stored response's request when what kept it is gone: the model, the upstream, or the
upstream's health (the gateway in-process; nothing of these reaches an upstream)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from bastion.app import Services, build_gateway
from bastion.auth.apikeys import ApiKeyRecord, generate_key, hash_key
from bastion.pipeline.gateway import Gateway
from bastion.settings import ModelSettings, UpstreamTarget, parse_settings
from bastion.store.owners import ResponseOwner
from bastion.upstream.client import UpstreamPool

KEY = generate_key()
A, B = "http://127.0.0.1:9", "http://127.0.0.1:7"  # never connected to


def _model(name: str, *urls: str) -> ModelSettings:
    return ModelSettings(name=name, upstreams=tuple(UpstreamTarget(url=u) for u in urls))


async def _get(gateway: Gateway, path: bytes) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path.decode(), "raw_path": path,
             "query_string": b"", "client": ("127.0.0.1", 1),
             "headers": [(b"authorization", b"Bearer " + KEY.encode())]}  # fmt: skip
    await gateway(scope, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def test_what_kept_the_response_is_gone_or_down() -> None:
    async def run() -> None:
        settings = parse_settings({"store": {"enabled": False}})
        services = Services(
            settings,
            keys=[ApiKeyRecord("alice", hash_key(KEY), "user")],
            pool=UpstreamPool(settings.upstream),
        )
        services.owners.remember("r1", ResponseOwner("alice", "m", "127.0.0.1:9"))

        async def answer(*models: ModelSettings) -> tuple[int, str | None]:
            status, body = await _get(
                build_gateway(settings, services, models), b"/v1/responses/r1"
            )
            return status, body["error"]["code"]

        # the model is no longer served, or no longer by the upstream that keeps it: gone
        assert await answer(_model("other", A)) == (404, "not_found")
        assert await answer(_model("m", B)) == (404, "not_found")
        # the upstream is configured but down: not served by another, retry later
        gateway = build_gateway(settings, services, (_model("m", A, B),))
        keeper = next(u for u in services.upstreams.all() if u.name == "127.0.0.1:9")
        keeper.check_failed(unhealthy_after=1)
        status, body = await _get(gateway, b"/v1/responses/r1")
        assert (status, body["error"]["code"]) == (503, "no_healthy_upstream")

    asyncio.run(run())


def test_contested_and_dropped_owners_are_counted_in_metrics() -> None:
    settings = parse_settings({"store": {"enabled": False}})
    services = Services(settings, keys=[], pool=UpstreamPool(settings.upstream))
    services.owners.remember("r1", ResponseOwner("alice", "m", "127.0.0.1:9"))
    services.owners.remember("r1", ResponseOwner("bob", "m", "127.0.0.1:9"))
    assert services.metrics is not None
    text = services.metrics.render().decode()
    assert "bastion_response_ids_contested_total 1" in text
    assert "bastion_response_owners_dropped_total 0" in text
