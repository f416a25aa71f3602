"""ASGI type aliases, kept minimal so the hot path does no typing work at run time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["DOWNSTREAM_SCOPE_KEY", "Downstream", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DOWNSTREAM_SCOPE_KEY = "bastion.downstream"


class Downstream:
    """What Bastion's server protocol shares with the application about the caller's connection.

    It sits in the ASGI scope under ``bastion.downstream``; under another ASGI server the key
    is absent and the application falls back to plain ASGI (``receive()`` for disconnects,
    ``send()`` for every body piece).

    - ``on_disconnect`` is called once if the caller goes away (no task per request needed);
    - ``transport`` lets a relay write body pieces of a chunked response straight to the
      socket, and ``writing_paused`` / ``on_resume_writing`` carry the socket's backpressure.
    """

    __slots__ = (
        "disconnected",
        "on_disconnect",
        "on_resume_writing",
        "transport",
        "writing_paused",
    )

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.on_disconnect: Callable[[], None] | None = None
        self.on_resume_writing: Callable[[], None] | None = None
        self.disconnected = False
        self.writing_paused = False

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
