"""Deadlines of one kind for every connection, watched by one sweeping timer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["DeadlineWatch"]

Conn = TypeVar("Conn")


class DeadlineWatch(Generic[Conn]):
    """One kind of deadline for every connection, enforced by one sweeping timer.

    A timer per request (armed at the head's first byte, cancelled when it is complete) cost
    more than the rest of the protocol's own work; a dict entry costs next to nothing. A
    deadline is noticed at most ``tick`` late; ``expire`` is called for each connection
    whose deadline passed, and ``expired`` counts them.
    """

    def __init__(self, timeout: float, expire: Callable[[Conn], None]) -> None:
        self.timeout = timeout
        self.tick = min(0.25, timeout / 4)
        self.expire = expire
        self.expired = 0
        self.waiting: dict[Conn, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, conn: Conn, loop: asyncio.AbstractEventLoop) -> None:
        self.waiting[conn] = loop.time() + self.timeout
        if self._timer is None:
            self._timer = loop.call_later(self.tick, self._sweep, loop)

    def disarm(self, conn: Conn) -> None:
        self.waiting.pop(conn, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in [c for c, deadline in self.waiting.items() if deadline <= now]:
            del self.waiting[conn]
            self.expired += 1
            self.expire(conn)
        self._timer = loop.call_later(self.tick, self._sweep, loop) if self.waiting else None
