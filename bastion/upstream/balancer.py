"""Which upstream serves the next request of a model: health, ejection and least outstanding.

An :class:`Upstream` is one model server (one origin), shared by every model it serves, with
what is known about it: requests in flight, whether active health checks pass, and whether
it is ejected for failing requests (passive). A :class:`Balancer` picks, for one model, the
available upstream with the fewest requests in flight relative to its weight.

Passive ejection follows the circuit-breaker pattern: ``failures`` consecutive failures
eject an upstream for ``duration`` seconds (doubling with each ejection in a row, up to
``max_duration``); when that time is up, one request is let through as a trial (half-open):
its success puts the upstream back, its failure ejects it again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bastion.errors import NoUpstreamError
from bastion.settings import EjectionSettings
from bastion.upstream.origin import Origin

__all__ = ["Balancer", "Upstream", "UpstreamSet", "Weighted"]


class Upstream:
    """One model server and its state. Mutated only on the event loop's thread."""

    __slots__ = (
        "_trials",
        "authorization",
        "checked",
        "checks_failed",
        "checks_passed",
        "consecutive_ejections",
        "ejected_until",
        "ejection",
        "ejections",
        "errors",
        "failures",
        "health_path",
        "healthy",
        "name",
        "origin",
        "outstanding",
        "requests",
        "retries",
        "trial",
    )

    def __init__(
        self,
        origin: Origin,
        ejection: EjectionSettings,
        *,
        health_path: str = "/health",
        authorization: bytes | None = None,
    ) -> None:
        self.origin = origin
        self.name = origin.host_header.decode()
        """Display name for logs and metrics: ``host:port``, never a credential."""
        self.health_path = health_path
        self.authorization = authorization
        self.ejection = ejection
        self.outstanding = 0
        self.healthy = True
        """What active health checks say (True until a check says otherwise)."""
        self.checked = False
        """An active check has answered at least once (until then, requests are let
        through but readiness is not claimed)."""
        self.checks_failed = 0
        self.checks_passed = 0
        self.failures = 0
        """Consecutive failed requests."""
        self.ejected_until = 0.0
        self.consecutive_ejections = 0
        self.trial = 0
        """The token of the half-open trial request in flight (0: none)."""
        self._trials = 0
        self.requests = 0
        self.errors = 0
        self.retries = 0
        self.ejections = 0

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0.0

    def available(self, now: float) -> bool:
        """May a request be sent now? (Healthy, and not ejected or due for a trial.)"""
        if not self.healthy:
            return False
        if self.ejected_until == 0.0:
            return True
        return now >= self.ejected_until and not self.trial

    def begin(self, now: float) -> int:
        """A request starts. Returns its trial token: non-zero when it is the half-open trial
        of an ejected upstream, 0 otherwise; pass it to :meth:`succeeded`, :meth:`failed` or
        :meth:`abandoned`. Tokens are never reused, so a trial that outlives its ejection
        (the upstream was restored and ejected again meanwhile) decides nothing."""
        self.outstanding += 1
        self.requests += 1
        if self.ejected_until and now >= self.ejected_until and not self.trial:
            self._trials += 1
            self.trial = self._trials
            return self.trial
        return 0

    def succeeded(self, trial: int) -> None:
        self.outstanding -= 1
        self.failures = 0
        if trial and trial == self.trial:  # a request begun before the ejection proves nothing
            self._restore()

    def failed(self, now: float, trial: int) -> None:
        self.outstanding -= 1
        self.errors += 1
        if trial and trial == self.trial:
            self.trial = 0
            self._eject(now)
        elif not self.ejected_until:
            self.failures += 1
            if self.ejection.failures and self.failures >= self.ejection.failures:
                self._eject(now)

    def abandoned(self, trial: int) -> None:
        """The request ended without a verdict on the upstream (the caller went away)."""
        self.outstanding -= 1
        if trial and trial == self.trial:
            self.trial = 0

    def check_passed(self, healthy_after: int) -> None:
        self.checks_failed = 0
        self.checks_passed += 1
        first, self.checked = not self.checked, True
        if not self.healthy and (first or self.checks_passed >= healthy_after):
            self.healthy = True
            self._restore()  # it was down and is back: forget what passive ejection knew

    def check_failed(self, unhealthy_after: int) -> None:
        self.checks_passed = 0
        self.checks_failed += 1
        first, self.checked = not self.checked, True
        if self.healthy and (first or self.checks_failed >= unhealthy_after):
            self.healthy = False

    def retry_after(self, now: float) -> float:
        """Seconds until this upstream may be tried again (for ``Retry-After``)."""
        return max(0.0, self.ejected_until - now) if self.healthy else 0.0

    def _eject(self, now: float) -> None:
        base = self.ejection.duration * (2 ** min(self.consecutive_ejections, 16))
        self.ejected_until = now + min(base, self.ejection.max_duration)
        self.consecutive_ejections += 1
        self.ejections += 1

    def _restore(self) -> None:
        self.ejected_until = 0.0
        self.consecutive_ejections = 0
        self.failures = 0
        self.trial = 0


@dataclass(frozen=True, slots=True)
class Weighted:
    upstream: Upstream
    weight: int
    authorization: bytes | None
    send_request_id: bool


