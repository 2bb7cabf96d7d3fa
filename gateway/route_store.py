"""Routes added at run time: stored in the database, checked like configured ones, followed by
every gateway process.

:class:`RouteStore` validates a route exactly as ``gateway.routes`` in the configuration is
validated (:func:`~gateway.route_records.parse_route`, then the :class:`~gateway.routes.RouteTable`
rules against the routes in place). The configuration takes precedence: a
route may not name a configured application or claim any path of a configured host
(:func:`~gateway.routes.find_conflict`), and of two added routes only one may have a given host
and path prefix. A refused change raises a :class:`RouteError` (a ``code``, the ``field`` at
fault, a message in Chinese and in English) and emits ``gateway-route-rejected``.

Every change is one transaction that writes the route and a row of its history
(``gateway_route_changes``: who, when, before, after), whose number is the revision of the whole
set; two changes racing for a number are serialised by its primary key (the loser checks again
against the winner's result, like policy versions). After a change the store emits an event and
publishes the revision on the KV channel ``gateway:routes:changed``, which every gateway process
follows (:mod:`gateway.route_watcher`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.events import Category, Event, EventEmitter, Outcome
from core.kv import KV, KVError
from core.settings import GatewayRoute
from gateway.models import RouteChangeRecord, RouteRecord
from gateway.route_records import (
    FIELDS,
    RouteChange,
    RouteConflict,
    RouteError,
    RouteNotFound,
    RouteStale,
    StoredRoute,
    check_app,
    parse_route,
)
from gateway.routes import Conflict, Route, RouteTable, compose, find_conflict

__all__ = ["CHANNEL", "RouteStore"]

log = structlog.get_logger("onegate.gateway.routes")

CHANNEL = "gateway:routes:changed"
_ATTEMPTS = 5


class RouteStore:
    """The added routes (the database) and their announcement (the KV channel).

    ``config``: the configured routes (``gateway.routes``), which take precedence.
    ``reserved_hosts``: host names no route may claim (the IdP's own)."""

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        kv: KV,
        events: EventEmitter,
        *,
        config: Sequence[GatewayRoute] = (),
        reserved_hosts: Collection[str] = (),
    ) -> None:
        self._sessions = sessions
        self._kv = kv
        self._events = events
        self.config = tuple(config)
        self.config_table = RouteTable.from_settings(self.config)
        self._reserved = frozenset(h.lower() for h in reserved_hosts)

    # -- reading -------------------------------------------------------------------------------

    async def revision(self) -> int:
        """The number of the newest change (0 before the first)."""
        async with self._sessions() as s:
            newest: int | None = await s.scalar(select(func.max(RouteChangeRecord.id)))
            return newest or 0

    async def routes(self) -> list[StoredRoute]:
        """Every added route, enabled or not, by application name."""
        async with self._sessions() as s:
            rows = await s.scalars(select(RouteRecord).order_by(RouteRecord.app))
            return [StoredRoute.of(row) for row in rows]

    async def get(self, app: str) -> StoredRoute:
        async with self._sessions() as s:
            row = await s.get(RouteRecord, app)
            if row is None:
                raise RouteNotFound(app)
            return StoredRoute.of(row)

    async def _stored(self, app: str) -> bool:
        async with self._sessions() as s:
            return await s.get(RouteRecord, app) is not None

    async def history(self, app: str | None = None, limit: int = 50) -> list[RouteChange]:
        """The newest ``limit`` changes (of one application, or all), newest first."""
        query = select(RouteChangeRecord).order_by(RouteChangeRecord.id.desc()).limit(limit)
        if app is not None:
            query = query.where(RouteChangeRecord.app == app)
        async with self._sessions() as s:
            return [RouteChange.of(row) for row in await s.scalars(query)]

    async def table(self) -> tuple[int, RouteTable, list[tuple[str, str]]]:
        """``(revision, table, left out)``: the configured routes plus every enabled added route
        that does not conflict with them; ``left out`` is ``(app, why)`` for the others. The
        revision is read first, so the table is at least that new."""
        revision = await self.revision()
        added: list[Route] = []
        left_out: list[tuple[str, str]] = []
        for stored in await self.routes():
            if not stored.enabled:
                continue
            try:
                added.append(stored.route())
            except ValueError as e:  # a row written past the store: never a broken table
                left_out.append((stored.app, str(e)))
        table, conflicts = compose(self.config_table.all(), added)
        left_out += [(route.app, conflict.message_en) for route, conflict in conflicts]
        return revision, table, left_out

    # -- changing ------------------------------------------------------------------------------

    async def create(
        self,
        app: str,
        spec: Mapping[str, Any],
        *,
        actor: str,
        comment: str = "",
        context: Mapping[str, Any] | None = None,
    ) -> StoredRoute:
        """Add the route of ``app``. ``context``: more fields for the event (``source.ip``...)."""
        return await self._change("create", app, spec, actor=actor, comment=comment, context=context)

    async def update(
        self,
        app: str,
        spec: Mapping[str, Any],
        *,
        actor: str,
        comment: str = "",
        expect_revision: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> StoredRoute:
        """Replace the settings of ``app``'s route with ``spec`` (missing keys take their
        defaults). Nothing is stored when nothing differs. ``expect_revision``: refuse
        (:class:`RouteStale`) unless the stored route is at that revision."""
        return await self._change(
            "update", app, spec, actor=actor, comment=comment, expect=expect_revision, context=context
        )

    async def remove(
        self,
        app: str,
        *,
        actor: str,
        comment: str = "",
        expect_revision: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> StoredRoute:
        """Remove ``app``'s route; the route as it was."""
        return await self._change(
            "remove", app, None, actor=actor, comment=comment, expect=expect_revision, context=context
        )

    async def _change(
        self,
        action: str,
        app: str,
        spec: Mapping[str, Any] | None,
        *,
        actor: str,
        comment: str,
        expect: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> StoredRoute:
        actor, comment = actor[:200], comment[:1000]
        try:
            route: Route | None = None
            settings: dict[str, Any] | None = None
            if action != "create" and app in self.config_table.apps and not await self._stored(app):
                # Said before the settings are checked: no settings make this change possible.
                raise RouteConflict.of(Conflict("config_app", app))
            if spec is not None:
                route, settings = parse_route(app, spec, self._reserved)
            else:
                check_app(app)
            for _ in range(_ATTEMPTS):
                try:
                    async with self._sessions() as s, s.begin():
                        outcome = await self._write(
                            s,
                            action,
                            app,
                            route=route,
                            settings=settings,
                            actor=actor,
                            comment=comment,
                            expect=expect,
                        )
                    break
                except IntegrityError:
                    continue  # another change took this number (or this application) first
                except OperationalError as e:
                    if "locked" not in str(e):  # SQLite: another writer went first
                        raise
                    await asyncio.sleep(0.05)
            else:
                raise RouteConflict(
                    "concurrent_change",
                    f"route change not stored: {_ATTEMPTS} concurrent changes went first; try again",
                    f"路由变更未保存：{_ATTEMPTS} 个并发变更抢先，请重试",
                )
        except RouteError as e:
            self._event(
                "gateway-route-rejected",
                Outcome.FAILURE,
                actor=actor,
                app=app,
                context=context,
                fields={
                    "onegate.reason": e.code,
                    "error.message": e.message_en[:1000],
                    "onegate.route.action": action,
                },
            )
            raise
        stored, number, before = outcome
        if number is None:
            return stored  # an update that changed nothing
        after = stored.settings() if action != "remove" else None
        event_type = {"create": "creation", "update": "change", "remove": "deletion"}[action]
        self._event(
            f"gateway-route-{'created' if action == 'create' else action + 'd'}",
            Outcome.SUCCESS,
            actor=actor,
            app=app,
            context=context,
            fields={
                "event.type": [event_type],
                "onegate.route.revision": number,
                "onegate.route.hosts": list(stored.hosts),
                "onegate.route.upstream": stored.upstream,
                "onegate.changed": [n for n in FIELDS if (before or {}).get(n) != (after or {}).get(n)],
            },
        )
        try:
            await self._kv.publish(CHANNEL, str(number).encode())
        except KVError as e:  # stored all the same: the watchers' poll picks it up
            log.warning("route change not published; gateways reload on their next poll", error=str(e))
        return stored

    async def _write(
        self,
        s: AsyncSession,
        action: str,
        app: str,
        *,
        route: Route | None,
        settings: dict[str, Any] | None,
        actor: str,
        comment: str,
        expect: int | None,
    ) -> tuple[StoredRoute, int | None, dict[str, Any] | None]:
        """Inside one transaction: check, write the route and its history row. ``(the route,
        the change number or None when nothing changed, the settings before)``."""
        newest: int | None = await s.scalar(select(func.max(RouteChangeRecord.id)))
        rows = {row.app: row for row in await s.scalars(select(RouteRecord))}
        row = rows.get(app)
        if action == "create" and row is not None:
            raise RouteConflict(
                "route_exists",
                f"application {app} has a route already; update it instead",
                f"应用 {app} 已有路由，请改为修改",
                field="app",
            )
        if action != "create":
            if row is None:
                if app in self.config_table.apps:
                    raise RouteConflict.of(Conflict("config_app", app))
                raise RouteNotFound(app)
            if expect is not None and row.revision != expect:
                raise RouteStale(app, row.revision)
        before = StoredRoute.of(row).settings() if row is not None else None
        if route is not None:
            others = [parsed for name, r in rows.items() if name != app and (parsed := _parsed(r))]
            conflict = find_conflict(route, self.config_table, others)
            if conflict is not None:
                raise RouteConflict.of(conflict)
            try:  # the table's own rules, as at start-up
                RouteTable([*self.config_table.all(), *others, route])
            except ValueError as e:
                raise RouteConflict("host_conflict", str(e), f"路由冲突：{e}", field="hosts") from None
        if action == "update" and before == settings and row is not None:
            return StoredRoute.of(row), None, before
        now = datetime.now(UTC)
        number = (newest or 0) + 1
        if action == "remove":
            assert row is not None  # noqa: S101 - checked above
            gone = StoredRoute.of(row)
            await s.delete(row)
            after = None
        else:
            assert settings is not None  # noqa: S101 - a create or update has its settings
            if row is None:
                row = RouteRecord(app=app, revision=1, created_at=now, created_by=actor)
                s.add(row)
            else:
                row.revision += 1
            for name, value in settings.items():
                setattr(row, name, value)
            row.updated_at, row.updated_by = now, actor
            after = dict(settings)
        s.add(
            RouteChangeRecord(
                id=number,
                at=now,
                actor=actor,
                action=action,
                app=app,
                before=before,
                after=after,
                comment=comment,
            )
        )
        await s.flush()
        if action == "remove":
            return gone, number, before
        return StoredRoute.of(row), number, before

    def _event(
        self,
        action: str,
        outcome: Outcome,
        *,
        actor: str,
        app: str,
        context: Mapping[str, Any] | None,
        fields: Mapping[str, Any],
    ) -> None:
        values: dict[str, Any] = {"event.type": ["change"], "labels.actor": actor, "onegate.app": app[:200]}
        values.update({key: value for key, value in fields.items() if value is not None})
        values.update(context or {})
        self._events.emit(
            Event(
                action=action,
                category=Category.CONFIGURATION,
                outcome=outcome,
                dataset="onegate.gateway",
                fields=values,
            )
        )


def _parsed(row: RouteRecord) -> Route | None:
    try:
        return StoredRoute.of(row).route()
    except ValueError:  # a row written past the store claims nothing
        return None
