"""The failover limiter against a redis-server of the test's own, killed, hung and restarted
mid-test."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import redis

from bastion.errors import BadRequestError, RateLimitError, ServiceUnavailableError
from bastion.limits.fallback import FailoverLimiter
from bastion.limits.limiter import Grant, MemoryLimiter
from bastion.limits.plan import Bucket, Limit
from bastion.limits.redis import LimiterBackendError, RedisGrant, RedisLimiter
from bastion.limits.scripts import EPOCH
from bastion.settings import LimitSettings, RedisSettings


def bucket(key: str, **limits: Any) -> Bucket:
    return Bucket(key, Limit.of(LimitSettings(**limits)))


class RedisServer:
    """A throwaway redis-server on a free port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    extra_args: tuple[str, ...] = ()
    """More redis-server options (a subclass may ask for a password)."""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        with self.client() as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise
                    time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path)
    started.start()
    yield started
    if started.proc is not None:
        started.resume()
    started.kill()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def failover(server: RedisServer) -> AsyncIterator[Any]:
    made: list[FailoverLimiter] = []

    def make(mode: Literal["closed", "open"], clock: Clock | None = None) -> FailoverLimiter:
        settings = RedisSettings(url=server.url, timeout=0.1, key_prefix="t:")
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        made.append(FailoverLimiter(RedisLimiter(settings), MemoryLimiter(), mode, **kwargs))
        return made[-1]

    yield make
    for limiter in made:
        await limiter.aclose()


def limit_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "bastion.limits" and r.levelno == level]  # fmt: skip


