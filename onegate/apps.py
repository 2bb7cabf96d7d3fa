"""Assemble the web app of each role from the shared runtime.

``all`` serves every role on one port and routes by host name: ``idp.*`` to the identity
provider, ``soc.*`` to the security-operations console, anything else to the gateway (which
also answers on the bare address with the portal page). Each role app has its own
``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from core.web import N_, create_web_app
from onegate.bootstrap import CSRF_KEY_NAME
from onegate.gateway_app import build_gateway_app
from onegate.hosts import HostRouter
from onegate.idp_app import build_idp_app, default_issuer
from onegate.runtime import Runtime

if TYPE_CHECKING:
    from onegate.soc_app import Soc

__all__ = ["ROLES", "build_app", "soc_role_app"]

ROLES = ("idp", "gateway", "soc", "all")
HERE = Path(__file__).resolve().parent

# What each role's home page says it is, until its own pages take over.
_TITLES: Mapping[str, tuple[str, str]] = {
    "gateway": (N_("Access gateway"), N_("Every request is checked against the access policies.")),
    "soc": (N_("Security operations centre"), N_("Alerts, incidents, response and drills.")),
}


def _home(role: str) -> Any:
    async def home(request: Request) -> Response:
        title, summary = _TITLES[role]
        response: Response = request.app.state.templates.render(
            request, "home.html", {"role": role, "title": title, "summary": summary}
        )
        return response

    return home


def role_app(
    runtime: Runtime,
    role: str,
    *,
    apis: Mapping[str, ASGIApp] | None = None,
    endpoints: Mapping[str, ASGIApp] | None = None,
) -> Starlette:
    """The role's portal app; ``apis``: prefix -> a JSON API mounted there, ``endpoints``: exact
    path -> a JSON endpoint (both authenticated by bearer keys, so exempt from CSRF checks; errors
    always JSON)."""
    settings = runtime.settings
    mounted = dict(apis or {})
    single = dict(endpoints or {})
    return create_web_app(
        name=role,
        routes=[
            Route("/", _home(role), methods=["GET"]),
            *(Mount(prefix, app=api) for prefix, api in mounted.items()),
            *(Route(path, endpoint=app) for path, app in single.items()),
        ],
        csrf_secret=runtime.vault.secrets.get_or_create(CSRF_KEY_NAME),
        readiness_checks={"database": runtime.check_database, "kv": runtime.check_kv},
        template_dirs=[HERE / "templates"],
        locale_dirs=[HERE / "locale"],
        default_locale=settings.web.default_locale,
        https=settings.server.https,
        csrf_exempt_prefixes=tuple(prefix + "/" for prefix in mounted),
        csrf_exempt_paths=tuple(single),
        json_path_prefixes=(*(prefix + "/" for prefix in mounted), *single),
    )


def soc_role_app(runtime: Runtime, soc: Soc) -> Starlette:
    """The SOC role's app: its portal page, the SOC API (``/api/soc/v1``), the HTTP bulk ingest
    endpoint (``/ingest/v1/bulk``) and the SOC's figures on ``/metrics``."""
    from onegate.admin.soc_api import PREFIX, build_soc_api  # soc modules: SOC processes only
    from onegate.soc_app import SocCollector

    app = role_app(runtime, "soc", apis={PREFIX: build_soc_api(soc)}, endpoints={BULK_PATH: soc.bulk_app()})
    app.state.metrics_registry.register(SocCollector(soc))
    return app


BULK_PATH = "/ingest/v1/bulk"
FALLBACK_RETRY_SECONDS = 5.0


def _event_stream(
    runtime: Runtime,
) -> tuple[list[Callable[[], Awaitable[None]]], list[Callable[[], Awaitable[None]]]]:
    """With ``soc.transport: redis``, a gateway or IdP process publishes its events to the Redis
    stream the SOC processes read (starters, closers for the lifespan); otherwise nothing."""
    settings = runtime.settings
    if settings.soc.transport != "redis":
        return [], []
    import asyncio
    import contextlib

    from core.eventstream import FallbackFile, StreamPublisher

    publisher = StreamPublisher(settings.kv.url, prefix=settings.kv.prefix)
    # Events Redis could not take wait on disk and go out when it is back (no event is lost).
    fallback = FallbackFile(Path(settings.data_dir) / "events-undelivered.ndjson")
    tasks: list[asyncio.Task[None]] = []

    def keep(subscriber: str, event: Any, error: BaseException) -> None:
        if subscriber == "soc-stream":
            fallback.keep(event)

    async def replay_when_back() -> None:
        while True:
            await asyncio.sleep(FALLBACK_RETRY_SECONDS)
            if fallback.pending:
                with contextlib.suppress(Exception):  # still away: the next round tries again
                    await fallback.replay(publisher)

    async def start() -> None:
        runtime.bus.set_on_failure(keep)
        runtime.bus.subscribe_batch("soc-stream", publisher.publish)
        tasks.append(asyncio.create_task(replay_when_back(), name="events:fallback"))

    async def close() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await publisher.close()

    return [start], [close]


class _Lifespan:
    """Start and stop what runs in the background: the event bus, back-channel deliveries, the
    watchers of routes, policy and client changes."""

    def __init__(
        self,
        runtime: Runtime,
        closers: Sequence[Callable[[], Awaitable[None]]] = (),
        starters: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self._runtime = runtime
        self._closers = closers
        self._starters = starters

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        await self._runtime.bus.start()
        try:
            for start in self._starters:
                await start()
            yield
        finally:
            for close in self._closers:
                await close()
            await self._runtime.bus.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"  # noqa: S101 - the ASGI spec's order
        async with self._running():
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})


def build_app(runtime: Runtime, role: str, *, port: int) -> ASGIApp:
    """The ASGI app serving ``role`` (one of :data:`ROLES`); ``port`` is the public port.

    The gateway serves the hosts of ``gateway.routes`` and of the routes added at run time (and
    ``/.onegate/`` everywhere); requests for ``localhost`` or an address go to the role's portal
    page and health endpoints. The IdP role app carries the admin API (``/api/admin/v1``), the SOC
    role app the SOC API (``/api/soc/v1``).
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    issuer = runtime.settings.idp.issuer or default_issuer(port)
    publish, unpublish = _event_stream(runtime)
    if role == "idp":
        idp = build_idp_app(runtime, issuer=issuer)
        return HostRouter(
            {}, default=idp.app, lifespan=_Lifespan(runtime, [idp.close, *unpublish], [*publish, idp.start])
        )
    if role == "soc":
        from onegate.soc_app import build_soc  # not loaded by a gateway or IdP process

        soc = build_soc(runtime)
        return HostRouter(
            {},
            default=soc_role_app(runtime, soc),
            lifespan=_Lifespan(runtime, [soc.close, *unpublish], [*publish, soc.start]),
        )
    gateway = build_gateway_app(runtime, issuer=issuer, port=port, fallback=role_app(runtime, "gateway"))
    if role == "gateway":
        return HostRouter(
            {},
            default=gateway.app,
            lifespan=_Lifespan(runtime, [gateway.close, *unpublish], [*publish, gateway.start]),
        )
    idp = build_idp_app(runtime, issuer=issuer)
    from onegate.soc_app import build_soc

    soc = build_soc(runtime)
    return HostRouter(
        {"idp": idp.app, "soc": soc_role_app(runtime, soc)},
        default=gateway.app,
        # The SOC starts first and stops last: it takes the others' events until they stop.
        lifespan=_Lifespan(
            runtime,
            [gateway.close, idp.close, soc.close, *unpublish],
            [*publish, soc.start, idp.start, gateway.start],
        ),
    )
