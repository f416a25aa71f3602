"""Slow down credential guessing: an address that fails too often is turned away for a while.

Failures are counted per caller address in a fixed window; past ``max_failures`` the address is
blocked for ``block`` seconds and every request from it gets 429 before any credential is
looked at (so guessing also stops costing bcrypt time). Memory is bounded: at most
``_MAX_TRACKED`` addresses are tracked, expired entries first to go.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from bastion.errors import RateLimitError
from bastion.settings import BruteForceSettings

__all__ = ["FailureGuard"]

log = logging.getLogger("bastion.auth")

_MAX_TRACKED = 100_000


class FailureGuard:
    def __init__(
        self, settings: BruteForceSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        # address -> [failures in window, window start, blocked until]
        self._seen: dict[str, list[float]] = {}
        self.blocks = 0
        """How many times an address was blocked (for metrics)."""
        self.refused = 0
        """Requests refused because their address was blocked."""

    def check(self, address: str) -> None:
        """Raise 429 (with Retry-After) if ``address`` is blocked."""
        entry = self._seen.get(address)
        if entry is None:
            return
        wait = entry[2] - self._clock()
        if wait > 0:
            self.refused += 1
            retry = str(math.ceil(wait)).encode()
            raise RateLimitError(
                "Too many failed authentication attempts; retry later.",
                code="too_many_authentication_failures",
                headers=((b"retry-after", retry),),
            )

    def failed(self, address: str) -> None:
        settings = self._settings
        if settings.max_failures == 0:
            return
        now = self._clock()
        entry = self._seen.get(address)
        if entry is None or now - entry[1] >= settings.window:
            if entry is None and len(self._seen) >= _MAX_TRACKED:
                self._forget(now)
            entry = self._seen[address] = [0.0, now, 0.0]
        entry[0] += 1
        if entry[0] >= settings.max_failures and entry[2] <= now:
            entry[2] = now + settings.block
            entry[0], entry[1] = 0.0, now
            self.blocks += 1
            log.warning(
                "blocking %s for %.0f s after %d failed authentications",
                address,
                settings.block,
                settings.max_failures,
            )

    def _forget(self, now: float) -> None:
        window = self._settings.window
        stale = [a for a, e in self._seen.items() if e[2] <= now and now - e[1] >= window]
        for address in stale:
            del self._seen[address]
        while len(self._seen) >= _MAX_TRACKED:  # still full of live entries: drop the oldest
            del self._seen[next(iter(self._seen))]
