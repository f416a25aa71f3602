"""Access.within and NetworkList.covers, as tables: "may this access be handed out by someone
who holds that one?" A wrong True would let an administrator grant more than they have; the
answers are also checked against the access checks themselves on sample names and addresses."""

from __future__ import annotations

import ipaddress

import pytest

from bastion.auth.identity import Identity, Restrictions
from bastion.policy.networks import NetworkList
from bastion.policy.policy import Policy
from bastion.policy.roles import INFERENCE, PERMISSIONS, Access, RoleBook, expand_permissions
from bastion.settings import parse_settings

EVERY_MODEL = (("*",),)


def access(
    routes: tuple[str, ...] = ("*",),
    models: tuple[tuple[str, ...], ...] = EVERY_MODEL,
    networks: tuple[tuple[str, ...], ...] = (),
) -> Access:
    return Access(
        routes=expand_permissions(routes, "test.routes"),
        models=models,
        networks=tuple(NetworkList(cidrs, "test.networks") for cidrs in networks),
    )


# -- routes -------------------------------------------------------------------------------

ROUTES = [
    (("chat",), ("chat",), True),
    (("chat",), ("chat", "models"), True),
    (("chat", "models"), ("chat",), False),
    (("inference",), ("*",), True),
    (("*",), ("inference", "models", "control"), False),  # "admin" is missing
    (("chat",), ("inference",), True),
    (("inference",), ("chat",), False),
    (("models",), ("inference",), False),
    ((), ("models",), True),  # nothing is within anything
    (("admin",), (), False),
]


@pytest.mark.parametrize(("inner", "outer", "expected"), ROUTES)
def test_routes(inner: tuple[str, ...], outer: tuple[str, ...], expected: bool) -> None:
    narrow, wide = access(routes=inner), access(routes=outer)
    assert narrow.within(wide) is expected
    # Agrees with the route check itself.
    assert expected == all(wide.allows_route(p) for p in PERMISSIONS if narrow.allows_route(p))


# -- model patterns -----------------------------------------------------------------------

PATTERNS = [
    # (inner pattern, outer pattern, inner's models all allowed by outer?)
    ("llama-3-8b", "*", True),
    ("*", "*", True),
    ("llama-*", "*", True),
    ("[ab]*", "*", True),
    ("?", "*", True),
    ("llama-3-*", "llama-*", True),
    ("llama-3", "llama-*", True),
    ("llama-", "llama-*", True),
    ("llama-?", "llama-*", True),
    ("llama-[0-9]*", "llama-*", True),
    ("llama-*", "llama-*", True),
    ("llama-3-8b", "llama-3-8b", True),
    ("llama-3-8b", "llama-?-8b", True),
    ("llama-3-8b", "llama-[0-9]-8b", True),
    ("llama-*", "llama-?", False),
    ("llama-*", "llama-3-*", False),
    ("llama-*", "llama-3", False),
    ("llama*", "llama-*", False),
    ("*", "llama-*", False),
    ("*", "a", False),
    ("*", "?", False),
    ("a", "b", False),
    ("llama-3-8b", "llama-2-*", False),
    ("Llama-3", "llama-*", False),  # case matters, as in allows_model
    ("llama-3", "Llama-*", False),
    ("llama-3-8b", "llama-3-?b", True),
    ("llama-3-70b", "llama-3-?b", False),
    ("llama-3-*", "llama-3-?b", False),
    ("gemma", "llama-*", False),
    ("gemma-*", "llama-*", False),
    ("[lg]*", "llama-*", False),
    ("llama-3-8b*", "llama-3-8b", False),
    ("a[bc]", "a[*", False),  # "a[*": an unclosed "[" is a plain character
    ("a[bc]*", "a[*", False),
    ("llama-?", "llama-[?]", False),  # "[?]" is only the character "?"
    ("llama-?", "llama-[!x]", False),
    ("llama-3", "llama-[0-9]", True),
]

