"""What `onegate demo` runs around the IdP and the gateway: the demo city's systems.

* HR, Permits and City operations (``onegate.demo_apps``) each listen on a loopback port of
  their own inside the demo process (uvicorn, on the same event loop), and the gateway routes
  ``hr.localhost``, ``permits.localhost`` and ``grid.localhost`` to them (:class:`DemoUpstreams`,
  :func:`with_routes`). HR verifies the identity assertions it receives against the gateway's
  issuer and its ``/.onegate/jwks``.
* OA integrates directly by OpenID Connect (the app owner's path, docs/integration.md): it is
  registered as a first-party confidential client of the IdP at every start, with today's
  redirect URI (the port may change between runs) and a secret kept in keyvault
  (:func:`register_oa`), and served on the demo's public port under ``oa.localhost``.
* The demo city's access policy (``onegate/policies/demo.yaml``) becomes the active version at
  the first start, checked against the directory (:func:`apply_demo_policy`); a policy applied
  since (``onegate policy apply``) is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

import uvicorn

from core.logging import get_logger
from core.settings import GatewayRoute, Settings
from idp.clients.services import ClientRegistry
from onegate.cli_policy_store import directory_catalog
from onegate.demo_apps import DEMO_APPS, OA_SCOPES, DemoApp, OaClient
from onegate.own_clients import ensure_own_client, keyvault_secret
from onegate.runtime import Runtime, StartupError
from onegate.server import bind
from policy.rules import BundleError, load_path
from policy.versions import PolicyRejected, PolicyStore, Version

__all__ = [
    "DEMO_POLICY",
    "OA_CLIENT_ID",
    "UPSTREAM_APPS",
    "DemoUpstreams",
    "app_list",
    "apply_demo_policy",
    "loopback_origin",
    "register_oa",
    "with_routes",
]

_log = get_logger("onegate.demo")

DEMO_POLICY: Final = Path(__file__).resolve().parent / "policies" / "demo.yaml"
UPSTREAM_APPS: Final = ("hr", "permits", "grid")  # behind the gateway; OA is not
OA_CLIENT_ID: Final = "onegate-demo-oa"
OA_SECRET_NAME: Final = "demo-oa-client-secret"  # noqa: S105 - the name of a keyvault secret
ACTOR: Final = "onegate-demo"
START_TIMEOUT: Final = 10.0  # seconds for an upstream server to start listening
STOP_TIMEOUT: Final = 15.0  # seconds for an upstream server to stop (it gets 5 to finish requests)


def app_origin(name: str, port: int) -> str:
    """Where a browser opens demo system ``name``: ``http://<name>.localhost:<port>``
    (``*.localhost`` is loopback in browsers and curl, RFC 6761 §6.3)."""
    return f"http://{DEMO_APPS[name][2]}:{port}"


def app_list(port: int) -> list[dict[str, str]]:
    """demo.json's ``apps``: every demo system's name (zh-CN, then English) and URL."""
    return [
        {"name": f"{title_zh} {title_en}", "url": f"{app_origin(name, port)}/"}
        for name, (title_zh, title_en, _host) in DEMO_APPS.items()
    ]


def loopback_origin(host: str, port: int) -> str:
    """How this process reaches its own server bound to ``host``: Python cannot resolve
    ``*.localhost`` (glibc does not map it), so the address, a wildcard one as loopback."""
    if host in ("", "0.0.0.0", "localhost"):  # noqa: S104 - recognising, not binding
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def with_routes(settings: Settings, routes: Sequence[GatewayRoute]) -> Settings:
    """``settings`` whose ``gateway.routes`` are ``routes`` plus the configured ones that use
    neither their application names nor their hosts."""
    names = {r.app for r in routes}
    hosts = {h for r in routes for h in r.hosts}
    kept = [r for r in settings.gateway.routes if r.app not in names and not hosts.intersection(r.hosts)]
    gateway = settings.gateway.model_copy(update={"routes": [*routes, *kept]})
    return settings.model_copy(update={"gateway": gateway})


# -- the upstream servers ----------------------------------------------------------------------


class _Upstream(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The demo's public server takes SIGINT / SIGTERM; these stop after it (DemoUpstreams.stop).
        yield


class DemoUpstreams:
    """The systems behind the gateway, each served by uvicorn on a loopback port of its own.

    The sockets are bound at construction, so their addresses are known before the gateway is
    configured; :meth:`serving` runs the servers as tasks of the current event loop.
    """

    def __init__(self, names: Sequence[str] = UPSTREAM_APPS, *, host: str = "127.0.0.1") -> None:
        self._sockets: dict[str, socket.socket] = {}
        try:
            for name in names:
                self._sockets[name] = bind(host, 0)
        except OSError:
            self.close()
            raise
        self._servers: list[_Upstream] = []
        self._tasks: list[asyncio.Task[None]] = []

    def url(self, name: str) -> str:
        """``http://<address>:<port>`` of upstream ``name``."""
        host, port = self._sockets[name].getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def routes(self) -> list[GatewayRoute]:
        """The gateway route of each upstream, on its demo host (``hr.localhost``, ...)."""
        return [
            GatewayRoute(app=name, hosts=[DEMO_APPS[name][2]], upstream=self.url(name))
            for name in self._sockets
        ]

    @contextlib.asynccontextmanager
    async def serving(self, apps: Mapping[str, DemoApp]) -> AsyncIterator[None]:
        """Serve ``apps[name]`` on each socket; listening on entry, stopped on exit."""
        try:
            for name, sock in self._sockets.items():
                config = uvicorn.Config(
                    apps[name].app,
                    lifespan="on",
                    log_config=None,  # the process's structlog configuration stays in charge
                    access_log=False,
                    server_header=False,
                    proxy_headers=False,  # only the gateway talks to these
                    timeout_graceful_shutdown=5,
                )
                server = _Upstream(config)
                self._servers.append(server)
                self._tasks.append(asyncio.create_task(server.serve(sockets=[sock]), name=f"demo:{name}"))
            await self._started()
            yield
        finally:
            await self.stop()

    async def _started(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not all(server.started for server in self._servers):
            if any(task.done() for task in self._tasks) or loop.time() > deadline:
                names = ", ".join(n for n, t in zip(self._sockets, self._tasks, strict=True) if t.done())
                raise StartupError(
                    f"a demo system did not start ({names or 'timed out'}) / 演示业务系统未能启动"
                )
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop every server (open requests get a few seconds to finish)."""
        for server in self._servers:
            server.should_exit = True
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)
            for task in pending:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception, SystemExit):
                    await task
        self._servers, self._tasks = [], []

    def close(self) -> None:
        """Close the listening sockets (after :meth:`stop`)."""
        for sock in self._sockets.values():
            sock.close()


# -- OA's registration -------------------------------------------------------------------------


async def register_oa(runtime: Runtime, *, issuer: str, port: int) -> OaClient:
    """Register OA as a first-party confidential client of this deployment's IdP (OpenID
    Connect Dynamic Client Registration 1.0 §2 metadata, kept in the client registry), or bring
    its redirect URIs up to date with ``port``; its secret is derived from a keyvault secret,
    so it is the same on every start and never written down."""
    secret = keyvault_secret(runtime, OA_SECRET_NAME)
    origin = app_origin("oa", port)
    redirect_uri, after_logout = f"{origin}/callback", f"{origin}/"
    await ensure_own_client(
        ClientRegistry(runtime.sessions, runtime.vault.secrets, events=runtime.bus),
        OA_CLIENT_ID,
        secret=secret,
        actor=ACTOR,
        create={
            "name": "协同办公",
            "name_en": "OA (office automation)",
            "scopes": OA_SCOPES,
            "first_party": True,
            "description": "演示城市的协同办公系统，直接以 OIDC 接入 / "
            "the demo city's OA, integrated by OIDC",
        },
        keep={"redirect_uris": [redirect_uri], "post_logout_redirect_uris": [after_logout]},
    )
    return OaClient(
        issuer=issuer,
        client_id=OA_CLIENT_ID,
        client_secret=secret,
        redirect_uri=redirect_uri,
        post_logout_redirect_uri=after_logout,
    )


# -- the demo policy ---------------------------------------------------------------------------


async def apply_demo_policy(runtime: Runtime, path: Path = DEMO_POLICY) -> Version | None:
    """Make the bundle at ``path`` the active policy when none is yet; the new version, or None
    when a policy was active already. A bundle that does not load or pass check against the
    directory stops the demo (:class:`StartupError`, naming the first errors)."""
    store = PolicyStore(runtime.sessions, runtime.kv, runtime.bus)
    if await store.active() is not None:
        return None
    try:
        bundle = load_path(path)
        version, _warnings = await store.apply(
            bundle,
            author=ACTOR,
            comment="演示城市访问策略 / the demo city's access policy",
            catalog=await directory_catalog(runtime, bundle),
        )
    except (BundleError, PolicyRejected) as e:
        errors = [str(f) for f in e.findings if f.severity == "error"][:3]
        raise StartupError(f"the demo policy is refused / 演示策略未通过检查: {'; '.join(errors)}") from e
    _log.info("demo policy applied", version=version.number)
    return version
