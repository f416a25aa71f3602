"""Messages between the supervisor and one worker: JSON frames over a private socket pair.

The supervisor makes a ``socketpair()`` per worker and hands one end to the worker (an
inherited file descriptor): nothing on the file system, no name another user could connect
to, no secret on a command line. Either side may ask; the other answers::

    frame    4-byte big-endian length, then a JSON object
    ask      {"id": 7, "op": "reload", "args": {...}}
    answer   {"re": 7, "ok": ...}  or  {"re": 7, "failed": "why"}   (the handler raised)
    tell     {"id": 0, "op": "ready", "args": {...}}                 (no answer)

The end of the stream means the other process is gone (a worker then stops serving). Frames
go one way at a time per side; requests are answered concurrently, so a slow reload does not
hold up a scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Channel", "Handler"]

log = logging.getLogger("bastion")

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""Answers one request: ``(op, args) -> answer`` (JSON-ready)."""

_HEADER = struct.Struct("!I")
_MAX_FRAME = 64 * 1024 * 1024


class Channel:
    """One end of a supervisor-worker connection. :meth:`start` it, then :meth:`ask` and
    :meth:`tell`; :meth:`closed` ends when the other side has gone."""

    def __init__(self, sock: socket.socket, handler: Handler) -> None:
        self._sock = sock
        self._handler = handler
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._gone = asyncio.Event()

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        self._reading = asyncio.create_task(self._read(reader), name="bastion-channel")

    @property
    def open(self) -> bool:
        return self._writer is not None and not self._gone.is_set()

    async def ask(self, op: str, args: dict[str, Any] | None = None, *, timeout: float) -> Any:
        """The other side's answer; raises ``ConnectionError`` when it is gone,
        ``TimeoutError`` after ``timeout`` s, ``RuntimeError`` when its handler failed."""
        if not self.open:
            raise ConnectionError("the other process is gone")
        number = next(self._ids)
        waiting = self._waiting[number] = asyncio.get_running_loop().create_future()
        try:
            self._send({"id": number, "op": op, "args": args or {}})
            async with asyncio.timeout(timeout):
                return await waiting
        finally:
            self._waiting.pop(number, None)

    def tell(self, op: str, args: dict[str, Any] | None = None) -> None:
        """Send without waiting for an answer (none comes); lost if the other side is gone."""
        if self.open:
            self._send({"id": 0, "op": op, "args": args or {}})

    async def closed(self) -> None:
        """Return once the other side has closed its end (or died)."""
        await self._gone.wait()

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if self._writer is not None:
            self._writer.close()
        self._went()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._writer is not None
        payload = json.dumps(message, separators=(",", ":")).encode()
        self._writer.write(_HEADER.pack(len(payload)) + payload)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                if size > _MAX_FRAME:
                    log.error("channel: a frame of %d bytes; closing", size)
                    return
                self._dispatch(json.loads(await reader.readexactly(size)))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the other side is gone
        finally:
            self._went()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "re" in message:
            waiting = self._waiting.get(message["re"])
            if waiting is None or waiting.done():
                return  # answered after its asker gave up
            if "failed" in message:
                waiting.set_exception(RuntimeError(message["failed"]))
            else:
                waiting.set_result(message.get("ok"))
            return
        task = asyncio.create_task(self._answer(message), name=f"bastion-channel-{message['op']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, message: dict[str, Any]) -> None:
        number = message.get("id", 0)
        try:
            answer: dict[str, Any] = {"re": number, "ok": await self._handler(
                message["op"], message.get("args") or {}
            )}  # fmt: skip
        except Exception as exc:
            log.exception("channel: %s failed", message.get("op"))
            answer = {"re": number, "failed": f"{type(exc).__name__}: {exc}"}
        if number and self.open:
            self._send(answer)

    def _went(self) -> None:
        self._gone.set()
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(ConnectionError("the other process is gone"))