NAMES = [
    "",
    "a",
    "b",
    "?",
    "*",
    "llama",
    "llama-",
    "llama-3",
    "llama-3-",
    "llama-3-8b",
    "llama-3-70b",
    "llama-2-7b",
    "llama-x",
    "llama-3-8bx",
    "llamaX",
    "Llama-3",
    "gemma",
    "gemma-2",
    "lx",
    "ax",
    "ab",
    "a[x",
    "a[bc]",
    "llama-?",
    "llama-y",
]


@pytest.mark.parametrize(("inner", "outer", "expected"), PATTERNS)
def test_model_patterns(inner: str, outer: str, expected: bool) -> None:
    narrow = access(models=((inner,),))
    wide = access(models=((outer,),))
    assert narrow.within(wide) is expected
    if expected:  # sound: every sample name the narrow access allows, the wide one allows
        for name in NAMES:
            assert not narrow.allows_model(name) or wide.allows_model(name), name


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        (("llama-3-8b", "gemma-2"), ("llama-*", "gemma-*"), True),
        (("llama-3-*", "gemma-2"), ("llama-*", "gemma-2"), True),
        (("llama-3-8b", "mistral"), ("llama-*",), False),
        (("llama-3-8b",), ("gemma-*", "llama-*"), True),
        (("*",), ("llama-*", "gemma-*"), False),
        ((), ("llama-*",), True),  # a list of no patterns allows no model
        (("llama-3",), (), False),
        ((), (), True),
    ],
)
def test_model_lists(inner: tuple[str, ...], outer: tuple[str, ...], expected: bool) -> None:
    narrow = access(models=(inner,))
    wide = access(models=(outer,))
    assert narrow.within(wide) is expected
    for name in NAMES:
        if expected:
            assert not narrow.allows_model(name) or wide.allows_model(name), name


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        # A model must match every list: one list of inner as narrow as outer's is enough.
        ((("*",), ("llama-*",)), (("llama-*",),), True),
        ((("llama-*",), ("*",)), (("llama-*",),), True),
        ((("llama-*",), ("llama-3-*",)), (("llama-*",), ("llama-3-*",)), True),
        ((("llama-3-*",),), (("llama-*",), ("*",)), True),
        ((("llama-*",),), (("llama-*",), ("gemma-*",)), False),
        ((("*",),), (("*",), ("llama-*",)), False),
        ((("llama-3-*",), ("gemma-*",)), (("gemma-2",),), False),
    ],
)
def test_several_model_lists(
    inner: tuple[tuple[str, ...], ...], outer: tuple[tuple[str, ...], ...], expected: bool
) -> None:
    narrow = access(models=inner)
    wide = access(models=outer)
    assert narrow.within(wide) is expected
    if expected:
        for name in NAMES:
            assert not narrow.allows_model(name) or wide.allows_model(name), name


# -- networks -----------------------------------------------------------------------------

NETWORKS = [
    # (outer, inner, outer covers inner?)
    (["10.0.0.0/8"], ["10.1.0.0/16"], True),
    (["10.0.0.0/8"], ["10.0.0.0/8"], True),
    (["10.0.0.0/8"], ["10.255.255.255/32"], True),
    (["10.0.0.0/8"], ["10.0.0.7"], True),
    (["10.0.0.0/8"], ["11.0.0.0/8"], False),
    (["10.0.0.0/8"], ["10.0.0.0/7"], False),
    (["10.1.0.0/16"], ["10.0.0.0/8"], False),
    (["10.0.0.0/8"], ["10.1.0.0/16", "192.168.1.0/24"], False),
    (["10.0.0.0/8", "192.168.0.0/16"], ["10.1.0.0/16", "192.168.1.0/24"], True),
    (["10.0.0.0/16", "10.1.0.0/16"], ["10.0.0.0/15"], False),  # not split across two
    (["0.0.0.0/0"], ["10.0.0.0/8", "203.0.113.0/24"], True),
    (["10.9.8.7/8"], ["10.1.0.0/16"], True),  # host bits are ignored, as when parsing
    (["2001:db8::/32"], ["2001:db8:1::/48"], True),
    (["2001:db8::/32"], ["2001:db8::1"], True),
    (["2001:db8::/32"], ["2001:db9::/48"], False),
    (["2001:db8:1::/48"], ["2001:db8::/32"], False),
    (["::/0"], ["2001:db8::/32"], True),
    (["::/0"], ["10.0.0.0/8"], False),  # IPv6 networks never hold IPv4 addresses
    (["0.0.0.0/0"], ["2001:db8::/32"], False),
    (["10.0.0.0/8"], ["::ffff:10.0.0.0/104"], False),
    (["10.0.0.0/8", "2001:db8::/32"], ["10.1.0.0/16", "2001:db8:5::/64"], True),
    ([], [], True),
    ([], ["10.0.0.0/8"], False),
    (["10.0.0.0/8"], [], False),  # an empty list covers nothing but itself
]

