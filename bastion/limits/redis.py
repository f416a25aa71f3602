"""The limiter with its state in Redis, shared by every replica of the gateway.

It makes exactly the decisions of :class:`~bastion.limits.limiter.MemoryLimiter` (same
algorithms, same refusals, same headers), but the state lives in Redis and each decision is
one Lua script run atomically by the server (:mod:`bastion.limits.scripts`, which also draws
the keys), so replicas never race each other and a decision costs one round trip.

**Requests in flight** are leases rather than a counter: a grant adds its lease id with the
time it lapses (``lease_seconds`` after admission, 30 s by default), ``finish`` removes it, and
every decision first drops lapsed leases. While its request runs, its replica renews the lease
(:data:`~bastion.limits.scripts.RENEW_LUA`): every third of ``lease_seconds``, one call renews
all of the replica's live leases (no timer and no round trip per request), so a stream longer
than a lease keeps its slot, and one that ran through an outage longer than a lease gets its
lease back with the first renewal that reaches Redis. A replica that dies with requests in
flight therefore holds their slots for at most ``lease_seconds`` (a counter with a refreshed
expiry would hold them forever while the bucket stays busy), and releasing is idempotent
(``ZREM`` of one member), so a release retried after a lost reply can never give back a slot
twice.

**Finishing** (:data:`~bastion.limits.scripts.FINISH_LUA`: release the leases, move the token
TAT and the budgets by ``used - reserved``) never makes the caller wait:
:meth:`RedisLimiter.finish` marks the grant finished (a second call does nothing) and queues
the work; one background task sends everything queued, in one pipeline, on a connection of its
own (so releases never queue behind admissions), as soon as the event loop runs it: a round
trip later, well under a millisecond on a local network. If Redis fails, the releases are
queued again (at most 100,000) and retried, 0.25 s later, then at most a second apart, until
Redis answers or their leases have lapsed anyway (logged once per outage, and once when Redis
answers again), so a blip costs a slot for about as long as the blip. The token reconciliation
is not retried, since it is not idempotent and a lost reply cannot tell whether it was applied:
the reservation then stands, which errs on the side of limiting. A grant without leases and
with nothing to reconcile (used exactly what it reserved, or counts no tokens) costs no call at
all.

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
from bastion.limits.scripts import ACQUIRE_LUA, FINISH_LUA, FINISH_PER_BUCKET, RENEW_LUA
from bastion.settings import RedisSettings, Secret

__all__ = [
    "LimiterBackendError",
    "RedisGrant",
    "RedisLimiter",
    "reservations",
]

logger = logging.getLogger("bastion.limits")

_BATCH: Final = 256
_RETRY_DELAY: Final = 0.25
"""Seconds before failed releases are sent again; doubled after each failure in a row..."""
_RETRY_MAX_DELAY: Final = 1.0
"""... up to this (also how soon a failed renewal is tried again)."""
_MAX_PENDING: Final = 100_000


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


# Not slots=True: slots of its own would hide the compiled Grant's fields from compiled code
# (bastion/build.py); without them, instances have a __dict__ and take weak references.
@dataclass
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
            # not ``day, month``: those names hold the reply's bytes below, and a name has
            # one type in a function (the compiled build checks it)
            today, this_month = periods(time.time())
            return RedisGrant((), (), today, this_month, RateInfo())
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
            for i in range(7, len(args), FINISH_PER_BUCKET):
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
    return [tuple(args[i : i + FINISH_PER_BUCKET])
            for i in range(3, len(args), FINISH_PER_BUCKET)]  # fmt: skip


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
