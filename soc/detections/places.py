"""Where an address is: the site's table of networks -> places.

A city government's traffic is mostly internal, so public GeoIP says little: the SOC is told
which networks belong to which building, district or zone (``10.1.0.0/16`` -> City Hall,
``10.20.0.0/16`` -> Haidian district office, ``0.0.0.0/0`` -> the internet). Coordinates are
optional; with them "impossible travel" compares the speed of the move, without them any move
between two different places faster than the rule's minimum interval counts.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policy.model import client_address

__all__ = ["Place", "Places"]


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    latitude: float | None = None
    longitude: float | None = None

    def km_to(self, other: Place) -> float | None:
        """Great-circle distance in km, when both places have coordinates."""
        if (
            self.latitude is None
            or self.longitude is None
            or other.latitude is None
            or other.longitude is None
        ):
            return None
        lat1, lon1 = math.radians(self.latitude), math.radians(self.longitude)
        lat2, lon2 = math.radians(other.latitude), math.radians(other.longitude)
        a = (
            math.sin((lat2 - lat1) / 2) ** 2
            + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
        )
        return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


class Places:
    """Longest-prefix lookup of an address in the site's network table."""

    def __init__(self, networks: Iterable[tuple[str, Place]] = ()) -> None:
        table: list[tuple[int, int, int, int, Place]] = []
        for cidr, place in networks:
            network = ipaddress.ip_network(cidr, strict=False)
            first = int(network.network_address)
            table.append(
                (network.prefixlen, network.version, first, first + network.num_addresses - 1, place)
            )
        table.sort(key=lambda row: -row[0])
        self._table = table

    @classmethod
    def from_config(cls, entries: Iterable[Mapping[str, Any]]) -> Places:
        """``[{"cidr": "10.1.0.0/16", "place": "City Hall", "lat": 39.9, "lon": 116.4}, ...]``."""
        networks = []
        for entry in entries:
            lat, lon = entry.get("lat"), entry.get("lon")
            place = Place(
                str(entry["place"]), None if lat is None else float(lat), None if lon is None else float(lon)
            )
            networks.append((str(entry["cidr"]), place))
        return cls(networks)

    def __len__(self) -> int:
        return len(self._table)

    def of(self, address: str) -> Place | None:
        """The place of the most specific network holding ``address``; None when none does
        or the address is not one."""
        try:
            ip = client_address(address)
        except ValueError:
            return None
        value = int(ip)
        for _, version, first, last, place in self._table:
            if version == ip.version and first <= value <= last:
                return place
        return None
