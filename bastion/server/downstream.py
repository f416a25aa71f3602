"""The caller's connection, on the wire: a corkable transport and the splice's chunk framing.

Only this module and :mod:`bastion.server.protocol` know bytes and HTTP/1.1 framing; the
pipeline speaks in ASGI messages and reaches the connection through the
:class:`bastion.types.Downstream` protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from bastion.types import PeerCertificate, SpliceSource

__all__ = ["CorkableTransport", "DownstreamConnection"]


class CorkableTransport(asyncio.Transport):
    """A transport that can hold writes back and send them as one (one system call, one packet).

    The server protocol hands this to uvicorn in place of the socket's transport, so a
    response head written by ``send(http.response.start)`` and the body written right after
    leave in a single write when the application corks around them.
    """

    __slots__ = ("_corked", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._corked = False
        self._pending: list[bytes] = []

    def cork(self) -> None:
        self._corked = True

    def uncork(self) -> None:
        self._corked = False
        if self._pending:
            pending, self._pending = self._pending, []
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._corked:
            self._pending.append(bytes(data))
        else:
            self._transport.write(data)

    def uncorked_write(self) -> Callable[[bytes | bytearray | memoryview], None]:
        """The socket transport's own ``write``, for a run of writes that nothing corks (the
        splice: one Python call less per relayed piece); anything held back goes first."""
        self.uncork()
        return self._transport.write

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self.uncork()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self.uncork()
        self._transport.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class DownstreamConnection:
    """One caller connection, shared with the application (see
    :class:`bastion.types.Downstream`); the protocol feeds it the socket's events
    (``lost``, ``pause_writing``, ``resume_writing``)."""

    __slots__ = (
        "disconnected",
        "on_disconnect",
        "on_resume_writing",
        "peer_certificate",
        "transport",
        "writing_paused",
    )

    def __init__(self, transport: CorkableTransport) -> None:
        self.transport = transport
        self.on_disconnect: Callable[[], None] | None = None
        self.on_resume_writing: Callable[[], None] | None = None
        self.disconnected = False
        self.writing_paused = False
        self.peer_certificate: PeerCertificate | None = None

    def lost(self) -> None:
        self.disconnected = True
        self.on_resume_writing = None
        callback, self.on_disconnect = self.on_disconnect, None
        if callback is not None:
            callback()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.on_resume_writing is not None:
            self.on_resume_writing()

    def cork(self) -> None:
        self.transport.cork()

    def uncork(self) -> None:
        self.transport.uncork()

    async def splice(self, source: SpliceSource, transform: Callable[[bytes], bytes]) -> None:
        """Relay a body from the source's callback straight to the caller's socket.

        The fast path for streams: no task wakes up per event. The response head went out
        through ASGI without a length, so uvicorn frames the body as chunked; each piece is
        written here in that framing, and the terminating chunk is left to the application's
        final ASGI ``send``. When the caller's socket buffer fills, the source is paused
        until it drains.
        """
        write = self.transport.uncorked_write()

        def sink(piece: bytes) -> None:
            piece = transform(piece)
            if not piece:  # held back; an empty chunk would end the body
                return
            write(b"%x\r\n%b\r\n" % (len(piece), piece))
            if self.writing_paused:
                source.pause_reading()

        self.on_resume_writing = source.resume_reading
        try:
            await source.relay(sink)
        finally:
            self.on_resume_writing = None