ADDRESSES = [
    "10.0.0.7",
    "10.1.2.3",
    "10.255.255.255",
    "11.0.0.1",
    "192.168.1.1",
    "192.168.2.1",
    "203.0.113.5",
    "2001:db8::1",
    "2001:db8:1::1",
    "2001:db8:5::9",
    "2001:db9::1",
    "::1",
]


@pytest.mark.parametrize(("outer", "inner", "expected"), NETWORKS)
def test_networks_cover(outer: list[str], inner: list[str], expected: bool) -> None:
    wide = NetworkList(outer, "outer")
    narrow = NetworkList(inner, "inner")
    assert wide.covers(narrow) is expected
    if expected:
        for text in ADDRESSES:
            address = ipaddress.ip_address(text)
            assert address not in narrow or address in wide, text


@pytest.mark.parametrize(("outer", "inner", "expected"), NETWORKS)
def test_network_lists_in_access(outer: list[str], inner: list[str], expected: bool) -> None:
    wide = access(networks=(tuple(outer),))
    narrow = access(networks=(tuple(inner),))
    assert narrow.within(wide) is expected


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        ((), (), True),
        ((("10.0.0.0/8",),), (), True),  # limited is within unlimited
        ((), (("10.0.0.0/8",),), False),  # from anywhere is not within a network rule
        ((("10.0.0.0/8",), ("10.1.0.0/16",)), (("10.1.0.0/16",),), True),
        ((("10.1.0.0/16",),), (("10.0.0.0/8",), ("10.1.0.0/16",)), True),
        ((("10.0.0.0/8",),), (("10.0.0.0/8",), ("10.1.0.0/16",)), False),
        ((("10.0.0.0/8",), ("192.168.0.0/16",)), (("10.0.0.0/8",), ("192.168.0.0/16",)), True),
    ],
)
def test_several_network_lists(
    inner: tuple[tuple[str, ...], ...], outer: tuple[tuple[str, ...], ...], expected: bool
) -> None:
    narrow = access(networks=inner)
    wide = access(networks=outer)
    assert narrow.within(wide) is expected
    if expected:
        for text in ADDRESSES:
            address = ipaddress.ip_address(text)
            assert not narrow.allows_address(address) or wide.allows_address(address), text


def test_every_constraint_counts() -> None:
    base = access(routes=("inference",), models=(("llama-*",),), networks=(("10.0.0.0/8",),))
    assert base.within(base)
    assert access(routes=("chat",), models=(("llama-3",),), networks=(("10.1.0.0/16",),)).within(
        base
    )
    # Wider on one axis only: not within.
    assert not access(routes=("*",), models=(("llama-3",),), networks=(("10.1.0.0/16",),)).within(
        base
    )
    assert not access(routes=("chat",), models=(("*",),), networks=(("10.1.0.0/16",),)).within(base)
    assert not access(routes=("chat",), models=(("llama-3",),), networks=(("0.0.0.0/0",),)).within(
        base
    )
    assert not access(routes=("chat",), models=(("llama-3",),)).within(base)


