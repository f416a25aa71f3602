"""MemoryLimiter against a fake clock: GCRA requests and tokens, concurrency, budgets.

Most tests run twice: with a small clock value and with a realistic Unix time, where a float
second has only ~2.4e-7 s of resolution (the limiter must not refuse on rounding errors).
"""

from __future__ import annotations

import calendar
import dataclasses
import math
import random
from typing import Any

import pytest

from bastion.errors import BadRequestError, GatewayError, QuotaExceededError, RateLimitError
from bastion.limits.limiter import Grant, MemoryLimiter, RateInfo, _duration, rate_headers
from bastion.limits.plan import Bucket, Limit
from bastion.settings import LimitSettings

NOON = float(calendar.timegm((2025, 6, 15, 12, 0, 0)))  # 2025-06-15 12:00:00 UTC
"""A realistic clock value, on a whole second (budget periods are computed from it)."""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=[1000.0, NOON + 0.123456], ids=["small-clock", "unix-clock"])
def clock(request: pytest.FixtureRequest) -> Clock:
    return Clock(request.param)


def bucket(key: str, **settings: Any) -> Bucket:
    return Bucket(key, Limit.of(LimitSettings(**settings)))


def refusal(
    limiter: MemoryLimiter, buckets: tuple[Bucket, ...], prompt: int = 0, completion: int = 0
) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        limiter.acquire_now(buckets, prompt, completion)
    return caught.value


def retry_after_ms(error: GatewayError) -> int:
    return int(dict(error.headers)[b"retry-after-ms"])


def retry_after(error: GatewayError) -> int:
    return int(dict(error.headers)[b"retry-after"])


def attempt(
    limiter: MemoryLimiter, buckets: tuple[Bucket, ...], prompt: int, completion: int
) -> Grant | GatewayError:
    try:
        return limiter.acquire_now(buckets, prompt, completion)
    except GatewayError as error:
        return error


def outcome(result: Grant | GatewayError) -> tuple[object, ...]:
    """A comparable summary of an attempt (what the caller would see)."""
    if isinstance(result, Grant):
        return ("admitted", result.reserved, result.info)
    return (type(result).__name__, result.status, result.code, result.headers)


# --- requests per minute ------------------------------------------------------------------


@pytest.mark.parametrize("rpm", [60, 7, 90, 1000])
def test_a_steady_rate_is_admitted_indefinitely_and_an_early_request_is_refused(
    clock: Clock, rpm: int
) -> None:
    limiter = MemoryLimiter(clock)
    only = (bucket("k", requests_per_minute=rpm, burst=1),)
    interval = 60 / rpm
    for _ in range(3 * rpm):  # three minutes at exactly the allowed rate
        limiter.acquire_now(only, 0, 0)
        clock.now += interval
    clock.now -= interval / 2  # the next one comes half an interval early
    error = refusal(limiter, only)
    assert type(error) is RateLimitError
    assert error.status == 429
    assert error.code == "rate_limit_exceeded"
    assert abs(retry_after_ms(error) - interval / 2 * 1000) <= 1
    assert retry_after(error) == max(1, math.ceil(interval / 2))
    clock.now += interval / 2  # on time: admitted, and the refusal took nothing
    limiter.acquire_now(only, 0, 0)


def test_an_early_request_at_60_rpm_waits_half_a_second() -> None:
    clock = Clock(1000.0)
    limiter = MemoryLimiter(clock)
    only = (bucket("k", requests_per_minute=60, burst=1),)
    limiter.acquire_now(only, 0, 0)
    clock.now += 0.5
    error = refusal(limiter, only)
    headers = dict(error.headers)
    assert headers[b"retry-after"] == b"1"
    assert headers[b"retry-after-ms"] == b"500"


def test_an_idle_bucket_with_a_burst_of_one_admits_at_a_real_clock_value() -> None:
    # Regression: with a 1e-9 s tolerance, float rounding at Unix-time magnitudes made about
    # half of these rates refuse every request (now + 60/rpm rounds up, past the limit).
    refused = []
    for now in (NOON, NOON + 0.123456, 2.0**31 - 100.5):
        for rpm in range(1, 601):
            limiter = MemoryLimiter(Clock(now))
            only = (bucket("k", requests_per_minute=rpm, burst=1),)
            if not isinstance(attempt(limiter, only, 0, 0), Grant):
                refused.append((now, rpm))
            elif isinstance(attempt(limiter, only, 0, 0), Grant):
                refused.append((now, -rpm))  # and the second, at once, must be refused
    assert refused == []


