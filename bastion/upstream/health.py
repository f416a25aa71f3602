"""Upstream health: active checks (the per-model view for operators is ``/ready?verbose``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from bastion.errors import UpstreamError
from bastion.settings import HealthCheckSettings
from bastion.upstream.balancer import Upstream, UpstreamSet
from bastion.upstream.client import UpstreamPool

__all__ = ["HealthChecker"]

log = logging.getLogger("bastion.upstream")


class HealthChecker:
    """Asks every upstream ``GET <health path>`` each ``interval`` seconds, all at once.

    ``unhealthy_after`` failed checks in a row take an upstream out of every balancer;
    ``healthy_after`` passed checks put it back. A check fails on a connection error, a
    timeout or any status but 200. Checks go through the gateway's own connection pool, so
    they also keep a warm connection to each upstream.
    """

    def __init__(
        self, pool: UpstreamPool, upstreams: UpstreamSet, settings: HealthCheckSettings
    ) -> None:
        self._pool = pool
        self._upstreams = upstreams
        self.settings = settings
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self.settings.enabled:
            self._task = asyncio.create_task(self._run(), name="bastion-health-checks")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check_all(self) -> None:
        """One round of checks (also what the background task does every interval)."""
        upstreams = self._upstreams.all()
        if upstreams:
            await asyncio.gather(*(self._check(u) for u in upstreams))

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self.check_all()
            await asyncio.sleep(max(0.0, self.settings.interval - (time.monotonic() - started)))

    async def _check(self, upstream: Upstream) -> None:
        settings = self.settings
        was_healthy = upstream.healthy
        if await self._probe(upstream):
            upstream.check_passed(settings.healthy_after)
        else:
            upstream.check_failed(settings.unhealthy_after)
        if upstream.healthy != was_healthy:
            if upstream.healthy:
                log.warning("upstream %s passes its health check again: back in", upstream.name)
            else:
                log.warning(
                    "upstream %s failed %d health checks in a row: taken out",
                    upstream.name,
                    upstream.checks_failed,
                )

    async def _probe(self, upstream: Upstream) -> bool:
        headers = [(b"accept", b"*/*")]
        if upstream.authorization is not None:
            headers.append((b"authorization", upstream.authorization))
        try:
            async with asyncio.timeout(self.settings.timeout):
                response = await self._pool.request(
                    upstream.origin, b"GET", upstream.health_path.encode(), headers, b""
                )
                try:
                    await response.read()
                finally:
                    response.close()
        except (UpstreamError, TimeoutError):
            return False
        return response.status == 200
