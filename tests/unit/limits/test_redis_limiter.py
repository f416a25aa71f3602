"""The Redis limiter against the shared Redis (127.0.0.1:6379), each test under a prefix of
its own that it deletes afterwards."""

from __future__ import annotations

import asyncio
import calendar
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis

from bastion.auth.identity import Identity
from bastion.errors import BadRequestError, GatewayError, QuotaExceededError, RateLimitError
from bastion.limits.limiter import Grant, MemoryLimiter, _period_left, periods, rate_headers
from bastion.limits.plan import Bucket, Limit, Planner
from bastion.limits.redis import LimiterBackendError, RedisGrant, RedisLimiter
from bastion.limits.scripts import _CALENDAR_LUA
from bastion.settings import LimitSettings, LimitsSettings, PriceSettings, RedisSettings, Secret
from tests.support.redis_proxy import RedisProxy

URL = "redis://127.0.0.1:6379/0"


def bucket(key: str, **limits: Any) -> Bucket:
    return Bucket(key, Limit.of(LimitSettings(**limits)))


def headers(exc: GatewayError) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in exc.headers}


@pytest.fixture
def sync_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(URL)
    yield client
    client.close()


@pytest.fixture
def new_prefix(sync_redis: redis.Redis) -> Iterator[Callable[[], str]]:
    """Fresh key prefixes; every key under them is deleted after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(f"test:bastion:{uuid.uuid4().hex}:")
        return made[-1]

    yield make
    for prefix in made:
        keys = list(sync_redis.scan_iter(match=prefix + "*", count=1000))
        if keys:
            sync_redis.delete(*keys)


@pytest.fixture
async def make_limiter(
    new_prefix: Callable[[], str],
) -> AsyncIterator[Callable[..., RedisLimiter]]:
    made: list[RedisLimiter] = []

    def make(prefix: str | None = None, **settings: Any) -> RedisLimiter:
        settings = {"url": URL, "timeout": 1.0, **settings}
        made.append(RedisLimiter(RedisSettings(key_prefix=prefix or new_prefix(), **settings)))
        return made[-1]

    yield make
    for limiter in made:
        await limiter.aclose()


@pytest.fixture
def limiter(make_limiter: Callable[..., RedisLimiter]) -> RedisLimiter:
    return make_limiter()


async def test_burst_then_steady_rate(limiter: RedisLimiter) -> None:
    b = bucket("user:burst", requests_per_minute=600, burst=5)  # one per 0.1 s, 5 at once
    start = time.monotonic()
    grants = [await limiter.acquire((b,), 10, 10) for _ in range(5)]
    assert [g.info.remaining_requests for g in grants] == [4, 3, 2, 1, 0]
    for k, grant in enumerate(grants, 1):
        assert grant.info.limit_requests == 600
        assert grant.info.reset_requests is not None
        # GCRA: the k-th request moves the TAT k intervals past the first one
        assert k * 0.1 - (time.monotonic() - start) - 0.01 <= grant.info.reset_requests
        assert grant.info.reset_requests <= k * 0.1 + 0.001
    with pytest.raises(RateLimitError) as refused:
        await limiter.acquire((b,), 10, 10)
    wait_ms = int(headers(refused.value)["retry-after-ms"])
    assert 0 < wait_ms <= 100
    assert headers(refused.value)["x-ratelimit-remaining-requests"] == "0"
    # Steady rate: one more every 0.1 s, never two
    for _ in range(2):
        await asyncio.sleep(0.105)
        grant = await limiter.acquire((b,), 10, 10)
        assert grant.info.remaining_requests == 0
        with pytest.raises(RateLimitError):
            await limiter.acquire((b,), 10, 10)


@pytest.mark.parametrize("rpm", [3, 7, 13, 29, 61])
async def test_float_rounding_never_refuses_within_the_burst(
    limiter: RedisLimiter, rpm: int
) -> None:
    b = bucket(f"user:round{rpm}", requests_per_minute=rpm)
    for left in range(rpm - 1, -1, -1):
        assert (await limiter.acquire((b,), 0, 0)).info.remaining_requests == left
    with pytest.raises(RateLimitError):
        await limiter.acquire((b,), 0, 0)


async def test_tokens_reserved_then_reconciled(limiter: RedisLimiter) -> None:
    b = bucket("user:tpm", tokens_per_minute=1000)
    grant = await limiter.acquire((b,), 400, 600)
    assert grant.reserved == (1000,)
    assert grant.info.limit_tokens == 1000
    assert grant.info.remaining_tokens == 0
    with pytest.raises(RateLimitError) as refused:
        await limiter.acquire((b,), 1, 0)
    assert 0 < int(headers(refused.value)["retry-after-ms"]) <= 60  # one token: 60 ms
    limiter.finish(grant, 60, 40)  # used 100 of the 1000 reserved
    await limiter.flush()
    again = await limiter.acquire((b,), 800, 90)
    assert again.info.remaining_tokens is not None
    assert 10 <= again.info.remaining_tokens <= 20  # 900 back, and a little refilled
    with pytest.raises(RateLimitError):
        await limiter.acquire((b,), 30, 0)
    # Finishing twice reconciles once
    state = await limiter.state("user:tpm")
    limiter.finish(grant, 60, 40)
    await limiter.flush()
    assert await limiter.state("user:tpm") == state
    # Using more than reserved moves the TAT on
    before = float((await limiter.state("user:tpm"))["t"])
    limiter.finish(again, 890, 100)  # 100 more than reserved: 6 s at 1000/min
    await limiter.flush()
    after = float((await limiter.state("user:tpm"))["t"])
    assert after - before == pytest.approx(6e6, abs=1)


async def test_a_request_larger_than_a_limit_is_a_400(
    limiter: RedisLimiter, sync_redis: redis.Redis
) -> None:
    for b in (
        bucket("user:big", tokens_per_minute=1000),
        bucket("user:big", tokens_per_day=1000),
        bucket("user:big", tokens_per_month=1000),
    ):
        with pytest.raises(BadRequestError) as refused:
            await limiter.acquire((bucket("user:other", requests_per_minute=10), b), 900, 200)
        assert refused.value.status == 400
        assert refused.value.code == "tokens_exceed_limit"
        assert refused.value.param == "max_tokens"
        assert type(refused.value) is BadRequestError
    assert list(sync_redis.scan_iter(match=limiter._prefix + "*")) == []  # nothing taken


async def test_concurrency(limiter: RedisLimiter) -> None:
    b = bucket("user:conc", concurrency=2)
    first = await limiter.acquire((b,), 1, 1)
    second = await limiter.acquire((b,), 1, 1)
    with pytest.raises(RateLimitError) as refused:
        await limiter.acquire((b,), 1, 1)
    assert headers(refused.value)["retry-after"] == "1"
    assert await limiter.in_flight("user:conc") == 2

    # finish() returns at once, and the slot is free well under 100 ms later
    start = time.monotonic()
    limiter.finish(first, 1, 1)
    assert time.monotonic() - start < 0.005
    while True:
        try:
            third = await limiter.acquire((b,), 1, 1)
            break
        except RateLimitError:
            assert time.monotonic() - start < 0.1
            await asyncio.sleep(0.002)
    assert time.monotonic() - start < 0.1

    # Finishing twice releases once
    limiter.finish(first, 1, 1)
    await limiter.flush()
    assert await limiter.in_flight("user:conc") == 2
    with pytest.raises(RateLimitError):
        await limiter.acquire((b,), 1, 1)
    # ... even if the release itself reached Redis twice (a retry after a lost reply)
    first.finished = False
    limiter.finish(first, 1, 1)
    await limiter.flush()
    assert await limiter.in_flight("user:conc") == 2

    limiter.finish(second, 1, 1)
    limiter.finish(third, 1, 1)
    await limiter.flush()
    assert await limiter.in_flight("user:conc") == 0


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll until ``condition`` holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


@pytest.fixture
def proxy() -> Iterator[RedisProxy]:
    """The shared Redis behind a proxy that can make it unreachable for a while."""
    started = RedisProxy().start()
    yield started
    started.stop()


async def test_a_release_lost_in_a_blip_is_given_back_when_redis_returns(
    make_limiter: Callable[..., RedisLimiter],
    proxy: RedisProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 13, item 3: a 2 s blip during a release locked the key out until its lease
    lapsed. The release is now tried again until Redis answers."""
    limiter = make_limiter(url=proxy.url, timeout=0.2)
    b = bucket("user:blip", concurrency=1)
    grant = await limiter.acquire((b,), 1, 1)
    proxy.drop()
    limiter.finish(grant, 1, 1)
    # It used to give up after 3 tries, 0.25 s apart; the blip lasts longer than that
    await eventually(lambda: limiter.finish_failures >= 4)
    proxy.restore()
    back = time.monotonic()
    while True:
        try:
            again = await limiter.acquire((b,), 1, 1)
            break
        except (RateLimitError, LimiterBackendError):
            assert time.monotonic() - back < 3.0, "the key stayed locked after Redis returned"
            await asyncio.sleep(0.05)
    assert isinstance(again, RedisGrant)
    assert await limiter.in_flight("user:blip") == 1  # the new one: the old slot was freed once
    assert limiter.finish_dropped == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "bastion.limits"]
    assert len(warnings) == 2  # once when it failed, once when it answered again
    assert "lapses within 30 s" in warnings[0]


