"""The permission model, as a table: each built-in role against each route and model."""

from __future__ import annotations

import ipaddress

import pytest

from bastion.auth.identity import Identity, Restrictions
from bastion.errors import ConfigError
from bastion.pipeline.endpoints import DEFAULT_ENDPOINTS
from bastion.policy.policy import Policy
from bastion.policy.roles import INFERENCE, PERMISSIONS
from bastion.settings import parse_settings

EXPECTED = {
    "admin": PERMISSIONS,
    "operator": INFERENCE | {"models", "control"},
    "user": INFERENCE | {"models"},
    "viewer": frozenset({"models"}),
}


def identity(role: str, restrictions: Restrictions | None = None) -> Identity:
    return Identity("p", role, "p", "api_key", restrictions=restrictions)


@pytest.mark.parametrize("role", list(EXPECTED))
@pytest.mark.parametrize(
    "route", [r for r in DEFAULT_ENDPOINTS if not r.public], ids=lambda r: r.path
)
def test_builtin_role_against_each_route(role: str, route: object) -> None:
    access = Policy(parse_settings({})).access(identity(role))
    assert access is not None
    permission = route.permission  # type: ignore[attr-defined]
    assert access.allows_route(permission) == (permission in EXPECTED[role])


@pytest.mark.parametrize("role", list(EXPECTED))
@pytest.mark.parametrize("model", ["llama-3-8b", "gemma-3-270m", "anything"])
def test_builtin_roles_may_use_every_model(role: str, model: str) -> None:
    access = Policy(parse_settings({})).access(identity(role))
    assert access is not None and access.allows_model(model)


def custom_policy() -> Policy:
    return Policy(
        parse_settings(
            {
                "roles": {
                    "interns": {"routes": ["chat"], "models": ["llama-3-*"]},
                    "lab": {"routes": ["inference"], "networks": ["10.0.0.0/8"]},
                }
            }
        )
    )


@pytest.mark.parametrize(
    ("model", "allowed"),
    [("llama-3-8b", True), ("llama-3-70b", True), ("llama-2-7b", False), ("gemma", False)],
)
def test_custom_role_models_and_routes(model: str, allowed: bool) -> None:
    access = custom_policy().access(identity("interns"))
    assert access is not None
    assert access.allows_model(model) is allowed
    assert access.allows_route("chat")
    assert not access.allows_route("embeddings")
    assert not access.allows_route("models")


def test_restrictions_narrow_and_never_widen() -> None:
    policy = custom_policy()
    wider = Restrictions(routes=("*",), models=("*",))
    access = policy.access(identity("interns", wider))
    assert access is not None
    assert not access.allows_route("embeddings")  # the key asked for everything: no effect
    assert not access.allows_model("gemma")
    narrower = Restrictions(routes=("chat", "embeddings"), models=("llama-3-8b",))
    access = policy.access(identity("interns", narrower))
    assert access is not None
    assert access.allows_model("llama-3-8b")
    assert not access.allows_model("llama-3-70b")
    assert not access.allows_route("embeddings")
    viewer = policy.access(identity("viewer", Restrictions(routes=("chat",))))
    assert viewer is not None and not viewer.allows_route("chat")


def test_network_restrictions_add_up() -> None:
    policy = custom_policy()
    inside = ipaddress.ip_address("10.1.2.3")
    outside = ipaddress.ip_address("192.0.2.1")
    lab = policy.access(identity("lab"))
    assert lab is not None
    assert lab.allows_address(inside)
    assert not lab.allows_address(outside)
    assert not lab.allows_address(None)
    key = policy.access(identity("lab", Restrictions(networks=("10.9.0.0/16",))))
    assert key is not None
    assert not key.allows_address(inside)
    assert key.allows_address(ipaddress.ip_address("10.9.1.1"))


def test_unknown_role_has_no_access() -> None:
    assert Policy(parse_settings({})).access(identity("root")) is None


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"roles": {"user": {"routes": ["chat"]}}}, "roles"),
        ({"roles": {"x": {"routes": ["chatt"]}}}, r"roles\.x\.routes\.0"),
        ({"roles": {"x": {"networks": ["10.0.0.300/8"]}}}, r"roles\.x\.networks\.0"),
        ({"network": {"deny": ["nonsense"]}}, r"network\.deny\.0"),
        (
            {"auth": {"api_keys": [{"name": "a", "hash": "sha256:" + "a" * 64, "role": "boss"}]}},
            r"auth\.api_keys\.0\.role",
        ),
        (
            {
                "auth": {
                    "api_keys": [{"name": "a", "hash": "sha256:" + "a" * 64, "routes": ["fly"]}]
                }
            },
            r"auth\.api_keys\.0\.routes\.0",
        ),
    ],
)
def test_configuration_mistakes_name_their_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Policy(parse_settings(config))
