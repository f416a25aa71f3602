"""A TCP proxy in front of the shared Redis, to make it go away and come back (a "blip")
without stopping the Redis that other tests use.

It listens on 127.0.0.1, port 0, and forwards each connection to 127.0.0.1:6379, from a
thread of its own (so that both the test's event loop and a gateway process can use it).
:meth:`RedisProxy.drop` resets every connection through it and resets new ones as soon as they
are accepted, until :meth:`RedisProxy.restore`: to a client, Redis is unreachable meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["RedisProxy"]

_T = TypeVar("_T")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed or unplugged server would look."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


class RedisProxy:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        self.target = target
        self.port = 0
        self.accepted = 0
        self._dropped = False
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop(self) -> None:
        """Reset every connection, and every new one, until :meth:`restore`."""

        async def drop() -> None:
            self._dropped = True
            for client, upstream in list(self._open):
                _reset(client)
                upstream.transport.abort()

        self._call(drop())

    def restore(self) -> None:
        async def restore() -> None:
            self._dropped = False

        self._call(restore())

    def stop(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            self._call(self._server.wait_closed())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` on the proxy's thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._dropped:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        pair = (writer, up_writer)
        self._open.add(pair)
        pipes = {
            asyncio.ensure_future(_pipe(reader, up_writer)),
            asyncio.ensure_future(_pipe(up_reader, writer)),
        }
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            self._open.discard(pair)
            writer.transport.abort()
            up_writer.transport.abort()
