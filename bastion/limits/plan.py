"""Which limits apply to a request: the buckets it counts against, compiled once per caller.

A bucket is a named counter (``key:<id>``, ``user:<name>``, ``team:<name>``, ``model:<name>``,
``all``) with the limits configured for it. A request is admitted only if every one of its
buckets admits it, and then counts against all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from bastion.auth.identity import Identity
from bastion.settings import LimitSettings, LimitsSettings, PriceSettings

__all__ = ["Bucket", "Limit", "Planner"]


def _micro(amount: float | None) -> int | None:
    return None if amount is None else max(1, round(amount * 1_000_000))


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket's limits, compiled (``None``: no limit of that kind)."""

    requests_per_minute: int | None
    burst: int
    tokens_per_minute: int | None
    count: str
    concurrency: int | None
    tokens_per_day: int | None
    tokens_per_month: int | None
    cost_per_day: int | None = None
    """Spending budgets, in millionths of the currency (kept in a bucket of their own)."""
    cost_per_month: int | None = None
    prices: tuple[float, float] = (0.0, 0.0)
    """For a spending bucket (``count == "cost"``): the model's price per million input and
    output tokens, so that :meth:`tokens` counts millionths of the currency."""
    counts_tokens: bool = field(init=False, compare=False)
    """Whether any of its limits counts tokens (computed once: read for every request)."""

    def __post_init__(self) -> None:
        counts = (
            self.tokens_per_minute is not None
            or self.tokens_per_day is not None
            or self.tokens_per_month is not None
        )
        object.__setattr__(self, "counts_tokens", counts)

    @classmethod
    def of(cls, settings: LimitSettings) -> Limit:
        rpm = settings.requests_per_minute
        return cls(
            requests_per_minute=rpm,
            burst=settings.burst or rpm or 1,
            tokens_per_minute=settings.tokens_per_minute,
            count=settings.count,
            concurrency=settings.concurrency,
            tokens_per_day=settings.tokens_per_day,
            tokens_per_month=settings.tokens_per_month,
            cost_per_day=_micro(settings.cost_per_day),
            cost_per_month=_micro(settings.cost_per_month),
        )

    @property
    def limits_requests(self) -> bool:
        """Whether anything but a spending budget is limited (else no bucket of its own)."""
        return any(
            x is not None
            for x in (
                self.requests_per_minute,
                self.tokens_per_minute,
                self.concurrency,
                self.tokens_per_day,
                self.tokens_per_month,
            )
        )

    def spending(self, prices: tuple[float, float]) -> Limit | None:
        """The limit of this one's spending budgets at a model's ``prices`` (None: none)."""
        if self.cost_per_day is None and self.cost_per_month is None:
            return None
        return Limit(
            requests_per_minute=None,
            burst=1,
            tokens_per_minute=None,
            count="cost",
            concurrency=None,
            tokens_per_day=self.cost_per_day,
            tokens_per_month=self.cost_per_month,
            prices=prices,
        )

    def tokens(self, prompt: int, completion: int) -> int:
        """The tokens of a request that this limit counts (for a spending bucket: its cost,
        in millionths of the currency, rounded up)."""
        if self.count == "cost":
            return math.ceil(prompt * self.prices[0] + completion * self.prices[1])
        if self.count == "prompt":
            return prompt
        if self.count == "completion":
            return completion
        return prompt + completion


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    limit: Limit


class Planner:
    """Compiles the ``limits`` settings; :meth:`plan` is cached per caller and model."""

    def __init__(
        self, settings: LimitsSettings, prices: Mapping[str, PriceSettings] | None = None
    ) -> None:
        """``prices`` (``usage.prices``) turn spending budgets into buckets of their own."""
        self._settings = settings
        self._prices = dict(prices or {})
        compile_ = Limit.of
        self._per_key = compile_(settings.per_key) if settings.per_key else None
        self._per_user = compile_(settings.per_user) if settings.per_user else None
        self._per_team = compile_(settings.per_team) if settings.per_team else None
        self._per_model = compile_(settings.per_model) if settings.per_model else None
        self._all = compile_(settings.all) if settings.all else None
        self._keys = {k: compile_(v) for k, v in settings.keys.items()}
        self._users = {k: compile_(v) for k, v in settings.users.items()}
        self._roles = {k: compile_(v) for k, v in settings.roles.items()}
        self._teams = {k: compile_(v) for k, v in settings.teams.items()}
        self._models = {k: compile_(v) for k, v in settings.models.items()}
        self.active = any(
            (self._per_key, self._per_user, self._per_team, self._per_model, self._all)
        ) or any((self._keys, self._users, self._roles, self._teams, self._models))
        self._cache: dict[tuple[str, str, str, str, tuple[str, ...], str], tuple[Bucket, ...]] = {}
        priority = settings.priority
        self._priority_off = priority.default is None and not priority.roles and not priority.teams

    def plan(self, identity: Identity, model: str | None) -> tuple[Bucket, ...]:
        cache_key = (identity.method, identity.credential_id, identity.principal, identity.role,
                     identity.teams, model or "")  # fmt: skip
        found = self._cache.get(cache_key)
        if found is None:
            found = self._build(identity, model)
            if len(self._cache) >= 100_000:
                self._cache.clear()
            self._cache[cache_key] = found
        return found

    def _build(self, identity: Identity, model: str | None) -> tuple[Bucket, ...]:
        buckets: list[Bucket] = []
        price = self._price(model)

        def add(key: str, limit: Limit) -> None:
            if limit.limits_requests:
                buckets.append(Bucket(key, limit))
            spending = limit.spending(price)
            if spending is not None:  # its own counter, shared by every model's requests
                buckets.append(Bucket(f"{key}:cost", spending))

        key = self._keys.get(identity.credential_id) if identity.method == "api_key" else None
        key = key or self._per_key
        if key is not None:
            # A key's id names it (config keys: their entry name): never the secret
            add(f"key:{identity.method}:{identity.credential_id}", key)
        user = (
            self._users.get(identity.principal) or self._roles.get(identity.role) or self._per_user
        )
        if user is not None:
            add(f"user:{identity.method}:{identity.principal}", user)
        for team in dict.fromkeys(identity.teams):  # a team named twice counts once
            limit = self._teams.get(team) or self._per_team
            if limit is not None:
                add(f"team:{team}", limit)
        if model is not None:
            limit = self._models.get(model) or self._per_model
            if limit is not None:
                add(f"model:{model}", limit)
        if self._all is not None:
            add("all", self._all)
        return tuple(buckets)

    def _price(self, model: str | None) -> tuple[float, float]:
        """A model's price per million input and output tokens (nothing priced: free)."""
        found = self._prices.get(model or "") or self._prices.get("*")
        return (found.input, found.output) if found is not None else (0.0, 0.0)

    @property
    def priority_off(self) -> bool:
        return self._priority_off

    def priority(self, identity: Identity) -> int | None:
        """The ``priority`` to forward for this caller (it replaces the caller's own), or
        None when priorities are not configured (the body is left alone)."""
        if self._priority_off:
            return None
        settings = self._settings.priority
        values = [settings.teams[t] for t in identity.teams if t in settings.teams]
        if identity.role in settings.roles:
            values.append(settings.roles[identity.role])
        if values:
            return min(values)  # vLLM serves lower values first
        return settings.default if settings.default is not None else 0
