"""Under an ASGI server other than Bastion's own, disconnects are seen through ``receive()``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bastion.app import Services, build_gateway
from bastion.auth.apikeys import ApiKeyRecord, generate_key, hash_key
from bastion.settings import ModelSettings, UpstreamTarget, parse_settings
from bastion.upstream.client import UpstreamPool
from tests.support.asgi import post_scope


async def test_disconnect_via_receive_closes_the_upstream_request() -> None:
    closed = asyncio.Event()

    async def silent_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # the request arrives; no answer is ever sent
        await reader.read()  # returns when the gateway closes the connection
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent_upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = parse_settings({})
    key = generate_key()
    pool = UpstreamPool(settings.upstream)
    services = Services(settings, keys=[ApiKeyRecord("a", hash_key(key), "user")], pool=pool)
    gateway = build_gateway(
        settings,
        services,
        (ModelSettings(name="m", upstreams=(UpstreamTarget(url=f"http://127.0.0.1:{port}"),)),),
    )
    messages = [{"type": "http.request", "body": b'{"model": "m"}', "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(0.2)
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = post_scope("/v1/completions", key)
    started = time.monotonic()
    async with asyncio.timeout(5):
        await gateway(scope, receive, send)
        await closed.wait()
    assert time.monotonic() - started < 1.0
    assert sent == []  # nobody is left to answer
    await pool.aclose()
    server.close()
    await server.wait_closed()
