"""Spending budgets: a bucket of their own per scope, counted in millionths of the currency at
each model's price, shared by every model."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bastion.auth.identity import Identity
from bastion.errors import BadRequestError, QuotaExceededError
from bastion.limits.limiter import MemoryLimiter
from bastion.limits.plan import Planner
from bastion.settings import LimitsSettings, PriceSettings, parse_settings

PRICES = {
    "small": PriceSettings(input=1.0, output=2.0),  # per million tokens
    "big": PriceSettings(input=10.0, output=30.0),
}
ALICE = Identity("alice", "user", "bk_a1", "api_key")


def planner(**limits: Any) -> Planner:
    return Planner(LimitsSettings.model_validate(limits), PRICES)


def test_a_spending_budget_is_a_bucket_of_its_own_at_the_models_price() -> None:
    plan = planner(per_user={"requests_per_minute": 60, "cost_per_day": 0.5})
    small, big = plan.plan(ALICE, "small"), plan.plan(ALICE, "big")
    assert [b.key for b in small] == ["user:api_key:alice", "user:api_key:alice:cost"]
    assert [b.key for b in big] == [b.key for b in small]  # one budget for every model
    assert small[1].limit.tokens_per_day == 500_000  # 0.5 in millionths
    assert small[1].limit.tokens(1000, 500) == 1000 * 1 + 500 * 2
    assert big[1].limit.tokens(1000, 500) == 1000 * 10 + 500 * 30
    assert small[0].limit.tokens_per_day is None  # the request limits are untouched


def test_a_scope_with_only_a_spending_budget_has_only_the_spending_bucket() -> None:
    plan = planner(all={"cost_per_month": 20})
    assert [b.key for b in plan.plan(ALICE, "small")] == ["all:cost"]
    assert plan.plan(ALICE, "small")[0].limit.tokens_per_month == 20_000_000


def test_an_unpriced_model_costs_nothing_and_a_star_prices_the_rest() -> None:
    plan = Planner(
        LimitsSettings.model_validate({"per_key": {"cost_per_day": 1}}),
        {"*": PriceSettings(input=3.0, output=4.0)},
    )
    assert plan.plan(ALICE, "any")[0].limit.tokens(10, 10) == 70
    assert planner(per_key={"cost_per_day": 1}).plan(ALICE, "other")[0].limit.tokens(9, 9) == 0


async def test_the_budget_is_spent_across_models_and_then_refused() -> None:
    limiter = MemoryLimiter()
    plan = planner(per_user={"cost_per_day": 0.01})  # 10,000 millionths
    small, big = plan.plan(ALICE, "small"), plan.plan(ALICE, "big")
    grant = await limiter.acquire(big, 100, 100)  # reserves 100 * 10 + 100 * 30 = 4,000
    limiter.finish(grant, 100, 200)  # it really cost 100 * 10 + 200 * 30 = 7,000
    assert limiter.used("user:api_key:alice:cost", grant.day) == 7_000
    grant = await limiter.acquire(small, 1000, 1000)  # 3,000: exactly what is left
    limiter.finish(grant, 1000, 1000)
    with pytest.raises(QuotaExceededError):
        await limiter.acquire(small, 1, 0)


async def test_a_request_that_could_never_fit_the_budget_is_a_400() -> None:
    plan = planner(per_user={"cost_per_day": 0.001})  # 1,000 millionths
    with pytest.raises(BadRequestError) as refused:
        await MemoryLimiter().acquire(plan.plan(ALICE, "big"), 10, 1000)  # 30,100
    assert refused.value.code == "cost_exceeds_budget"
    assert "0.030100" in refused.value.message


def _config(**usage: Any) -> dict[str, Any]:
    return {
        "models": [{"name": "small", "upstreams": [{"url": "http://127.0.0.1:8000"}]}],
        "limits": {"per_user": {"cost_per_day": 1}},
        "usage": usage,
    }


def test_spending_budgets_need_a_price_for_every_model() -> None:
    with pytest.raises(Exception, match="no price for 'small'") as refused:
        parse_settings(_config())
    assert not isinstance(refused.value, ValidationError)  # a ConfigError naming the setting
    parse_settings(_config(prices={"small": {"input": 1, "output": 1}}))
    parse_settings(_config(prices={"*": {"input": 1, "output": 1}}))
