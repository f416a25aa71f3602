"""Where the gateway runs the store's blocking calls: threads of their own, a deadline each.

The store's methods block (a database round trip or several), so the event loop hands them to
worker threads. They get a bounded pool of their own, never asyncio's default executor: that
one also checks htpasswd passwords (bcrypt), and a store that stops answering must not leave
logins waiting behind stuck admin calls. The pool has as many threads as the store has
connections, so a thread never waits for a connection that no other thread will return.

Each call is awaited for at most the store's whole deadline (``connect_timeout`` +
``statement_timeout`` and a little): by then the store has cut its connection
(:mod:`bastion.store.deadlines`); a call still queued behind stuck ones is dropped unrun. Either
way the caller gets :class:`~bastion.errors.StoreUnavailableError` (503 ``store_unavailable``).

Every call's outcome feeds one :class:`Outage`, which logs the store going away and coming
back once each, however many calls fail in between.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from bastion.errors import BastionError, StoreTimeoutError, StoreUnavailableError
from bastion.settings import StoreSettings
from bastion.store.deadlines import ANSWER_GRACE
from bastion.store.store import CONNECTIONS

__all__ = ["Outage", "StoreCalls"]

log = logging.getLogger("bastion.store")

P = ParamSpec("P")
T = TypeVar("T")

_SETTLE_POLLS = 10
"""An outage ends once no call has failed for this many poll intervals."""


class Outage:
    """Tells the log once when the store becomes unreachable, and once when it is back.

    An outage starts with the first failed call. It ends with the first call that succeeds
    when no call has failed for ``settle`` seconds; until then failures and successes that
    alternate (a flapping network, a pool reconnecting, a step with nothing to do) are the
    same outage, not a line each.
    """

    def __init__(self, settle: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._settle = settle
        self._clock = clock
        self._began: float | None = None
        self._last_failure = 0.0
        self._failed = 0

    @property
    def ongoing(self) -> bool:
        return self._began is not None

    def failed(self, error: StoreUnavailableError) -> None:
        now = self._clock()
        self._last_failure = now
        self._failed += 1
        if self._began is None:
            self._began = now
            self._failed = 1
            log.error(
                "identity store unreachable: %s; store calls fail with 503 store_unavailable "
                "until it answers again",
                error.message,
            )

    def answered(self) -> None:
        now = self._clock()
        if self._began is None or now - self._last_failure < self._settle:
            return
        log.warning(
            "identity store reachable again after %.1f s (%d calls failed)",
            now - self._began,
            self._failed,
        )
        self._began = None


class StoreCalls:
    """Runs blocking store work off the event loop, bounded in threads and in time."""

    def __init__(self, settings: StoreSettings, threads: int = CONNECTIONS) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="bastion-store")
        self.deadline = settings.connect_timeout + settings.statement_timeout + 2 * ANSWER_GRACE
        """The longest a call is awaited; the store's own deadlines end it before."""
        self.outage = Outage(settle=_SETTLE_POLLS * settings.poll_interval)
        self.failures = 0
        """Calls that failed because the store could not be reached or did not answer."""
        self.timeouts = 0
        """Of those, calls that got no answer within their deadline."""

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``work(*args, **kwargs)`` in a store thread; StoreUnavailableError if the store
        fails it or does not answer within :attr:`deadline`."""
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self._executor, functools.partial(work, *args, **kwargs))
        limit = asyncio.timeout(self.deadline)
        try:
            async with limit:
                result = await pending
        except StoreUnavailableError as exc:
            self._failed(exc)
            raise
        except TimeoutError:
            if not limit.expired():
                raise
            late = StoreTimeoutError(f"the store did not answer within {self.deadline:g} s")
            self._failed(late)
            raise late from None
        except BastionError:  # the store answered: not found, conflict, refused
            self.outage.answered()
            raise
        self.outage.answered()
        return result

    def close(self) -> None:
        """Stop taking work; calls still queued are dropped (their callers have given up)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _failed(self, error: StoreUnavailableError) -> None:
        self.failures += 1
        if isinstance(error, StoreTimeoutError):
            self.timeouts += 1
        self.outage.failed(error)
