"""What the gateway does when the Redis limiter cannot decide (``limits.on_backend_failure``).

:class:`FailoverLimiter` asks Redis first. When Redis fails (unreachable, slower than
``redis.timeout``) it either refuses the request with a 503 (``closed``, the default: no limit
is ever exceeded) or decides from a :class:`~bastion.limits.limiter.MemoryLimiter` kept by
this replica (``open``: each replica then applies the limits on its own, so all of them
together may admit up to their number times a limit).

The first failure is logged once (error), and the return of Redis once (warning); in between,
nothing more is logged, only counted (:attr:`FailoverLimiter.failures`,
:attr:`FailoverLimiter.fail_open_decisions`). While Redis is failing, one request at most
every ``retry_interval`` (1 s) tries it again, so a dead Redis does not cost every request a
timeout (and while that one request waits for Redis, the others do not); as soon as Redis
answers (a grant, or a 429: a refusal is an answer too), it decides again, with no restart. A
request that could never fit stays a 400 in either mode. A grant remembers which backend
issued it, and its ``finish`` goes to that one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from bastion.errors import RateLimitError
from bastion.limits.limiter import Grant, MemoryLimiter
from bastion.limits.plan import Bucket
from bastion.limits.redis import LimiterBackendError, RedisGrant, RedisLimiter, reservations

__all__ = ["FailoverLimiter"]

logger = logging.getLogger("bastion.limits")

_RETRY_AFTER = ((b"retry-after", b"1"), (b"retry-after-ms", b"1000"))


class FailoverLimiter:
    """Redis while it answers; then, per ``mode``, 503s or this replica's memory."""

    def __init__(
        self,
        redis: RedisLimiter,
        memory: MemoryLimiter,
        mode: Literal["closed", "open"] = "closed",
        *,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._memory = memory
        self._mode = mode
        self._retry_interval = retry_interval
        self._clock = clock
        self._failing = False
        self._retry_at = 0.0
        self._failures_before = 0
        self.failures = 0
        """Decisions Redis could not make (each a 503, or a decision from memory)."""
        self.fail_open_decisions = 0
        """Of those, the ones decided from memory (``open``), admitted or refused."""
        self.backend_errors = 0
        """Calls to Redis that failed (at most one per ``retry_interval`` while failing)."""

    @property
    def failing(self) -> bool:
        """True from a failure of Redis until it answers again."""
        return self._failing

    async def acquire(self, buckets: tuple[Bucket, ...], prompt: int, completion: int) -> Grant:
        if not buckets:
            return self._memory.acquire_now(buckets, prompt, completion)  # nothing to decide
        if self._failing:
            now = self._clock()
            if now < self._retry_at:
                return self._without_redis(buckets, prompt, completion, None)
            # This request probes Redis; the others go on without it until it answers
            self._retry_at = now + self._retry_interval
        errors = self.backend_errors
        try:
            grant = await self._redis.acquire(buckets, prompt, completion)
        except LimiterBackendError as exc:
            self.backend_errors += 1
            self._retry_at = self._clock() + self._retry_interval
            if not self._failing:
                self._failing = True
                self._failures_before = self.failures
                cause = exc.__cause__ or exc
                logger.error(
                    "rate limit backend (Redis) failed: %s; %s until it answers again",
                    str(cause) or type(cause).__name__,
                    "limits apply per replica, from memory,"
                    if self._mode == "open"
                    else "requests are refused with 503",
                )
            return self._without_redis(buckets, prompt, completion, exc)
        except RateLimitError:  # a refusal (429): Redis answered
            self._recovered(errors)
            raise
        self._recovered(errors)
        return grant

    def _without_redis(
        self,
        buckets: tuple[Bucket, ...],
        prompt: int,
        completion: int,
        exc: LimiterBackendError | None,
    ) -> Grant:
        reservations(buckets, prompt, completion)  # a request that never fits: still a 400
        self.failures += 1
        if self._mode == "closed":
            raise LimiterBackendError(headers=_RETRY_AFTER) from (exc.__cause__ if exc else None)
        self.fail_open_decisions += 1
        return self._memory.acquire_now(buckets, prompt, completion)

    def _recovered(self, errors: int) -> None:
        """Redis answered a call made when ``backend_errors`` was ``errors``: unless another
        call failed since (an answer to a call sent before a failure proves nothing), it is
        back."""
        if self._failing and errors == self.backend_errors:
            self._failing = False
            logger.warning(
                "rate limit backend (Redis) answers again after %d failed decisions; "
                "limits are shared again",
                self.failures - self._failures_before,
            )

    def finish(self, grant: Grant, prompt: int, completion: int) -> None:
        if isinstance(grant, RedisGrant):
            self._redis.finish(grant, prompt, completion)
        else:
            self._memory.finish(grant, prompt, completion)

    async def aclose(self) -> None:
        try:
            await self._redis.aclose()
        finally:
            await self._memory.aclose()
