"""Team rules (``teams:`` in the config) narrow their members' access, never widen it."""

from __future__ import annotations

import ipaddress

import pytest

from bastion.auth.identity import Identity, Restrictions
from bastion.errors import ConfigError
from bastion.policy.policy import Policy
from bastion.policy.roles import Access
from bastion.settings import Settings

POLICY = Policy(
    Settings.model_validate(
        {
            "teams": {
                "lab": {"networks": ["10.0.0.0/8", "fd00::/8"]},
                "llama": {"models": ["llama-*"]},
                "free": {},
            }
        }
    )
)


def access(*teams: str, role: str = "user", models: tuple[str, ...] | None = None) -> Access:
    restrictions = Restrictions(models=models) if models is not None else None
    identity = Identity("p", role, "c", "api_key", teams=teams, restrictions=restrictions)
    found = POLICY.access(identity)
    assert found is not None
    return found


def test_no_team_or_a_team_without_rules_changes_nothing() -> None:
    assert access() is POLICY.access(Identity("q", "user", "c", "api_key"))
    assert access("free").allows_model("anything")
    assert access("unknown-team").allows_address(ipaddress.ip_address("192.0.2.1"))


def test_team_networks_and_models_narrow() -> None:
    lab = access("lab")
    assert lab.allows_address(ipaddress.ip_address("10.1.2.3"))
    assert lab.allows_address(ipaddress.ip_address("fd00::1"))
    assert not lab.allows_address(ipaddress.ip_address("192.0.2.1"))
    assert not lab.allows_address(None)
    assert access("llama").allows_model("llama-3")
    assert not access("llama").allows_model("mistral")


def test_several_teams_must_all_be_satisfied_and_keys_still_narrow() -> None:
    both = access("lab", "llama")
    assert both.allows_model("llama-3") and not both.allows_model("mistral")
    assert not both.allows_address(ipaddress.ip_address("192.0.2.1"))
    keyed = access("llama", models=("llama-3",))
    assert keyed.allows_model("llama-3") and not keyed.allows_model("llama-2")


def test_team_rules_never_widen_a_role() -> None:
    viewer = access("llama", role="viewer")
    assert not viewer.allows_route("chat")
    assert viewer.within(access(role="viewer"))


def test_the_same_teams_give_the_same_access_object() -> None:
    assert access("lab", "llama") is access("lab", "llama")


def test_a_bad_team_network_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"teams\.lab\.networks"):
        Policy(Settings.model_validate({"teams": {"lab": {"networks": ["10.0.0.300/8"]}}}))
