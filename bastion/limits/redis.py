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
time it lapses (``lease_seconds`` after admission, 30 s by default), ``finish`` removes it, and
every decision first drops lapsed leases. While its request runs, its replica renews the lease
(:data:`RENEW_LUA`): every third of ``lease_seconds``, one call renews all of the replica's
live leases (no timer and no round trip per request), so a stream longer than a lease keeps
its slot, and one that ran through an outage longer than a lease gets its lease back with the
first renewal that reaches Redis. A replica that dies with requests in flight therefore holds
their slots for at most ``lease_seconds`` (a counter with a refreshed expiry would hold them
forever while the bucket stays busy), and releasing is idempotent (``ZREM`` of one member), so
a release retried after a lost reply can never give back a slot twice.

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
millisecond on a local network. If Redis fails, the releases are queued again (at most
100,000) and retried, 0.25 s later, then at most a second apart, until Redis answers or their
leases have lapsed anyway (logged once per outage, and once when Redis answers again), so a
blip costs a slot for about as long as the blip. The token reconciliation is not retried,
since it is not idempotent and a lost reply cannot tell whether it was applied: the reservation
then stands, which errs on the side of limiting. A grant without leases and with nothing to
reconcile (used exactly what it reserved, or counts no tokens) costs no call at all.

Calls go through :class:`~bastion.limits.resp.RespClient`: decisions pipelined on one
connection, releases and renewals on another. Every call is bounded by ``redis.timeout``
(connecting and the reply; nothing is retried by the client). A failed decision raises
:class:`LimiterBackendError`, and :class:`~bastion.limits.fallback.FailoverLimiter` decides what
to do; the connection that failed is dropped (after a timeout its state is unknown, after a
restart it is dead). A decision whose reply never came (timeout, or the caller gone) may still
have been made: its leases are released as a finish would (a no-op if it was not), its tokens
stay taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
import weakref
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
    "RENEW_LUA",
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
_RETRY_DELAY: Final = 0.25
"""Seconds before failed releases are sent again; doubled after each failure in a row..."""
_RETRY_MAX_DELAY: Final = 1.0
"""... up to this (also how soon a failed renewal is tried again)."""
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
    local ms = math.ceil(lease_ttl / 1000)
    if redis.call('PTTL', KEYS[2 * i]) < ms then redis.call('PEXPIRE', KEYS[2 * i], ms) end
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


RENEW_LUA: Final = f"""
-- Renew this replica's leases of requests still running: each lapses lease_ttl from now.
-- KEYS: lease sets; ARGV[1]: the lease lifetime (microseconds); then, for each key in turn,
-- the number of its leases and the leases. A lease that lapsed meanwhile (Redis was away) is
-- added back: its request still runs.
local clock = redis.call('TIME')
local now = (tonumber(clock[1]) - {EPOCH}) * 1e6 + tonumber(clock[2])
local lease_ttl = tonumber(ARGV[1])
local lapse = string.format('%.17g', now + lease_ttl)
local ms = math.ceil(lease_ttl / 1000)
local a = 2
for i = 1, #KEYS do
  local n = tonumber(ARGV[a])
  local zadd = {{}}
  for j = a + 1, a + n do
    zadd[#zadd + 1] = lapse; zadd[#zadd + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[i], unpack(zadd))
  if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
  a = a + n + 1
end
return 1
"""


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


@dataclass(slots=True, weakref_slot=True)
class RedisGrant(Grant):
    """A grant that Redis issued; ``lease`` names it in the buckets' lease sets."""

    lease: str = ""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the scripts need of a tuple of buckets, computed once per tuple."""

    keys: tuple[str, ...]
    limits: tuple[int, ...]
    finish_limits: tuple[tuple[int, int, int, int], ...]
    lease_keys: tuple[str, ...]
    """The lease sets of the buckets that limit concurrency (where a grant holds leases)."""

    @property
    def leases(self) -> bool:
        return bool(self.lease_keys)


_Live = tuple[tuple[str, ...], "weakref.ref[RedisGrant]"]
"""A live lease's lease sets, and its grant."""


