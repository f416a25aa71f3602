"""Choosing the limiter backend from settings."""

from __future__ import annotations

from bastion.limits.limiter import Limiter, MemoryLimiter
from bastion.settings import LimitsSettings

__all__ = ["build_limiter"]


def build_limiter(settings: LimitsSettings) -> Limiter:
    if settings.backend == "memory":
        return MemoryLimiter()
    from bastion.limits.fallback import FailoverLimiter
    from bastion.limits.redis import RedisLimiter

    return FailoverLimiter(
        RedisLimiter(settings.redis), MemoryLimiter(), settings.on_backend_failure
    )