@pytest.mark.parametrize(("rpm", "burst"), [(60, 5), (120, 10), (6, 2), (90, 3), (60, 60)])
def test_a_burst_is_admitted_at_once_then_the_steady_rate(
    clock: Clock, rpm: int, burst: int
) -> None:
    limiter = MemoryLimiter(clock)
    only = (bucket("k", requests_per_minute=rpm, burst=burst),)
    interval = 60 / rpm
    for _ in range(burst):
        limiter.acquire_now(only, 0, 0)
    error = refusal(limiter, only)
    assert type(error) is RateLimitError
    assert abs(retry_after_ms(error) - interval * 1000) <= 1
    clock.now += interval  # one interval later: exactly one more
    limiter.acquire_now(only, 0, 0)
    assert type(refusal(limiter, only)) is RateLimitError
    clock.now += burst * interval  # a whole burst later: the whole burst again
    for _ in range(burst):
        limiter.acquire_now(only, 0, 0)
    assert type(refusal(limiter, only)) is RateLimitError


def test_the_default_burst_is_the_rate_per_minute(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    only = (bucket("k", requests_per_minute=30),)
    for _ in range(30):
        limiter.acquire_now(only, 0, 0)
    assert type(refusal(limiter, only)) is RateLimitError


class FixedWindow:
    """What a per-minute fixed window counter would do (for contrast)."""

    def __init__(self, limit: int, origin: float) -> None:
        self.limit, self.origin = limit, origin
        self.counts: dict[int, int] = {}

    def admit(self, now: float) -> bool:
        window = math.floor((now - self.origin) / 60)
        if self.counts.get(window, 0) >= self.limit:
            return False
        self.counts[window] = self.counts.get(window, 0) + 1
        return True


def test_there_is_no_burst_across_a_window_boundary(clock: Clock) -> None:
    origin = clock.now
    limiter = MemoryLimiter(clock)
    only = (bucket("k", requests_per_minute=60),)  # burst 60
    window = FixedWindow(60, origin)
    clock.now = origin + 59.9
    for _ in range(60):
        limiter.acquire_now(only, 0, 0)
        assert window.admit(clock.now)
    clock.now = origin + 60.1
    refused = [refusal(limiter, only) for _ in range(60)]
    assert all(type(e) is RateLimitError for e in refused)
    assert abs(retry_after_ms(refused[0]) - 800) <= 1  # the next slot: 59.9 + 1 s
    # a fixed window would have let all 60 through again, 120 requests in 0.2 s
    assert all(window.admit(clock.now) for _ in range(60))
    clock.now = origin + 60.9
    limiter.acquire_now(only, 0, 0)
    assert type(refusal(limiter, only)) is RateLimitError


@pytest.mark.parametrize(("rpm", "burst", "seed"), [(60, 5, 1), (600, 20, 2), (7, 1, 3)])
def test_no_window_ever_holds_more_than_the_burst_plus_the_rate(
    clock: Clock, rpm: int, burst: int, seed: int
) -> None:
    rng = random.Random(seed)
    limiter = MemoryLimiter(clock)
    only = (bucket("k", requests_per_minute=rpm, burst=burst),)
    interval = 60 / rpm
    admitted: list[float] = []
    for _ in range(3000):
        clock.now += rng.expovariate(3 / interval)  # three times faster than allowed
        result = attempt(limiter, only, 0, 0)
        if isinstance(result, Grant):
            admitted.append(clock.now)
        else:
            assert type(result) is RateLimitError
    assert len(admitted) > 3000 / 3 * 0.6  # the limiter is not stricter than the rate
    for j, end in enumerate(admitted):
        for i in range(max(0, j - 3 * burst - 10), j + 1):
            allowed = burst + math.floor((end - admitted[i]) / interval + 1e-6)
            assert j - i + 1 <= allowed


def test_a_refused_request_is_admitted_exactly_when_retry_after_says(clock: Clock) -> None:
    start = clock.now

    def crowded() -> tuple[MemoryLimiter, tuple[Bucket, ...]]:
        clock.now = start
        limiter = MemoryLimiter(clock)
        buckets = (bucket("k", requests_per_minute=60, burst=3, tokens_per_minute=1000),)
        limiter.acquire_now(buckets, 500, 0)
        clock.now += 0.25
        limiter.acquire_now(buckets, 400, 0)
        clock.now += 0.25
        return limiter, buckets

    limiter, buckets = crowded()
    wait = retry_after_ms(refusal(limiter, buckets, 300, 0)) / 1000
    # 900 tokens hold the bucket until 54 s after the start, 300 more until 72 s: 12 s past
    # the 60 s it may run ahead, 11.5 s from now
    assert wait == pytest.approx(11.5, abs=0.002)
    clock.now += wait
    limiter.acquire_now(buckets, 300, 0)
    limiter, buckets = crowded()
    clock.now += wait - 0.002
    assert type(refusal(limiter, buckets, 300, 0)) is RateLimitError


# --- what the caller is told --------------------------------------------------------------


def test_rate_info_reports_the_limits_and_what_is_left() -> None:
    clock = Clock(1000.0)
    limiter = MemoryLimiter(clock)
    only = (bucket("k", requests_per_minute=60, burst=5, tokens_per_minute=1000),)
    first = limiter.acquire_now(only, 100, 500)
    info = first.info
    assert dataclasses.astuple(info) == (60, 4, pytest.approx(1.0), 1000, 400, pytest.approx(36.0))
    assert rate_headers(first.info) == (
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"4"),
        (b"x-ratelimit-reset-requests", b"1s"),
        (b"x-ratelimit-limit-tokens", b"1000"),
        (b"x-ratelimit-remaining-tokens", b"400"),
        (b"x-ratelimit-reset-tokens", b"36s"),
    )
    clock.now += 0.5
    second = limiter.acquire_now(only, 50, 50)
    assert second.info.remaining_requests == 3
    assert second.info.reset_requests == pytest.approx(1.5)
    assert second.info.remaining_tokens == 308  # 18.5 s of 60 left: 308.3 tokens
    assert second.info.reset_tokens == pytest.approx(41.5)
    assert dict(rate_headers(second.info))[b"x-ratelimit-reset-tokens"] == b"41.5s"


