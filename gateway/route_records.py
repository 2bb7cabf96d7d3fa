"""The values of the route store: a stored route, a change of its history, the errors a refused
change raises, and the validation of a route given over the network or the command line.

A route is validated exactly as ``gateway.routes`` in the configuration is (the same
:class:`~core.settings.GatewayRoute` model, strictly typed, and the same
:meth:`Route.from_settings <gateway.routes.Route.from_settings>` parsing), plus what a value from
outside needs: an application name of the policy's form and host names of a strict form (no
port, no address, not ``localhost``, at most :data:`MAX_HOSTS`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from core.settings import GatewayRoute
from gateway.models import RouteChangeRecord, RouteRecord
from gateway.routes import Conflict, Route, RouteSettingError

__all__ = [
    "APP_NAME",
    "FIELDS",
    "MAX_HOSTS",
    "RouteChange",
    "RouteConflict",
    "RouteError",
    "RouteInvalid",
    "RouteNotFound",
    "RouteStale",
    "StoredRoute",
    "check_app",
    "config_route_dict",
    "parse_route",
]

APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # as an application id in the policy
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
MAX_HOSTS = 20
# What a route is made of besides its application name; the API and the CLI accept these keys.
FIELDS = ("hosts", "upstream", "path_prefix", "preserve_host", "connect_timeout", "read_timeout", "enabled")


# -- errors ------------------------------------------------------------------------------------


class RouteError(Exception):
    """A change the store refused; ``code`` is a closed vocabulary, ``field`` the input at fault."""

    code = "invalid_route"

    def __init__(self, message_en: str, message_zh: str, *, field: str | None = None) -> None:
        super().__init__(f"{message_en} / {message_zh}")
        self.message_en = message_en
        self.message_zh = message_zh
        self.field = field


class RouteInvalid(RouteError):
    """The route does not validate (a 422 at the API)."""


class RouteConflict(RouteError):
    """The route collides with a configured one (``config_conflict``), another added one
    (``host_conflict``) or the IdP's own host (``reserved_host``), its application has a route
    already (``route_exists``), or other changes kept taking its turn (``concurrent_change``)."""

    def __init__(self, code: str, message_en: str, message_zh: str, *, field: str | None = None) -> None:
        super().__init__(message_en, message_zh, field=field)
        self.code = code

    @classmethod
    def of(cls, conflict: Conflict) -> RouteConflict:
        code = "host_conflict" if conflict.kind == "host" else "config_conflict"
        field = "app" if conflict.kind == "config_app" else "hosts"
        return cls(code, conflict.message_en, conflict.message_zh, field=field)


class RouteNotFound(RouteError, LookupError):
    code = "route_not_found"

    def __init__(self, app: str) -> None:
        super().__init__(f"no added route for application {app}", f"没有应用 {app} 的路由", field="app")
        self.app = app


class RouteStale(RouteError):
    """The caller changed an older revision of the route than the stored one."""

    code = "revision_mismatch"

    def __init__(self, app: str, stored: int) -> None:
        super().__init__(
            f"route {app} has changed since it was read (now revision {stored}); read it again",
            f"路由 {app} 在读取后已被修改（当前修订 {stored}），请重新读取",
        )
        self.stored = stored


# -- values ------------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    # SQLite gives the UTC time back without its zone; PostgreSQL in the session's zone.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class StoredRoute:
    """An added route as stored (its settings as given, not their parsed form)."""

    app: str
    hosts: tuple[str, ...]
    upstream: str | None
    path_prefix: str
    preserve_host: bool
    connect_timeout: float
    read_timeout: float
    enabled: bool
    revision: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str

    @classmethod
    def of(cls, row: RouteRecord) -> StoredRoute:
        return cls(
            app=row.app,
            hosts=tuple(row.hosts),
            upstream=row.upstream,
            path_prefix=row.path_prefix,
            preserve_host=row.preserve_host,
            connect_timeout=row.connect_timeout,
            read_timeout=row.read_timeout,
            enabled=row.enabled,
            revision=row.revision,
            created_at=_utc(row.created_at),
            created_by=row.created_by,
            updated_at=_utc(row.updated_at),
            updated_by=row.updated_by,
        )

    def settings(self) -> dict[str, Any]:
        """The route's settings (``FIELDS``), as the history records them."""
        return {
            "hosts": list(self.hosts),
            "upstream": self.upstream,
            "path_prefix": self.path_prefix,
            "preserve_host": self.preserve_host,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "enabled": self.enabled,
        }

    def route(self) -> Route:
        """The parsed route (raises ``ValueError`` for a row written past the store)."""
        settings = self.settings()
        del settings["enabled"]
        return Route.from_settings(GatewayRoute(app=self.app, **settings))

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            **self.settings(),
            "source": "api",
            "revision": self.revision,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "updated_at": self.updated_at.isoformat(),
            "updated_by": self.updated_by,
        }


