"""`onegate gateway routes list|show|add|update|remove|history`: the gateway's routes at run time.

Routes added here (or through the admin API) are stored in the database of the data dir and
served by every running gateway process within a second with Redis, or at its next poll (five
seconds) with the embedded KV; they survive restarts. Routes in the configuration file
(``gateway.routes``) are listed too, marked ``config``: they are read-only here and take
precedence (an added route may not name a configured application or claim a configured host).

A refused change (a value that does not validate, a conflict, an unknown application) prints one
line, English / Chinese, and exits 1 with nothing changed; usage and dependency problems exit 2.
"""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer

from gateway.route_records import RouteError, StoredRoute, config_route_dict
from gateway.route_store import RouteStore
from onegate.cli_common import ConfigFile, DataDir, Json, actor, emit_json, fail, table, with_runtime
from onegate.cli_policy_store import data_dir_settings

if TYPE_CHECKING:
    from onegate.runtime import Runtime

__all__ = ["gateway_app", "routes_app"]

gateway_app = typer.Typer(help="The access gateway. / 访问网关。", no_args_is_help=True)
routes_app = typer.Typer(
    help="Routes added at run time (the configuration file's routes are read-only here). / 运行时路由。",
    no_args_is_help=True,
)
gateway_app.add_typer(routes_app, name="routes")

App = Annotated[str, typer.Argument(help="The application's name in the access policy.", show_default=False)]
Hosts = Annotated[
    list[str] | None, typer.Option("--host", help="A host name it answers on (repeat for several).")
]
Upstream = Annotated[str | None, typer.Option("--upstream", help="http(s)://host:port of the application.")]
PathPrefix = Annotated[str | None, typer.Option("--path-prefix", help="Only this part of the host.")]
PreserveHost = Annotated[
    bool | None,
    typer.Option("--preserve-host/--no-preserve-host", help="Send the client's Host upstream."),
]
ConnectTimeout = Annotated[float | None, typer.Option("--connect-timeout", help="Seconds.")]
ReadTimeout = Annotated[float | None, typer.Option("--read-timeout", help="Seconds between reads.")]
Comment = Annotated[str, typer.Option("--comment", "-m", help="Why (kept in the history).")]


def _store(runtime: Runtime) -> RouteStore:
    issuer_host = urlsplit(runtime.settings.idp.issuer or "").hostname
    return RouteStore(
        runtime.sessions,
        runtime.kv,
        runtime.bus,
        config=runtime.settings.gateway.routes,
        reserved_hosts=[issuer_host] if issuer_host else [],
    )


def _refused(error: RouteError) -> typer.Exit:
    typer.echo(f"refused: {error.message_en} / 已拒绝：{error.message_zh}", err=True)
    return typer.Exit(1)


def _print_route(route: dict[str, Any]) -> None:
    for name in ("app", "source", "hosts", "upstream", "path_prefix", "preserve_host"):
        value = route[name]
        typer.echo(f"{name + ':':<17}{', '.join(value) if isinstance(value, list) else value}")
    typer.echo(f"{'timeouts:':<17}connect {route['connect_timeout']:g} s, read {route['read_timeout']:g} s")
    typer.echo(f"{'enabled:':<17}{route['enabled']}")
    if route["source"] == "api":
        typer.echo(f"{'revision:':<17}{route['revision']}")
        typer.echo(f"{'updated:':<17}{route['updated_at']} by {route['updated_by']}")
        typer.echo(f"{'created:':<17}{route['created_at']} by {route['created_by']}")


def _changed(store_work: Any, settings: Any, as_json: bool, what: str) -> None:
    outcome = with_runtime(settings, store_work)
    if isinstance(outcome, RouteError):
        raise _refused(outcome)
    route: StoredRoute = outcome
    if as_json:
        emit_json(route.as_dict())
        return
    typer.echo(
        f"{what} route {route.app} (revision {route.revision}); every gateway serves it within a "
        "second / 已生效，所有网关将在一秒内加载"
    )


