"""The lean Redis client (RESP2 over hiredis) against the shared Redis (127.0.0.1:6379), each test
under a key prefix of its own that it deletes afterwards, and against redis-servers of the test's
own where it needs a password, a restart, a hang or a count of the commands Redis ran."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis

from bastion.errors import ConfigError
from bastion.limits.resp import (
    RedisAddress,
    RedisConnectionError,
    RedisReplyError,
    RespClient,
    Script,
    encode,
)
from tests.unit.limits.test_fallback import RedisServer

URL = "redis://127.0.0.1:6379/0"
DB = 3  # the database the SELECT test writes into
PASSWORD = "secret"


class LockedRedisServer(RedisServer):
    """A throwaway redis-server that asks for a password."""

    extra_args = ("--requirepass", PASSWORD)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=PASSWORD, socket_timeout=1)


def stop(started: RedisServer) -> None:
    if started.proc is not None:
        started.resume()
    started.kill()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path)
    started.start()
    yield started
    stop(started)


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[LockedRedisServer]:
    started = LockedRedisServer(tmp_path)
    started.start()
    yield started
    stop(started)


@pytest.fixture
def server_client(server: RedisServer) -> Iterator[redis.Redis]:
    """redis-py on the test's own server, connected before the test may pause it."""
    client = server.client()
    client.ping()
    yield client
    client.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh key prefix; its keys are deleted from the shared Redis (db 0 and db 3) after."""
    made = f"test:bastion:resp:{uuid.uuid4().hex}:"
    yield made
    for db in (0, DB):
        with redis.Redis(db=db) as client:
            keys = list(client.scan_iter(match=made + "*", count=1000))
            if keys:
                client.delete(*keys)


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., RespClient]]:
    """RespClients, all closed after the test."""
    made: list[RespClient] = []

    def make(url: str = URL, **kwargs: Any) -> RespClient:
        made.append(RespClient(url, **kwargs))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


def commandstat(client: redis.Redis, command: str) -> dict[str, int]:
    """``INFO commandstats`` for one command (``script|load``, ``evalsha``); zeros if never run."""
    stats: dict[str, Any] = client.info("commandstats")
    found: dict[str, int] = stats.get(f"cmdstat_{command}", {"calls": 0, "failed_calls": 0})
    return found


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- RedisAddress.from_url ------------------------------------------------------------------


def test_address_defaults() -> None:
    assert RedisAddress.from_url("redis://cache.internal") == RedisAddress(
        host="cache.internal", port=6379, db=0, username=None, password=None, tls=False
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/5", RedisAddress("127.0.0.1", 6380, db=5)),
        ("redis://h/", RedisAddress("h", 6379)),
        ("redis://h:1/0", RedisAddress("h", 1)),
        ("redis://:secret@h/2", RedisAddress("h", 6379, db=2, password="secret")),
        (
            "redis://us%40er:p%40ss%3Aw%2Frd@h:7000/1",
            RedisAddress("h", 7000, db=1, username="us@er", password="p@ss:w/rd"),
        ),
        ("redis://user:@h", RedisAddress("h", 6379, username="user", password="")),
        ("rediss://:pw@tls.host", RedisAddress("tls.host", 6379, password="pw", tls=True)),
        ("redis://[::1]:6390/4", RedisAddress("::1", 6390, db=4)),
    ],
)  # fmt: skip
def test_address_from_url(url: str, expected: RedisAddress) -> None:
    assert RedisAddress.from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0",
        "unix:///tmp/redis.sock",
        "127.0.0.1:6379",
        "redis:///0",
        "redis://h/abc",
        "redis://h/-1",
        "redis://h/0/1",
        "redis://h:abc/0",
        "redis://h:99999/0",
        "redis://h/\N{SUPERSCRIPT TWO}",
    ],
)
def test_address_from_an_invalid_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        RedisAddress.from_url(url)
    assert raised.value.key == "limits.redis.url"


# --- encode, Script -------------------------------------------------------------------------


def test_encode_writes_an_array_of_bulk_strings() -> None:
    assert encode(("SET", "key", "value")) == b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"
    assert encode(("INCRBY", "k", -12)) == b"*3\r\n$6\r\nINCRBY\r\n$1\r\nk\r\n$3\r\n-12\r\n"
    assert encode(("PING",)) == b"*1\r\n$4\r\nPING\r\n"
    # Lengths count bytes, and a bulk string carries anything: CR LF, NUL, non-UTF-8, nothing
    assert encode(("ECHO", "é")) == b"*2\r\n$4\r\nECHO\r\n$2\r\n\xc3\xa9\r\n"
    assert encode((b"\x00\xff\r\n", "")) == b"*2\r\n$4\r\n\x00\xff\r\n\r\n$0\r\n\r\n"


def test_encode_is_read_back_as_the_same_arguments() -> None:
    args: tuple[str | int | bytes, ...] = ("EVALSHA", "ab" * 20, 2, "k:1", b"\r\n*3\r\n", 0, "ü")
    reader = hiredis.Reader()
    reader.feed(encode(args))
    assert reader.gets() == [
        b"EVALSHA",
        b"ab" * 20,
        b"2",
        b"k:1",
        b"\r\n*3\r\n",
        b"0",
        "ü".encode(),
    ]
    assert reader.gets() is False  # nothing more


def test_script_sha_is_the_sha1_of_its_text() -> None:
    assert Script("return 1").sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"


# --- execute and pipeline on the shared Redis -----------------------------------------------


async def test_execute_round_trips(make_client: Callable[..., RespClient], prefix: str) -> None:
    client = make_client()
    key, counter, fields = prefix + "key", prefix + "counter", prefix + "hash"
    assert await client.execute("SET", key, "value") == b"OK"
    assert await client.execute("GET", key) == b"value"
    assert await client.execute("GET", prefix + "missing") is None
    assert await client.execute("INCR", counter) == 1
    assert await client.execute("INCRBY", counter, 41) == 42
    assert await client.execute("HSET", fields, "a", "1", "b", 2) == 2
    flat = await client.execute("HGETALL", fields)
    assert dict(zip(flat[::2], flat[1::2], strict=True)) == {b"a": b"1", b"b": b"2"}
    assert await client.execute("HGETALL", prefix + "missing") == []
    binary = b"\x00\xff\r\n$-1\r\n"
    await client.execute("SET", key, binary)
    assert await client.execute("GET", key) == binary
    assert await client.execute("STRLEN", key) == len(binary)


async def test_error_reply_raises_and_the_connection_goes_on(
    make_client: Callable[..., RespClient], prefix: str
) -> None:
    client = make_client()
    key = prefix + "text"
    await client.execute("SET", key, "not a number")
    before = await client.execute("CLIENT", "ID")
    with pytest.raises(RedisReplyError, match=r"^ERR value is not an integer or out of range$"):
        await client.execute("INCR", key)
    with pytest.raises(RedisReplyError, match=r"^WRONGTYPE Operation against a key holding"):
        await client.execute("HGETALL", key)
    with pytest.raises(RedisReplyError, match=r"^ERR unknown command 'NOSUCHCOMMAND'"):
        await client.execute("NOSUCHCOMMAND", key)
    with pytest.raises(RedisReplyError) as raised:
        await client.execute("GET")
    assert not isinstance(raised.value, OSError)  # a reply, not a broken connection
    # The same connection answers the next calls, in order
    assert await client.execute("GET", key) == b"not a number"
    assert await client.execute("CLIENT", "ID") == before


async def test_concurrent_calls_each_get_their_own_reply(
    make_client: Callable[..., RespClient], prefix: str
) -> None:
    client = make_client()  # not yet connected: all 1000 calls wait for the one connection
    echoes = [client.execute("ECHO", f"caller-{i}") for i in range(500)]
    counters = [client.execute("INCRBY", f"{prefix}n:{i}", i) for i in range(500)]
    replies = await asyncio.gather(*echoes, *counters)
    assert replies[:500] == [f"caller-{i}".encode() for i in range(500)]
    assert replies[500:] == list(range(500))
    # ... and more, from separate tasks, on the connection now open
    tasks = [
        asyncio.create_task(client.execute("INCRBY", f"{prefix}n:{i}", 1000)) for i in range(500)
    ]
    assert [await task for task in tasks] == [i + 1000 for i in range(500)]


async def test_concurrent_first_calls_share_one_connection(
    server: RedisServer, server_client: redis.Redis, make_client: Callable[..., RespClient]
) -> None:
    before = server_client.info("stats")["total_connections_received"]
    client = make_client(server.url)
    assert await asyncio.gather(*(client.execute("PING") for _ in range(200))) == [b"PONG"] * 200
    assert server_client.info("stats")["total_connections_received"] == before + 1


async def test_pipeline_returns_replies_in_order_with_errors_as_values(
    make_client: Callable[..., RespClient], prefix: str
) -> None:
    client = make_client()
    key = prefix + "p"
    replies = await client.pipeline(
        [("SET", key, 1), ("HGET", key, "field"), ("INCR", key), ("NOSUCH",), ("GET", key)]
    )
    assert replies[0] == b"OK"
    assert isinstance(replies[1], RedisReplyError)
    assert str(replies[1]).startswith("WRONGTYPE")
    assert replies[2] == 2
    assert isinstance(replies[3], RedisReplyError)
    assert str(replies[3]).startswith("ERR unknown command")
    assert replies[4] == b"2"
    assert await client.pipeline([]) == []
    assert await client.execute("GET", key) == b"2"


async def test_pipelines_and_calls_interleave_without_mixing_replies(
    make_client: Callable[..., RespClient],
) -> None:
    client = make_client()
    batches: list[list[tuple[str | int | bytes, ...]]] = [
        [("ECHO", f"{b}:{i}") for i in range(20)] for b in range(20)
    ]
    results = await asyncio.gather(
        *(client.pipeline(batch) for batch in batches),
        *(client.execute("ECHO", f"single:{i}") for i in range(20)),
    )
    for b, result in enumerate(results[:20]):
        assert result == [f"{b}:{i}".encode() for i in range(20)]
    assert results[20:] == [f"single:{i}".encode() for i in range(20)]


async def test_database_from_the_url_is_selected(
    make_client: Callable[..., RespClient], prefix: str
) -> None:
    client = make_client(f"redis://127.0.0.1:6379/{DB}")
    key = prefix + "in-db-3"
    assert await client.execute("SET", key, "three") == b"OK"
    with redis.Redis(db=DB) as db3, redis.Redis(db=0) as db0:
        assert db3.get(key) == b"three"
        assert db0.get(key) is None


async def test_database_out_of_range_is_refused_on_connect(
    make_client: Callable[..., RespClient],
) -> None:
    client = make_client("redis://127.0.0.1:6379/99")
    with pytest.raises(RedisConnectionError, match="Redis refused the connection: ERR DB index"):
        await client.execute("PING")


# --- cancellation and reset, on a server of the test's own ----------------------------------


async def test_a_cancelled_call_does_not_shift_the_replies_of_later_ones(
    server: RedisServer, make_client: Callable[..., RespClient]
) -> None:
    client = make_client(server.url)
    connection = await client.execute("CLIENT", "ID")
    server.pause()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.execute("ECHO", "given up"), 0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.pipeline([("ECHO", "x"), ("ECHO", "y")]), 0.05)
        waiting = [asyncio.create_task(client.execute("ECHO", f"later-{i}")) for i in range(20)]
        await asyncio.sleep(0.02)
        assert not any(task.done() for task in waiting)
    finally:
        server.resume()
    assert [await task for task in waiting] == [f"later-{i}".encode() for i in range(20)]
    assert await client.execute("ECHO", "after") == b"after"
    assert await client.pipeline([("ECHO", "p1"), ("ECHO", "p2")]) == [b"p1", b"p2"]
    assert await client.execute("CLIENT", "ID") == connection  # no reconnection was needed


async def test_reset_fails_calls_in_flight_and_the_next_call_reconnects(
    server: RedisServer, make_client: Callable[..., RespClient]
) -> None:
    client = make_client(server.url)
    connection = await client.execute("CLIENT", "ID")
    server.pause()
    try:
        in_flight = asyncio.create_task(client.execute("ECHO", "in flight"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.execute("ECHO", "timed out"), 0.05)
        client.reset()
        with pytest.raises(RedisConnectionError, match="reset"):
            await in_flight
    finally:
        server.resume()
    assert await client.execute("ECHO", "fresh") == b"fresh"
    assert await client.execute("CLIENT", "ID") != connection


# --- scripts --------------------------------------------------------------------------------


ECHO_LUA = Script("return {KEYS[1], ARGV[1]}")


async def test_evalsha_loads_the_script_once_and_again_after_script_flush(
    server: RedisServer, server_client: redis.Redis, make_client: Callable[..., RespClient]
) -> None:
    client = make_client(server.url)
    assert await client.evalsha(ECHO_LUA, ["k"], ["first"]) == [b"k", b"first"]
    assert server_client.script_exists(ECHO_LUA.sha) == [True]  # Redis names it by the same SHA
    assert await client.evalsha(ECHO_LUA, ["k"], [2]) == [b"k", b"2"]
    assert commandstat(server_client, "script|load")["calls"] == 1
    evalsha = commandstat(server_client, "evalsha")
    assert (evalsha["calls"], evalsha["failed_calls"]) == (3, 1)  # one NOSCRIPT, then by SHA

    server_client.script_flush()
    assert await client.evalsha(ECHO_LUA, ["k"], ["again"]) == [b"k", b"again"]
    assert commandstat(server_client, "script|load")["calls"] == 2
    assert server_client.script_exists(ECHO_LUA.sha) == [True]


async def test_evalsha_raises_a_script_error_without_loading_again(
    server: RedisServer, server_client: redis.Redis, make_client: Callable[..., RespClient]
) -> None:
    client = make_client(server.url)
    failing = Script("return redis.error_reply('LIMIT broken by ' .. ARGV[1])")
    for _ in range(3):
        with pytest.raises(RedisReplyError, match=r"^LIMIT broken by test$"):
            await client.evalsha(failing, [], ["test"])
    assert commandstat(server_client, "script|load")["calls"] == 1
    assert await client.execute("PING") == b"PONG"


async def test_scripts_are_loaded_when_the_client_connects(
    server: RedisServer, server_client: redis.Redis, make_client: Callable[..., RespClient]
) -> None:
    other = Script("return 2")
    client = make_client(server.url, scripts=(ECHO_LUA, other))
    assert await client.execute("SCRIPT", "EXISTS", ECHO_LUA.sha, other.sha) == [1, 1]
    assert await client.evalsha(ECHO_LUA, ["k"], ["v"]) == [b"k", b"v"]
    assert await client.evalsha(other, [], []) == 2
    assert commandstat(server_client, "script|load")["calls"] == 2  # on connect, not on use
    assert commandstat(server_client, "evalsha")["failed_calls"] == 0  # no NOSCRIPT


async def test_concurrent_noscript_callers_load_the_script_once(
    server: RedisServer,
    server_client: redis.Redis,
    make_client: Callable[..., RespClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client(server.url, scripts=(ECHO_LUA,))
    assert await client.execute("SCRIPT", "EXISTS", ECHO_LUA.sha) == [1]
    server_client.script_flush()
    server_client.config_resetstat()
    loads: list[Script] = []
    load = RespClient.load

    async def spy(self: RespClient, script: Script) -> None:
        loads.append(script)
        await load(self, script)

    monkeypatch.setattr(RespClient, "load", spy)
    replies = await asyncio.gather(*(client.evalsha(ECHO_LUA, [f"k{i}"], [i]) for i in range(300)))
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(300)]
    assert commandstat(server_client, "script|load")["calls"] == 1
    evalsha = commandstat(server_client, "evalsha")
    assert (evalsha["calls"], evalsha["failed_calls"]) == (600, 300)  # each NOSCRIPT, retried
    assert len(loads) == 300  # every caller asked; one SCRIPT LOAD went to Redis


# --- failures: a dead, restarted, closed, locked or hung server -----------------------------


async def test_a_killed_server_fails_calls_in_flight_and_a_restarted_one_is_reconnected(
    server: RedisServer, server_client: redis.Redis, make_client: Callable[..., RespClient]
) -> None:
    client = make_client(server.url, scripts=(ECHO_LUA,))
    assert await client.execute("PING") == b"PONG"
    blocked = asyncio.create_task(client.execute("BLPOP", "never", 0))
    behind = [asyncio.create_task(client.execute("ECHO", f"behind-{i}")) for i in range(5)]
    assert await asyncio.to_thread(
        wait_until, lambda: server_client.info("clients")["blocked_clients"] == 1
    )
    server.kill()
    for task in (blocked, *behind):
        with pytest.raises(RedisConnectionError, match="connection to Redis lost") as raised:
            await task
        assert isinstance(raised.value, ConnectionError)
        assert isinstance(raised.value, OSError)

    server.start()
    assert await client.execute("ECHO", "back") == b"back"
    # The new connection loaded the scripts again (a restart forgets them)
    assert await client.execute("SCRIPT", "EXISTS", ECHO_LUA.sha) == [1]
    assert await client.evalsha(ECHO_LUA, ["k"], ["v"]) == [b"k", b"v"]


async def test_an_idle_connection_to_a_restarted_server_fails_at_most_one_call(
    server: RedisServer, make_client: Callable[..., RespClient]
) -> None:
    client = make_client(server.url)
    assert await client.execute("PING") == b"PONG"
    server.kill()
    server.start()
    # The dead connection is found out by the first call written on it, at worst
    with contextlib.suppress(RedisConnectionError):
        assert await client.execute("ECHO", "first") == b"first"
    assert await client.execute("ECHO", "second") == b"second"


async def test_connection_refused_raises_oserror_at_once(
    make_client: Callable[..., RespClient],
) -> None:
    client = make_client(f"redis://127.0.0.1:{free_port()}/0")
    for _ in range(2):  # a failed attempt is not kept: the second call tries again
        start = time.monotonic()
        with pytest.raises(OSError):  # noqa: PT011 - ConnectionRefusedError, errno aside
            await client.execute("PING")
        assert time.monotonic() - start < 0.5


async def test_password_from_the_url_logs_in(
    locked_server: LockedRedisServer, make_client: Callable[..., RespClient]
) -> None:
    port = locked_server.port
    client = make_client(f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    assert await client.execute("PING") == b"PONG"
    assert await client.execute("ACL", "WHOAMI") == b"default"
    with locked_server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "us@er", "on", ">p@ss:w/rd", "~*", "+@all")
    user = make_client(f"redis://us%40er:p%40ss%3Aw%2Frd@127.0.0.1:{port}/2")
    assert await user.execute("ACL", "WHOAMI") == b"us@er"
    assert await user.execute("SET", "k", "in db 2") == b"OK"
    with redis.Redis(port=port, password=PASSWORD, db=2) as db2:
        assert db2.get("k") == b"in db 2"


async def test_wrong_password_is_a_connection_error(
    locked_server: LockedRedisServer, make_client: Callable[..., RespClient]
) -> None:
    client = make_client(f"redis://:wrong@127.0.0.1:{locked_server.port}/0")
    for _ in range(2):
        with pytest.raises(RedisConnectionError, match="Redis refused the connection: WRONGPASS"):
            await client.execute("PING")


@pytest.mark.parametrize(
    ("path", "scripts"),
    [("/1", ()), ("/0", (ECHO_LUA,))],
    ids=["select", "scripts"],
)
async def test_connect_timeout_bounds_a_hung_server(
    server: RedisServer, make_client: Callable[..., RespClient], path: str, scripts: tuple[Script]
) -> None:
    url = server.url.removesuffix("/0") + path
    client = make_client(url, connect_timeout=0.2, scripts=scripts)
    server.pause()
    try:
        for _ in range(2):  # each call makes an attempt of its own, bounded again
            start = time.monotonic()
            with pytest.raises((TimeoutError, OSError)):
                await client.execute("PING")
            assert 0.15 < time.monotonic() - start < 0.5
    finally:
        server.resume()
    async with asyncio.timeout(1):  # a fresh attempt, not the failed one
        assert await client.execute("PING") == b"PONG"


async def test_connect_timeout_bounds_a_hung_server_without_setup(
    server: RedisServer, make_client: Callable[..., RespClient]
) -> None:
    client = make_client(server.url, connect_timeout=0.2)
    server.pause()
    try:
        start = time.monotonic()
        with pytest.raises((TimeoutError, OSError)):
            await asyncio.wait_for(client.execute("PING"), 1.0)
        assert time.monotonic() - start < 0.5
    finally:
        server.resume()


async def test_aclose_during_a_connection_attempt_leaves_no_connection(
    server: RedisServer, server_client: redis.Redis, make_client: Callable[..., RespClient]
) -> None:
    client = make_client(server.url, connect_timeout=1.0, scripts=(ECHO_LUA,))
    server.pause()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.execute("PING"), 0.05)
        await client.aclose()
    finally:
        server.resume()
    # Only redis-py's own connection may remain: the closed client's attempt must not go on
    assert await asyncio.to_thread(
        wait_until, lambda: server_client.info("clients")["connected_clients"] == 1, 1.0
    )


async def test_an_unreadable_reply_fails_the_connection_and_the_next_call_reconnects(
    make_client: Callable[..., RespClient],
) -> None:
    """A fake Redis that answers PING and ECHO, but garbage to ``ECHO garbage`` and one reply
    too many to ``ECHO stray``."""
    handlers: list[asyncio.Task[Any]] = []

    def reply(command: list[bytes]) -> bytes:
        if command == [b"ECHO", b"garbage"]:
            return b"@garbage\r\n"  # no such reply type
        if command == [b"ECHO", b"stray"]:
            return b"$5\r\nstray\r\n+UNASKED\r\n"
        if command[0] == b"ECHO":
            return b"$%d\r\n%b\r\n" % (len(command[1]), command[1])
        return b"+PONG\r\n"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        commands = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                commands.feed(data)
                while (command := commands.gets()) is not False:
                    writer.write(reply(command))
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    fake = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with fake:
        port = fake.sockets[0].getsockname()[1]
        client = make_client(f"redis://127.0.0.1:{port}/0")
        assert await client.execute("PING") == b"PONG"
        garbage = asyncio.create_task(client.execute("ECHO", "garbage"))
        behind = asyncio.create_task(client.execute("ECHO", "behind"))
        for call in (garbage, behind):  # every call on the connection fails with it
            with pytest.raises(RedisConnectionError, match="invalid reply from Redis"):
                await call
        # A new connection; its stray reply drops it, after the call's own reply was delivered
        assert await client.execute("ECHO", "stray") == b"stray"
        assert await client.execute("ECHO", "third") == b"third"
        assert len(handlers) == 3
        await client.aclose()
        await asyncio.gather(*handlers)
