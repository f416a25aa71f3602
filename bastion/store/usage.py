"""Usage records: one per inference request, written in batches, rolled up by hour.

Raw records keep every request for ``usage.retention_days``; the hourly rollup (by principal,
key, team and model) is what reports read, so a report over months stays fast. Both are
written in the same transaction, so they always agree.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from bastion.errors import BadRequestError
from bastion.settings import PriceSettings, UsageSettings
from bastion.store import schema
from bastion.store.store import Store

__all__ = ["GROUPS", "UsageLedger", "UsageQuery", "UsageQueue", "UsageRecord"]

r, h = schema.usage_records, schema.usage_hourly
GROUPS = ("user", "key", "team", "model")
_COLUMN = {"user": h.c.principal, "key": h.c.credential, "team": h.c.team, "model": h.c.model}


class UsageRecord(NamedTuple):
    """One request's usage (a named tuple: built for every request, so it must be cheap)."""

    at: float
    request_id: str
    principal: str
    credential: str
    teams: tuple[str, ...]
    model: str
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None


@dataclass(frozen=True, slots=True)
class UsageQuery:
    by: tuple[str, ...] = ("user",)
    period: Literal["hour", "day", "all"] = "day"
    since: float | None = None
    until: float | None = None
    user: str | None = None
    team: str | None = None
    model: str | None = None


Rollup = dict[tuple[int, str, str, str, str], list[float]]