async def test_closed_mode_refuses_with_503_when_redis_dies(
    server: RedisServer, failover: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bastion.limits")
    limiter: FailoverLimiter = failover("closed")
    b = bucket("user:a", requests_per_minute=100)
    assert isinstance(await limiter.acquire((b,), 1, 1), RedisGrant)
    server.kill()
    start = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as refused:
        await limiter.acquire((b,), 1, 1)
    assert time.monotonic() - start < 0.5
    assert refused.value.status == 503
    assert refused.value.code == "limiter_unavailable"
    assert dict(refused.value.headers)[b"retry-after"] == b"1"
    assert limiter.failing
    # Within the retry interval Redis is not even asked: every request is refused at once
    start = time.monotonic()
    for _ in range(50):
        with pytest.raises(LimiterBackendError):
            await limiter.acquire((b,), 1, 1)
    assert time.monotonic() - start < 0.05
    assert (limiter.failures, limiter.backend_errors, limiter.fail_open_decisions) == (51, 1, 0)
    # A request that could never fit is still a 400
    with pytest.raises(BadRequestError):
        await limiter.acquire((bucket("user:b", tokens_per_minute=10),), 100, 100)
    assert limiter.failures == 51
    errors = limit_logs(caplog, logging.ERROR)
    assert len(errors) == 1
    assert "refused with 503" in errors[0]
    assert limit_logs(caplog, logging.WARNING) == []


async def test_closed_mode_is_bounded_by_the_timeout_when_redis_hangs(
    server: RedisServer, failover: Any
) -> None:
    limiter: FailoverLimiter = failover("closed")
    b = bucket("user:hang", requests_per_minute=100)
    await limiter.acquire((b,), 1, 1)
    server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(ServiceUnavailableError):
            await limiter.acquire((b,), 1, 1)
        elapsed = time.monotonic() - start
        assert 0.09 <= elapsed < 0.3  # redis.timeout is 0.1 s
    finally:
        server.resume()


async def test_open_mode_decides_from_memory_then_back_to_redis(
    server: RedisServer, failover: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bastion.limits")
    limiter: FailoverLimiter = failover("open")
    b = bucket("user:open", requests_per_minute=3, concurrency=10)
    before = await limiter.acquire((b,), 1, 1)
    assert isinstance(before, RedisGrant)
    server.kill()
    # This replica's memory decides: a fresh bucket, so 3 more, then a refusal
    grants: list[Grant] = []
    for _ in range(3):
        grant = await limiter.acquire((b,), 1, 1)
        assert type(grant) is Grant
        grants.append(grant)
    with pytest.raises(RateLimitError):
        await limiter.acquire((b,), 1, 1)
    assert (limiter.failures, limiter.fail_open_decisions, limiter.backend_errors) == (4, 4, 1)
    # Grants finish where they were issued
    memory: MemoryLimiter = limiter._memory
    assert memory.in_flight("user:open") == 3
    limiter.finish(grants[0], 1, 1)
    assert memory.in_flight("user:open") == 2
    errors = limit_logs(caplog, logging.ERROR)
    assert len(errors) == 1
    assert "per replica" in errors[0]

    # Redis comes back on the same port: within the retry interval, it decides again
    server.start()
    restarted = time.monotonic()
    while True:
        grant = await limiter.acquire((bucket("user:back", requests_per_minute=100),), 1, 1)
        if isinstance(grant, RedisGrant):
            break
        assert time.monotonic() - restarted < 1.5
        await asyncio.sleep(0.05)
    assert not limiter.failing
    assert len([m for m in limit_logs(caplog, logging.WARNING) if "answers again" in m]) == 1
    assert len(limit_logs(caplog, logging.ERROR)) == 1
    with server.client() as client:
        assert client.exists("t:rl:s:user:back") == 1
    # A Redis grant finishes in Redis; the memory's grants still in memory
    redis_grant = await limiter.acquire((b,), 1, 1)
    assert isinstance(redis_grant, RedisGrant)
    redis_limiter: RedisLimiter = limiter._redis
    assert await redis_limiter.in_flight("user:open") == 1
    limiter.finish(redis_grant, 1, 1)
    limiter.finish(grants[1], 1, 1)
    await redis_limiter.flush()
    assert await redis_limiter.in_flight("user:open") == 0
    assert memory.in_flight("user:open") == 1
    decided = limiter.fail_open_decisions
    for _ in range(5):
        await limiter.acquire((bucket("user:back", requests_per_minute=100),), 1, 1)
    assert limiter.fail_open_decisions == decided


async def test_redis_is_retried_at_most_every_second(
    server: RedisServer, failover: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bastion.limits")
    clock = Clock()
    limiter: FailoverLimiter = failover("open", clock)
    b = bucket("user:retry", requests_per_minute=10_000)
    await limiter.acquire((b,), 1, 1)
    server.kill()
    for _ in range(20):
        assert type(await limiter.acquire((b,), 1, 1)) is Grant
    assert limiter.backend_errors == 1
    clock.now += 0.99
    await limiter.acquire((b,), 1, 1)
    assert limiter.backend_errors == 1
    clock.now += 0.01
    await limiter.acquire((b,), 1, 1)  # one probe: still dead
    assert limiter.backend_errors == 2
    await limiter.acquire((b,), 1, 1)
    assert limiter.backend_errors == 2
    server.start()
    clock.now += 0.5
    assert type(await limiter.acquire((b,), 1, 1)) is Grant  # not asked yet
    clock.now += 0.5
    assert isinstance(await limiter.acquire((b,), 1, 1), RedisGrant)
    assert not limiter.failing
    assert (limiter.failures, limiter.fail_open_decisions, limiter.backend_errors) == (24, 24, 2)
    assert len(limit_logs(caplog, logging.ERROR)) == 1  # two failed calls, one outage
    (recovered,) = limit_logs(caplog, logging.WARNING)
    assert "after 24 failed decisions" in recovered


async def test_one_probe_at_a_time(server: RedisServer, failover: Any) -> None:
    clock = Clock()
    limiter: FailoverLimiter = failover("closed", clock)
    b = bucket("user:probe", requests_per_minute=10_000)
    await limiter.acquire((b,), 1, 1)
    server.pause()
    try:
        with pytest.raises(ServiceUnavailableError):
            await limiter.acquire((b,), 1, 1)
        assert limiter.backend_errors == 1
        clock.now += 1.0
        start = time.monotonic()
        results = await asyncio.gather(
            *(limiter.acquire((b,), 1, 1) for _ in range(20)), return_exceptions=True
        )
        assert time.monotonic() - start < 0.3  # one timeout, not twenty in a row
        assert all(isinstance(r, ServiceUnavailableError) for r in results)
        assert limiter.backend_errors == 2  # only the first of them asked Redis
    finally:
        server.resume()


async def test_a_refusal_from_redis_means_it_is_back(
    server: RedisServer, failover: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bastion.limits")
    clock = Clock()
    limiter: FailoverLimiter = failover("closed", clock)
    b = bucket("user:refused", requests_per_minute=1)
    await limiter.acquire((b,), 1, 1)
    server.pause()
    try:
        with pytest.raises(LimiterBackendError):
            await limiter.acquire((b,), 1, 1)
    finally:
        server.resume()
    clock.now += 1.0
    with pytest.raises(RateLimitError) as refused:
        await limiter.acquire((b,), 1, 1)
    assert type(refused.value) is RateLimitError
    assert not limiter.failing
    assert len(limit_logs(caplog, logging.WARNING)) == 1


async def test_releases_are_retried_after_a_failure(server: RedisServer) -> None:
    settings = RedisSettings(url=server.url, timeout=0.1, key_prefix="t:")
    limiter = RedisLimiter(settings)
    try:
        b = bucket("user:release", concurrency=1, tokens_per_minute=1000)
        grant = await limiter.acquire((b,), 500, 500)  # the TAT: 60 s ahead
        server.pause()
        try:
            limiter.finish(grant, 50, 50)  # would move it back by 54 s
            await asyncio.sleep(0.15)  # the first try times out
            assert limiter.finish_failures == 1
        finally:
            server.resume()
        await limiter.flush()
        assert await limiter.in_flight("user:release") == 0  # the retry released the slot
        assert limiter.finish_dropped == 0
        # The reconciliation was sent at most once (the retry only releases)
        with server.client() as client:
            seconds, micros = client.time()
            now = (seconds - EPOCH) * 1e6 + micros
            tat = float(client.hget("t:rl:s:user:release", "t") or 0)
        assert tat - now > 5e6
        await limiter.acquire((b,), 1, 1)
    finally:
        await limiter.aclose()


async def test_a_restart_costs_one_failed_decision_not_one_per_connection(
    server: RedisServer,
) -> None:
    settings = RedisSettings(url=server.url, timeout=0.5, key_prefix="t:")
    limiter = RedisLimiter(settings)
    try:
        b = bucket("user:pool", requests_per_minute=10_000)
        await asyncio.gather(*(limiter.acquire((b,), 1, 1) for _ in range(10)))  # 10 connections
        server.kill()
        server.start()
        with pytest.raises(LimiterBackendError):
            await limiter.acquire((b,), 1, 1)  # on a connection to the Redis that died
        results = await asyncio.gather(*(limiter.acquire((b,), 1, 1) for _ in range(10)))
        assert all(isinstance(r, RedisGrant) for r in results)
    finally:
        await limiter.aclose()


async def test_a_timed_out_decision_releases_what_it_may_have_taken(server: RedisServer) -> None:
    settings = RedisSettings(url=server.url, timeout=0.1, key_prefix="t:")
    limiter = RedisLimiter(settings)
    try:
        b = bucket("user:timeout", concurrency=1)
        server.pause()
        try:
            with pytest.raises(LimiterBackendError):
                await limiter.acquire((b,), 1, 1)
        finally:
            server.resume()
        await limiter.flush()
        assert await limiter.in_flight("user:timeout") == 0
        grant = await limiter.acquire((b,), 1, 1)  # the slot is free
        limiter.finish(grant, 1, 1)
        # A caller gone while Redis decides: the same
        server.pause()
        try:
            task = asyncio.create_task(limiter.acquire((b,), 1, 1))
            await asyncio.sleep(0.03)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            server.resume()
        await limiter.flush()
        assert await limiter.in_flight("user:timeout") == 0
        assert limiter.finish_dropped == 0
    finally:
        await limiter.aclose()
