"""The limiter with its state in Redis, shared by every replica of the gateway.

It makes exactly the decisions of :class:`~bastion.limits.limiter.MemoryLimiter` (same
algorithms, same refusals, same headers), but the state lives in Redis and each decision is
one Lua script run atomically by the server, so replicas never race each other and a decision
costs one round trip. The clock is the Redis server's (``TIME``), never a gateway's: replicas
whose clocks disagree still share one timeline.

Key layout (``P`` is ``redis.key_prefix``, ``B`` a bucket's key such as ``user:jwt:alice``)::

    P rl:s:B    hash, the bucket's state:
                  r   TAT of the requests-per-minute GCRA
                  t   TAT of the tokens-per-minute GCRA
                  d   the UTC day (YYYY-MM-DD) that ``dv`` counts; dv  tokens used that day
                  m   the UTC month (YYYY-MM) that ``mv`` counts;  mv  tokens used that month
    P rl:c:B    sorted set, the bucket's requests in flight: member = lease id of a grant,
                score = when the lease lapses

A TAT is kept in microseconds since 2023-11-14T22:13:20Z (:data:`EPOCH`: smaller numbers than
since 1970, so a double keeps them to a few hundredths of a microsecond for decades) and
written with 17 significant digits (an exact round trip). Each request may round a TAT by half
of that; the request GCRA tolerates 1 us plus ``burst`` such roundings, the token GCRA 1 us, so
rounding never refuses a request that fits. A TAT in the past means the same as none (the GCRA takes
``max(TAT, now)``), and a period field that names another day or month means nothing was used
in this one; so the hash may simply expire: every write sets its expiry to the latest of its
TATs, and to 2 days (day budget) or 35 days (month budget) when the bucket has budgets.

**Requests in flight** are leases rather than a counter: a grant adds its lease id with the
time it lapses (``lease_seconds`` after admission, 15 minutes by default), ``finish`` removes
it, and every decision first drops lapsed leases. A replica that dies with requests in flight
therefore holds their slots for at most ``lease_seconds`` (a counter with a refreshed expiry
would hold them forever while the bucket stays busy), and releasing is idempotent (``ZREM`` of
one member), so a release retried after a lost reply can never give back a slot twice. The
price: a request still running after ``lease_seconds`` stops counting against concurrency.

**The decision script** (:data:`ACQUIRE_LUA`) reads every bucket, computing for each what the
request would do to it (the new TATs, the in-flight count, the budgets' use) and the tightest
bucket's figures for the ``x-ratelimit-*`` headers. If any budget would be overspent it
returns "quota" with the time until the period ends; else, if any rate or concurrency limit
refuses, "rate" with the longest wait; nothing has been written then (except dropping lapsed
leases). Only when every bucket admits does it write them all. A request that could never fit
(its reservation larger than a bucket's capacity or budget) depends on the configuration
alone, so it is refused here, before Redis is asked (a 400, even when Redis is down).

**Finishing** (:data:`FINISH_LUA`: release the leases, move the token TAT and the budgets by
``used - reserved``) never makes the caller wait: :meth:`RedisLimiter.finish` marks the grant
finished (a second call does nothing) and queues the work; one background task sends
everything queued, in one pipeline, on a connection of its own (so releases never queue
behind admissions), as soon as the event loop runs it: a round trip later, well under a
millisecond on a local network. If Redis fails, the releases are retried (3 tries, 0.25 s
apart), then left to lapse (logged once); the token reconciliation is not retried, since it is
not idempotent and a lost reply cannot tell whether it was applied: the reservation then
stands, which errs on the side of limiting. A grant without leases and with nothing to
reconcile (used exactly what it reserved, or counts no tokens) costs no call at all.

Calls go through :class:`~bastion.limits.resp.RespClient`: decisions pipelined on one
connection, releases on another. Every call is bounded by ``redis.timeout`` (connecting and
the reply; nothing is retried by the client). A failure raises :class:`LimiterBackendError`,
and :class:`~bastion.limits.fallback.FailoverLimiter` decides what to do; both connections are
dropped then (after a timeout their state is unknown, after a restart they are dead). A decision
whose reply never came (timeout, or the caller gone) may still have been made: its leases are
released as a finish would (a no-op if it was not), its tokens stay taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from bastion.errors import QuotaExceededError, RateLimitError, ServiceUnavailableError
from bastion.limits.limiter import Grant, RateInfo, never_fits, periods, rate_headers
from bastion.limits.plan import Bucket
from bastion.limits.resp import RedisReplyError, RespClient, Script
from bastion.settings import RedisSettings, Secret

__all__ = [
    "ACQUIRE_LUA",
    "EPOCH",
    "FINISH_LUA",
    "LimiterBackendError",
    "RedisGrant",
    "RedisLimiter",
    "reservations",
]

logger = logging.getLogger("bastion.limits")

EPOCH: Final = 1_700_000_000
"""Unix time that the TATs kept in Redis count microseconds from."""

_LIMITS_PER_BUCKET: Final = 6
_FINISH_PER_BUCKET: Final = 5
_BATCH: Final = 256
_RELEASE_TRIES: Final = 3
_RELEASE_DELAY: Final = 0.25
_MAX_PENDING: Final = 100_000

_CALENDAR_LUA = """
-- Proleptic Gregorian calendar (H. Hinnant's algorithms): day number since 1970-01-01
-- to (year, month, day) and back
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- The UTC day and month that unix time `secs` (integer) falls in, and the seconds from
-- `unix` (the same instant with its fraction) to the end of each
local function periods(secs, unix)
  local dayno = math.floor(secs / 86400)
  local y, m, d = civil(dayno)
  local day = string.format('%04d-%02d-%02d', y, m, d)
  local next_month
  if m == 12 then next_month = days_from_civil(y + 1, 1, 1)
  else next_month = days_from_civil(y, m + 1, 1) end
  return day, string.sub(day, 1, 7), math.max(1, (dayno + 1) * 86400 - unix),
    math.max(1, next_month * 86400 - unix)
end
"""

_COMMON_LUA = (
    _CALENDAR_LUA
    + f"""
local EPOCH = {EPOCH}
local DAY_TTL = 2 * 86400 * 1000       -- ms: a day budget's state outlives its day
local MONTH_TTL = 35 * 86400 * 1000    -- ms: a month budget's state outlives its month
local function fmt(x) return string.format('%.17g', x) end
local clock = redis.call('TIME')
local secs = tonumber(clock[1])
local now = (secs - EPOCH) * 1e6 + tonumber(clock[2])   -- microseconds since EPOCH
"""
)

ACQUIRE_LUA: Final = (
    _COMMON_LUA
    + """
-- Admit a request against every bucket, or against none.
-- KEYS[2i-1], KEYS[2i]: bucket i's state hash and lease set.
-- ARGV[1]: the lease id; ARGV[2]: lease lifetime (microseconds); then 6 limits per bucket
-- (requests per minute, burst, tokens per minute, concurrency, tokens per day, tokens per
-- month; 0 = none); then each bucket's reservation (tokens).
-- Returns {kind (0 ok, 1 rate, 2 quota), wait (seconds), day, month, requests limit,
-- remaining, reset (seconds), tokens limit, remaining, reset}; absent figures are nil.
-- Float rounding must never refuse a request that fits: each addition to a TAT may round it
-- by half a unit in the last place (ULP, a hundredth of a microsecond or less for TATs under
-- twice now), so a full burst may be off by `burst` of them. Allow that and 1 microsecond.
local _, exponent = math.frexp(now)
local ULP = 2 ^ (exponent - 52)
local lease, lease_ttl = ARGV[1], tonumber(ARGV[2])
local n = (#ARGV - 2) / 7
local day, month, day_left, month_left = periods(secs, secs + tonumber(clock[2]) / 1e6)
local wait, quota_wait = 0, 0
local best_requests, best_tokens = math.huge, math.huge
local info = {false, false, false, false, false, false}
local plans = {}
for i = 1, n do
  local a = 2 + (i - 1) * 6
  local rpm, burst, tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local conc, per_day, per_month = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]),
    tonumber(ARGV[a + 6])
  local need = tonumber(ARGV[2 + n * 6 + i])
  local state = redis.call('HMGET', KEYS[2 * i - 1], 'r', 't', 'd', 'dv', 'm', 'mv')
  local plan = {}
  if rpm > 0 then
    local interval = 60e6 / rpm
    local tat = math.max(tonumber(state[1]) or now, now) + interval
    local over = tat - now - burst * interval
    if over > 1 + burst * ULP then wait = math.max(wait, over) end
    local remaining = math.max(0, math.floor((burst * interval - (tat - now)) / interval + 1e-6))
    if remaining < best_requests then
      best_requests = remaining
      info[1], info[2], info[3] = rpm, remaining, fmt((tat - now) / 1e6)
    end
    plan.r = tat
  end
  if tpm > 0 then
    local per_token = 60e6 / tpm
    local tat = math.max(tonumber(state[2]) or now, now) + need * per_token
    local over = tat - now - 60e6
    if over > 1 then wait = math.max(wait, over) end  -- a rounding (< 1 us) never refuses
    local remaining = math.max(0, math.floor((60e6 - (tat - now)) / per_token + 1e-6))
    if remaining < best_tokens then
      best_tokens = remaining
      info[4], info[5], info[6] = tpm, remaining, fmt((tat - now) / 1e6)
    end
    plan.t = tat
  end
  if conc > 0 then
    local leases = KEYS[2 * i]
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', fmt(now))
    if redis.call('ZCARD', leases) >= conc then wait = math.max(wait, 1e6) end
  end
  if per_day > 0 then
    local used = state[3] == day and tonumber(state[4]) or 0
    if used + need > per_day then quota_wait = math.max(quota_wait, day_left) end
    plan.dv = used + need
  end
  if per_month > 0 then
    local used = state[5] == month and tonumber(state[6]) or 0
    if used + need > per_month then quota_wait = math.max(quota_wait, month_left) end
    plan.mv = used + need
  end
  plan.conc = conc
  plans[i] = plan