async def test_a_retried_release_only_releases(
    make_limiter: Callable[..., RedisLimiter], proxy: RedisProxy
) -> None:
    """After a failed finish, the retry gives back the slot but not the tokens (the first
    try may have been applied: its reply was lost); a finish with no slot is not retried."""
    limiter = make_limiter(url=proxy.url, timeout=0.2)
    b = bucket("user:retried", concurrency=1, tokens_per_minute=1000)
    grant = await limiter.acquire((b,), 500, 500)
    tokens_only = await limiter.acquire((bucket("user:tok", tokens_per_minute=1000),), 5, 5)
    before = await limiter.state("user:retried")
    proxy.drop()
    limiter.finish(grant, 50, 50)  # would give back 900 tokens
    limiter.finish(tokens_only, 1, 1)
    await eventually(lambda: limiter.finish_failures >= 1)
    proxy.restore()
    await eventually(lambda: not limiter._pending)
    await limiter.flush()
    assert await limiter.in_flight("user:retried") == 0
    assert await limiter.state("user:retried") == before
    assert limiter.finish_dropped == 1  # the tokens-only finish


async def test_a_lease_lapses_when_its_replica_never_finishes(
    make_limiter: Callable[..., RedisLimiter], new_prefix: Callable[[], str]
) -> None:
    prefix = new_prefix()
    crashed = make_limiter(prefix, lease_seconds=0.75, timeout=0.2)
    running = make_limiter(prefix, lease_seconds=0.75, timeout=0.2)
    b = bucket("user:lapse", concurrency=2)
    await crashed.acquire((b,), 1, 1)
    lapses = time.monotonic() + 0.75
    await crashed.aclose()  # its replica "crashed": nobody renews or gives back its lease
    held = [await running.acquire((b,), 1, 1)]  # still running (renewed by its replica)
    with pytest.raises(RateLimitError):
        await running.acquire((b,), 1, 1)
    while time.monotonic() < lapses:
        await asyncio.sleep(0.05)
    held.append(await running.acquire((b,), 1, 1))  # the crashed one's lease has lapsed
    assert await running.in_flight("user:lapse") == 2
    with pytest.raises(RateLimitError):
        await running.acquire((b,), 1, 1)