class Balancer:
    """Picks an upstream for one model: available, with the fewest requests in flight.

    With equal weights, the member with the fewest requests in flight wins and ties go in
    turn. With unequal weights, each member's share is ``weight / (in flight + 1)``, spread
    by smooth weighted round robin: idle members get requests in proportion to their
    weights, and a member with requests piling up gets fewer (as Envoy's least-request
    balancer does).
    """

    __slots__ = ("_clock", "_credit", "_equal", "_members", "_only", "_turn")

    def __init__(
        self, members: Iterable[Weighted], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        """``time.monotonic``; a test's clock."""
        self._members = tuple(m for m in members if m.weight > 0)
        if not self._members:
            raise ValueError("a balancer needs an upstream with a weight above 0")
        self._only = self._members[0] if len(self._members) == 1 else None
        self._equal = len({m.weight for m in self._members}) == 1
        self._credit = [0.0] * len(self._members)
        self._turn = 0

    @property
    def members(self) -> tuple[Weighted, ...]:
        return self._members

    def pick(self) -> Weighted:
        """The member to send a request to: available, with the fewest requests in flight
        per weight. Ties (an idle model, say) are broken in turn, so that load spreads from
        the first request on. Raises :class:`~bastion.errors.NoUpstreamError` when every
        upstream is down or ejected."""
        now = self._clock()
        only = self._only
        if only is not None:
            if only.upstream.available(now):
                return only
            raise self._unavailable(now)
        best = self._least_loaded((), now)
        if best is None:
            raise self._unavailable(now)
        return best

    def pin(self, member: Weighted) -> Weighted:
        """``member`` itself, for a request only it can serve (it keeps what the request
        names): NoUpstreamError while it is down or ejected, never another member."""
        now = self._clock()
        if member.upstream.available(now):
            return member
        upstream = member.upstream
        wait = max(1, math.ceil(upstream.retry_after(now))) if upstream.healthy else 5
        raise NoUpstreamError(headers=((b"retry-after", str(wait).encode()),))

    def pick_other(self, tried: tuple[Upstream, ...]) -> Weighted | None:
        """Like :meth:`pick`, leaving out the upstreams ``tried``; None when none is left."""
        if self._only is not None:
            return None
        return self._least_loaded(tried, self._clock())

    def _least_loaded(self, tried: tuple[Upstream, ...], now: float) -> Weighted | None:
        if not self._equal:
            return self._weighted(tried, now)
        members = self._members
        count = len(members)
        start = self._turn = (self._turn + 1) % count
        best: Weighted | None = None
        fewest = 0
        for i in range(count):
            member = members[(start + i) % count]
            upstream = member.upstream
            if upstream in tried or not upstream.available(now):
                continue
            if best is None or upstream.outstanding < fewest:
                best, fewest = member, upstream.outstanding
        return best

    def _weighted(self, tried: tuple[Upstream, ...], now: float) -> Weighted | None:
        credit = self._credit
        best = -1
        total = 0.0
        for i, member in enumerate(self._members):
            upstream = member.upstream
            if upstream in tried or not upstream.available(now):
                continue
            share = member.weight / (upstream.outstanding + 1)
            credit[i] += share
            total += share
            if best < 0 or credit[i] > credit[best]:
                best = i
        if best < 0:
            return None
        credit[best] -= total
        return self._members[best]

    def count_available(self, now: float, *, checked: bool = False) -> int:
        """How many members could take a request at ``now`` (monotonic)? With ``checked``,
        only upstreams whose health check has answered count."""
        return sum(
            1
            for m in self._members
            if m.upstream.available(now) and (m.upstream.checked or not checked)
        )

    def available_count(self) -> int:
        """How many members could take a request now (a metric, read at scrape time)."""
        now = self._clock()
        return sum(1 for m in self._members if m.upstream.available(now))

    def _unavailable(self, now: float) -> NoUpstreamError:
        waits = [m.upstream.retry_after(now) for m in self._members if m.upstream.healthy]
        wait = max(1, math.ceil(min(waits))) if waits else 5
        return NoUpstreamError(headers=((b"retry-after", str(wait).encode()),))


class UpstreamSet:
    """Every upstream the gateway knows, one per origin; kept across config reloads so that
    health and ejection state survive them."""

    def __init__(self, ejection: EjectionSettings) -> None:
        self._ejection = ejection
        self._by_origin: dict[Origin, Upstream] = {}

    def get(self, origin: Origin, *, health_path: str, authorization: bytes | None) -> Upstream:
        """The upstream at ``origin``, made on first use; its health path and credential
        are those of the latest configuration."""
        upstream = self._by_origin.get(origin)
        if upstream is None:
            upstream = Upstream(
                origin, self._ejection, health_path=health_path, authorization=authorization
            )
            self._by_origin[origin] = upstream
        else:
            upstream.health_path = health_path
            upstream.authorization = authorization
        return upstream

    def retain(self, origins: Iterable[Origin]) -> None:
        """Forget the upstreams no longer configured."""
        keep = set(origins)
        for origin in [o for o in self._by_origin if o not in keep]:
            del self._by_origin[origin]

    def reconfigure(self, ejection: EjectionSettings) -> None:
        """Apply new ejection settings (a reload) to every upstream, current and future."""
        self._ejection = ejection
        for upstream in self._by_origin.values():
            upstream.ejection = ejection

    def all(self) -> list[Upstream]:
        return list(self._by_origin.values())
