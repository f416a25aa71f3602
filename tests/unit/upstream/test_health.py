"""Active health checks against a tiny real HTTP server on 127.0.0.1, port 0.

Rounds of checks are driven by calling ``check_all`` directly; only the background task's
tests let it run on its own, and they poll for what it did rather than sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from bastion.settings import EjectionSettings, HealthCheckSettings, UpstreamClientSettings
from bastion.upstream.balancer import Upstream, UpstreamSet
from bastion.upstream.client import UpstreamPool
from bastion.upstream.health import HealthChecker
from bastion.upstream.origin import Origin

TASK_NAME = "bastion-health-checks"
WAIT = 5.0  # upper bound on anything expected to happen "soon"


@dataclass
class Seen:
    method: bytes
    target: bytes
    authorization: bytes | None


class HealthServer:
    """Answers every request with ``status`` (or never, when ``answer`` is off) and records
    what it was asked. Keeps connections alive, as a model server does."""

    def __init__(self) -> None:
        self.status = 200
        self.answer = True
        self.seen: list[Seen] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def origin(self) -> Origin:
        return Origin.from_url(f"http://127.0.0.1:{self.port}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None
        if self._handlers:  # let each connection's handler finish its cleanup
            await asyncio.wait(self._handlers, timeout=WAIT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, *lines = head[:-4].split(b"\r\n")
                method, target, _ = line.split(b" ")
                headers = dict(
                    (name.strip().lower(), value.strip())
                    for name, value in (x.split(b":", 1) for x in lines)
                )
                self.seen.append(Seen(method, target, headers.get(b"authorization")))
                if not self.answer:
                    await reader.read()  # until the client gives up and closes
                    return
                body = b"ok" if self.status == 200 else b""
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%b"
                    % (self.status, len(body), body)
                )
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    fake = HealthServer()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    upstream_pool = UpstreamPool(UpstreamClientSettings())
    yield upstream_pool
    await upstream_pool.aclose()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add(
    upstreams: UpstreamSet,
    origin: Origin,
    *,
    health_path: str = "/health",
    authorization: bytes | None = None,
) -> Upstream:
    return upstreams.get(origin, health_path=health_path, authorization=authorization)


def health_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == TASK_NAME and not t.done()]


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds, at most ``WAIT`` seconds."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


# -- HealthChecker ----------------------------------------------------------------------------


async def test_a_200_marks_the_upstream_checked_and_healthy(
    server: HealthServer, pool: UpstreamPool
) -> None:
    upstreams = UpstreamSet(EjectionSettings())
    up = add(upstreams, server.origin)
    checker = HealthChecker(pool, upstreams, HealthCheckSettings())
    await checker.check_all()
    assert up.checked
    assert up.healthy
    assert up.checks_passed == 1
    assert [(s.method, s.target) for s in server.seen] == [(b"GET", b"/health")]


async def test_a_first_failed_check_takes_the_upstream_out(
    server: HealthServer, pool: UpstreamPool
) -> None:
    upstreams = UpstreamSet(EjectionSettings())
    up = add(upstreams, server.origin)
    checker = HealthChecker(pool, upstreams, HealthCheckSettings(unhealthy_after=3))
    server.status = 503
    await checker.check_all()
    assert up.checked
    assert not up.healthy


async def test_unhealthy_after_and_healthy_after_thresholds(
    server: HealthServer, pool: UpstreamPool
) -> None:
    upstreams = UpstreamSet(EjectionSettings())
    up = add(upstreams, server.origin)
    settings = HealthCheckSettings(unhealthy_after=2, healthy_after=3)
    checker = HealthChecker(pool, upstreams, settings)
    await checker.check_all()
    assert up.healthy

    server.status = 500
    await checker.check_all()
    assert up.healthy  # one failure of two
    await checker.check_all()
    assert not up.healthy

    server.status = 200
    for _ in range(2):
        await checker.check_all()
        assert not up.healthy  # not yet three passes
    await checker.check_all()
    assert up.healthy
    assert len(server.seen) == 6
    assert server.connections == 1  # checks keep a warm connection


@pytest.mark.parametrize("status", [201, 204, 301, 404, 429, 503])
async def test_any_status_but_200_fails_the_check(
    server: HealthServer, pool: UpstreamPool, status: int
) -> None:
    upstreams = UpstreamSet(EjectionSettings())
    up = add(upstreams, server.origin)
    server.status = status
    await HealthChecker(pool, upstreams, HealthCheckSettings()).check_all()
    assert not up.healthy


async def test_recovery_clears_a_passive_ejection(server: HealthServer, pool: UpstreamPool) -> None:
    upstreams = UpstreamSet(EjectionSettings(failures=1))
    up = add(upstreams, server.origin)
    checker = HealthChecker(pool, upstreams, HealthCheckSettings(unhealthy_after=1))
    up.begin(0.0)
    up.failed(0.0, 0)
    assert up.ejected
    server.status = 503
    await checker.check_all()
    assert not up.healthy
    server.status = 200
    await checker.check_all()
    assert up.healthy
    assert not up.ejected


async def test_the_configured_path_and_credential_are_sent(
    server: HealthServer, pool: UpstreamPool
) -> None:
    upstreams = UpstreamSet(EjectionSettings())
    add(upstreams, server.origin, health_path="/v1/models?probe=1", authorization=b"Bearer up-1")
    checker = HealthChecker(pool, upstreams, HealthCheckSettings())
    await checker.check_all()
    assert server.seen == [Seen(b"GET", b"/v1/models?probe=1", b"Bearer up-1")]

    # a reload changes them on the same upstream
    add(upstreams, server.origin, health_path="/ping", authorization=None)
    await checker.check_all()
    assert server.seen[-1] == Seen(b"GET", b"/ping", None)


async def test_every_upstream_is_checked_each_round(pool: UpstreamPool) -> None:
    servers = [HealthServer(), HealthServer()]
    for s in servers:
        await s.start()
    try:
        upstreams = UpstreamSet(EjectionSettings())
        good, bad = (add(upstreams, s.origin) for s in servers)
        servers[1].status = 503
        checker = HealthChecker(pool, upstreams, HealthCheckSettings(unhealthy_after=1))
        await checker.check_all()
        assert good.healthy
        assert not bad.healthy
        assert [len(s.seen) for s in servers] == [1, 1]
    finally:
        for s in servers:
            await s.close()


async def test_a_round_without_upstreams_does_nothing(pool: UpstreamPool) -> None:
    await HealthChecker(pool, UpstreamSet(EjectionSettings()), HealthCheckSettings()).check_all()


async def test_a_closed_port_fails_the_check(pool: UpstreamPool) -> None:
    upstreams = UpstreamSet(EjectionSettings())
    up = add(upstreams, Origin.from_url(f"http://127.0.0.1:{closed_port()}"))
    checker = HealthChecker(pool, upstreams, HealthCheckSettings(unhealthy_after=2))
    up.check_passed(1)
    await checker.check_all()
    assert up.healthy
    await checker.check_all()
    assert not up.healthy
    assert up.checks_failed == 2


async def test_a_server_that_never_answers_fails_by_timeout(
    server: HealthServer, pool: UpstreamPool
) -> None:
    upstreams = UpstreamSet(EjectionSettings())
    up = add(upstreams, server.origin)
    server.answer = False
    checker = HealthChecker(pool, upstreams, HealthCheckSettings(timeout=0.2))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await checker.check_all()
    assert loop.time() - started < 2.0  # the check's timeout, not the pool's read timeout
    assert len(server.seen) == 1
    assert up.checked
    assert not up.healthy

    server.answer = True  # the timed-out connection is not reused for the next check
    await checker.check_all()
    assert up.healthy
    assert server.connections == 2


async def test_start_runs_checks_in_the_background_until_stop(
    server: HealthServer, pool: UpstreamPool
) -> None:
    upstreams = UpstreamSet(EjectionSettings())
    up = add(upstreams, server.origin)
    server.status = 503
    checker = HealthChecker(pool, upstreams, HealthCheckSettings(interval=0.02, unhealthy_after=2))
    checker.start()
    checker.start()  # a second start does not start a second task
    try:
        assert len(health_tasks()) == 1
        await until(lambda: len(server.seen) >= 3)
        assert not up.healthy
        server.status = 200
        await until(lambda: up.healthy)
    finally:
        await checker.stop()
    assert health_tasks() == []
    rounds = len(server.seen)
    await asyncio.sleep(0.1)  # five intervals: none may start after stop
    assert len(server.seen) == rounds
    await checker.stop()  # idempotent


async def test_stop_interrupts_a_check_in_flight(server: HealthServer, pool: UpstreamPool) -> None:
    upstreams = UpstreamSet(EjectionSettings())
    add(upstreams, server.origin)
    server.answer = False
    checker = HealthChecker(pool, upstreams, HealthCheckSettings(timeout=30.0))
    checker.start()
    await until(lambda: len(server.seen) == 1)
    async with asyncio.timeout(WAIT):
        await checker.stop()
    assert health_tasks() == []


async def test_disabled_checks_never_start_a_task(server: HealthServer, pool: UpstreamPool) -> None:
    upstreams = UpstreamSet(EjectionSettings())
    add(upstreams, server.origin)
    checker = HealthChecker(pool, upstreams, HealthCheckSettings(enabled=False, interval=0.01))
    checker.start()
    assert health_tasks() == []
    await asyncio.sleep(0)
    assert server.seen == []
    await checker.stop()
