from __future__ import annotations

import ipaddress

import pytest

from bastion.policy.networks import NetworkList, client_address
from bastion.policy.policy import Policy
from bastion.settings import parse_settings

TRUSTED = NetworkList(["10.0.0.0/8", "::1/128"], "t")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("192.0.2.7", None, "192.0.2.7"),
        ("192.0.2.7", b"203.0.113.9", "192.0.2.7"),  # untrusted peer: header ignored
        ("10.0.0.2", b"203.0.113.9", "203.0.113.9"),
        ("10.0.0.2", b"198.51.100.1, 203.0.113.9, 10.0.0.5", "203.0.113.9"),  # right-most untrusted
        ("10.0.0.2", b"garbage, 203.0.113.9", "203.0.113.9"),
        ("10.0.0.2", b"203.0.113.9, garbage", None),  # a garbled hop: believe nothing
        ("::ffff:192.0.2.7", None, "192.0.2.7"),  # IPv4-mapped IPv6 is IPv4
        ("::1", b"2001:db8::5", "2001:db8::5"),
        ("not-an-ip", None, None),
    ],
)
def test_client_address(peer: str, xff: bytes | None, expected: str | None) -> None:
    found = client_address(peer, xff, TRUSTED)
    assert (str(found) if found is not None else None) == expected


def test_ipv4_mapped_addresses_match_ipv4_networks() -> None:
    networks = NetworkList(["192.0.2.0/24"], "n")
    mapped = client_address("::ffff:192.0.2.1", None, NetworkList([], "t"))
    assert mapped in networks
    assert ipaddress.ip_address("2001:db8::1") not in networks


def test_gateway_wide_allow_and_deny() -> None:
    policy = Policy(
        parse_settings({"network": {"allow": ["10.0.0.0/8"], "deny": ["10.66.0.0/16"]}})
    )
    assert policy.admits(ipaddress.ip_address("10.1.1.1"))
    assert not policy.admits(ipaddress.ip_address("10.66.1.1"))
    assert not policy.admits(ipaddress.ip_address("192.0.2.1"))
    assert not policy.admits(None)
    assert Policy(parse_settings({})).admits(ipaddress.ip_address("192.0.2.1"))


def test_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    policy = Policy(parse_settings({}))
    assert str(policy.address("127.0.0.1", b"203.0.113.9")) == "127.0.0.1"
