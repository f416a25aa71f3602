"""ASGI type aliases, kept minimal so the hot path does no typing work at run time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["DISCONNECT_SCOPE_KEY", "DisconnectSignal", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DISCONNECT_SCOPE_KEY = "bastion.disconnect"


class DisconnectSignal:
    """Tells the application, without a task per request, that the client went away.

    Bastion's server protocol puts one in the ASGI scope under ``bastion.disconnect``; the
    application sets ``callback`` while it waits on the upstream and clears it afterwards.
    Under another ASGI server the key is absent and the application watches ``receive()``.
    """

    __slots__ = ("callback", "fired")

    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()
