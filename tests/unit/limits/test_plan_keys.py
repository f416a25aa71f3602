"""``limits.keys`` gives one key (by store id or config name) its own limits."""

from __future__ import annotations

from bastion.auth.identity import Identity
from bastion.limits.plan import Planner
from bastion.settings import LimitsSettings

PLANNER = Planner(
    LimitsSettings.model_validate(
        {
            "per_key": {"requests_per_minute": 10},
            "keys": {"key_abc": {"requests_per_minute": 1000}, "ops": {"concurrency": 2}},
        }
    )
)


def limits_of(credential: str, method: str = "api_key") -> list[tuple[str, int | None, int | None]]:
    identity = Identity("someone", "user", credential, method)
    return [
        (b.key, b.limit.requests_per_minute, b.limit.concurrency)
        for b in PLANNER.plan(identity, None)
    ]


def test_a_named_key_takes_its_own_limits_instead_of_per_key() -> None:
    assert limits_of("key_abc") == [("key:api_key:key_abc", 1000, None)]
    assert limits_of("ops") == [("key:api_key:ops", None, 2)]
    assert limits_of("key_other") == [("key:api_key:key_other", 10, None)]


def test_other_credentials_never_match_a_key_entry() -> None:
    # a JWT subject or htpasswd user that happens to be called like a key gets per_key
    assert limits_of("key_abc", method="jwt") == [("key:jwt:key_abc", 10, None)]
