"""Readiness: can the gateway reach at least one upstream of every model it serves?"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from bastion.upstream.origin import Origin

__all__ = ["Readiness"]


class Readiness:
    """Answers ``/ready`` by opening a TCP connection to each upstream, at most once a second.

    The answer is cached for ``ttl`` seconds so that ``/ready``, which needs no credential,
    cannot be used to make the gateway hammer its upstreams.
    """

    def __init__(
        self,
        models: Iterable[tuple[Origin, ...]],
        *,
        timeout: float = 1.0,
        ttl: float = 1.0,
        extra: Callable[[], bool] | None = None,
    ) -> None:
        self._models = [tuple(origins) for origins in models]
        self._timeout = timeout
        self._ttl = ttl
        self._extra = extra
        self._checked_at = -1e9
        self._ready = False
        self._lock = asyncio.Lock()

    async def __call__(self) -> bool:
        if time.monotonic() - self._checked_at < self._ttl:
            return self._ready
        async with self._lock:
            if time.monotonic() - self._checked_at >= self._ttl:
                self._ready = await self._check()
                self._checked_at = time.monotonic()
        return self._ready

    async def _check(self) -> bool:
        if self._extra is not None and not self._extra():
            return False
        distinct = {origin for origins in self._models for origin in origins}
        answers = await asyncio.gather(*map(self._reachable, distinct))
        results = dict(zip(distinct, answers, strict=True))
        return all(any(results[o] for o in origins) for origins in self._models)

    async def _reachable(self, origin: Origin) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                _, writer = await asyncio.open_connection(origin.host, origin.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