async def test_a_long_request_keeps_its_slot_past_the_lease(
    make_limiter: Callable[..., RedisLimiter], new_prefix: Callable[[], str]
) -> None:
    """Live leases are renewed (every third of lease_seconds), so a stream that runs longer
    than a lease still counts; another replica sees the slot taken throughout."""
    prefix = new_prefix()
    holder = make_limiter(prefix, lease_seconds=0.75, timeout=0.2)
    other = make_limiter(prefix, lease_seconds=0.75, timeout=0.2)
    b = bucket("user:long", concurrency=1)
    grant = await holder.acquire((b,), 1, 1)
    started = time.monotonic()
    while time.monotonic() - started < 3 * 0.75:
        with pytest.raises(RateLimitError):
            await other.acquire((b,), 1, 1)
        await asyncio.sleep(0.05)
    assert holder.renewals >= 6
    holder.finish(grant, 1, 1)
    await holder.flush()
    await other.acquire((b,), 1, 1)  # given back: free at once


async def test_renewals_are_one_batched_call_per_interval_and_admissions_none(
    make_limiter: Callable[..., RedisLimiter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision stays one round trip; the worker renews every live lease of the replica
    in one call (a pipeline past 256 leases) per interval, whatever their number."""
    limiter = make_limiter(lease_seconds=0.9, timeout=0.3)
    calls: dict[str, list[str]] = {"decisions": [], "worker": []}
    for client, seen in ((limiter._client, "decisions"), (limiter._releaser, "worker")):
        for name in ("evalsha", "pipeline"):  # (evalsha sends through execute)
            original = getattr(client, name)

            def spy(*args: Any, _seen: str = seen, _name: str = name, _call: Any = original) -> Any:
                calls[_seen].append(_name)
                return _call(*args)

            monkeypatch.setattr(client, name, spy)
    buckets = [bucket(f"user:many{i}", concurrency=1000) for i in range(3)]
    first = limiter.renewals
    grants = [await limiter.acquire((buckets[i % 3],), 1, 1) for i in range(600)]
    assert calls["decisions"] == ["evalsha"] * 600
    await eventually(lambda: limiter.renewals >= first + 2)
    assert len(calls["worker"]) == limiter.renewals - first
    assert calls["worker"][-1] == "pipeline"  # 600 leases: 3 script calls, one round trip
    for grant in grants:
        limiter.finish(grant, 1, 1)
    await limiter.flush()
    for b in buckets:
        assert await limiter.in_flight(b.key) == 0


async def test_a_lease_lapsed_while_redis_was_away_is_renewed_when_it_returns(
    make_limiter: Callable[..., RedisLimiter], new_prefix: Callable[[], str], proxy: RedisProxy
) -> None:
    """A request that runs through an outage longer than a lease counts again once Redis is
    back: its next renewal adds its lease back."""
    prefix = new_prefix()
    holder = make_limiter(prefix, url=proxy.url, lease_seconds=0.75, timeout=0.2)
    other = make_limiter(prefix, lease_seconds=0.75, timeout=0.2)
    b = bucket("user:outage", concurrency=1)
    running = await holder.acquire((b,), 1, 1)  # runs on, never finished in this test
    proxy.drop()
    lapsed = time.monotonic() + 0.75
    await eventually(lambda: time.monotonic() > lapsed and holder.renew_failures >= 2)
    meanwhile = await other.acquire((b,), 1, 1)  # the lapsed lease no longer counts
    proxy.restore()
    renewed = holder.renewals
    await eventually(lambda: holder.renewals > renewed)
    assert await other.in_flight("user:outage") == 2  # both requests run
    other.finish(meanwhile, 1, 1)
    await other.flush()
    with pytest.raises(RateLimitError):
        await other.acquire((b,), 1, 1)  # the one still running counts again
    assert not running.finished


async def test_a_grant_lost_without_a_finish_is_no_longer_renewed(
    make_limiter: Callable[..., RedisLimiter], new_prefix: Callable[[], str]
) -> None:
    """The gateway always finishes a grant; should a bug lose one, its slot lapses as a
    crashed replica's would, rather than being renewed for ever."""
    prefix = new_prefix()
    holder = make_limiter(prefix, lease_seconds=0.75, timeout=0.2)
    other = make_limiter(prefix, lease_seconds=0.75, timeout=0.2)
    b = bucket("user:lost-grant", concurrency=1)
    kept = await holder.acquire((b,), 1, 1)
    lost = await holder.acquire((bucket("user:lost-grant2", concurrency=1),), 1, 1)
    del lost  # garbage: nobody can finish it now
    lapses = time.monotonic() + 0.75
    while time.monotonic() < lapses + 0.1:
        await asyncio.sleep(0.05)
    assert holder.renewals >= 2
    await other.acquire((bucket("user:lost-grant2", concurrency=1),), 1, 1)  # lapsed
    with pytest.raises(RateLimitError):
        await other.acquire((b,), 1, 1)  # renewed
    assert not kept.finished


async def test_releases_are_not_retried_past_their_lease(
    make_limiter: Callable[..., RedisLimiter], proxy: RedisProxy
) -> None:
    """The retry queue is bounded by time too: once a lease would have lapsed, its release
    has nothing left to give back."""
    limiter = make_limiter(url=proxy.url, lease_seconds=0.75, timeout=0.2)
    grant = await limiter.acquire((bucket("user:gone", concurrency=1),), 1, 1)
    proxy.drop()
    limiter.finish(grant, 1, 1)
    await eventually(lambda: limiter.finish_dropped == 1 and not limiter._pending)
    assert limiter.finish_failures >= 1


async def test_in_flight_and_state_keys_expire(
    limiter: RedisLimiter, sync_redis: redis.Redis
) -> None:
    prefix = limiter._prefix
    await limiter.acquire((bucket("user:r", requests_per_minute=60, burst=2),), 1, 1)
    await limiter.acquire((bucket("user:t", tokens_per_minute=600),), 10, 0)
    await limiter.acquire((bucket("user:d", tokens_per_day=100),), 1, 1)
    await limiter.acquire((bucket("user:m", tokens_per_month=100, tokens_per_day=100),), 1, 1)
    await limiter.acquire((bucket("user:c", concurrency=1),), 1, 1)
    ttl = {k: sync_redis.pttl(prefix + k) for k in
           ("s:user:r", "s:user:t", "s:user:d", "s:user:m", "c:user:c")}  # fmt: skip
    assert 900 <= ttl["s:user:r"] <= 1000  # the TAT: 1 s ahead
    assert 900 <= ttl["s:user:t"] <= 1000  # 10 tokens at 10/s
    assert ttl["s:user:d"] == pytest.approx(2 * 86400 * 1000, abs=1000)
    assert ttl["s:user:m"] == pytest.approx(35 * 86400 * 1000, abs=1000)
    assert ttl["c:user:c"] == pytest.approx(30 * 1000, abs=1000)  # lease_seconds


async def test_day_budget(limiter: RedisLimiter) -> None:
    b = bucket("user:day", tokens_per_day=1000)
    grant = await limiter.acquire((b,), 300, 300)
    now = time.time()
    assert (grant.day, grant.month) == periods(now)
    with pytest.raises(QuotaExceededError) as refused:
        await limiter.acquire((b,), 300, 200)
    assert refused.value.code == "insufficient_quota"
    assert refused.value.status == 429
    retry_after = float(headers(refused.value)["retry-after-ms"]) / 1000
    assert retry_after == pytest.approx(_period_left(now, month=False), abs=2)
    limiter.finish(grant, 60, 40)  # 100 used of the 600 reserved
    await limiter.flush()
    assert (await limiter.state("user:day"))["dv"] == "100"
    await limiter.acquire((b,), 300, 200)
    assert (await limiter.state("user:day"))["dv"] == "600"
    with pytest.raises(QuotaExceededError):
        await limiter.acquire((b,), 300, 200)


async def test_budgets_of_past_periods_do_not_count(
    limiter: RedisLimiter, sync_redis: redis.Redis
) -> None:
    b = bucket("user:past", tokens_per_day=1000, tokens_per_month=5000)
    key = limiter._prefix + "s:user:past"
    sync_redis.hset(key, mapping={"d": "2001-01-01", "dv": 1000, "m": "2001-01", "mv": 5000})
    grant = await limiter.acquire((b,), 500, 500)
    assert await limiter.state("user:past") == {
        "d": grant.day,
        "dv": "1000",
        "m": grant.month,
        "mv": "1000",
    }
    # A grant of a period that has ended reconciles nothing of the current one
    old = Grant((b,), (1000,), "2001-01-01", "2001-01", grant.info)
    limiter.finish(old, 0, 0)
    await limiter.flush()
    assert (await limiter.state("user:past"))["dv"] == "1000"
    with pytest.raises(QuotaExceededError):
        await limiter.acquire((b,), 1, 0)


async def test_month_budget(limiter: RedisLimiter) -> None:
    b = bucket("user:month", tokens_per_month=500)
    await limiter.acquire((b,), 200, 200)
    with pytest.raises(QuotaExceededError) as refused:
        await limiter.acquire((b,), 50, 51)
    retry_after = float(headers(refused.value)["retry-after-ms"]) / 1000
    assert retry_after == pytest.approx(_period_left(time.time(), month=True), abs=2)
    await limiter.acquire((b,), 50, 50)  # exactly the budget
    assert (await limiter.state("user:month"))["mv"] == "500"


async def test_quota_wins_over_rate(limiter: RedisLimiter) -> None:
    a = bucket("user:q", requests_per_minute=1)
    b = bucket("team:q", tokens_per_day=10)
    await limiter.acquire((a, b), 5, 5)
    with pytest.raises(QuotaExceededError):
        await limiter.acquire((a, b), 5, 5)


def test_calendar_matches_python(sync_redis: redis.Redis) -> None:
    script = (
        _CALENDAR_LUA
        + """
local out = {}
for i = 1, #ARGV do
  local secs = math.floor(tonumber(ARGV[i]))
  local day, month, day_left, month_left = periods(secs, tonumber(ARGV[i]))
  out[#out + 1] = day .. ' ' .. month .. ' ' .. string.format('%.6f', day_left) .. ' '
    .. string.format('%.6f', month_left)
end
return out
"""
    )
    rng = random.Random(7)
    moments: list[float] = [0.0, 951782399.5, 951782400.25, 4107542399.0, 4107542400.0]
    for year in (1999, 2000, 2024, 2025, 2100):
        for month in range(1, 13):
            start = calendar.timegm((year, month, 1, 0, 0, 0))
            moments += [start - 0.5, start, start + 0.75]
    moments += [rng.uniform(0, 4_200_000_000) for _ in range(500)]
    found = sync_redis.eval(script, 0, *(repr(m) for m in moments))
    for moment, line in zip(moments, found, strict=True):
        day, month, day_left, month_left = line.decode().split()
        assert (day, month) == periods(moment), moment
        assert float(day_left) == pytest.approx(_period_left(moment, month=False), abs=1e-5)
        assert float(month_left) == pytest.approx(_period_left(moment, month=True), abs=1e-5)


async def test_all_or_nothing(limiter: RedisLimiter) -> None:
    a = bucket("user:a", requests_per_minute=10, tokens_per_minute=1000, tokens_per_day=5000)
    for refusing in (
        bucket("team:rpm", requests_per_minute=1),
        bucket("team:conc", concurrency=1),
        bucket("team:quota", tokens_per_day=150),
        bucket("team:tpm", tokens_per_minute=150),
    ):
        await limiter.acquire((a,), 10, 10)
        await limiter.acquire((refusing,), 50, 50)
        before = await limiter.state("user:a")
        with pytest.raises(RateLimitError):
            await limiter.acquire((a, refusing), 50, 50)
        assert await limiter.state("user:a") == before
    assert await limiter.in_flight("team:conc") == 1


async def test_tightest_bucket_gives_the_headers(limiter: RedisLimiter) -> None:
    wide = bucket("all", requests_per_minute=100, tokens_per_minute=10_000)
    narrow_requests = bucket("user:n1", requests_per_minute=10)
    narrow_tokens = bucket("team:n2", tokens_per_minute=2000)
    grant = await limiter.acquire((wide, narrow_requests, narrow_tokens), 100, 100)
    assert (grant.info.limit_requests, grant.info.remaining_requests) == (10, 9)
    assert (grant.info.limit_tokens, grant.info.remaining_tokens) == (2000, 1800)
    sent = dict(rate_headers(grant.info))
    for name in ("limit", "remaining", "reset"):
        assert f"x-ratelimit-{name}-requests".encode() in sent
        assert f"x-ratelimit-{name}-tokens".encode() in sent
    assert sent[b"x-ratelimit-reset-requests"] == b"6s"
    assert sent[b"x-ratelimit-reset-tokens"] == b"6s"
    # A tie: the first bucket's figures
    tie_a = bucket("user:tie", requests_per_minute=10)
    tie_b = bucket("team:tie", requests_per_minute=100, burst=10)
    grant = await limiter.acquire((tie_a, tie_b), 1, 1)
    assert (grant.info.limit_requests, grant.info.remaining_requests) == (10, 9)
    grant = await limiter.acquire((tie_b, tie_a), 1, 1)
    assert (grant.info.limit_requests, grant.info.remaining_requests) == (100, 8)
    with pytest.raises(RateLimitError) as refused:
        await limiter.acquire((narrow_tokens,), 1000, 1000)
    sent_now = headers(refused.value)
    assert sent_now["x-ratelimit-limit-tokens"] == "2000"
    assert sent_now["x-ratelimit-remaining-tokens"] == "0"
    assert "x-ratelimit-limit-requests" not in sent_now
    assert int(sent_now["retry-after"]) >= 1


_SCENARIOS: list[tuple[tuple[Bucket, ...], list[tuple[Any, ...]]]] = [
    (
        (
            bucket("user:m1", requests_per_minute=6, burst=3, tokens_per_minute=600,
                   tokens_per_day=2000, concurrency=3),
            bucket("team:m2", tokens_per_minute=300, count="completion", tokens_per_month=900),
            bucket("all", requests_per_minute=20, concurrency=2),
        ),
        [("acquire", 10, 20), ("acquire", 100, 100), ("finish", 1, 50, 50), ("acquire", 50, 250),
         ("acquire", 300, 0), ("finish", 2, 10, 400), ("acquire", 0, 10), ("acquire", 400, 10),
         ("acquire", 1, 1)],
    ),
    (
        (
            bucket("user:c", concurrency=1, tokens_per_day=500),
            bucket("team:c", tokens_per_month=1000, count="prompt", tokens_per_minute=400),
        ),
        [("acquire", 100, 100), ("acquire", 10, 10), ("finish", 0, 50, 50), ("acquire", 200, 100),
         ("finish", 1, 200, 100), ("finish", 1, 200, 100), ("acquire", 100, 50),
         ("acquire", 50, 50), ("finish", 2, 50, 0), ("acquire", 100, 0), ("acquire", 500, 0)],
    ),
]  # fmt: skip


@pytest.mark.parametrize("scenario", range(len(_SCENARIOS)))
async def test_decides_like_the_memory_limiter(limiter: RedisLimiter, scenario: int) -> None:
    """The same operations, at (nearly) the same instant, give the same answers."""
    buckets, steps = _SCENARIOS[scenario]
    answers: dict[str, list[object]] = {"memory": [], "redis": []}
    for name, backend in (("memory", MemoryLimiter()), ("redis", limiter)):
        grants: list[Grant] = []
        for step in steps:
            if step[0] == "finish":
                backend.finish(grants[step[1]], step[2], step[3])
                if isinstance(backend, RedisLimiter):
                    await backend.flush()
                continue
            try:
                grant = await backend.acquire(buckets, step[1], step[2])
            except GatewayError as exc:
                got = headers(exc)
                answers[name].append((type(exc).__name__, got.get("retry-after"),
                                      got.get("x-ratelimit-remaining-requests"),
                                      got.get("x-ratelimit-remaining-tokens")))  # fmt: skip
            else:
                info = grant.info
                answers[name].append(("ok", grant.reserved, info.limit_requests,
                                      info.remaining_requests, info.limit_tokens,
                                      info.remaining_tokens))  # fmt: skip
                grants.append(grant)
    # A budget's Retry-After counts the seconds to the end of the period: the two runs may
    # straddle a second's boundary, so it may differ by one; everything else is equal.
    for ours, theirs in zip(answers["memory"], answers["redis"], strict=True):
        assert isinstance(ours, tuple) and isinstance(theirs, tuple)
        if ours[0] == theirs[0] == "QuotaExceededError":
            assert abs(int(ours[1]) - int(theirs[1])) <= 1
            ours, theirs = ours[:1] + ours[2:], theirs[:1] + theirs[2:]
        assert ours == theirs
    kinds = {a[0] for a in answers["redis"]}
    assert {"ok", "RateLimitError"} <= kinds
    assert scenario == 0 or {"QuotaExceededError", "BadRequestError"} <= kinds


async def test_exactly_the_limit_across_replicas(
    make_limiter: Callable[..., RedisLimiter], new_prefix: Callable[[], str]
) -> None:
    """200 concurrent requests through 3 replicas against 50 per minute: 50 admitted."""
    b = bucket("all", requests_per_minute=50)
    for _ in range(5):
        prefix = new_prefix()
        replicas = [make_limiter(prefix, timeout=5.0) for _ in range(3)]
        results = await asyncio.gather(
            *(replicas[i % 3].acquire((b,), 1, 1) for i in range(200)), return_exceptions=True
        )
        admitted = [r for r in results if isinstance(r, RedisGrant)]
        refused = [r for r in results if isinstance(r, RateLimitError)]
        assert len(admitted) == 50
        assert len(refused) == 150
        assert sorted(g.info.remaining_requests or 0 for g in admitted) == list(range(50))


async def test_many_decisions_at_once_share_one_pipelined_connection(
    make_limiter: Callable[..., RedisLimiter],
) -> None:
    limiter = make_limiter()
    b = bucket("user:many", requests_per_minute=1_000_000, concurrency=1000)
    grants = await asyncio.gather(*(limiter.acquire((b,), 1, 1) for _ in range(300)))
    assert await limiter.in_flight("user:many") == 300
    for grant in grants:
        limiter.finish(grant, 1, 1)
    await limiter.flush()
    assert await limiter.in_flight("user:many") == 0
    assert limiter.finish_failures == 0


async def test_an_unanswered_decision_gives_back_its_lease(limiter: RedisLimiter) -> None:
    """When the answer to a decision is lost (timeout, caller gone), the lease it may have
    taken is released; its tokens are not given back."""
    b = bucket("user:lost", concurrency=1, tokens_per_minute=1000)
    grant = await limiter.acquire((b,), 100, 100)
    state = await limiter.state("user:lost")
    assert isinstance(grant, RedisGrant)
    limiter._abandon(limiter._plan((b,)), grant.lease)
    await limiter.flush()
    assert await limiter.in_flight("user:lost") == 0
    assert await limiter.state("user:lost") == state


async def test_unreachable_redis_is_a_backend_error() -> None:
    with socket_port() as port:
        settings = RedisSettings(url=f"redis://127.0.0.1:{port}/0", timeout=0.1)
        limiter = RedisLimiter(settings)
        try:
            start = time.monotonic()
            with pytest.raises(LimiterBackendError) as failed:
                await limiter.acquire((bucket("user:x", requests_per_minute=1),), 1, 1)
            assert time.monotonic() - start < 0.5
            assert failed.value.status == 503
            assert failed.value.code == "limiter_unavailable"
        finally:
            await limiter.aclose()


async def test_url_from_a_secret(
    new_prefix: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASTION_TEST_REDIS_URL", URL)
    settings = RedisSettings(url=Secret(env="BASTION_TEST_REDIS_URL"), key_prefix=new_prefix())
    limiter = RedisLimiter(settings)
    try:
        grant = await limiter.acquire((bucket("user:s", requests_per_minute=5),), 1, 1)
        assert grant.info.remaining_requests == 4
    finally:
        await limiter.aclose()


async def test_no_buckets_no_redis() -> None:
    limiter = RedisLimiter(RedisSettings(url="redis://127.0.0.1:1/0"))
    grant = await limiter.acquire((), 10, 10)
    limiter.finish(grant, 1, 1)
    assert grant.finished
    await limiter.aclose()


class socket_port:
    """A local port that nothing listens on (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


async def test_spending_budgets_across_models(limiter: RedisLimiter) -> None:
    prices = {"small": PriceSettings(input=1, output=2), "big": PriceSettings(input=10, output=30)}
    plan = Planner(LimitsSettings.model_validate({"per_user": {"cost_per_day": 0.01}}), prices)
    alice = Identity("alice", "user", "bk_a1", "api_key")
    big, small = plan.plan(alice, "big"), plan.plan(alice, "small")
    grant = await limiter.acquire(big, 100, 100)  # reserves 4,000 millionths
    limiter.finish(grant, 100, 200)  # costs 7,000
    await limiter.flush()
    grant = await limiter.acquire(small, 1000, 1000)  # 3,000: exactly what is left
    limiter.finish(grant, 1000, 1000)
    await limiter.flush()
    with pytest.raises(QuotaExceededError):
        await limiter.acquire(small, 1, 0)
