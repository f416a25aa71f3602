"""Limit and Planner: which buckets a request counts against, with which limits."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.auth.identity import Identity
from bastion.limits.plan import Bucket, Limit, Planner
from bastion.settings import LimitSettings, LimitsSettings


def planner(**config: Any) -> Planner:
    return Planner(LimitsSettings.model_validate(config))


def limit(**settings: Any) -> Limit:
    return Limit.of(LimitSettings(**settings))


def keys(buckets: tuple[Bucket, ...]) -> list[str]:
    return [b.key for b in buckets]


def alice(
    *teams: str, role: str = "user", method: str = "api_key", credential: str = "bk_a1"
) -> Identity:
    return Identity("alice", role, credential, method, teams=teams)


# --- Limit --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "burst"),
    [
        ({"requests_per_minute": 60}, 60),
        ({"requests_per_minute": 60, "burst": 5}, 5),
        ({"requests_per_minute": 10, "burst": 50}, 50),
        ({"requests_per_minute": 1}, 1),
        ({"tokens_per_minute": 1000}, 1),
        ({}, 1),
    ],
)
def test_the_burst_defaults_to_the_rate_per_minute(settings: dict[str, int], burst: int) -> None:
    assert limit(**settings).burst == burst


def test_a_limit_keeps_every_setting() -> None:
    compiled = limit(
        requests_per_minute=60,
        burst=7,
        tokens_per_minute=5000,
        count="prompt",
        concurrency=3,
        tokens_per_day=100_000,
        tokens_per_month=2_000_000,
    )
    assert compiled == Limit(60, 7, 5000, "prompt", 3, 100_000, 2_000_000)
    assert limit() == Limit(None, 1, None, "total", None, None, None)


@pytest.mark.parametrize(
    ("settings", "counts"),
    [
        ({}, False),
        ({"requests_per_minute": 60}, False),
        ({"concurrency": 2}, False),
        ({"requests_per_minute": 60, "concurrency": 2, "count": "prompt"}, False),
        ({"tokens_per_minute": 1000}, True),
        ({"tokens_per_day": 1000}, True),
        ({"tokens_per_month": 1000}, True),
    ],
)
def test_a_limit_counts_tokens_only_with_a_token_limit(
    settings: dict[str, Any], counts: bool
) -> None:
    assert limit(**settings).counts_tokens is counts


@pytest.mark.parametrize(
    ("count", "prompt", "completion", "tokens"),
    [
        ("total", 300, 200, 500),
        ("prompt", 300, 200, 300),
        ("completion", 300, 200, 200),
        ("total", 0, 0, 0),
        ("prompt", 0, 200, 0),
        ("completion", 300, 0, 0),
    ],
)
def test_a_limit_counts_the_tokens_of_its_kind(
    count: str, prompt: int, completion: int, tokens: int
) -> None:
    assert limit(tokens_per_minute=1000, count=count).tokens(prompt, completion) == tokens


# --- Planner: which buckets ---------------------------------------------------------------


def test_nothing_configured_is_inactive_and_plans_no_bucket() -> None:
    empty = planner()
    assert not empty.active
    assert empty.plan(alice("red"), "llama") == ()
    assert not planner(priority={"default": 5}).active


@pytest.mark.parametrize(
    "config",
    [
        {"per_key": {"requests_per_minute": 1}},
        {"per_user": {"requests_per_minute": 1}},
        {"per_team": {"requests_per_minute": 1}},
        {"per_model": {"requests_per_minute": 1}},
        {"all": {"requests_per_minute": 1}},
        {"users": {"bob": {"requests_per_minute": 1}}},
        {"roles": {"admin": {"requests_per_minute": 1}}},
        {"teams": {"red": {"requests_per_minute": 1}}},
        {"models": {"llama": {"requests_per_minute": 1}}},
    ],
)
def test_any_limit_makes_the_planner_active(config: dict[str, Any]) -> None:
    assert planner(**config).active


def test_every_kind_of_bucket_in_order() -> None:
    full = planner(
        per_key={"requests_per_minute": 10},
        per_user={"requests_per_minute": 20},
        per_team={"requests_per_minute": 30},
        per_model={"requests_per_minute": 40},
        all={"requests_per_minute": 50},
    )
    buckets = full.plan(alice("red", "blue"), "llama")
    assert buckets == (
        Bucket("key:api_key:bk_a1", limit(requests_per_minute=10)),
        Bucket("user:api_key:alice", limit(requests_per_minute=20)),
        Bucket("team:red", limit(requests_per_minute=30)),
        Bucket("team:blue", limit(requests_per_minute=30)),
        Bucket("model:llama", limit(requests_per_minute=40)),
        Bucket("all", limit(requests_per_minute=50)),
    )
    assert keys(full.plan(alice(), None)) == [
        "key:api_key:bk_a1",
        "user:api_key:alice",
        "all",
    ]


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        (
            Identity("alice", "user", "bk_a1", "api_key"),
            ["key:api_key:bk_a1", "user:api_key:alice"],
        ),
        (
            Identity("alice", "user", "bk_a2", "api_key"),
            ["key:api_key:bk_a2", "user:api_key:alice"],
        ),
        (Identity("alice", "user", "alice", "basic"), ["key:basic:alice", "user:basic:alice"]),
        (Identity("bob", "user", "bob", "jwt"), ["key:jwt:bob", "user:jwt:bob"]),
    ],
)
def test_keys_and_users_are_named_by_method_and_id(identity: Identity, expected: list[str]) -> None:
    both = planner(per_key={"concurrency": 1}, per_user={"concurrency": 2})
    assert keys(both.plan(identity, "llama")) == expected


def test_only_configured_kinds_get_buckets() -> None:
    assert keys(planner(per_team={"concurrency": 1}).plan(alice("red", "blue"), "m")) == [
        "team:red",
        "team:blue",
    ]
    assert keys(planner(per_model={"concurrency": 1}).plan(alice("red"), "m")) == ["model:m"]
    assert keys(planner(per_model={"concurrency": 1}).plan(alice("red"), None)) == []
    assert keys(planner(all={"concurrency": 1}).plan(alice("red"), "m")) == ["all"]


PRECEDENCE = {
    "per_user": {"requests_per_minute": 1},
    "users": {"alice": {"requests_per_minute": 2}},
    "roles": {"staff": {"requests_per_minute": 3}, "user": {"requests_per_minute": 4}},
    "per_team": {"requests_per_minute": 5},
    "teams": {"red": {"requests_per_minute": 6}},
    "per_model": {"requests_per_minute": 7},
    "models": {"llama": {"requests_per_minute": 8}},
}


@pytest.mark.parametrize(
    ("omit", "identity", "model", "expected"),
    [
        # users > roles > per_user, each bucket the principal's own
        ((), Identity("alice", "staff", "k", "api_key"), None, {"user:api_key:alice": 2}),
        ((), Identity("bob", "staff", "k", "api_key"), None, {"user:api_key:bob": 3}),
        ((), Identity("bob", "user", "k", "api_key"), None, {"user:api_key:bob": 4}),
        ((), Identity("bob", "guest", "k", "api_key"), None, {"user:api_key:bob": 1}),
        (("users",), Identity("alice", "staff", "k", "api_key"), None, {"user:api_key:alice": 3}),
        (("per_user",), Identity("bob", "guest", "k", "api_key"), None, {}),
        (("per_user", "roles"), Identity("bob", "staff", "k", "api_key"), None, {}),
        (
            ("per_user", "roles"),
            Identity("alice", "guest", "k", "api_key"),
            None,
            {"user:api_key:alice": 2},
        ),
        # teams > per_team, one bucket per team
        (
            (),
            Identity("x", "guest", "k", "jwt", teams=("red", "blue")),
            None,
            {"user:jwt:x": 1, "team:red": 6, "team:blue": 5},
        ),
        (
            ("per_team",),
            Identity("x", "guest", "k", "jwt", teams=("red", "blue")),
            None,
            {"user:jwt:x": 1, "team:red": 6},
        ),
        (
            ("teams",),
            Identity("x", "guest", "k", "jwt", teams=("red",)),
            None,
            {"user:jwt:x": 1, "team:red": 5},
        ),
        # models > per_model
        ((), Identity("x", "guest", "k", "jwt"), "llama", {"user:jwt:x": 1, "model:llama": 8}),
        ((), Identity("x", "guest", "k", "jwt"), "qwen", {"user:jwt:x": 1, "model:qwen": 7}),
        (("per_model",), Identity("x", "guest", "k", "jwt"), "qwen", {"user:jwt:x": 1}),
        (
            ("models",),
            Identity("x", "guest", "k", "jwt"),
            "llama",
            {"user:jwt:x": 1, "model:llama": 7},
        ),
    ],
)
def test_named_limits_take_precedence_over_the_per_kind_default(
    omit: tuple[str, ...], identity: Identity, model: str | None, expected: dict[str, int]
) -> None:
    config = {k: v for k, v in PRECEDENCE.items() if k not in omit}
    buckets = planner(**config).plan(identity, model)
    assert {b.key: b.limit.requests_per_minute for b in buckets} == expected
    assert keys(buckets) == list(expected)  # in order: user, teams, model


def test_an_override_replaces_the_default_whole() -> None:
    # no merging: a user's own limit without a rate has no rate, even if per_user has one
    mixed = planner(
        per_user={"requests_per_minute": 60, "concurrency": 4},
        users={"alice": {"tokens_per_day": 1000}},
    )
    (only,) = mixed.plan(alice(), None)
    assert only.limit == limit(tokens_per_day=1000)


# --- Planner: the cache -------------------------------------------------------------------


def test_a_plan_is_cached_per_caller_and_model() -> None:
    full = planner(
        per_key={"concurrency": 1}, per_team={"concurrency": 2}, per_model={"concurrency": 3}
    )
    first = full.plan(alice("red"), "llama")
    assert full.plan(alice("red"), "llama") is first  # an equal identity: the same tuple
    assert (
        full.plan(Identity("alice", "user", "bk_a1", "api_key", teams=("red",)), "llama") is first
    )
    others = [
        full.plan(alice("red"), "qwen"),
        full.plan(alice("red"), None),
        full.plan(alice("blue"), "llama"),
        full.plan(alice("red", "blue"), "llama"),
        full.plan(alice("red", credential="bk_a2"), "llama"),
        full.plan(alice("red", role="admin"), "llama"),
        full.plan(Identity("bob", "user", "bk_a1", "api_key", teams=("red",)), "llama"),
    ]
    assert all(other is not first for other in others)
    assert keys(others[0]) == ["key:api_key:bk_a1", "team:red", "model:qwen"]
    assert keys(others[1]) == ["key:api_key:bk_a1", "team:red"]
    assert keys(others[3]) == ["key:api_key:bk_a1", "team:red", "team:blue", "model:llama"]


IDENTITIES = [
    Identity("alice", "user", "alice", "basic"),
    Identity("alice", "user", "alice", "jwt"),
    Identity("alice", "user", "alice", "api_key"),
    Identity("alice", "staff", "alice", "jwt"),
    Identity("alice", "user", "alice", "jwt", teams=("red",)),
    Identity("bob", "user", "alice", "basic"),
]


@pytest.mark.parametrize("order", [1, -1], ids=["forward", "backward"])
def test_a_cached_plan_is_what_a_fresh_planner_would_build(order: int) -> None:
    # Regression: the cache key left out the method, so "alice" by password and "alice"
    # by token shared whichever buckets were planned first.
    config = {
        "per_key": {"concurrency": 1},
        "per_user": {"concurrency": 2},
        "roles": {"staff": {"concurrency": 3}},
        "per_team": {"concurrency": 4},
    }
    shared = planner(**config)
    for identity in IDENTITIES[::order] * 2:
        assert shared.plan(identity, "llama") == planner(**config).plan(identity, "llama")
    assert keys(shared.plan(IDENTITIES[0], None)) == ["key:basic:alice", "user:basic:alice"]
    assert keys(shared.plan(IDENTITIES[1], None)) == ["key:jwt:alice", "user:jwt:alice"]


def test_the_cache_is_bounded() -> None:
    small = planner(per_model={"concurrency": 1})
    first = small.plan(alice(), "model-0")
    for n in range(1, 100_001):
        small.plan(alice(), f"model-{n}")
    assert len(small._cache) <= 100_000
    again = small.plan(alice(), "model-0")
    assert again == first
    assert again is not first  # forgotten, then built anew


# --- priority -----------------------------------------------------------------------------


def test_priority_is_left_alone_when_not_configured() -> None:
    for unconfigured in (planner(), planner(per_user={"concurrency": 1}), planner(priority={})):
        assert unconfigured.priority_off
        assert unconfigured.priority(alice("red", role="admin")) is None


@pytest.mark.parametrize(
    ("priority", "identity", "expected"),
    [
        ({"default": 5}, alice(), 5),
        ({"default": 5}, alice("red", role="admin"), 5),
        ({"default": -3}, alice(), -3),
        ({"roles": {"admin": -10}}, alice(role="admin"), -10),
        ({"roles": {"admin": -10}}, alice(), 0),  # configured, no match, no default
        ({"roles": {"admin": -10}, "default": 7}, alice(), 7),
        ({"teams": {"red": 3}}, alice("red"), 3),
        ({"teams": {"red": 3}}, alice("blue"), 0),
        ({"teams": {"red": 3, "blue": 1}}, alice("red", "blue"), 1),  # the most urgent
        ({"teams": {"red": 3, "blue": 1}}, alice("blue", "red"), 1),
        ({"teams": {"red": 3}, "roles": {"user": 2}}, alice("red"), 2),
        ({"teams": {"red": -1}, "roles": {"user": 2}}, alice("red"), -1),
        ({"teams": {"red": 9}, "default": 1}, alice("red"), 9),  # a match beats the default
        ({"roles": {"user": 9}, "default": 1}, alice(), 9),
        ({"teams": {"red": 3}, "roles": {"admin": 2}, "default": 4}, alice("green"), 4),
        ({"default": 0}, alice(), 0),
    ],
)
def test_priority(priority: dict[str, Any], identity: Identity, expected: int) -> None:
    configured = planner(priority=priority)
    assert not configured.priority_off
    assert configured.priority(identity) == expected