def test_rate_info_comes_from_the_tightest_bucket_of_each_kind() -> None:
    clock = Clock(1000.0)
    limiter = MemoryLimiter(clock)
    busy = bucket("busy", requests_per_minute=60, burst=5)
    roomy = bucket("roomy", requests_per_minute=600, burst=100, tokens_per_minute=100_000)
    tokens = bucket("tokens", tokens_per_minute=1000)
    for _ in range(3):
        limiter.acquire_now((busy,), 0, 0)
    grant = limiter.acquire_now((roomy, busy, tokens), 200, 100)
    info = grant.info
    assert (info.limit_requests, info.remaining_requests, info.reset_requests) == (
        60,
        1,
        pytest.approx(4.0),
    )
    assert (info.limit_tokens, info.remaining_tokens, info.reset_tokens) == (
        1000,
        700,
        pytest.approx(18.0),
    )
    assert grant.reserved == (300, 0, 300)


def test_a_refusal_reports_nothing_remaining_and_when_to_retry() -> None:
    clock = Clock(1000.0)
    limiter = MemoryLimiter(clock)
    only = (bucket("k", requests_per_minute=60, burst=2),)
    limiter.acquire_now(only, 0, 0)
    limiter.acquire_now(only, 0, 0)
    headers = dict(refusal(limiter, only).headers)
    assert headers[b"x-ratelimit-limit-requests"] == b"60"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert headers[b"retry-after"] == b"1"
    assert headers[b"retry-after-ms"] == b"1000"
    assert b"x-ratelimit-limit-tokens" not in headers


def test_a_bucket_without_rate_limits_reports_no_rate_headers(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    grant = limiter.acquire_now((bucket("k", concurrency=3, tokens_per_day=10_000),), 10, 10)
    assert grant.info == RateInfo()
    assert rate_headers(grant.info) == ()


@pytest.mark.parametrize(
    ("info", "retry", "expected"),
    [
        (RateInfo(), None, ()),
        (RateInfo(), 0.2, ((b"retry-after", b"1"), (b"retry-after-ms", b"200"))),
        (RateInfo(), 0.0001, ((b"retry-after", b"1"), (b"retry-after-ms", b"1"))),
        (RateInfo(), 2.5, ((b"retry-after", b"3"), (b"retry-after-ms", b"2500"))),
        (RateInfo(), 43200.0, ((b"retry-after", b"43200"), (b"retry-after-ms", b"43200000"))),
        (
            RateInfo(limit_requests=10, remaining_requests=None, reset_requests=None),
            None,
            (
                (b"x-ratelimit-limit-requests", b"10"),
                (b"x-ratelimit-remaining-requests", b"0"),
                (b"x-ratelimit-reset-requests", b"0ms"),
            ),
        ),
        (
            RateInfo(limit_tokens=5000, remaining_tokens=12, reset_tokens=360.0),
            1.0,
            (
                (b"x-ratelimit-limit-tokens", b"5000"),
                (b"x-ratelimit-remaining-tokens", b"12"),
                (b"x-ratelimit-reset-tokens", b"6m0s"),
                (b"retry-after", b"1"),
                (b"retry-after-ms", b"1000"),
            ),
        ),
    ],
)
def test_rate_headers(
    info: RateInfo, retry: float | None, expected: tuple[tuple[bytes, bytes], ...]
) -> None:
    assert rate_headers(info, retry) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, b"0ms"),
        (-1.0, b"0ms"),
        (0.0004, b"0ms"),
        (0.02, b"20ms"),
        (0.5, b"500ms"),
        (0.999, b"999ms"),
        (1.0, b"1s"),
        (1.5, b"1.5s"),
        (36.0, b"36s"),
        (59.25, b"59.25s"),
        (12.3456, b"12.346s"),
        (60.0, b"1m0s"),
        (61.5, b"1m1.5s"),
        (360.0, b"6m0s"),
        (3600.0, b"60m0s"),
    ],
)
def test_duration_format(seconds: float, expected: bytes) -> None:
    assert _duration(seconds) == expected


