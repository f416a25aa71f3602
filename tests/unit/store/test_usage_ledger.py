"""Usage records and their hourly rollup, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bastion.errors import BadRequestError
from bastion.settings import PriceSettings
from bastion.store import schema
from bastion.store.migrations import MIGRATIONS, SCHEMA_VERSION, migrate
from bastion.store.store import Store
from bastion.store.usage import Prices, UsageLedger, UsageQuery, UsageRecord

HOUR = 3600.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % 86400  # midnight UTC


def record(at: float, who: str, teams: tuple[str, ...] = (), model: str = "m",
           prompt: int = 5, completion: int = 3, status: int = 200) -> UsageRecord:  # fmt: skip
    return UsageRecord(at, "rid", who, f"key_{who}", teams, model, "chat", status, prompt,
                       completion, 10.0, 1.0)  # fmt: skip


@pytest.fixture
def ledger(store: Store) -> UsageLedger:
    ledger = UsageLedger(store)
    ledger.append(
        [
            record(T0 + 10, "ada", ("red", "blue")),
            record(T0 + 20, "ada", ("red", "blue"), model="big", completion=7),
            record(T0 + HOUR + 5, "bob", ("red",), status=500, prompt=0, completion=0),
        ]
    )
    ledger.append([record(T0 + 86400 + 1, "ada", ("red", "blue"))])  # next day, second batch
    return ledger


def test_each_request_counts_once_unless_grouped_by_team(ledger: UsageLedger) -> None:
    rows = ledger.report(UsageQuery(by=("user",), period="all"))
    assert [
        (r["user"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in rows
    ] == [
        ("ada", 3, 15, 13),
        ("bob", 1, 0, 0),
    ]
    assert rows[1]["errors"] == 1
    teams = {
        r["team"]: r["requests"] for r in ledger.report(UsageQuery(by=("team",), period="all"))
    }
    assert teams == {"blue": 3, "red": 4}


def test_periods_and_filters(ledger: UsageLedger) -> None:
    days = ledger.report(UsageQuery(by=("user",), period="day", user="ada"))
    assert [(r["period"], r["requests"]) for r in days] == [(T0, 2), (T0 + 86400, 1)]
    hours = ledger.report(UsageQuery(by=("model",), period="hour", since=T0, until=T0 + HOUR))
    assert [(r["model"], r["requests"]) for r in hours] == [("big", 1), ("m", 1)]
    assert ledger.report(UsageQuery(by=("user",), team="blue", period="all"))[0]["requests"] == 3
    with pytest.raises(BadRequestError):
        ledger.report(UsageQuery(by=("password",)))


def test_costs_come_from_each_models_price(ledger: UsageLedger) -> None:
    # ada: 3 requests on "m" (10 prompt, 6 completion in all, over two days) and 1 on "big"
    prices = Prices({"big": PriceSettings(input=2.0, output=8.0),
                     "*": PriceSettings(input=0.5, output=1.0)}, "EUR")  # fmt: skip
    rows = ledger.report(UsageQuery(by=("user",), period="all"), prices)
    ada = rows[0]
    assert (ada["user"], ada["requests"], ada["prompt_tokens"], ada["completion_tokens"]) == (
        "ada",
        3,
        15,
        13,
    )  # fmt: skip -- the totals of the report without prices
    assert ada["cost"] == pytest.approx((10 * 0.5 + 6 * 1.0 + 5 * 2.0 + 7 * 8.0) / 1e6)
    assert ada["currency"] == "EUR"
    assert ada["unpriced_tokens"] == 0
    assert "model" not in ada
    plain = ledger.report(UsageQuery(by=("user",), period="all"))
    costs = ("cost", "currency", "unpriced_tokens")
    assert [{k: v for k, v in r.items() if k not in costs} for r in rows] == plain
    by_model = ledger.report(UsageQuery(by=("model",), period="all"), prices)
    assert [(r["model"], r["cost"]) for r in by_model] == [
        ("big", pytest.approx(66 / 1e6)), ("m", pytest.approx(11 / 1e6)),
    ]  # fmt: skip
    daily = ledger.report(UsageQuery(by=("user",), period="day", user="ada"), prices)
    assert [(r["period"], r["requests"]) for r in daily] == [(T0, 2), (T0 + 86400, 1)]


def test_a_model_without_a_price_is_counted_as_unpriced(ledger: UsageLedger) -> None:
    prices = Prices({"big": PriceSettings(input=2.0, output=8.0)}, "USD")
    ada = ledger.report(UsageQuery(by=("user",), period="all"), prices)[0]
    assert ada["cost"] == pytest.approx(66 / 1e6)
    assert ada["unpriced_tokens"] == 16  # the "m" requests' tokens


def test_rollups_survive_pruning_raw_records(ledger: UsageLedger, store: Store) -> None:
    assert ledger.prune(retention_days=1, now=T0 + 86400 + 100) == 2  # older than T0 + 100
    assert len(ledger.records()) == 2
    rows = ledger.report(UsageQuery(by=("user",), period="all", user="ada"))
    assert rows[0]["requests"] == 3  # the report reads the rollup


def test_a_version_1_database_is_upgraded(store_url: str) -> None:
    opened = Store(store_url)
    try:
        with opened._engine.begin() as conn:  # a database as the first release left it
            schema.metadata.create_all(conn, tables=[schema.schema_version])
            MIGRATIONS[0][1](conn)
            conn.execute(schema.schema_version.insert().values(
                version=1, description="v1", applied_at=0.0))  # fmt: skip
        with opened._engine.begin() as conn:
            assert migrate(conn) == SCHEMA_VERSION - 1
            versions = conn.execute(select(schema.schema_version.c.version)).scalars().all()
        assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
        UsageLedger(opened).append([record(T0, "ada")])
    finally:
        opened.close()
