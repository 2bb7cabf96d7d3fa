"""Which application a request is for: by Host, then by the longest path prefix.

Routes come from ``gateway.routes`` (docs/gateway.md) and from the route store (the admin API and
``onegate gateway routes``, :mod:`gateway.route_store`): :class:`RouteTable` is immutable and the
gateway swaps the whole table in one assignment. :func:`compose` puts the two sources together;
the configuration wins (a stored route that names a configured application or host is left out).
A host is matched without its port and case-insensitively; a request whose host no route names
is refused (421), never sent to some default upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.settings import GatewayRoute
from gateway.upstream import Origin
from policy.normalize import PathRejected, canonical_path

__all__ = [
    "Conflict",
    "Route",
    "RouteSettingError",
    "RouteTable",
    "compose",
    "find_conflict",
    "host_header",
    "host_of",
]


class RouteSettingError(ValueError):
    """A route's setting that does not parse; ``field`` names it (``path_prefix``, ``upstream``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


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
            raise RouteSettingError(
                "path_prefix", f"gateway route {route.app}: path_prefix {route.path_prefix!r}: {e}"
            ) from e
        try:
            origin = Origin.parse(route.upstream) if route.upstream else None
        except ValueError as e:
            raise RouteSettingError("upstream", f"gateway route {route.app}: upstream: {e}") from e
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

    def on_host(self, host: str) -> tuple[Route, ...]:
        """The routes of ``host``, longest prefix first."""
        return self._by_host.get(host, ())

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


@dataclass(frozen=True, slots=True)
class Conflict:
    """Why a route cannot join a table: ``kind`` is ``config_app`` (the configuration routes the
    same application), ``config_host`` (the configuration routes one of its hosts) or ``host``
    (another route has the same host and path prefix); ``other`` is the application in the way."""

    kind: str
    other: str
    host: str | None = None
    path_prefix: str | None = None

    @property
    def message_en(self) -> str:
        if self.kind == "config_app":
            return (
                f"application {self.other} is routed by the configuration file; configuration routes "
                "take precedence: change it there"
            )
        if self.kind == "config_host":
            return (
                f"host {self.host} is routed by the configuration file (application {self.other}); "
                "configuration routes take precedence: change it there"
            )
        return (
            f"host {self.host} with path prefix {self.path_prefix} is already routed to "
            f"application {self.other}"
        )

    @property
    def message_zh(self) -> str:
        if self.kind == "config_app":
            return f"应用 {self.other} 由配置文件定义路由，配置文件优先：请在配置文件中修改"
        if self.kind == "config_host":
            return f"主机 {self.host} 已由配置文件路由到应用 {self.other}，配置文件优先：请在配置文件中修改"
        return f"主机 {self.host} 的路径前缀 {self.path_prefix} 已路由到应用 {self.other}"


def find_conflict(route: Route, config: RouteTable, others: Iterable[Route]) -> Conflict | None:
    """The first reason ``route`` cannot join the configured routes ``config`` and the other
    added routes ``others`` (of other applications), or None.

    The configuration owns its applications and its hosts entirely: an added route may not take
    a path of a configured host, even a longer prefix, since that would take requests away from
    the configured application. Among added routes, a host may be shared by prefix, as in the
    configuration, but not with the same prefix."""
    if route.app in config.apps:
        return Conflict("config_app", route.app)
    for host in route.hosts:
        if host in config:
            return Conflict("config_host", config.on_host(host)[0].app, host=host)
    for other in others:
        if other.app == route.app or other.path_prefix != route.path_prefix:
            continue
        for host in route.hosts:
            if host in other.hosts:
                return Conflict("host", other.app, host=host, path_prefix=route.path_prefix)
    return None


def compose(
    config: Iterable[Route], added: Iterable[Route]
) -> tuple[RouteTable, list[tuple[Route, Conflict]]]:
    """The table of the configured routes plus the added ones that do not conflict with them or
    with an added route before them; and the routes left out, each with why (the configuration
    wins: it may have changed since a route was added)."""
    configured = list(config)
    base = RouteTable(configured)
    accepted: list[Route] = []
    left_out: list[tuple[Route, Conflict]] = []
    for route in added:
        conflict = find_conflict(route, base, accepted)
        if conflict is not None:
            left_out.append((route, conflict))
        else:
            accepted.append(route)
    return RouteTable([*configured, *accepted]), left_out
