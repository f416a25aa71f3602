"""The Python floor: the least a gateway built like Bastion can cost, measured beside it.

    python -m bench.floor --port 18083 --upstream http://127.0.0.1:18001

A pass-through with nothing of a gateway's own work: uvicorn (httptools, uvloop) runs a
plain ASGI application that reads the body, parses it with orjson (as any gateway must, to
know the model and whether to stream), sends it on with Bastion's own upstream client
(``bastion.upstream.client``, as compiled by ``scripts/setup``) and relays the answer, a
stream piece by piece. No authentication, no limits, no log, no metrics, no usage.

The benchmark runs it as the ``floor`` system (``--only nginx,floor,bastion``): Bastion's
figure minus the floor's is what Bastion's own work costs; the floor's ratio to nginx is
what the server and the client cost before any of it, the part a ratio target cannot go
below without replacing them.
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import orjson
import uvicorn

from bastion.settings import UpstreamClientSettings
from bastion.upstream.client import UpstreamPool
from bastion.upstream.origin import Origin

__all__ = ["FloorApp", "main"]

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the model server's URL")
    args = parser.parse_args(argv)
    gc.freeze()
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