# --- tokens per minute --------------------------------------------------------------------


def test_a_reservation_is_reconciled_with_what_was_used(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    only = (bucket("k", tokens_per_minute=1000),)
    grant = limiter.acquire_now(only, 100, 500)
    assert grant.reserved == (600,)
    assert type(refusal(limiter, only, 401, 0)) is RateLimitError
    limiter.finish(grant, 60, 40)  # 100 used: 500 given back at once
    assert type(refusal(limiter, only, 901, 0)) is RateLimitError
    limiter.acquire_now(only, 900, 0)
    assert type(refusal(limiter, only, 1, 0)) is RateLimitError


def test_tokens_used_beyond_the_reservation_delay_later_requests(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    only = (bucket("k", tokens_per_minute=1000),)
    grant = limiter.acquire_now(only, 50, 50)
    limiter.finish(grant, 100, 600)  # 700 used, 600 more than reserved
    error = refusal(limiter, only, 400, 0)  # 300 left: 100 short, 6 s of refill
    assert abs(retry_after_ms(error) - 6000) <= 1
    limiter.acquire_now(only, 300, 0)
    assert type(refusal(limiter, only, 1, 0)) is RateLimitError
    clock.now += 6  # 6 s refill 100
    assert type(refusal(limiter, only, 101, 0)) is RateLimitError
    limiter.acquire_now(only, 100, 0)
    clock.now += 60
    limiter.acquire_now(only, 1000, 0)


def test_tokens_refill_at_the_rate_per_minute(clock: Clock) -> None:
    start = clock.now
    limiter = MemoryLimiter(clock)
    only = (bucket("k", tokens_per_minute=1000),)
    limiter.finish(limiter.acquire_now(only, 1000, 0), 1000, 0)
    for elapsed, available in ((0.0, 0), (6.0, 100), (30.0, 500), (59.94, 999), (60.0, 1000)):
        clock.now = start + elapsed
        if available < 1000:
            assert type(refusal(limiter, only, available + 1, 0)) is RateLimitError
        if available:
            grant = limiter.acquire_now(only, available, 0)
            limiter.finish(grant, 0, 0)  # give it back: the next probe sees the same level
    clock.now = start + 600  # a long idle time refills no more than the capacity
    with pytest.raises(BadRequestError):
        limiter.acquire_now(only, 1001, 0)
    limiter.acquire_now(only, 1000, 0)
    assert type(refusal(limiter, only, 1, 0)) is RateLimitError


def probe_of(count: str, tokens: int) -> tuple[int, int]:
    """A request that counts ``tokens`` of this kind, and a large amount of the other."""
    return {"total": (tokens, 0), "prompt": (tokens, 99_999), "completion": (99_999, tokens)}[count]


@pytest.mark.parametrize(
    ("count", "reserved", "used"),
    [("total", 500, 150), ("prompt", 300, 100), ("completion", 200, 50)],
)
def test_the_count_kind_chooses_which_tokens_are_counted(
    clock: Clock, count: str, reserved: int, used: int
) -> None:
    limiter = MemoryLimiter(clock)
    only = (bucket("k", tokens_per_minute=1000, count=count),)
    grant = limiter.acquire_now(only, 300, 200)
    assert grant.reserved == (reserved,)
    assert grant.info.remaining_tokens == 1000 - reserved
    limiter.finish(grant, 100, 50)
    assert type(refusal(limiter, only, *probe_of(count, 1000 - used + 1))) is RateLimitError
    limiter.acquire_now(only, *probe_of(count, 1000 - used))


@pytest.mark.parametrize(
    "settings",
    [
        {"tokens_per_minute": 1000},
        {"tokens_per_day": 1000},
        {"tokens_per_month": 1000},
        {"tokens_per_minute": 5000, "tokens_per_day": 1000, "tokens_per_month": 2000},
    ],
)
def test_a_request_larger_than_a_limit_is_a_bad_request_even_when_idle(
    clock: Clock, settings: dict[str, int]
) -> None:
    limiter = MemoryLimiter(clock)
    other = bucket("key:api_key:k1", requests_per_minute=60, concurrency=1)
    too_small = bucket("user:api_key:alice", **settings)
    error = refusal(limiter, (other, too_small), 600, 401)
    assert type(error) is BadRequestError
    assert (error.status, error.code, error.param) == (400, "tokens_exceed_limit", "max_tokens")
    assert "1001" in error.message
    assert "user" in error.message
    assert error.headers == ()
    assert limiter.in_flight("key:api_key:k1") == 0  # nothing was taken
    limiter.acquire_now((other, too_small), 600, 400)  # exactly the limit fits


def test_a_request_that_can_never_fit_is_a_bad_request_even_when_also_rate_limited(
    clock: Clock,
) -> None:
    limiter = MemoryLimiter(clock)
    busy = bucket("a", requests_per_minute=1)
    small = bucket("b", tokens_per_minute=100)
    limiter.acquire_now((busy,), 0, 0)
    assert type(refusal(limiter, (busy, small), 101, 0)) is BadRequestError
    assert type(refusal(limiter, (busy, small), 100, 0)) is RateLimitError


def test_a_request_counting_no_tokens_is_not_held_by_a_full_token_bucket(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    only = (bucket("k", tokens_per_minute=1000, count="completion"),)
    limiter.acquire_now(only, 0, 1000)
    assert type(refusal(limiter, only, 0, 1)) is RateLimitError
    grant = limiter.acquire_now(only, 5000, 0)  # an embedding: no completion
    assert grant.reserved == (0,)


# --- concurrency --------------------------------------------------------------------------


def test_concurrency_is_taken_at_admission_and_given_back_once(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    only = (bucket("k", concurrency=2),)
    first = limiter.acquire_now(only, 0, 0)
    second = limiter.acquire_now(only, 0, 0)
    assert limiter.in_flight("k") == 2
    error = refusal(limiter, only)
    assert type(error) is RateLimitError
    assert retry_after(error) == 1
    assert limiter.in_flight("k") == 2
    limiter.finish(first, 0, 0)
    assert first.finished
    assert limiter.in_flight("k") == 1
    limiter.finish(first, 0, 0)  # again (an error path after the normal end): no effect
    assert limiter.in_flight("k") == 1
    third = limiter.acquire_now(only, 0, 0)
    assert type(refusal(limiter, only)) is RateLimitError  # not a free slot from the repeat
    limiter.finish(second, 0, 0)
    limiter.finish(third, 0, 0)
    limiter.finish(third, 0, 0)
    assert limiter.in_flight("k") == 0
    limiter.acquire_now(only, 0, 0)
    limiter.acquire_now(only, 0, 0)
    assert type(refusal(limiter, only)) is RateLimitError


def test_a_repeated_finish_reconciles_tokens_once(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    only = (bucket("k", tokens_per_minute=1000, tokens_per_day=10_000),)
    grant = limiter.acquire_now(only, 0, 500)
    limiter.finish(grant, 0, 100)
    limiter.finish(grant, 0, 100)  # would give back another 400 if counted twice
    limiter.finish(grant, 0, 900)  # or take 800 more
    assert limiter.used("k", grant.day) == 100
    assert type(refusal(limiter, only, 901, 0)) is RateLimitError
    limiter.acquire_now(only, 900, 0)


def test_concurrency_is_per_bucket(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    a, b = bucket("a", concurrency=1), bucket("b", concurrency=1)
    grant = limiter.acquire_now((a,), 0, 0)
    limiter.acquire_now((b,), 0, 0)
    assert type(refusal(limiter, (a,))) is RateLimitError
    limiter.finish(grant, 0, 0)
    limiter.acquire_now((a,), 0, 0)


# --- budgets ------------------------------------------------------------------------------


def utc(*when: int) -> float:
    return float(calendar.timegm((*when, 0, 0, 0)[:6]))


def test_a_day_budget_runs_out_until_the_utc_day_ends() -> None:
    clock = Clock(NOON)
    limiter = MemoryLimiter(clock)
    only = (bucket("k", tokens_per_day=1000),)
    limiter.acquire_now(only, 100, 500)
    error = refusal(limiter, only, 401, 0)
    assert type(error) is QuotaExceededError
    assert isinstance(error, RateLimitError)
    assert (error.status, error.type, error.code) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert dict(error.headers)[b"retry-after"] == b"43200"  # to midnight UTC
    assert dict(error.headers)[b"retry-after-ms"] == b"43200000"
    limiter.acquire_now(only, 400, 0)  # exactly what is left
    clock.now = utc(2025, 6, 15, 23, 59, 59) + 0.5
    error = refusal(limiter, only, 1, 0)
    assert type(error) is QuotaExceededError
    assert retry_after(error) == 1
    assert 500 <= retry_after_ms(error) <= 1000
    clock.now = utc(2025, 6, 16)  # a new day: a new budget
    limiter.acquire_now(only, 1000, 0)
    assert type(refusal(limiter, only, 1, 0)) is QuotaExceededError
    assert limiter.used("k", "2025-06-16") == 1000


@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (utc(2025, 6, 15, 12), 43_200),
        (utc(2025, 6, 15), 86_400),
        (utc(2025, 6, 15, 23, 59), 60),
        (utc(2024, 2, 29, 18), 21_600),
    ],
)
def test_a_day_budget_refusal_says_when_the_day_ends(now: float, seconds: int) -> None:
    limiter = MemoryLimiter(Clock(now))
    only = (bucket("k", tokens_per_day=10),)
    limiter.acquire_now(only, 10, 0)
    assert retry_after(refusal(limiter, only, 1, 0)) == seconds


@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (utc(2025, 6, 30, 12), 43_200),
        (utc(2025, 6, 1), 30 * 86_400),
        (utc(2025, 12, 31, 23), 3_600),  # into the next year
        (utc(2025, 2, 10), 19 * 86_400),
        (utc(2024, 2, 28, 12), 86_400 + 43_200),  # a leap year's February
    ],
)
def test_a_month_budget_refusal_says_when_the_month_ends(now: float, seconds: int) -> None:
    limiter = MemoryLimiter(Clock(now))
    only = (bucket("k", tokens_per_month=10),)
    limiter.acquire_now(only, 10, 0)
    error = refusal(limiter, only, 1, 0)
    assert type(error) is QuotaExceededError
    assert retry_after(error) == seconds


def test_a_month_budget_lasts_across_days_and_resets_with_the_utc_month() -> None:
    clock = Clock(utc(2025, 6, 29, 10))
    limiter = MemoryLimiter(clock)
    only = (bucket("k", tokens_per_month=1000),)
    limiter.acquire_now(only, 700, 0)
    clock.now = utc(2025, 6, 30, 23, 59)  # another day, the same month
    assert type(refusal(limiter, only, 301, 0)) is QuotaExceededError
    limiter.acquire_now(only, 300, 0)
    clock.now = utc(2025, 7, 1)
    limiter.acquire_now(only, 1000, 0)
    assert limiter.used("k", "2025-07") == 1000
    assert type(refusal(limiter, only, 1, 0)) is QuotaExceededError


def test_the_longest_wait_of_exhausted_budgets_is_reported() -> None:
    limiter = MemoryLimiter(Clock(utc(2025, 6, 29, 12)))
    only = (bucket("k", tokens_per_day=100, tokens_per_month=100),)
    limiter.acquire_now(only, 100, 0)
    assert retry_after(refusal(limiter, only, 1, 0)) == 86_400 + 43_200
    limiter = MemoryLimiter(Clock(utc(2025, 6, 10, 12)))
    day, month = bucket("d", tokens_per_day=100), bucket("m", tokens_per_month=100)
    limiter.acquire_now((day, month), 100, 0)
    assert retry_after(refusal(limiter, (day, month), 1, 0)) == 20 * 86_400 + 43_200


def test_an_exhausted_budget_is_reported_rather_than_a_rate_limit() -> None:
    limiter = MemoryLimiter(Clock(NOON))
    only = (bucket("k", requests_per_minute=1, tokens_per_day=100),)
    limiter.acquire_now(only, 100, 0)
    error = refusal(limiter, only, 1, 0)  # both refuse: the budget is the lasting reason
    assert type(error) is QuotaExceededError
    assert retry_after(error) == 43_200
    assert dict(error.headers)[b"x-ratelimit-remaining-requests"] == b"0"


def test_budgets_are_reconciled_with_what_was_used() -> None:
    clock = Clock(NOON)
    limiter = MemoryLimiter(clock)
    only = (bucket("k", tokens_per_day=1000, tokens_per_month=5000),)
    grant = limiter.acquire_now(only, 100, 500)
    assert (limiter.used("k", "2025-06-15"), limiter.used("k", "2025-06")) == (600, 600)
    limiter.finish(grant, 60, 40)
    assert (limiter.used("k", "2025-06-15"), limiter.used("k", "2025-06")) == (100, 100)
    assert type(refusal(limiter, only, 901, 0)) is QuotaExceededError
    grant = limiter.acquire_now(only, 900, 0)
    limiter.finish(grant, 0, 0)  # nothing used: all of it back
    assert limiter.used("k", "2025-06-15") == 100
    grant = limiter.acquire_now(only, 10, 10)
    limiter.finish(grant, 500, 400)  # 880 more than reserved
    assert (limiter.used("k", "2025-06-15"), limiter.used("k", "2025-06")) == (1000, 1000)
    assert type(refusal(limiter, only, 1, 0)) is QuotaExceededError


def test_a_budget_is_reconciled_in_the_period_the_request_was_admitted_in() -> None:
    clock = Clock(utc(2025, 6, 30, 23, 59, 30))
    limiter = MemoryLimiter(clock)
    only = (bucket("k", tokens_per_day=1000, tokens_per_month=1000),)
    grant = limiter.acquire_now(only, 0, 800)
    clock.now = utc(2025, 7, 1, 0, 1)  # ends in the next day and month
    limiter.finish(grant, 0, 300)
    assert limiter.used("k", "2025-06-30") == 300
    assert limiter.used("k", "2025-06") == 300
    assert limiter.used("k", "2025-07-01") == 0
    assert limiter.used("k", "2025-07") == 0
    limiter.acquire_now(only, 1000, 0)


# --- all or nothing -----------------------------------------------------------------------

FULL = {
    "requests_per_minute": 60,
    "burst": 2,
    "tokens_per_minute": 1000,
    "concurrency": 2,
    "tokens_per_day": 5000,
    "tokens_per_month": 50_000,
}


def refuser(kind: str) -> tuple[Bucket, int, int, type[GatewayError]]:
    """A bucket that refuses the next request of (prompt, completion), once primed."""
    settings = {
        "requests": {"requests_per_minute": 60, "burst": 1},
        "tokens": {"tokens_per_minute": 300},
        "concurrency": {"concurrency": 1},
        "day": {"tokens_per_day": 300},
        "month": {"tokens_per_month": 300},
        "never": {"tokens_per_minute": 250},
    }[kind]
    error = {"day": QuotaExceededError, "month": QuotaExceededError, "never": BadRequestError}
    return bucket("b", **settings), 100, 200, error.get(kind, RateLimitError)


def probe(limiter: MemoryLimiter, clock: Clock, first: Bucket) -> list[tuple[object, ...]]:
    """What a series of requests on ``first`` alone meets."""
    seen: list[tuple[object, ...]] = []
    grants = []
    for dt, prompt, completion in ((0, 100, 200), (0, 300, 400), (0, 1, 1), (0.5, 10, 10)):
        clock.now += dt
        result = attempt(limiter, (first,), prompt, completion)
        seen.append(outcome(result))
        if isinstance(result, Grant):
            grants.append(result)
    seen.append((limiter.in_flight("a"), limiter.used("a", grants[0].day)))
    for grant in grants:
        limiter.finish(grant, 50, 50)
    seen.append(outcome(attempt(limiter, (first,), 400, 400)))
    return seen


@pytest.mark.parametrize("kind", ["requests", "tokens", "concurrency", "day", "month", "never"])
@pytest.mark.parametrize("refusing_first", [False, True], ids=["second-refuses", "first-refuses"])
def test_a_refusal_by_one_bucket_takes_nothing_from_the_others(
    clock: Clock, kind: str, refusing_first: bool
) -> None:
    start = clock.now
    first = bucket("a", **FULL)
    second, prompt, completion, expected = refuser(kind)
    both = (second, first) if refusing_first else (first, second)

    def primed() -> MemoryLimiter:
        clock.now = start
        limiter = MemoryLimiter(clock)
        if kind != "never":
            limiter.acquire_now((second,), prompt, completion)  # now it is full
        return limiter

    limiter = primed()
    assert type(refusal(limiter, both, prompt, completion)) is expected
    assert limiter.in_flight("a") == 0
    assert limiter.used("a", "2025-06-15") == limiter.used("a", "1970-01-01") == 0
    after_refusal = probe(limiter, clock, first)
    untouched = probe(primed(), clock, first)
    assert after_refusal == untouched
    assert [entry[0] for entry in untouched[:4]] == [
        "admitted",
        "admitted",
        "RateLimitError",
        "RateLimitError",
    ]


def test_an_admitted_request_counts_against_every_bucket(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    a = bucket("a", requests_per_minute=60, burst=1, concurrency=5)
    b = bucket("b", tokens_per_minute=1000, concurrency=1, tokens_per_day=10_000)
    grant = limiter.acquire_now((a, b), 100, 100)
    assert grant.reserved == (0, 200)
    assert (limiter.in_flight("a"), limiter.in_flight("b")) == (1, 1)
    assert limiter.used("b", grant.day) == 200
    assert type(refusal(limiter, (a,))) is RateLimitError
    assert type(refusal(limiter, (b,), 1, 0)) is RateLimitError  # concurrency
    limiter.finish(grant, 10, 10)
    assert (limiter.in_flight("a"), limiter.in_flight("b")) == (0, 0)
    assert limiter.used("b", grant.day) == 20
    limiter.acquire_now((b,), 980, 0)


async def test_acquire_is_acquire_now(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    only = (bucket("k", requests_per_minute=60, burst=1, tokens_per_day=100),)
    grant = await limiter.acquire(only, 10, 20)
    assert grant.reserved == (30,)
    with pytest.raises(RateLimitError):
        await limiter.acquire(only, 0, 0)
    await limiter.aclose()


# --- forgetting idle buckets --------------------------------------------------------------


def workload(limiter: MemoryLimiter, clock: Clock, seed: int) -> list[tuple[object, ...]]:
    """Many keys, bursts and long pauses; usage reported soon, below or above reservations."""
    rng = random.Random(seed)
    keys = [f"user:{i}" for i in range(30)]
    limits = [
        {"requests_per_minute": 30, "burst": 3},
        {"tokens_per_minute": 2000, "count": "completion"},
        {"concurrency": 2, "tokens_per_day": 20_000},
        {"requests_per_minute": 600, "tokens_per_minute": 5000, "tokens_per_month": 200_000},
    ]
    buckets = {key: bucket(key, **rng.choice(limits)) for key in keys}
    shared = bucket("all", requests_per_minute=1200, concurrency=20)
    open_grants: list[tuple[float, Grant]] = []
    seen: list[tuple[object, ...]] = []
    for _ in range(4000):
        clock.now += rng.choice((0.0, 0.01, 0.3, 2.0, 45.0, 200.0, 5000.0))
        due = [(at, g) for at, g in open_grants if at <= clock.now]
        open_grants = [(at, g) for at, g in open_grants if at > clock.now]
        for _, grant in due:  # those finish within what they reserved: only refunds
            limiter.finish(grant, 0, rng.randrange(0, 101))
        key = rng.choice(keys)
        result = attempt(limiter, (buckets[key], shared), rng.randrange(1, 50), 100)
        seen.append(outcome(result))
        if isinstance(result, Grant):
            if rng.random() < 0.3:  # ends at once, maybe beyond its reservation
                limiter.finish(result, rng.randrange(1, 80), rng.randrange(0, 400))
            else:
                open_grants.append((clock.now + rng.choice((0.1, 1.0, 30.0, 90.0)), result))
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_forgetting_idle_buckets_changes_no_decision(clock: Clock, seed: int) -> None:
    start = clock.now
    sweeping = MemoryLimiter(clock)
    remembering = MemoryLimiter(clock)
    remembering._sweep_at = math.inf  # never sweeps
    seen = workload(sweeping, clock, seed)
    clock.now = start
    assert workload(remembering, clock, seed) == seen
    assert len(remembering._requests) + len(remembering._tokens) > 10
    # long after: one more request sweeps everything idle away
    clock.now += 40 * 86_400
    late = bucket("late", requests_per_minute=60, tokens_per_minute=1000, tokens_per_day=100)
    grant = sweeping.acquire_now((late,), 10, 10)
    assert set(sweeping._requests) == set(sweeping._tokens) == {"late"}
    assert all(n > 0 for n in sweeping._inflight.values())
    assert set(sweeping._used) == {("late", grant.day)}


def test_a_sweep_keeps_what_still_counts(clock: Clock) -> None:
    limiter = MemoryLimiter(clock)
    busy = bucket("busy", requests_per_minute=1, concurrency=1, tokens_per_day=10**9)
    held = limiter.acquire_now((busy,), 100, 0)
    clock.now += 61  # the request bucket has refilled; the slot is still held
    other = bucket("other", requests_per_minute=60)
    limiter.acquire_now((other,), 0, 0)  # sweeps
    assert "busy" not in limiter._requests
    assert limiter.in_flight("busy") == 1
    assert limiter.used("busy", held.day) == 100
    assert type(refusal(limiter, (busy,))) is RateLimitError  # concurrency still counts
    limiter.finish(held, 40, 0)
    assert limiter.used("busy", held.day) == 40
    assert limiter.in_flight("busy") == 0
    limiter.acquire_now((busy,), 0, 0)