@dataclass(slots=True)
class _Release:
    keys: tuple[str, ...]
    args: list[str | int]
    lapse: float
    """When (``time.monotonic()``) its leases lapse anyway: no use retrying it after that."""


class RedisLimiter:
    """Limits shared by all replicas through Redis; see the module's documentation."""

    def __init__(self, settings: RedisSettings) -> None:
        url = settings.url.resolve() if isinstance(settings.url, Secret) else settings.url
        self._timeout = settings.timeout
        self._prefix = settings.key_prefix + "rl:"
        # Admissions are pipelined on one connection (any number at once); releases and
        # renewals have a connection of their own, so they never queue behind admissions.
        self._acquire_script = Script(ACQUIRE_LUA)
        self._finish_script = Script(FINISH_LUA)
        self._renew_script = Script(RENEW_LUA)
        scripts = (self._acquire_script, self._finish_script, self._renew_script)
        self._client = RespClient(url, connect_timeout=settings.timeout, scripts=scripts)
        self._releaser = RespClient(url, connect_timeout=settings.timeout, scripts=scripts)
        self._lease_seconds = settings.lease_seconds
        self._lease_ttl = str(max(1, round(settings.lease_seconds * 1e6)))
        self._renew_every = settings.lease_seconds / 3
        self._lease_prefix = secrets.token_hex(6) + ":"
        self._ids = itertools.count()
        self._plans: dict[tuple[Bucket, ...], _Plan] = {}
        self._live: dict[str, _Live] = {}  # the leases of requests still running
        self._pending: deque[_Release] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._renew_at: float | None = None  # event loop time of the next renewal
        self._retry_at = 0.0  # event loop time before which failed releases are not resent
        self._retry_delay = _RETRY_DELAY
        self._busy = False
        self._closed = False
        self._warned = False
        self.finish_failures = 0
        """Finish batches that Redis failed (their releases are retried)."""
        self.finish_dropped = 0
        """Grants whose release never reached Redis (their leases lapse instead)."""
        self.renewals = 0
        """Renewals of the live leases that Redis applied."""
        self.renew_failures = 0
        """Renewals that Redis failed (each tried again within a second)."""

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
            # After a timeout the connection's state is unknown, after a restart it is dead:
            # the next call opens a new one
            self._client.reset()
            raise LimiterBackendError() from exc
        except asyncio.CancelledError:  # the caller went away while Redis decided
            self._abandon(plan, lease)
            raise
        if self._retry_at:  # releases wait for Redis, which has just answered
            self._retry_at = 0.0
            self._wake.set()
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
            grant = RedisGrant(buckets, reserved, day.decode(), month.decode(), info, lease=lease)
            if plan.lease_keys:
                self._hold(grant, plan.lease_keys)
            return grant
        if kind == 2:
            raise QuotaExceededError(headers=rate_headers(info, float(wait)))
        raise RateLimitError(headers=rate_headers(info, float(wait)))

    def _hold(self, grant: RedisGrant, keys: tuple[str, ...]) -> None:
        """Count the grant's lease among the live ones, which the worker renews until the
        grant is finished, or is garbage (a bug lost it: its slot then lapses). The worker is
        woken to schedule renewals when this is the first."""
        first = not self._live
        self._live[grant.lease] = (keys, weakref.ref(grant))
        if first:
            self._start_worker()

    def _abandon(self, plan: _Plan, lease: str) -> None:
        """A decision whose answer never came may still have been made: give back the leases
        it may have taken (releasing a lease that was never taken does nothing). Its tokens
        stay taken: giving back tokens that were never taken would exceed the limits."""
        if plan.leases:
            args: list[str | int] = [lease, "", ""]
            for _, concurrency, _, _ in plan.finish_limits:
                args += [0, concurrency, 0, 0, 0]
            self._enqueue(_Release(plan.keys, args, time.monotonic() + self._lease_seconds))

    def _plan(self, buckets: tuple[Bucket, ...]) -> _Plan:
        found = self._plans.get(buckets)
        if found is None:
            keys: list[str] = []
            limits: list[int] = []
            finish: list[tuple[int, int, int, int]] = []
            lease_keys: list[str] = []
            for bucket in buckets:
                limit = bucket.limit
                keys += [f"{self._prefix}s:{bucket.key}", f"{self._prefix}c:{bucket.key}"]
                if limit.concurrency is not None:
                    lease_keys.append(keys[-1])
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
            found = _Plan(tuple(keys), tuple(limits), tuple(finish), tuple(lease_keys))
            if len(self._plans) >= 10_000:
                self._plans.clear()
            self._plans[buckets] = found
        return found

    # -- finishing --------------------------------------------------------------------------

    def finish(self, grant: Grant, prompt: int, completion: int) -> None:
        if grant.finished:
            return
        grant.finished = True
        lease = grant.lease if isinstance(grant, RedisGrant) else ""
        if lease:
            self._live.pop(lease, None)  # no longer renewed
        if not grant.buckets or self._closed:
            return
        plan = self._plan(grant.buckets)
        deltas = [
            b.limit.tokens(prompt, completion) - reserved if b.limit.counts_tokens else 0
            for b, reserved in zip(grant.buckets, grant.reserved, strict=True)
        ]
        if not plan.leases and not any(deltas):
            return  # nothing to give back
        args: list[str | int] = [lease, grant.day, grant.month]
        for limits, delta in zip(plan.finish_limits, deltas, strict=True):
            args += [*limits, delta]
        self._enqueue(_Release(plan.keys, args, time.monotonic() + self._lease_seconds))

    def _enqueue(self, release: _Release) -> None:
        if self._closed:
            return
        if len(self._pending) >= _MAX_PENDING:
            self.finish_dropped += 1
            return
        self._pending.append(release)
        self._start_worker()

    def _start_worker(self) -> None:
        """Wake the background worker, or start it."""
        self._wake.set()
        if self._worker is None or self._worker.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (shutting down): the leases lapse
                self.finish_dropped += len(self._pending)
                self._pending.clear()
                return
            self._worker = loop.create_task(self._work(), name="bastion-limits-leases")

    # -- the background worker: renewals and releases ------------------------------------------

    async def _work(self) -> None:
        """The one task that writes to Redis after admissions, on a connection of its own:
        it renews the live leases every third of their lifetime, and sends the queued
        finishes a pipeline at a time; after a failure it tries the releases again (never
        the reconciliations) until Redis answers or the leases have lapsed anyway."""
        loop = asyncio.get_running_loop()
        while True:
            await self._until_due(loop)
            if self._renew_at is not None and loop.time() >= self._renew_at:
                await self._renew(loop)
            if self._pending and loop.time() >= self._retry_at:
                await self._send_pending(loop)

    async def _until_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sleep until woken (a finish, the first live lease), the next renewal, or the
        time to retry failed releases."""
        now = loop.time()
        if not self._live:
            self._renew_at = None
        elif self._renew_at is None:
            self._renew_at = now + self._renew_every
        due = [self._renew_at] if self._renew_at is not None else []
        if self._pending:
            if self._retry_at <= now:
                self._wake.clear()
                return
            due.append(self._retry_at)
        if not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(due) if due else None):
                    await self._wake.wait()
        self._wake.clear()

    async def _renew(self, loop: asyncio.AbstractEventLoop) -> None:
        """Renew every live lease of this replica: one pipeline, one script call per
        :data:`_BATCH` leases."""
        self._renew_at = loop.time() + self._renew_every
        live = self._live
        for lease in [lease for lease, (_, grant) in live.items() if grant() is None]:
            del live[lease]  # lost without a finish (a bug): let its slot lapse
        if not live:
            return
        calls = _renewal_calls(self._live, self._lease_ttl)
        self._busy = True
        try:
            await self._run(self._renew_script, calls)
        except (RedisReplyError, OSError, TimeoutError) as exc:
            self.renew_failures += 1
            self._releaser.reset()
            self._renew_at = loop.time() + min(self._renew_every, _RETRY_MAX_DELAY)
            self._failed(exc)
        except Exception:  # a bug: never let it stop the renewals and releases to come
            logger.exception("could not renew %d concurrency leases", len(live))
        else:
            self.renewals += 1
            self._answered()
        finally:
            self._busy = False

    async def _send_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the queued finishes, a pipeline at a time."""
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(_BATCH, len(self._pending)))]
            self._busy = True
            try:
                await self._run(self._finish_script, [(list(r.keys), r.args) for r in batch])
            except (RedisReplyError, OSError, TimeoutError) as exc:
                self.finish_failures += 1
                self._releaser.reset()
                self._retry(batch)
                self._retry_at = loop.time() + self._retry_delay
                self._retry_delay = min(2 * self._retry_delay, _RETRY_MAX_DELAY)
                self._failed(exc)
                return
            except Exception:  # a bug: never let it stop the releases to come
                logger.exception("could not finish %d rate limit grants", len(batch))
                self.finish_dropped += len(batch)
            else:
                self._answered()
            finally:
                self._busy = False

    async def _run(self, script: Script, calls: list[tuple[list[str], list[str | int]]]) -> None:
        """Run ``script`` once per call, in one pipeline; raises the first error."""
        async with asyncio.timeout(self._timeout):
            if len(calls) == 1:
                await self._releaser.evalsha(script, *calls[0])
                return
            results = await self._releaser.pipeline(
                [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
            )
            for (keys, args), result in zip(calls, results, strict=True):
                if isinstance(result, RedisReplyError) and str(result).startswith("NOSCRIPT"):
                    # Redis restarted or flushed its scripts: send it whole
                    await self._releaser.evalsha(script, keys, args)
                elif isinstance(result, BaseException):
                    raise result

    def _retry(self, batch: list[_Release]) -> None:
        """Queue the batch's releases again, without their token reconciliation (it may
        have been applied: its reply was lost). A release whose leases have lapsed by now, or
        that had none, is not retried: there is nothing left to give back."""
        now = time.monotonic()
        for release in batch:
            args = release.args
            if release.lapse <= now or not any(c[1] for c in _chunks(args)):
                self.finish_dropped += 1
                continue
            for i in range(7, len(args), _FINISH_PER_BUCKET):
                args[i] = 0  # delta: retried releases only give back leases
            if len(self._pending) >= _MAX_PENDING:
                self.finish_dropped += 1
                continue
            self._pending.append(release)

    def _failed(self, exc: BaseException) -> None:
        """Redis failed a renewal or a release: logged once until it answers again."""
        if not self._warned:
            self._warned = True
            logger.warning(
                "could not renew or give back concurrency slots in Redis (%s); trying again "
                "until it answers (a slot neither renewed nor given back lapses within %g s)",
                _describe(exc),
                self._lease_seconds,
            )

    def _answered(self) -> None:
        """Redis answered the worker: failed releases go again at once."""
        self._retry_delay = _RETRY_DELAY
        self._retry_at = 0.0
        if self._warned:
            self._warned = False
            logger.warning("Redis takes concurrency slots' renewals and releases again")

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


def _renewal_calls(
    live: dict[str, _Live], lease_ttl: str
) -> list[tuple[list[str], list[str | int]]]:
    """The renewal script's calls for the live leases, :data:`_BATCH` leases at most each."""
    by_key: dict[str, list[str]] = {}
    for lease, (sets, _) in live.items():
        for key in sets:
            by_key.setdefault(key, []).append(lease)
    calls: list[tuple[list[str], list[str | int]]] = []
    keys: list[str] = []
    args: list[str | int] = [lease_ttl]
    count = 0
    for key, leases in by_key.items():
        for at in range(0, len(leases), _BATCH):
            part = leases[at : at + _BATCH]
            if keys and count + len(part) > _BATCH:
                calls.append((keys, args))
                keys, args, count = [], [lease_ttl], 0
            keys.append(key)
            args += [len(part), *part]
            count += len(part)
    if keys:
        calls.append((keys, args))
    return calls


def _chunks(args: list[str | int]) -> list[tuple[str | int, ...]]:
    """The per-bucket figures of a finish's arguments."""
    return [tuple(args[i : i + _FINISH_PER_BUCKET])
            for i in range(3, len(args), _FINISH_PER_BUCKET)]  # fmt: skip


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
