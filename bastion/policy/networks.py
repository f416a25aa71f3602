"""Network rules: CIDR lists, and the caller's address as far as it can be believed."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from bastion.errors import ConfigError

__all__ = ["Address", "NetworkList", "client_address"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 for every rule
    return address


class NetworkList:
    """A set of networks; IPv4-mapped IPv6 addresses match their IPv4 networks."""

    def __init__(self, cidrs: Iterable[str], key: str) -> None:
        networks: list[_Network] = []
        for index, cidr in enumerate(cidrs):
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                raise ConfigError(f"{cidr!r} is not a network (CIDR)", f"{key}.{index}") from None
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, Address) and any(
            address.version == n.version and address in n for n in self._networks
        )

    def covers(self, other: NetworkList) -> bool:
        """True when every network of ``other`` lies inside one of these (an empty list
        covers nothing but itself)."""
        return all(
            any(n.version == o.version and o.subnet_of(n) for n in self._networks)  # type: ignore[arg-type]
            for o in other._networks
        ) and (bool(other) or not self)


def client_address(
    peer: str | None, forwarded_for: bytes | None, trusted: NetworkList
) -> Address | None:
    """The caller's address: the peer's, or, when the peer is a trusted proxy, the right-most
    address of ``X-Forwarded-For`` that is not itself a trusted proxy."""
    address = _parse_address(peer) if peer else None
    if address is None or forwarded_for is None or address not in trusted:
        return address
    for hop in reversed(forwarded_for.decode("latin-1").split(",")):
        hop_address = _parse_address(hop)
        if hop_address is None:
            return None  # a garbled chain: believe nothing in it
        if hop_address not in trusted:
            return hop_address
        address = hop_address
    return address
