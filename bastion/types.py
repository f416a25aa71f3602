"""ASGI type aliases, and what the pipeline may ask of the caller's connection.

Kept minimal so the hot path does no typing work at run time. The connection itself (bytes,
framing, backpressure) belongs to the server layer (:mod:`bastion.server.downstream`); the
pipeline sees it only through the :class:`Downstream` protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Protocol

__all__ = [
    "DOWNSTREAM_SCOPE_KEY",
    "RESPOND_SCOPE_KEY",
    "Downstream",
    "Message",
    "PeerCertificate",
    "Receive",
    "Respond",
    "Scope",
    "Send",
    "SpliceSource",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
PeerCertificate = dict[str, Any]
"""A verified client certificate as :meth:`ssl.SSLSocket.getpeercert` decodes it."""

DOWNSTREAM_SCOPE_KEY = "bastion.downstream"

RESPOND_SCOPE_KEY = "bastion.respond"
"""Under Bastion's server, the request's :data:`Respond` (per request, not per connection:
a pipelined request's cycle is not the one being answered)."""

Respond = Callable[[int, Sequence[tuple[bytes, bytes]], bytes], bool]
"""Write a whole response (status, headers, body) at once, as ``send`` would its start and
one body message, without awaiting either; False, and nothing written, when it cannot (the
response began, the caller is gone, or its socket is full): then send through ASGI."""


class SpliceSource(Protocol):
    """A body that delivers its pieces to a callback (an upstream response)."""

    def relay(self, sink: Callable[[bytes], None]) -> Awaitable[None]:
        """Call ``sink`` with each piece of the body as it arrives; done at its end."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Downstream(Protocol):
    """The caller's connection, as Bastion's server shares it with the application.

    It sits in the ASGI scope under ``bastion.downstream``; under another ASGI server the key
    is absent and the application falls back to plain ASGI (``receive()`` for disconnects,
    ``send()`` for every body piece).
    """

    disconnected: bool
    on_disconnect: Callable[[], None] | None
    """Called once if the caller goes away (no task per request needed)."""
    peer_certificate: PeerCertificate | None
    """The client certificate the TLS handshake verified (mutual TLS only)."""

    def cork(self) -> None:
        """Hold writes back until :meth:`uncork`, so a head and body leave as one."""

    def uncork(self) -> None: ...

    def splice(self, source: SpliceSource, transform: Callable[[bytes], bytes]) -> Awaitable[None]:
        """Relay ``source``'s pieces straight to the caller as the body of a response whose
        head went out without a length; ``transform`` sees each piece first and returns what
        to send (empty: nothing now). Backpressure from the caller pauses ``source``."""
