"""ASGI type aliases, kept minimal so the hot path does no typing work at run time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = [
    "DOWNSTREAM_SCOPE_KEY",
    "CorkableTransport",
    "Downstream",
    "Message",
    "PeerCertificate",
    "Receive",
    "Scope",
    "Send",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
PeerCertificate = dict[str, Any]
"""A verified client certificate as :meth:`ssl.SSLSocket.getpeercert` decodes it."""

DOWNSTREAM_SCOPE_KEY = "bastion.downstream"


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


class Downstream:
    """What Bastion's server protocol shares with the application about the caller's connection.

    It sits in the ASGI scope under ``bastion.downstream``; under another ASGI server the key
    is absent and the application falls back to plain ASGI (``receive()`` for disconnects,
    ``send()`` for every body piece).

    - ``on_disconnect`` is called once if the caller goes away (no task per request needed);
    - ``transport`` lets a relay write body pieces of a chunked response straight to the
      socket, and ``writing_paused`` / ``on_resume_writing`` carry the socket's backpressure;
    - ``peer_certificate`` is the client certificate the TLS handshake verified (mutual TLS
      only; None on plain connections and for callers that presented none).
    """

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