@routes_app.command("list")
def list_command(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """Every route: the configuration file's and the added ones."""
    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> tuple[int, list[StoredRoute]]:
        store = _store(runtime)
        return await store.revision(), await store.routes()

    revision, added = with_runtime(settings, work)
    routes = [config_route_dict(r) for r in settings.gateway.routes] + [r.as_dict() for r in added]
    if as_json:
        emit_json({"revision": revision, "routes": routes})
        return
    if not routes:
        typer.echo("no routes / 没有路由")
        return
    table(
        ["app", "source", "hosts", "path", "upstream", "enabled", "updated by"],
        [
            [
                r["app"],
                r["source"],
                ", ".join(r["hosts"]),
                r["path_prefix"],
                r["upstream"] or "(forward-auth)",
                "yes" if r["enabled"] else "no",
                r.get("updated_by", "-"),
            ]
            for r in routes
        ],
    )


@routes_app.command("show")
def show_command(
    app: App, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """One route."""
    settings = data_dir_settings(data_dir, config)
    configured = next((r for r in settings.gateway.routes if r.app == app), None)
    if configured is not None:
        route = config_route_dict(configured)
    else:

        async def work(runtime: Runtime) -> StoredRoute | RouteError:
            try:
                return await _store(runtime).get(app)
            except RouteError as e:
                return e

        found = with_runtime(settings, work)
        if isinstance(found, RouteError):
            raise _refused(found)
        route = found.as_dict()
    if as_json:
        emit_json(route)
    else:
        _print_route(route)


@routes_app.command("add")
def add_command(
    app: App,
    *,
    hosts: Hosts = None,
    upstream: Upstream = None,
    path_prefix: PathPrefix = None,
    preserve_host: PreserveHost = None,
    connect_timeout: ConnectTimeout = None,
    read_timeout: ReadTimeout = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Store it without serving it yet.")] = False,
    comment: Comment = "",
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Add a route; every gateway serves it within a second."""
    if not hosts:
        raise fail("give at least one --host / 至少需要一个 --host")
    spec: dict[str, Any] = {"hosts": list(hosts)}
    for name, value in (
        ("upstream", upstream),
        ("path_prefix", path_prefix),
        ("preserve_host", preserve_host),
        ("connect_timeout", connect_timeout),
        ("read_timeout", read_timeout),
    ):
        if value is not None:
            spec[name] = value
    if disabled:
        spec["enabled"] = False
    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> StoredRoute | RouteError:
        try:
            return await _store(runtime).create(app, spec, actor=actor(), comment=comment)
        except RouteError as e:
            return e

    _changed(work, settings, as_json, "added")


@routes_app.command("update")
def update_command(
    app: App,
    *,
    hosts: Hosts = None,
    upstream: Upstream = None,
    no_upstream: Annotated[
        bool, typer.Option("--no-upstream", help="Forward-auth only (nginx / Caddy proxy it).")
    ] = False,
    path_prefix: PathPrefix = None,
    preserve_host: PreserveHost = None,
    connect_timeout: ConnectTimeout = None,
    read_timeout: ReadTimeout = None,
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Serve it, or keep it without serving it.")
    ] = None,
    comment: Comment = "",
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Change the settings given (``--host`` replaces every host); the others stay."""
    if upstream is not None and no_upstream:
        raise fail("--upstream and --no-upstream exclude each other / 二者只能选一")
    given: dict[str, Any] = {
        "hosts": list(hosts) if hosts else None,
        "upstream": upstream,
        "path_prefix": path_prefix,
        "preserve_host": preserve_host,
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "enabled": enabled,
    }
    changes = {name: value for name, value in given.items() if value is not None}
    if no_upstream:
        changes["upstream"] = None
    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> StoredRoute | RouteError:
        store = _store(runtime)
        try:
            current = await store.get(app) if app not in store.config_table.apps else None
            spec = (current.settings() if current is not None else {}) | changes
            # The revision read is the one changed: a change made meanwhile is not overwritten.
            return await store.update(
                app,
                spec,
                actor=actor(),
                comment=comment,
                expect_revision=current.revision if current is not None else None,
            )
        except RouteError as e:
            return e

    _changed(work, settings, as_json, "updated")


@routes_app.command("remove")
def remove_command(
    app: App,
    comment: Comment = "",
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Remove an added route; its hosts are refused (421) within a second."""
    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> StoredRoute | RouteError:
        try:
            return await _store(runtime).remove(app, actor=actor(), comment=comment)
        except RouteError as e:
            return e

    outcome = with_runtime(settings, work)
    if isinstance(outcome, RouteError):
        raise _refused(outcome)
    if as_json:
        emit_json({"removed": outcome.as_dict()})
        return
    typer.echo(f"removed route {app}; its hosts are refused within a second / 路由已删除")


@routes_app.command("history")
def history_command(
    app: Annotated[str | None, typer.Argument(help="One application [default: all].")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="How many, newest first.")] = 20,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Who changed which route, when, and what changed (newest first)."""
    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> list[Any]:
        return await _store(runtime).history(app, limit)

    changes = with_runtime(settings, work)
    if as_json:
        emit_json([c.as_dict() for c in changes])
        return
    if not changes:
        typer.echo("no changes yet / 尚无变更")
        return
    table(
        ["revision", "time (UTC)", "actor", "action", "app", "changed", "comment"],
        [
            [
                str(c.number),
                c.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                c.actor,
                c.action,
                c.app,
                ", ".join(c.changed),
                c.comment,
            ]
            for c in changes
        ],
    )
