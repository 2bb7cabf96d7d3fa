"""The client's address, believing ``X-Forwarded-For`` only from configured proxies.

Walk the chain from the nearest hop outwards: the socket peer first, then each address in
``X-Forwarded-For`` from right to left, stopping at the first address that is not a trusted
proxy. An attacker can prepend anything to the header but cannot make our own proxy append
a false address, so the result is the last address a trusted proxy saw.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import Scope

__all__ = ["TrustedProxies", "client_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """A set of CIDRs (``server.trusted_proxies``)."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._seen: dict[str, bool] = {}  # the answer per address: asked on every request

    def __contains__(self, address: str) -> bool:
        if not self._networks:
            return False
        known = self._seen.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        answer = any(ip in network for network in self._networks)
        if len(self._seen) >= 65_536:
            self._seen.clear()
        self._seen[address] = answer
        return answer

    def __bool__(self) -> bool:
        return bool(self._networks)


def _forwarded_for(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    hops: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            hops.extend(part.strip() for part in value.decode("latin-1").split(","))
    return hops


def client_address(scope: Scope, trusted: TrustedProxies) -> str:
    """The address to attribute the request to (empty when unknown)."""
    peer = scope.get("client")
    address = str(peer[0]) if peer else ""
    if not trusted or address not in trusted:
        return address
    for hop in reversed(_forwarded_for(scope.get("headers", ()))):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address  # a malformed hop: stop at the last trustworthy one
        address = hop
        if hop not in trusted:
            return hop
    return address