# -- roles and their narrowing --------------------------------------------------------------

ROLES = {
    "roles": {
        "interns": {"routes": ["chat"], "models": ["llama-3-*"]},
        "lab": {"routes": ["inference", "models"], "networks": ["10.0.0.0/8"]},
        "llama": {"routes": ["inference"], "models": ["llama-*"]},
    }
}


def policy() -> Policy:
    return Policy(parse_settings(ROLES))


def role_access(role: str) -> Access:
    found = policy().roles.access(role)
    assert found is not None
    return found


def key_access(role: str, restrictions: Restrictions) -> Access:
    found = policy().access(Identity("p", role, "key_1", "api_key", restrictions=restrictions))
    assert found is not None
    return found


RESTRICTIONS = [
    Restrictions(routes=("chat",)),
    Restrictions(models=("llama-3-8b",)),
    Restrictions(models=("llama-*",)),
    Restrictions(networks=("10.1.0.0/16",)),
    Restrictions(routes=("chat",), models=("gemma-*", "llama-3"), networks=("192.0.2.0/24",)),
    Restrictions(routes=("*",)),  # asks for more than the role: intersected
    Restrictions(models=("*",)),
    Restrictions(networks=("0.0.0.0/0", "::/0")),
    Restrictions(routes=(), models=(), networks=()),
]


@pytest.mark.parametrize("role", ["admin", "operator", "user", "viewer", "interns", "lab", "llama"])
@pytest.mark.parametrize("restrictions", RESTRICTIONS)
def test_narrowed_access_is_within_the_role(role: str, restrictions: Restrictions) -> None:
    base = role_access(role)
    narrowed = key_access(role, restrictions)
    assert narrowed.within(base)
    assert base.within(base)


@pytest.mark.parametrize(
    ("role", "restrictions"),
    [
        ("user", Restrictions(routes=("chat",))),
        ("admin", Restrictions(models=("llama-*",))),
        ("operator", Restrictions(networks=("10.0.0.0/8",))),
        ("lab", Restrictions(networks=("10.1.0.0/16",))),
        ("llama", Restrictions(models=("llama-3-*",))),
        ("interns", Restrictions(models=("llama-3-8b",))),
    ],
)
def test_a_role_is_not_within_a_narrower_access(role: str, restrictions: Restrictions) -> None:
    base = role_access(role)
    narrowed = key_access(role, restrictions)
    assert not base.within(narrowed)


def test_narrowed_by_hand() -> None:
    role = access(routes=("inference", "models"), models=(("llama-*",),))
    narrowed = role.narrowed(
        frozenset({"chat", "admin"}), ("llama-3-*",), NetworkList(["10.0.0.0/8"], "k")
    )
    assert narrowed.routes == frozenset({"chat"})
    assert narrowed.within(role)
    assert not role.within(narrowed)
    unchanged = role.narrowed(None, None, None)
    assert unchanged.within(role) and role.within(unchanged)


def test_builtin_roles_are_nested() -> None:
    book = RoleBook({})
    order = ["viewer", "user", "operator", "admin"]
    roles = {name: book.access(name) for name in order}
    for low, narrow in enumerate(order):
        for high, wide in enumerate(order):
            inner, outer = roles[narrow], roles[wide]
            assert inner is not None and outer is not None
            assert inner.within(outer) is (low <= high), (narrow, wide)


def test_custom_roles_against_builtins() -> None:
    assert role_access("interns").within(role_access("user"))
    assert not role_access("user").within(role_access("interns"))
    assert role_access("interns").within(role_access("llama"))
    assert not role_access("llama").within(role_access("interns"))
    assert role_access("lab").within(role_access("user"))
    assert not role_access("user").within(role_access("lab"))  # lab is bound to a network
    assert not role_access("lab").within(role_access("llama"))  # every model, "models" route
    assert role_access("llama").routes == INFERENCE
