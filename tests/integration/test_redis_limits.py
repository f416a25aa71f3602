"""Limits shared through Redis by several gateway processes, and what happens without Redis."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.auth.apikeys import generate_key, hash_key
from tests.integration.conftest import UPSTREAM_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess, Keys, base_config, running_gateway
from tests.support.redis_proxy import RedisProxy

RUNS = 3
KEYS = {f"run{n}": generate_key() for n in range(RUNS)}
BODY = b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}'


def config_for(
    upstream: FakeUpstream, redis_url: str, prefix: str, failure: str = "closed"
) -> dict[str, object]:
    config = base_config(upstream.url, Keys())
    config["auth"] = {
        "api_keys": [{"name": n, "hash": hash_key(k), "role": "user"} for n, k in KEYS.items()]
    }
    config["limits"] = {
        "backend": "redis",
        "redis": {"url": redis_url, "key_prefix": prefix, "timeout": 0.2},
        "on_backend_failure": failure,
        "users": {name: {"requests_per_minute": 50} for name in KEYS},
    }
    return config


async def _status(gateway: GatewayProcess, key: str) -> int:
    host, port = gateway.host_port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(BODY)}\r\n".encode()
            + b"Content-Type: application/json\r\n\r\n"
            + BODY
        )
        line = await asyncio.wait_for(reader.readline(), 10)
        await reader.read()
        return int(line.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def statuses(gateways: list[GatewayProcess], key: str, count: int) -> list[int]:
    """``count`` requests at once, spread over the gateways."""

    async def all_at_once() -> list[int]:
        return await asyncio.gather(
            *(_status(gateways[i % len(gateways)], key) for i in range(count))
        )

    return asyncio.run(all_at_once())


def test_three_replicas_admit_exactly_the_limit(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    prefix = f"bastion-test-{secrets.token_hex(4)}:"
    config = config_for(upstream, "redis://127.0.0.1:6379/0", prefix)
    with contextlib.ExitStack() as stack:
        gateways = [
            stack.enter_context(
                running_gateway(
                    {**config, "server": {"host": "127.0.0.1"}},
                    tmp_path_factory.mktemp(f"replica{i}"),
                    UPSTREAM_KEY,
                )
            )
            for i in range(3)
        ]
        for run, key in enumerate(KEYS.values()):  # a fresh bucket each run
            answers = statuses(gateways, key, 200)
            assert answers.count(200) == 50, (run, sorted(set(answers)))
            assert answers.count(429) == 150


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A redis-server of this test's own, to be stopped and started again."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


@pytest.mark.parametrize("failure", ["closed", "open"])
def test_redis_going_away_and_coming_back(
    upstream: FakeUpstream, own_redis: OwnRedis, tmp_path: Path, failure: str
) -> None:
    key = KEYS["run0"]
    config = config_for(upstream, own_redis.url, "t:", failure)
    (tmp_path / "state").mkdir()
    with running_gateway(config, tmp_path / "state", UPSTREAM_KEY) as gateway:
        assert statuses([gateway], key, 5) == [200] * 5
        own_redis.stop()
        started = time.monotonic()
        answers = statuses([gateway], key, 20)
        assert time.monotonic() - started < 5  # bounded by the timeout, and tried once a second
        if failure == "closed":
            assert set(answers) == {503}
        else:  # this replica's own limit from memory: 50 a minute, none used yet here
            assert set(answers) == {200}
        assert 500 not in answers
        own_redis.start()
        deadline = time.monotonic() + 5
        while statuses([gateway], key, 1) != [200] or (
            failure == "open" and time.monotonic() < started + 1.5
        ):
            assert time.monotonic() < deadline, "limits did not come back with Redis"
            time.sleep(0.1)
        # back on Redis: the new server knows nothing of earlier requests, so 50 fit again
        assert statuses([gateway], key, 60).count(200) <= 50
        logs = gateway.logs
    assert logs.count("ERROR bastion.limits") == 1, logs


# Concurrency slots through a Redis blip, a long stream and a replica killed mid-stream

STREAM = b'{"model": "test-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture
def redis_proxy() -> Iterator[RedisProxy]:
    """The shared Redis behind a proxy that can make it unreachable for a while."""
    proxy = RedisProxy().start()
    yield proxy
    proxy.stop()


def concurrency_config(upstream: FakeUpstream, redis_url: str, prefix: str) -> dict[str, object]:
    config = config_for(upstream, redis_url, prefix)
    limits = config["limits"]
    assert isinstance(limits, dict)
    limits["redis"]["lease_seconds"] = 1.0  # renewed every third of a second
    limits["users"] = {"run0": {"concurrency": 1}}
    return config


def open_stream(gateway: GatewayProcess) -> socket.socket:
    """A streamed request of ``run0`` whose first event has arrived (the upstream holds the
    rest until its ``hold_after_first`` is set)."""
    sock = socket.create_connection(gateway.host_port, timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        + f"Authorization: Bearer {KEYS['run0']}\r\nContent-Length: {len(STREAM)}\r\n".encode()
        + b"Content-Type: application/json\r\n\r\n"
        + STREAM
    )
    received = b""
    while b"tok0" not in received:
        received += sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200")
    return sock


def read_to_end(sock: socket.socket) -> None:
    with sock:
        while sock.recv(65536):
            pass


def status_within(gateway: GatewayProcess, wanted: int, seconds: float) -> float:
    """Ask until ``run0`` gets ``wanted``; how long that took."""
    started = time.monotonic()
    while (status := statuses([gateway], KEYS["run0"], 1)[0]) != wanted:
        assert time.monotonic() - started < seconds, f"still {status} after {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_redis_blip_during_a_release_does_not_lock_the_key_out(
    upstream: FakeUpstream, redis_proxy: RedisProxy, tmp_path: Path
) -> None:
    """Issue 13, item 3: a 2 s blip as a stream ended kept its slot taken for the lease's
    15 minutes. The release is retried: the key is usable again within seconds of Redis."""
    config = concurrency_config(upstream, redis_proxy.url, f"bt-{secrets.token_hex(4)}:")
    release = threading.Event()
    upstream.behaviour.hold_after_first = release
    with running_gateway(config, tmp_path, UPSTREAM_KEY) as gateway:
        stream = open_stream(gateway)
        assert statuses([gateway], KEYS["run0"], 1) == [429]  # its one slot is taken
        redis_proxy.drop()
        blip = time.monotonic()
        release.set()
        read_to_end(stream)  # the stream ends while Redis is away: its release fails
        gateway.wait_for_log("concurrency slots in Redis (")
        while time.monotonic() - blip < 2.0:  # a 2-second blip
            time.sleep(0.05)
        redis_proxy.restore()
        assert status_within(gateway, 200, 5.0) < 5.0


def test_a_stream_longer_than_the_lease_keeps_its_slot_and_a_killed_replicas_lapses(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    prefix = f"bt-{secrets.token_hex(4)}:"
    config = concurrency_config(upstream, "redis://127.0.0.1:6379/0", prefix)
    upstream.behaviour.hold_after_first = threading.Event()  # streams run until told
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_gateway(config, tmp_path / "a", UPSTREAM_KEY) as first:
        stream = open_stream(first)
        started = time.monotonic()
        while time.monotonic() - started < 3.0:  # three leases long: renewed, still counts
            assert statuses([first], KEYS["run0"], 1) == [429]
            time.sleep(0.2)
        with running_gateway(config, tmp_path / "b", UPSTREAM_KEY) as second:
            assert statuses([second], KEYS["run0"], 1) == [429]  # shared through Redis
            first.proc.kill()  # dies with the stream running: nobody renews or releases
            first.proc.wait(5)
            stream.close()
            assert status_within(second, 200, 3.0) < 3.0  # the lease lapsed (1 s), not 900 s