def _roll(rollup: Rollup, rec: UsageRecord) -> None:
    """Add one record to a rollup: once under team "", once more under each of its teams."""
    hour, model, failed = int(rec.at // 3600), rec.model[:200], rec.status >= 400
    for team in ("", *rec.teams) if rec.teams else ("",):
        key = (hour, rec.principal, rec.credential, team, model)
        row = rollup.get(key)
        if row is None:
            row = rollup[key] = [0, 0, 0, 0, 0.0]
        row[0] += 1
        row[1] += failed
        row[2] += rec.prompt_tokens
        row[3] += rec.completion_tokens
        row[4] += rec.latency_ms


class UsageQueue:
    """Records waiting to be written (bounded: past ``max_pending`` the oldest are dropped,
    counted in ``dropped``). A crash loses at most what is here: about one flush interval.

    Each record is turned into its database row and added to the hourly rollup here, as it
    arrives, on the event loop: the writer thread then only hands rows to the driver. Python
    work in that thread would hold the interpreter lock against the event loop for
    milliseconds at a time (measured: it halved the gateway's throughput).
    """

    def __init__(self, max_pending: int) -> None:
        self._max = max_pending
        self._rows: list[tuple[Any, ...]] = []
        self._rollup: Rollup = {}
        self.dropped = 0
        self.written = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def pending(self) -> bool:
        return bool(self._rows or self._rollup)

    def add(self, record: UsageRecord) -> None:
        rows = self._rows
        if len(rows) >= self._max:
            self.dropped += 1  # the rollup still counts it: only the raw row is lost
        else:
            rows.append(_raw(record))
        _roll(self._rollup, record)

    def take(self) -> tuple[list[tuple[Any, ...]], Rollup]:
        taken = self._rows, self._rollup
        self._rows, self._rollup = [], {}
        return taken

    def put_back(self, rows: list[tuple[Any, ...]], rollup: Rollup) -> None:
        self._rows[:0] = rows
        excess = len(self._rows) - self._max
        if excess > 0:
            del self._rows[:excess]
            self.dropped += excess
        for key, values in rollup.items():
            mine = self._rollup.setdefault(key, [0, 0, 0, 0, 0.0])
            for index, value in enumerate(values):
                mine[index] += value


class UsageLedger:
    def __init__(self, store: Store) -> None:
        self._store = store

    def append(self, records: Sequence[UsageRecord]) -> int:
        """Write raw records and add them to the hourly rollup, in one transaction."""
        rollup: Rollup = {}
        for rec in records:
            _roll(rollup, rec)
        return self.write([_raw(rec) for rec in records], rollup)

    def write(self, rows: Sequence[tuple[Any, ...]], rollup: Rollup) -> int:
        """Write prepared rows and rollup increments (see :class:`UsageQueue`)."""
        if not rows and not rollup:
            return 0
        with self._store.writing() as conn:
            # straight to the driver's executemany with tuples: a tenth of the CPU of
            # SQLAlchemy's per-row processing, and this runs in the gateway's process
            if rows:
                conn.exec_driver_sql(
                    _INSERT_SQLITE if conn.dialect.name == "sqlite" else _INSERT_POSTGRESQL,
                    list(rows),
                )
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            for (hour, principal, credential, team, model), row in rollup.items():
                values = {"hour": hour, "principal": principal, "credential": credential,
                          "team": team, "model": model, "requests": row[0], "errors": row[1],
                          "prompt_tokens": row[2], "completion_tokens": row[3],
                          "latency_ms": row[4]}  # fmt: skip
                statement = dialect.insert(h).values(**values)
                excluded = statement.excluded
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["hour", "principal", "credential", "team", "model"],
                        set_={
                            c: h.c[c] + excluded[c]
                            for c in (
                                "requests",
                                "errors",
                                "prompt_tokens",
                                "completion_tokens",
                                "latency_ms",
                            )
                        },
                    )
                )
        return len(rows)

    def report(self, query: UsageQuery, prices: Prices | None = None) -> list[dict[str, Any]]:
        """Totals grouped by ``query.by`` (and by hour or day unless ``period`` is all); with
        ``prices``, each row's cost too."""
        unknown = [b for b in query.by if b not in GROUPS]
        if unknown or not query.by:
            raise BadRequestError(f"group by one or more of: {', '.join(GROUPS)}", param="by")
        if prices is None:
            return [_reported(row) for row in self._totals(query)]
        # a cost needs each model's tokens: group by model too, then add the models up
        by = query.by if "model" in query.by else (*query.by, "model")
        rows = [prices.priced(row) for row in self._totals(replace(query, by=by))]
        if by != query.by:
            rows = _added_up(rows, query.by)
        return [prices.reported(row) for row in rows]

    def _totals(self, query: UsageQuery) -> list[dict[str, Any]]:
        columns = [_COLUMN[b].label(b) for b in query.by]
        if query.period != "all":
            size = 3600 if query.period == "hour" else 86400
            columns.insert(0, ((h.c.hour * 3600 // size) * size).label("period"))
        sums = [
            func.sum(h.c.requests).label("requests"),
            func.sum(h.c.errors).label("errors"),
            func.sum(h.c.prompt_tokens).label("prompt_tokens"),
            func.sum(h.c.completion_tokens).label("completion_tokens"),
            func.sum(h.c.latency_ms).label("latency_ms"),
        ]
        statement = select(*columns, *sums)
        if "team" in query.by or query.team is not None:
            statement = statement.where(h.c.team != "")
        else:
            statement = statement.where(h.c.team == "")  # each request exactly once
        statement = self._filtered(statement, query).group_by(*columns).order_by(*columns)
        with self._store.reading() as conn:
            rows = conn.execute(statement).all()
        return [_summed(row._mapping) for row in rows]

    def _filtered(self, statement: Any, query: UsageQuery) -> Any:
        if query.since is not None:
            statement = statement.where(h.c.hour >= int(query.since // 3600))
        if query.until is not None:
            statement = statement.where(h.c.hour < int(-(-query.until // 3600)))
        if query.user is not None:
            statement = statement.where(h.c.principal == query.user)
        if query.team is not None:
            statement = statement.where(h.c.team == query.team)
        if query.model is not None:
            statement = statement.where(h.c.model == query.model)
        return statement

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete raw records older than the retention (rollups are kept)."""
        cutoff = (now or time.time()) - retention_days * 86400
        with self._store.writing() as conn:
            return int(conn.execute(delete(r).where(r.c.at < cutoff)).rowcount or 0)

    def records(self, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        statement = select(r).order_by(r.c.id.desc()).limit(max(1, min(limit, 100_000)))
        if since is not None:
            statement = statement.where(r.c.at >= since)
        with self._store.reading() as conn:
            return [dict(row._mapping) for row in conn.execute(statement)]


_RAW_COLUMNS = (
    "at", "request_id", "principal", "credential", "teams", "model", "route", "status",
    "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms",
)  # fmt: skip
# Constant column names; every value is a parameter.
_INSERT = "INSERT INTO usage_records ({}) VALUES ({})".format
_INSERT_SQLITE = _INSERT(", ".join(_RAW_COLUMNS), ", ".join(["?"] * len(_RAW_COLUMNS)))
_INSERT_POSTGRESQL = _INSERT(", ".join(_RAW_COLUMNS), ", ".join(["%s"] * len(_RAW_COLUMNS)))


def _raw(rec: UsageRecord) -> tuple[Any, ...]:
    return (
        rec.at,
        rec.request_id[:128],
        rec.principal[:160],
        rec.credential[:64],
        ",".join(rec.teams)[:500],
        rec.model[:200],
        rec.route[:64],
        rec.status,
        rec.prompt_tokens,
        rec.completion_tokens,
        rec.latency_ms,
        rec.ttft_ms,
    )


class Prices:
    """Token prices per model (per million tokens); ``*`` prices any model not listed."""

    def __init__(self, prices: Mapping[str, PriceSettings], currency: str) -> None:
        self._prices = dict(prices)
        self.currency = currency

    @classmethod
    def of(cls, settings: UsageSettings) -> Prices | None:
        """The configured prices, or None when there are none (reports carry no cost)."""
        return cls(settings.prices, settings.currency) if settings.prices else None

    def priced(self, row: dict[str, Any]) -> dict[str, Any]:
        """A row grouped by model with its cost (per million: millionths of the currency)
        and the tokens of a model that has no price."""
        found = self._prices.get(row["model"]) or self._prices.get("*")
        tokens = row["prompt_tokens"], row["completion_tokens"]
        if found is None:
            return {**row, "cost": 0.0, "unpriced_tokens": sum(tokens)}
        cost = tokens[0] * found.input + tokens[1] * found.output
        return {**row, "cost": cost, "unpriced_tokens": 0}

    def reported(self, row: dict[str, Any]) -> dict[str, Any]:
        """A priced row as reports show it: the cost in the currency, rounded."""
        cost, unpriced = row.pop("cost"), row.pop("unpriced_tokens")
        out = _reported(row)
        out["currency"] = self.currency
        out["cost"] = round(cost / 1e6, 6)
        out["unpriced_tokens"] = unpriced
        return out


_ADDED = ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_ms", "cost",
          "unpriced_tokens")  # fmt: skip


def _added_up(rows: list[dict[str, Any]], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows grouped by ``by`` and model, added up over the models (in the same order)."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[k] for k in ("period", *by) if k in row)
        total = merged.get(key)
        if total is None:
            merged[key] = {k: v for k, v in row.items() if k != "model"}
            continue
        for name in _ADDED:
            total[name] += row[name]
    return list(merged.values())


def _summed(row: Any) -> dict[str, Any]:
    """A row of sums as the database gave it, with no sum left empty."""
    out = dict(row)
    for name in ("requests", "errors", "prompt_tokens", "completion_tokens"):
        out[name] = int(out[name] or 0)
    out["latency_ms"] = float(out["latency_ms"] or 0.0)
    return out


def _reported(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    latency = out.pop("latency_ms")
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["mean_latency_ms"] = round(latency / out["requests"], 2) if out["requests"] else 0.0
    if "period" in out:
        out["period"] = int(out["period"])
    return out
