"""The limiter: admits a request against all of its buckets at once, or refuses it.

Algorithms (each bucket may have any of them):

- **requests per minute**: GCRA. Each request moves the bucket's theoretical arrival time
  (TAT) on by ``60 / rpm`` seconds; a request is admitted while the TAT stays within
  ``burst`` intervals of now. Exact at any instant: no window boundary to burst across.
- **tokens per minute**: the same GCRA with a cost: a request reserves its prompt estimate
  plus its ``max_tokens`` (``tokens_per_minute`` is the bucket's capacity). When the response
  ends, :meth:`Limiter.finish` moves the TAT back by what was reserved and not used, or on by
  what was used beyond it.
- **concurrency**: a counter, taken at admission and given back by ``finish`` (which the
  gateway calls on every exit: success, error, timeout, caller gone).
- **token budgets** per UTC day and month: counters per period, reserved and reconciled like
  tokens per minute, never refilled.

A request is admitted only if every bucket admits it, and then counts against all of them:
either everything is taken or nothing is. A request that could never fit (its own reservation
is larger than a bucket's capacity or budget) is a 400, not a 429 to retry forever.

:class:`MemoryLimiter` keeps the state in this process. The Redis limiter keeps the same
state in Redis, each decision one server-side script, so replicas share it.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mypy_extensions import mypyc_attr

from bastion.errors import BadRequestError, QuotaExceededError, RateLimitError
from bastion.limits.plan import Bucket

__all__ = ["Grant", "Limiter", "MemoryLimiter", "RateInfo", "periods", "rate_headers"]

_EPSILON = 1e-6  # seconds; above the rounding of epoch-sized floats (an ulp is ~2.4e-7 s)


@dataclass(frozen=True, slots=True)
class RateInfo:
    """What the ``x-ratelimit-*`` headers tell the caller (the tightest bucket's figures)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None


@mypyc_attr(allow_interpreted_subclasses=True)  # the Redis limiter's grant, not compiled
@dataclass(slots=True)
class Grant:
    """What an admitted request took, to be reconciled and given back by ``finish``."""

    buckets: tuple[Bucket, ...]
    reserved: tuple[int, ...]
    """Tokens reserved in each bucket (0 where the bucket counts none)."""
    day: str
    month: str
    info: RateInfo
    finished: bool = False


class Limiter(Protocol):
    async def acquire(self, buckets: tuple[Bucket, ...], prompt: int, completion: int) -> Grant:
        """Admit (returning what was taken) or raise RateLimitError, QuotaExceededError or
        BadRequestError (could never fit)."""
        ...

    def finish(self, grant: Grant, prompt: int, completion: int) -> None:
        """Reconcile the reservation with the tokens really used, release concurrency."""
        ...

    async def aclose(self) -> None: ...


_PERIODS: dict[int, tuple[str, str]] = {}


def periods(now: float) -> tuple[str, str]:
    """The UTC day and month ``now`` falls in (budget periods)."""
    number = int(now // 86400)
    found = _PERIODS.get(number)
    if found is None:
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        if len(_PERIODS) > 64:
            _PERIODS.clear()
        found = _PERIODS[number] = (day, day[:7])
    return found


def _period_left(now: float, month: bool) -> float:
    tm = time.gmtime(now)
    if month:
        year, mon = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
        end = float(calendar.timegm((year, mon, 1, 0, 0, 0)))
    else:
        end = (now // 86400 + 1) * 86400
    return max(1.0, end - now)


_NO_RATES = RateInfo()


def _rate_info(
    requests: tuple[int, int, float] | None, tokens: tuple[int, int, float] | None
) -> RateInfo:
    """The headers' figures: (remaining, limit, reset) of the tightest bucket of each kind."""
    if requests is None and tokens is None:
        return _NO_RATES
    return RateInfo(
        *(requests[1], requests[0], requests[2]) if requests else (None, None, None),
        *(tokens[1], tokens[0], tokens[2]) if tokens else (None, None, None),
    )


def never_fits(bucket: Bucket, need: int) -> BadRequestError:
    if bucket.limit.count == "cost":
        return BadRequestError(
            f"This request could cost up to {need / 1e6:.6f}, more than the spending budget "
            f"of its {bucket.key.split(':', 1)[0]} allows; lower max_tokens or shorten it.",
            param="max_tokens",
            code="cost_exceeds_budget",
        )
    return BadRequestError(
        f"This request asks for up to {need} tokens, more than the limit of its "
        f"{bucket.key.split(':', 1)[0]} allows at once; lower max_tokens or shorten it.",
        param="max_tokens",
        code="tokens_exceed_limit",
    )


def rate_headers(
    info: RateInfo, retry_after: float | None = None
) -> tuple[tuple[bytes, bytes], ...]:
    """The headers OpenAI clients understand, for a response or a refusal."""
    # bytes formatting (b"%d"), not str().encode(): this runs for every admitted response
    headers: tuple[tuple[bytes, bytes], ...] = ()
    if info.limit_requests is not None:
        headers = (
            (b"x-ratelimit-limit-requests", b"%d" % info.limit_requests),
            (b"x-ratelimit-remaining-requests", b"%d" % (info.remaining_requests or 0)),
            (b"x-ratelimit-reset-requests", _duration(info.reset_requests or 0.0)),
        )
    if info.limit_tokens is not None:
        headers += (
            (b"x-ratelimit-limit-tokens", b"%d" % info.limit_tokens),
            (b"x-ratelimit-remaining-tokens", b"%d" % (info.remaining_tokens or 0)),
            (b"x-ratelimit-reset-tokens", _duration(info.reset_tokens or 0.0)),
        )
    if retry_after is not None:
        headers += (
            (b"retry-after", b"%d" % max(1, math.ceil(retry_after))),
            (b"retry-after-ms", b"%d" % max(1, math.ceil(retry_after * 1000))),
        )
    return headers


def _duration(seconds: float) -> bytes:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    millis = max(0, round(seconds * 1000))
    if millis < 1000:
        return b"%dms" % millis
    if millis < 60_000:
        return b"%gs" % (millis / 1000)
    minutes, rest = divmod(millis, 60_000)
    return b"%dm%gs" % (minutes, rest / 1000)


class MemoryLimiter:
    """Limits kept in this process (one gateway, or ``on_backend_failure: open``)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._requests: dict[str, float] = {}  # bucket -> TAT of its request GCRA
        self._tokens: dict[str, float] = {}  # bucket -> TAT of its token GCRA
        self._inflight: dict[str, int] = {}
        self._used: dict[tuple[str, str], int] = {}  # (bucket, period) -> tokens
        self._sweep_at = 0.0

    async def acquire(self, buckets: tuple[Bucket, ...], prompt: int, completion: int) -> Grant:
        return self.acquire_now(buckets, prompt, completion)

    def acquire_now(self, buckets: tuple[Bucket, ...], prompt: int, completion: int) -> Grant:
        now = self._clock()
        day, month = periods(now)
        reserved = tuple(
            b.limit.tokens(prompt, completion) if b.limit.counts_tokens else 0 for b in buckets
        )
        wait = 0.0
        quota_wait: float | None = None
        # the tightest bucket's figures, for the headers: (remaining, limit, reset)
        requests: tuple[int, int, float] | None = None
        tokens: tuple[int, int, float] | None = None
        for bucket, need in zip(buckets, reserved, strict=True):
            limit, key = bucket.limit, bucket.key
            rpm = limit.requests_per_minute
            if rpm is not None:
                interval = 60.0 / rpm
                tat = self._requests.get(key, now)
                ahead = (tat if tat > now else now) + interval - now
                window = limit.burst * interval
                if ahead - window > _EPSILON:
                    wait = max(wait, ahead - window)
                left = max(0, int((window - ahead) / interval + _EPSILON))
                if requests is None or left < requests[0]:
                    requests = (left, rpm, ahead)
            tpm = limit.tokens_per_minute
            if tpm is not None:
                if need > tpm:
                    raise never_fits(bucket, need)
                per_token = 60.0 / tpm
                tat = self._tokens.get(key, now)
                ahead = (tat if tat > now else now) + need * per_token - now
                if ahead - 60.0 > _EPSILON:
                    wait = max(wait, ahead - 60.0)
                left = max(0, int((60.0 - ahead) / per_token + _EPSILON))
                if tokens is None or left < tokens[0]:
                    tokens = (left, tpm, ahead)
            if limit.concurrency is not None and self._inflight.get(key, 0) >= limit.concurrency:
                wait = max(wait, 1.0)
            if limit.tokens_per_day is not None or limit.tokens_per_month is not None:
                left_period = self._budget_wait(bucket, need, now, day, month)
                if left_period is not None:
                    quota_wait = max(quota_wait or 0.0, left_period)
        info = _rate_info(requests, tokens)
        if quota_wait is not None:
            raise QuotaExceededError(headers=rate_headers(info, quota_wait))
        if wait > 0:
            raise RateLimitError(headers=rate_headers(info, wait))
        self._take(buckets, reserved, now, day, month)
        if now >= self._sweep_at:
            self._sweep(now)
        return Grant(buckets, reserved, day, month, info)

    def _budget_wait(
        self, bucket: Bucket, need: int, now: float, day: str, month: str
    ) -> float | None:
        """Seconds until a budget that cannot take ``need`` renews; None if all can."""
        limit, used, wait = bucket.limit, self._used, None
        budget = limit.tokens_per_day
        if budget is not None:
            if need > budget:
                raise never_fits(bucket, need)
            if used.get((bucket.key, day), 0) + need > budget:
                wait = _period_left(now, month=False)
        budget = limit.tokens_per_month
        if budget is not None:
            if need > budget:
                raise never_fits(bucket, need)
            if used.get((bucket.key, month), 0) + need > budget:
                wait = max(wait or 0.0, _period_left(now, month=True))
        return wait

    def _take(
        self, buckets: tuple[Bucket, ...], reserved: tuple[int, ...], now: float, day: str,
        month: str,
    ) -> None:  # fmt: skip
        for bucket, need in zip(buckets, reserved, strict=True):
            limit, key = bucket.limit, bucket.key
            if limit.requests_per_minute is not None:
                tat = self._requests.get(key, now)
                interval = 60.0 / limit.requests_per_minute
                self._requests[key] = (tat if tat > now else now) + interval
            if limit.tokens_per_minute is not None:
                tat = self._tokens.get(key, now)
                per_token = 60.0 / limit.tokens_per_minute
                self._tokens[key] = (tat if tat > now else now) + need * per_token
            if limit.concurrency is not None:
                self._inflight[key] = self._inflight.get(key, 0) + 1
            if limit.tokens_per_day is not None:
                self._used[(key, day)] = self._used.get((key, day), 0) + need
            if limit.tokens_per_month is not None:
                self._used[(key, month)] = self._used.get((key, month), 0) + need

    def finish(self, grant: Grant, prompt: int, completion: int) -> None:
        if grant.finished:
            return
        grant.finished = True
        now = self._clock()
        for bucket, reserved in zip(grant.buckets, grant.reserved, strict=True):
            limit, key = bucket.limit, bucket.key
            if limit.concurrency is not None:
                self._inflight[key] = max(0, self._inflight.get(key, 0) - 1)
            if not limit.counts_tokens:
                continue
            delta = limit.tokens(prompt, completion) - reserved
            if delta and limit.tokens_per_minute is not None:
                per_token = 60.0 / limit.tokens_per_minute
                # a bucket swept while the request ran starts from now: a debt still counts
                current = self._tokens.get(key, now)
                self._tokens[key] = max(current + delta * per_token, now)
            budgets = ((limit.tokens_per_day, grant.day), (limit.tokens_per_month, grant.month))
            for budget, period in budgets:
                if budget is not None and delta:
                    self._used[(key, period)] = max(0, self._used.get((key, period), 0) + delta)

    def in_flight(self, key: str) -> int:
        return self._inflight.get(key, 0)

    def used(self, key: str, period: str) -> int:
        return self._used.get((key, period), 0)

    def _sweep(self, now: float) -> None:
        """Forget idle buckets (their TAT is in the past: a fresh bucket behaves the same)."""
        self._sweep_at = now + 60.0
        for table in (self._requests, self._tokens):
            for key in [k for k, tat in table.items() if tat <= now]:
                del table[key]
        for key in [k for k, n in self._inflight.items() if n == 0]:
            del self._inflight[key]
        day, month = periods(now)
        for used_key in [k for k in self._used if k[1] not in (day, month)]:
            del self._used[used_key]

    async def aclose(self) -> None:
        return None
