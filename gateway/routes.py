"""Which application a request is for: by Host, then by the longest path prefix.

Routes come from ``gateway.routes`` (docs/gateway.md) and may be replaced at run time (the admin
API): :class:`RouteTable` is immutable and the gateway swaps the whole table in one assignment.
A host is matched without its port and case-insensitively; a request whose host no route names
is refused (421), never sent to some default upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.settings import GatewayRoute
from gateway.upstream import Origin
from policy.normalize import PathRejected, canonical_path

__all__ = ["Route", "RouteTable", "host_header", "host_of"]


@dataclass(frozen=True, slots=True)
class Route:
    app: str
    hosts: tuple[str, ...]
    origin: Origin | None  # None: forward-auth only (nginx / Caddy / Traefik proxy the app)
    path_prefix: str  # canonical match key (lower case), "/" for everything
    preserve_host: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 60.0

    def covers(self, key: str) -> bool:
        prefix = self.path_prefix
        if prefix == "/":
            return True
        return key == prefix or key.startswith(prefix + "/")

    @classmethod
    def from_settings(cls, route: GatewayRoute) -> Route:
        try:
            prefix = canonical_path(route.path_prefix).key.rstrip("/") or "/"
        except PathRejected as e:
            raise ValueError(f"gateway route {route.app}: path_prefix {route.path_prefix!r}: {e}") from e
        try:
            origin = Origin.parse(route.upstream) if route.upstream else None
        except ValueError as e:
            raise ValueError(f"gateway route {route.app}: upstream: {e}") from e
        return cls(
            app=route.app,
            hosts=tuple(route.hosts),
            origin=origin,
            path_prefix=prefix,
            preserve_host=route.preserve_host,
            connect_timeout=route.connect_timeout,
            read_timeout=route.read_timeout,
        )


def host_header(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The request's one Host header value; None when it has none or several (refused)."""
    values = [v for n, v in headers if n == b"host"]
    return values[0] if len(values) == 1 else None


def host_of(value: bytes | str | None) -> str | None:
    """The host name of a Host header value, lower case and without the port; None when the
    value is missing or malformed (a request without a usable Host is refused)."""
    if not value:
        return None
    host = (value.decode("latin-1") if isinstance(value, bytes) else value).strip().lower()
    if len(host) > 255 or not host:
        return None
    if host.startswith("["):  # an IPv6 literal
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not host[end + 1 :].startswith(":")):
            return None
        name, port = host[: end + 1], host[end + 2 :]
    else:
        name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    if not name or any(c in name for c in "/\\@?# \t,"):
        return None
    return name.rstrip(".")


class RouteTable:
    """Routes by host name; each host's routes longest prefix first."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        by_host: dict[str, list[Route]] = {}
        for route in routes:
            for host in route.hosts:
                by_host.setdefault(host, []).append(route)
        for host, listed in by_host.items():
            prefixes = [r.path_prefix for r in listed]
            if len(set(prefixes)) != len(prefixes):
                raise ValueError(f"gateway routes: host {host} has two routes for the same path prefix")
            listed.sort(key=lambda r: len(r.path_prefix), reverse=True)
        self._by_host: Mapping[str, tuple[Route, ...]] = {h: tuple(r) for h, r in by_host.items()}
        self.apps: frozenset[str] = frozenset(r.app for rs in self._by_host.values() for r in rs)

    @classmethod
    def from_settings(cls, routes: Iterable[GatewayRoute]) -> RouteTable:
        return cls(Route.from_settings(r) for r in routes)

    def __contains__(self, host: str) -> bool:
        return host in self._by_host

    def hosts(self) -> list[str]:
        return sorted(self._by_host)

    def match(self, host: str, key: str) -> Route | None:
        """The route for a host and a canonical path key, or None."""
        for route in self._by_host.get(host, ()):
            if route.covers(key):
                return route
        return None

    def all(self) -> list[Route]:
        """Every route once."""
        seen: dict[int, Route] = {}
        for routes in self._by_host.values():
            for route in routes:
                seen.setdefault(id(route), route)
        return list(seen.values())

    def for_app(self, app: str) -> list[Route]:
        return [r for rs in self._by_host.values() for r in rs if r.app == app]