@dataclass(frozen=True, slots=True)
class RouteChange:
    """One row of the history: ``number`` is the revision of the whole set after it."""

    number: int
    at: datetime
    actor: str
    action: str  # create | update | remove
    app: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    comment: str

    @classmethod
    def of(cls, row: RouteChangeRecord) -> RouteChange:
        return cls(row.id, _utc(row.at), row.actor, row.action, row.app, row.before, row.after, row.comment)

    @property
    def changed(self) -> list[str]:
        """The settings that differ between before and after."""
        before, after = self.before or {}, self.after or {}
        return [name for name in FIELDS if before.get(name) != after.get(name)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.number,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "app": self.app,
            "changed": self.changed,
            "before": self.before,
            "after": self.after,
            "comment": self.comment,
        }


def config_route_dict(route: GatewayRoute) -> dict[str, Any]:
    """A configured route in the shape of :meth:`StoredRoute.as_dict` (read-only: ``config``)."""
    return {"app": route.app, **route.model_dump(exclude={"app"}), "enabled": True, "source": "config"}


# -- validation --------------------------------------------------------------------------------


def check_app(app: object) -> str:
    if not isinstance(app, str) or not APP_NAME.fullmatch(app):
        raise RouteInvalid(
            "app: 1 to 64 letters, digits and . _ : -, starting with a letter or digit",
            "app：1 至 64 个字母、数字或 . _ : -，以字母或数字开头",
            field="app",
        )
    return app


def _check_hosts(hosts: Sequence[str], reserved: Collection[str]) -> None:
    if len(hosts) > MAX_HOSTS:
        raise RouteInvalid(f"hosts: at most {MAX_HOSTS}", f"hosts：最多 {MAX_HOSTS} 个", field="hosts")
    if len(set(hosts)) != len(hosts):
        raise RouteInvalid("hosts: a host is named twice", "hosts：主机名重复", field="hosts")
    for host in hosts:
        if not _HOST.fullmatch(host) or host == "localhost":
            raise RouteInvalid(
                f"hosts: {host!r} is not a host name (letters, digits, - and dots; no port, no address)",
                f"hosts：{host!r} 不是主机名（字母、数字、- 和点；不含端口，不能是地址）",
                field="hosts",
            )
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            raise RouteInvalid(
                f"hosts: {host!r} is an address; the gateway answers by host name",
                f"hosts：{host!r} 是地址，网关按主机名转发",
                field="hosts",
            )
        if host in reserved:
            raise RouteConflict(
                "reserved_host",
                f"hosts: {host} is the identity provider's own host name",
                f"hosts：{host} 是身份提供者自己的主机名",
                field="hosts",
            )


def parse_route(
    app: str, spec: Mapping[str, Any], reserved: Collection[str] = ()
) -> tuple[Route, dict[str, Any]]:
    """Validate ``spec`` (the keys of :data:`FIELDS`; ``hosts`` required) as the route of ``app``:
    the parsed route and the settings to store (defaults filled in). Raises :class:`RouteInvalid`."""
    check_app(app)
    if not isinstance(spec, Mapping):
        raise RouteInvalid("a route is a JSON object", "路由须为 JSON 对象")
    unknown = sorted(str(key) for key in spec if key not in FIELDS)
    if unknown:
        raise RouteInvalid(
            f"unknown field {unknown[0]!r}; a route has {', '.join(FIELDS)}",
            f"未知字段 {unknown[0]!r}；路由字段为 {', '.join(FIELDS)}",
            field=unknown[0],
        )
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RouteInvalid("enabled: true or false", "enabled：须为 true 或 false", field="enabled")
    values = {key: value for key, value in spec.items() if key != "enabled"}
    try:
        # Strict: a JSON string is not taken for a number or a boolean.
        settings = GatewayRoute.model_validate({"app": app, **values}, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "route"
        raise RouteInvalid(
            f"{where}: {first['msg']}", f"{where}：取值无效（{first['msg']}）", field=where
        ) from None
    _check_hosts(settings.hosts, reserved)
    try:
        route = Route.from_settings(settings)
    except RouteSettingError as e:
        raise RouteInvalid(str(e), f"{e.field}：取值无效（{e}）", field=e.field) from None
    stored = settings.model_dump(exclude={"app"}) | {"enabled": enabled}
    return route, stored
