"""The Python floor: the least a gateway built like Bastion can cost, measured beside it.

    python -m bench.floor --port 18083 --upstream http://127.0.0.1:18001 [--server raw]

A pass-through with nothing of a gateway's own work: it reads the body, parses it with
orjson (as any gateway must, to know the model and whether to stream), sends it on with
Bastion's own upstream client (``bastion.upstream.client``, as compiled by
``scripts/setup``) and relays the answer, a stream piece by piece. No authentication, no
limits, no log, no metrics, no usage. Two servers:

- ``uvicorn`` (the ``floor`` system): uvicorn (httptools, uvloop) running a plain ASGI
  application, each streamed piece an awaited ``send``; the server Bastion runs on.
- ``raw`` (``floor-raw``): no ASGI and no server framework: an asyncio protocol on
  httptools' parser, one task per request, streamed pieces written from the upstream
  socket's callback (Bastion's splice). About the least a Python gateway on uvloop can do
  per request and per event; it skips what a real server must do (pipelining, backpressure,
  timeouts, limits on the head), so it is a floor, not a design.

The benchmark runs them beside nginx and Bastion (``--only nginx,floor,floor-raw,bastion``):
Bastion's figure minus a floor's is what Bastion's own work costs; a floor's ratio to nginx
is what the interpreter, the server and the client cost before any of it, the part a ratio
target cannot go below.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from http import HTTPStatus
from typing import Any

import httptools
import orjson
import uvicorn
import uvloop

from bastion.settings import UpstreamClientSettings
from bastion.upstream.client import UpstreamPool
from bastion.upstream.origin import Origin

__all__ = ["FloorApp", "RawFloor", "main"]

_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})
_JSON = [(b"content-type", b"application/json")]


class FloorApp:
    """The ASGI application: one upstream, every path sent on as it came."""

    def __init__(self, upstream: str) -> None:
        self._origin = Origin.from_url(upstream)
        self._pool: UpstreamPool | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if self._pool is None:
            self._pool = UpstreamPool(UpstreamClientSettings())
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        streaming = False
        if body:
            payload = orjson.loads(body)
            streaming = isinstance(payload, dict) and payload.get("stream") is True
        target = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        response = await self._pool.request(
            self._origin, scope["method"].encode(), target, list(_JSON) if body else [], body
        )
        async with response:
            headers = [(k, v) for k, v in response.headers if k not in _HOP_BY_HOP]
            if streaming:
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": headers}
                )
                async for piece in response:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            data = await response.read()
            headers.append((b"content-length", str(len(data)).encode()))
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": data})


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class RawFloor(asyncio.Protocol):
    """One caller's connection, served without a framework (the ``raw`` server)."""

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self._pool = pool
        self._origin = origin
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        keep_alive = self._parser.should_keep_alive()
        body = b"".join(self._body)
        asyncio.get_running_loop().create_task(self._forward(method, body, keep_alive))

    async def _forward(self, method: bytes, body: bytes, keep_alive: bool) -> None:
        transport = self._transport
        assert transport is not None
        streaming = False
        if body:
            payload = orjson.loads(body)
            streaming = isinstance(payload, dict) and payload.get("stream") is True
        headers = list(_JSON) if body else []
        response = await self._pool.request(self._origin, method, self._url, headers, body)
        async with response:
            head = [b"HTTP/1.1 %d %s\r\n" % (response.status, _reason(response.status))]
            head += [b"%s: %s\r\n" % h for h in response.headers if h[0] not in _HOP_BY_HOP]
            if streaming:
                head.append(b"transfer-encoding: chunked\r\n\r\n")
                transport.write(b"".join(head))
                write = transport.write
                await response.relay(lambda piece: write(b"%x\r\n%s\r\n" % (len(piece), piece)))
                write(b"0\r\n\r\n")
            else:
                data = await response.read()
                head.append(b"content-length: %d\r\n\r\n" % len(data))
                transport.write(b"".join(head) + data)
        if not keep_alive:
            transport.close()


async def _serve_raw(port: int, upstream: str) -> None:
    pool = UpstreamPool(UpstreamClientSettings())
    origin = Origin.from_url(upstream)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RawFloor(pool, origin), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the model server's URL")
    parser.add_argument("--server", choices=("uvicorn", "raw"), default="uvicorn")
    args = parser.parse_args(argv)
    gc.freeze()
    if args.server == "raw":
        uvloop.run(_serve_raw(args.port, args.upstream))
        return
    uvicorn.run(
        FloorApp(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
        timeout_keep_alive=600,
    )


if __name__ == "__main__":
    main()