end
if quota_wait > 0 then
  return {2, fmt(quota_wait), false, false, info[1], info[2], info[3], info[4], info[5], info[6]}
end
if wait > 0 then
  return {1, fmt(wait / 1e6), false, false, info[1], info[2], info[3], info[4], info[5],
    info[6]}
end
for i = 1, n do
  local plan, fields, ttl = plans[i], {}, 0
  if plan.r then
    fields[#fields + 1] = 'r'; fields[#fields + 1] = fmt(plan.r)
    ttl = math.max(ttl, (plan.r - now) / 1000)
  end
  if plan.t then
    fields[#fields + 1] = 't'; fields[#fields + 1] = fmt(plan.t)
    ttl = math.max(ttl, (plan.t - now) / 1000)
  end
  if plan.dv then
    fields[#fields + 1] = 'd'; fields[#fields + 1] = day
    fields[#fields + 1] = 'dv'; fields[#fields + 1] = fmt(plan.dv)
    ttl = math.max(ttl, DAY_TTL)
  end
  if plan.mv then
    fields[#fields + 1] = 'm'; fields[#fields + 1] = month
    fields[#fields + 1] = 'mv'; fields[#fields + 1] = fmt(plan.mv)
    ttl = math.max(ttl, MONTH_TTL)
  end
  if #fields > 0 then
    redis.call('HSET', KEYS[2 * i - 1], unpack(fields))
    redis.call('PEXPIRE', KEYS[2 * i - 1], math.max(1, math.ceil(ttl)))
  end
  if plan.conc > 0 then
    redis.call('ZADD', KEYS[2 * i], fmt(now + lease_ttl), lease)
    redis.call('PEXPIRE', KEYS[2 * i], math.ceil(lease_ttl / 1000))
  end
end
return {0, '0', day, month, info[1], info[2], info[3], info[4], info[5], info[6]}
"""
)

FINISH_LUA: Final = (
    _COMMON_LUA
    + """
-- Release a grant's leases and reconcile its reservation with the tokens really used.
-- KEYS[2i-1], KEYS[2i]: bucket i's state hash and lease set.
-- ARGV[1]: the lease id; ARGV[2], ARGV[3]: the day and month of the grant; then 5 figures per
-- bucket: tokens per minute, concurrency (0 = none), has a day budget, has a month budget
-- (0/1), and delta = used - reserved (tokens).
local lease, grant_day, grant_month = ARGV[1], ARGV[2], ARGV[3]
local n = (#ARGV - 3) / 5

-- A period's use moved by delta, as fields to write (none when the period is long gone)
local function budget(fields, name, stored, used, period, delta)
  local value
  if stored == period or not stored then value = math.max(0, (tonumber(used) or 0) + delta)
  elseif period > stored then value = math.max(0, delta)
  else return false end
  fields[#fields + 1] = name; fields[#fields + 1] = period
  fields[#fields + 1] = name .. 'v'; fields[#fields + 1] = fmt(value)
  return true
end

for i = 1, n do
  local a = 3 + (i - 1) * 5
  local tpm, conc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local has_day, has_month, delta = ARGV[a + 3] == '1', ARGV[a + 4] == '1', tonumber(ARGV[a + 5])
  local key = KEYS[2 * i - 1]
  if conc > 0 then redis.call('ZREM', KEYS[2 * i], lease) end
  if delta ~= 0 then
    local state = redis.call('HMGET', key, 't', 'd', 'dv', 'm', 'mv')
    local fields, ttl = {}, 0
    if tpm > 0 and state[1] then
      local tat = math.max(tonumber(state[1]) + delta * 60e6 / tpm, now)
      fields[#fields + 1] = 't'; fields[#fields + 1] = fmt(tat)
      ttl = (tat - now) / 1000
    end
    if has_day and budget(fields, 'd', state[2], state[3], grant_day, delta) then
      ttl = math.max(ttl, DAY_TTL)
    end
    if has_month and budget(fields, 'm', state[4], state[5], grant_month, delta) then
      ttl = math.max(ttl, MONTH_TTL)
    end
    if #fields > 0 then
      redis.call('HSET', key, unpack(fields))
      ttl = math.max(1, math.ceil(ttl))
      if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
    end
  end
end
return 1
"""
)


def reservations(buckets: tuple[Bucket, ...], prompt: int, completion: int) -> tuple[int, ...]:
    """The tokens a request reserves in each bucket; raises the 400 of
    :func:`~bastion.limits.limiter.never_fits` if one could never hold them (as
    :class:`~bastion.limits.limiter.MemoryLimiter` does: the first such bucket, in order)."""
    reserved = tuple(
        b.limit.tokens(prompt, completion) if b.limit.counts_tokens else 0 for b in buckets
    )
    for bucket, need in zip(buckets, reserved, strict=True):
        limit = bucket.limit
        for capacity in (limit.tokens_per_minute, limit.tokens_per_day, limit.tokens_per_month):
            if capacity is not None and need > capacity:
                raise never_fits(bucket, need)
    return reserved


class LimiterBackendError(ServiceUnavailableError):
    """Redis could not decide (unreachable, too slow, or failing): a 503 unless the fallback
    decides from memory instead."""

    code = "limiter_unavailable"
    default_message = "Rate limits cannot be checked right now; retry shortly."


@dataclass(slots=True)
class RedisGrant(Grant):
    """A grant that Redis issued; ``lease`` names it in the buckets' lease sets."""

    lease: str = ""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the scripts need of a tuple of buckets, computed once per tuple."""

    keys: tuple[str, ...]
    limits: tuple[int, ...]
    finish_limits: tuple[tuple[int, int, int, int], ...]
    leases: bool
    """Some bucket limits concurrency (the grant holds leases to give back)."""


@dataclass(slots=True)
class _Release:
    keys: tuple[str, ...]
    args: list[str | int]
    tries: int = 0


class RedisLimiter:
    """Limits shared by all replicas through Redis; see the module's documentation."""

    def __init__(self, settings: RedisSettings, *, lease_seconds: float = 900.0) -> None:
        url = settings.url.resolve() if isinstance(settings.url, Secret) else settings.url
        self._timeout = settings.timeout
        self._prefix = settings.key_prefix + "rl:"
        # Admissions are pipelined on one connection (any number at once); releases have a
        # connection of their own, so they never queue behind admissions.
        self._acquire_script = Script(ACQUIRE_LUA)
        self._finish_script = Script(FINISH_LUA)
        scripts = (self._acquire_script, self._finish_script)
        self._client = RespClient(url, connect_timeout=settings.timeout, scripts=scripts)
        self._releaser = RespClient(url, connect_timeout=settings.timeout, scripts=scripts)
        self._lease_ttl = str(max(1, round(lease_seconds * 1e6)))
        self._lease_seconds = math.ceil(lease_seconds)
        self._lease_prefix = secrets.token_hex(6) + ":"
        self._ids = itertools.count()
        self._plans: dict[tuple[Bucket, ...], _Plan] = {}
        self._pending: deque[_Release] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._busy = False
        self._closed = False
        self._warned = False
        self.finish_failures = 0
        """Finish batches that Redis failed (their releases were retried)."""
        self.finish_dropped = 0
        """Grants whose release never reached Redis (their leases lapse instead)."""

    # -- admission --------------------------------------------------------------------------

    async def acquire(self, buckets: tuple[Bucket, ...], prompt: int, completion: int) -> Grant:
        if not buckets:
            day, month = periods(time.time())
            return RedisGrant((), (), day, month, RateInfo())
        reserved = reservations(buckets, prompt, completion)
        plan = self._plan(buckets)
        lease = f"{self._lease_prefix}{next(self._ids)}"
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._client.evalsha(
                    self._acquire_script,
                    plan.keys,
                    [lease, self._lease_ttl, *plan.limits, *reserved],
                )
        except (RedisReplyError, OSError, TimeoutError) as exc:
            self._abandon(plan, lease)
            await self._reconnect()
            raise LimiterBackendError() from exc
        except asyncio.CancelledError:  # the caller went away while Redis decided
            self._abandon(plan, lease)
            raise
        kind, wait, day, month, *figures = reply
        info = RateInfo(
            figures[0],
            figures[1],
            None if figures[2] is None else float(figures[2]),
            figures[3],
            figures[4],
            None if figures[5] is None else float(figures[5]),
        )
        if kind == 0:
            return RedisGrant(buckets, reserved, day.decode(), month.decode(), info, lease=lease)
        if kind == 2:
            raise QuotaExceededError(headers=rate_headers(info, float(wait)))
        raise RateLimitError(headers=rate_headers(info, float(wait)))

    def _abandon(self, plan: _Plan, lease: str) -> None:
        """A decision whose answer never came may still have been made: give back the leases
        it may have taken (releasing a lease that was never taken does nothing). Its tokens
        stay taken: giving back tokens that were never taken would exceed the limits."""
        if plan.leases:
            args: list[str | int] = [lease, "", ""]
            for _, concurrency, _, _ in plan.finish_limits:
                args += [0, concurrency, 0, 0, 0]
            self._enqueue(_Release(plan.keys, args))

    async def _reconnect(self) -> None:
        """Drop the connections after a failure: after a timeout their state is unknown, and
        if Redis restarted they are dead. The next call opens new ones."""
        self._client.reset()
        self._releaser.reset()

    def _plan(self, buckets: tuple[Bucket, ...]) -> _Plan:
        found = self._plans.get(buckets)
        if found is None:
            keys: list[str] = []
            limits: list[int] = []
            finish: list[tuple[int, int, int, int]] = []
            for bucket in buckets:
                limit = bucket.limit
                keys += [f"{self._prefix}s:{bucket.key}", f"{self._prefix}c:{bucket.key}"]
                limits += [
                    limit.requests_per_minute or 0,
                    limit.burst,
                    limit.tokens_per_minute or 0,
                    limit.concurrency or 0,
                    limit.tokens_per_day or 0,
                    limit.tokens_per_month or 0,
                ]
                finish.append((
                    limit.tokens_per_minute or 0,
                    limit.concurrency or 0,
                    int(limit.tokens_per_day is not None),
                    int(limit.tokens_per_month is not None),
                ))  # fmt: skip
            leases = any(b.limit.concurrency is not None for b in buckets)
            found = _Plan(tuple(keys), tuple(limits), tuple(finish), leases)
            if len(self._plans) >= 10_000:
                self._plans.clear()
            self._plans[buckets] = found
        return found

    # -- finishing --------------------------------------------------------------------------

    def finish(self, grant: Grant, prompt: int, completion: int) -> None:
        if grant.finished:
            return
        grant.finished = True
        if not grant.buckets or self._closed:
            return
        plan = self._plan(grant.buckets)
        deltas = [
            b.limit.tokens(prompt, completion) - reserved if b.limit.counts_tokens else 0
            for b, reserved in zip(grant.buckets, grant.reserved, strict=True)
        ]
        if not plan.leases and not any(deltas):
            return  # nothing to give back
        lease = grant.lease if isinstance(grant, RedisGrant) else ""
        args: list[str | int] = [lease, grant.day, grant.month]
        for limits, delta in zip(plan.finish_limits, deltas, strict=True):
            args += [*limits, delta]
        self._enqueue(_Release(plan.keys, args))

    def _enqueue(self, release: _Release) -> None:
        if self._closed:
            return
        if len(self._pending) >= _MAX_PENDING:
            self.finish_dropped += 1
            return
        self._pending.append(release)
        self._wake.set()
        if self._worker is None or self._worker.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (shutting down): the leases lapse
                self._pending.clear()
                self.finish_dropped += 1
                return
            self._worker = loop.create_task(self._drain(), name="bastion-limits-finish")

    async def _drain(self) -> None:
        """The one background task that sends queued finishes, a pipeline at a time."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(_BATCH, len(self._pending)))]
                self._busy = True
                try:
                    await self._send(batch)
                    self._warned = False
                except (RedisReplyError, OSError, TimeoutError) as exc:
                    self.finish_failures += 1
                    await self._reconnect()
                    if self._retry(batch, exc):
                        await asyncio.sleep(_RELEASE_DELAY)
                except Exception:  # a bug: never let it stop the releases to come
                    logger.exception("could not finish %d rate limit grants", len(batch))
                    self.finish_dropped += len(batch)
                finally:
                    self._busy = False

    async def _send(self, batch: list[_Release]) -> None:
        script = self._finish_script
        async with asyncio.timeout(self._timeout):
            if len(batch) == 1:
                await self._releaser.evalsha(script, batch[0].keys, batch[0].args)
                return
            results = await self._releaser.pipeline(
                [("EVALSHA", script.sha, len(r.keys), *r.keys, *r.args) for r in batch]
            )
            for release, result in zip(batch, results, strict=True):
                if isinstance(result, RedisReplyError) and str(result).startswith("NOSCRIPT"):
                    # Redis restarted or flushed its scripts: send it whole
                    await self._releaser.evalsha(script, release.keys, release.args)
                elif isinstance(result, BaseException):
                    raise result

    def _retry(self, batch: list[_Release], exc: BaseException | None = None) -> bool:
        """Queue the batch's releases again (without their token reconciliation, which may
        have been applied already); True if any was. Those tried enough are dropped: their
        leases lapse (logged once until a finish reaches Redis again)."""
        again = False
        for release in batch:
            release.tries += 1
            args = release.args
            if release.tries >= _RELEASE_TRIES or not any(a[1] for a in _chunks(args)):
                self.finish_dropped += 1
                if release.tries >= _RELEASE_TRIES and not self._warned:
                    self._warned = True
                    logger.warning(
                        "could not give back concurrency slots in Redis (%s); they lapse "
                        "within %d s",
                        "unknown error" if exc is None else _describe(exc),
                        self._lease_seconds,
                    )
                continue
            for i in range(7, len(args), _FINISH_PER_BUCKET):
                args[i] = 0  # delta: retried releases only give back leases
            self._pending.append(release)
            again = True
        return again

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until every finish queued so far has been sent (or given up)."""
        deadline = time.monotonic() + timeout
        while (self._pending or self._busy) and time.monotonic() < deadline:
            if self._worker is None or self._worker.done():
                break
            await asyncio.sleep(0.001)

    async def aclose(self) -> None:
        if self._closed:
            return
        await self.flush(timeout=max(1.0, self._timeout))
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        await self._client.aclose()
        await self._releaser.aclose()

    # -- introspection (tests, the admin API) --------------------------------------------------

    async def in_flight(self, key: str) -> int:
        """Requests in flight in bucket ``key`` (lapsed leases included until the next
        decision drops them)."""
        async with asyncio.timeout(self._timeout):
            count: int = await self._client.execute("ZCARD", f"{self._prefix}c:{key}")
        return count

    async def state(self, key: str) -> dict[str, str]:
        """The raw state hash of bucket ``key``."""
        async with asyncio.timeout(self._timeout):
            flat: list[bytes] = await self._client.execute("HGETALL", f"{self._prefix}s:{key}")
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def _chunks(args: list[str | int]) -> list[tuple[str | int, ...]]:
    """The per-bucket figures of a finish's arguments."""
    return [tuple(args[i : i + _FINISH_PER_BUCKET])
            for i in range(3, len(args), _FINISH_PER_BUCKET)]  # fmt: skip


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
