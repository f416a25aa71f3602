"""What the admin API tells about the running gateway itself: its models' upstreams and their
health (``GET /admin/v1/upstreams``), and its limits with who is nearest to a budget
(``GET /admin/v1/limits``). The console's overview and limits pages show these.

Use against a budget is read from the usage rollups (hours, UTC): the limiter's own counters
are exact, but the rollups are written a little behind and a day's or a month's budget is
reported as the fraction of it used so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bastion.pipeline.route import ModelRegistry
from bastion.settings import LimitSettings, LimitsSettings
from bastion.store.records import Principal
from bastion.store.usage import UsageQuery

__all__ = ["BUDGETS", "Overview", "limit_values"]

BUDGETS = ("tokens_per_day", "tokens_per_month", "cost_per_day", "cost_per_month")
_FIELDS = ("requests_per_minute", "burst", "tokens_per_minute", "concurrency", *BUDGETS)
_SINGLE = ("per_key", "per_user", "per_team", "per_model", "all")
_NAMED = ("keys", "users", "roles", "teams", "models")
_NEAREST = 50
"""Budget rows reported, nearest first."""

Usage = Callable[[UsageQuery], list[dict[str, Any]]]


def limit_values(limit: LimitSettings) -> dict[str, Any]:
    """The limits a bucket sets (``count`` always; the others only when set)."""
    values: dict[str, Any] = {"count": limit.count}
    for name in _FIELDS:
        value = getattr(limit, name)
        if value is not None:
            values[name] = value
    return values


def _period_starts(now: float) -> tuple[float, float]:
    """The start of the UTC day and of the UTC month that ``now`` is in."""
    day = now - now % 86400
    moment = datetime.fromtimestamp(now, UTC)
    month = datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()
    return day, month


@dataclass(frozen=True, slots=True)
class Overview:
    """The running gateway's facts for the admin API (one per configuration)."""

    models: ModelRegistry
    limits: LimitsSettings
    checked: bool
    """Active health checks are on: an upstream counts as healthy once one has passed."""
    currency: str = "USD"

    def upstreams(self) -> list[dict[str, Any]]:
        """Each model with its upstreams' state (read on the event loop, which owns it)."""
        now = time.monotonic()
        found = []
        for entry in self.models.entries():
            balancer = entry.balancer
            members = [
                {
                    "name": m.upstream.name,
                    "weight": m.weight,
                    "available": m.upstream.available(now),
                    "healthy": m.upstream.healthy,
                    "checked": m.upstream.checked,
                    "ejected": m.upstream.ejected,
                    "outstanding": m.upstream.outstanding,
                    "requests": m.upstream.requests,
                    "errors": m.upstream.errors,
                }
                for m in balancer.members
            ]
            found.append(
                {
                    "model": entry.name,
                    "healthy": balancer.count_available(now, checked=self.checked),
                    "total": len(members),
                    "upstreams": members,
                }
            )
        return found

    def report(
        self, usage: Usage, principals: list[Principal], now: float | None = None
    ) -> dict[str, Any]:
        """The configured limits, and the buckets nearest to their budgets (blocking)."""
        settings = self.limits
        buckets: list[dict[str, Any]] = []
        for scope in _SINGLE:
            single: LimitSettings | None = getattr(settings, scope)
            if single is not None:
                buckets.append({"scope": scope, "name": None, "limits": limit_values(single)})
        for scope in _NAMED:
            named: Mapping[str, LimitSettings] = getattr(settings, scope)
            for name, limit in sorted(named.items()):
                buckets.append({"scope": scope, "name": name, "limits": limit_values(limit)})
        return {
            "backend": settings.backend,
            "currency": self.currency,
            "buckets": buckets,
            "nearest": self._nearest(usage, principals, time.time() if now is None else now),
        }

    def _nearest(
        self, usage: Usage, principals: list[Principal], now: float
    ) -> list[dict[str, Any]]:
        roles = {p.name: p.role for p in principals}
        day, month = _period_starts(now)
        periods = ((day, ("tokens_per_day", "cost_per_day")),
                   (month, ("tokens_per_month", "cost_per_month")))  # fmt: skip
        rows: list[dict[str, Any]] = []
        for group, candidates in self._candidates().items():
            for since, budgets in periods:
                if not any(getattr(c, b) for c in candidates for b in budgets):
                    continue  # one query per group and period, and only when it matters
                found = usage(UsageQuery(by=(group,), period="all", since=since))
                rows += self._against(group, budgets, found, roles)
        rows.sort(key=lambda r: (-r["fraction"], r["bucket"], r["name"], r["budget"]))
        return rows[:_NEAREST]

    def _against(
        self,
        group: str,
        budgets: tuple[str, ...],
        usage_rows: list[dict[str, Any]],
        roles: Mapping[str, str],
    ) -> list[dict[str, Any]]:
        """Each usage row's use of each of ``budgets`` its bucket has."""
        rows = []
        for row in usage_rows:
            name = str(row.get(group) or "")
            limit = self._limit_of(group, name, roles) if name else None
            if limit is None:
                continue
            for budget in budgets:
                found = _use(budget, limit, row)
                if found is not None:
                    rows.append({"bucket": group, "name": name, "budget": budget, **found})
        return rows

    def _candidates(self) -> dict[str, list[LimitSettings]]:
        """Every bucket's limits that could apply to a key, a user, a team, a model."""
        s = self.limits

        def some(
            single: LimitSettings | None, *named: Mapping[str, LimitSettings]
        ) -> list[LimitSettings]:
            return [*(() if single is None else (single,)), *(v for d in named for v in d.values())]

        return {
            "key": some(s.per_key, s.keys),
            "user": some(s.per_user, s.users, s.roles),
            "team": some(s.per_team, s.teams),
            "model": some(s.per_model, s.models),
        }

    def _limit_of(self, group: str, name: str, roles: Mapping[str, str]) -> LimitSettings | None:
        """The limits of one bucket, as the planner finds them (``limits/plan.py``)."""
        s = self.limits
        if group == "key":
            return s.keys.get(name) or s.per_key
        if group == "user":
            role = roles.get(name)
            return s.users.get(name) or (s.roles.get(role) if role else None) or s.per_user
        if group == "team":
            return s.teams.get(name) or s.per_team
        return s.models.get(name) or s.per_model


def _use(budget: str, limit: LimitSettings, row: Mapping[str, Any]) -> dict[str, Any] | None:
    """How much of ``budget`` a usage row has used (None: the bucket has no such budget, or
    the report has no cost to compare with)."""
    allowed = getattr(limit, budget)
    if allowed is None:
        return None
    if budget.startswith("cost"):
        if "cost" not in row:
            return None
        used = float(row["cost"])
    elif limit.count == "prompt":
        used = float(row["prompt_tokens"])
    elif limit.count == "completion":
        used = float(row["completion_tokens"])
    else:
        used = float(row["total_tokens"])
    return {"used": used, "limit": float(allowed), "fraction": used / allowed}
