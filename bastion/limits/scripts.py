"""The Lua scripts of the Redis limiter (:mod:`bastion.limits.redis`), and its keys.

Each decision, finish and renewal is one of these scripts, run atomically by Redis. The clock
is the Redis server's (``TIME``), never a gateway's: replicas whose clocks disagree still share
one timeline.

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

**The decision script** (:data:`ACQUIRE_LUA`) reads every bucket, computing for each what the
request would do to it (the new TATs, the in-flight count, the budgets' use) and the tightest
bucket's figures for the ``x-ratelimit-*`` headers. If any budget would be overspent it
returns "quota" with the time until the period ends; else, if any rate or concurrency limit
refuses, "rate" with the longest wait; nothing has been written then (except dropping lapsed
leases). Only when every bucket admits does it write them all. A request that could never fit
(its reservation larger than a bucket's capacity or budget) depends on the configuration
alone, so :mod:`bastion.limits.redis` refuses it before asking Redis (a 400, even when Redis
is down).

**Finishing** (:data:`FINISH_LUA`) releases a grant's leases and moves the token TAT and the
budgets by ``used - reserved``; **renewing** (:data:`RENEW_LUA`) moves the lapse of a
replica's live leases on, adding back any that lapsed meanwhile.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACQUIRE_LUA", "EPOCH", "FINISH_LUA", "FINISH_PER_BUCKET", "RENEW_LUA"]

EPOCH: Final = 1_700_000_000
"""Unix time that the TATs kept in Redis count microseconds from."""

FINISH_PER_BUCKET: Final = 5
"""Figures per bucket in :data:`FINISH_LUA`'s arguments, after the lease, day and month."""

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
