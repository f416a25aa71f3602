"""A separate listener that answers ``GET /metrics`` and nothing else, without authentication.

For a Prometheus scraper on a private interface (``metrics.listen: 127.0.0.1:9464``). It
speaks just enough HTTP/1.1 for that: one request per connection, a head of at most 8 KiB
that must arrive within 5 seconds, then the answer and close. The gateway's own port never
serves metrics without a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable

from bastion.errors import ConfigError
from bastion.observability.metrics import CONTENT_TYPE

__all__ = ["MetricsListener"]

log = logging.getLogger("bastion")

_MAX_HEAD = 8192
_HEAD_TIMEOUT = 5.0


Render = Callable[[], bytes] | Callable[[], Awaitable[bytes]]
"""The metrics to answer with: at once, or gathered (a supervisor asks its workers)."""


class MetricsListener:
    def __init__(self, host: str, port: int, render: Render) -> None:
        self._host = host
        self._port = port
        self._render = render
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (useful when 0 was asked for)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=_MAX_HEAD
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror}", "metrics.listen"
            ) from None
        log.info("metrics listening on http://%s:%d/metrics", self._host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(await self._answer(head))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if target != b"/metrics":
            return _response(b"404 Not Found", b"text/plain", b"not found\n")
        if method not in (b"GET", b"HEAD"):
            return _response(b"405 Method Not Allowed", b"text/plain", b"GET only\n")
        body = self._render()
        if inspect.isawaitable(body):
            body = await body
        return _response(b"200 OK", CONTENT_TYPE, b"" if method == b"HEAD" else body, len(body))


def _response(status: bytes, content_type: bytes, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (
        b"HTTP/1.1 %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n"
        b"cache-control: no-store\r\nconnection: close\r\n\r\n%b"
        % (status, content_type, size, body)
    )
