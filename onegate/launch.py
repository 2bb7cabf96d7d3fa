"""Start a server process: `onegate serve` and `onegate demo`.

The demo's pieces (seed data, demo applications, TOTP) are imported by ``run_demo`` only, so a
served role keeps none of them in memory.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onegate.apps import build_app
from onegate.runtime import open_runtime
from onegate.server import bind, serve

if TYPE_CHECKING:
    from core.settings import Settings
    from onegate.demo_stack import DemoUpstreams

__all__ = ["demo_urls", "run_demo", "run_server"]


def demo_urls(port: int) -> dict[str, str]:
    """Where the demo serves each thing; ``*.localhost`` resolves to loopback in browsers and curl."""
    return {
        "portal": f"http://localhost:{port}/",
        "idp": f"http://idp.localhost:{port}/",
        "gateway": f"http://localhost:{port}/",
        "soc": f"http://soc.localhost:{port}/",
        "healthz": f"http://127.0.0.1:{port}/healthz",
        "readyz": f"http://127.0.0.1:{port}/readyz",
        "metrics": f"http://127.0.0.1:{port}/metrics",
    }


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, path)


async def run_server(settings: Settings, *, role: str) -> None:
    runtime = await open_runtime(settings)
    sock = bind(settings.server.host, settings.server.port)
    port = sock.getsockname()[1]

    async def ready() -> None:
        print(f"onegate {role} serving on http://{settings.server.host}:{port}/", flush=True)

    try:
        await serve(build_app(runtime, role, port=port), sock, on_ready=ready)
    finally:
        sock.close()
        await runtime.close()


async def run_demo(settings: Settings) -> None:
    """Initialise if needed and run the whole demo city in this process, then write
    ``<data dir>/demo.json``: the IdP, the gateway and OA on the public port (by host name),
    and HR, Permits and City operations behind the gateway, each on a loopback port of its own
    (onegate.demo_stack)."""
    from onegate.demo_stack import DemoUpstreams, with_routes

    demo_file = settings.data_dir / "demo.json"
    demo_file.unlink(missing_ok=True)  # a reader must never see the previous run's port
    upstreams = DemoUpstreams()
    try:
        await _run_demo(with_routes(settings, upstreams.routes()), upstreams, demo_file)
    finally:
        upstreams.close()
        demo_file.unlink(missing_ok=True)


def _announce(demo_file: Path, info: dict[str, Any], *, admin: tuple[str, str | None]) -> None:
    """Write demo.json and print what it says, with the administrator's one-time password."""
    _write_atomically(demo_file, info)
    print("OneGate demo is running / 演示环境已启动", flush=True)
    for name, url in info["urls"].items():
        print(f"  {name:<8} {url}", flush=True)
    print("  applications / 业务系统:", flush=True)
    for entry in info["apps"]:
        print(f"    {entry['url']:<32} {entry['name']}", flush=True)
    admin_username, admin_password = admin
    if admin_password:
        print(f"  administrator {admin_username} / one-time password: {admin_password}", flush=True)
    for user in info["users"]:
        print(f"  {user['username']:<9} {user['password']}  {user['display_name']}", flush=True)
        if "totp_secret" in user:
            print(f"  {'':<9} TOTP key / 动态口令密钥: {user['totp_secret']}", flush=True)
    print(f"  (written to {demo_file}; Ctrl-C stops)", flush=True)


async def _run_demo(settings: Settings, upstreams: DemoUpstreams, demo_file: Path) -> None:
    from mfa.totp import TotpService
    from onegate.bootstrap import initialise
    from onegate.demo_apps import build_demo_apps
    from onegate.demo_data import seed_demo
    from onegate.demo_stack import app_list, apply_demo_policy, loopback_origin, register_oa
    from onegate.hosts import HostRouter
    from onegate.idp_app import default_issuer

    result = await initialise(settings)
    runtime = await open_runtime(settings)
    sock: socket.socket | None = None
    try:
        totp = TotpService(
            runtime.sessions,
            runtime.vault.envelope,
            runtime.kv,
            issuer_name=settings.mfa.totp_issuer,
            max_failures=settings.mfa.totp_max_failures,
            failure_window=settings.mfa.totp_failure_window,
        )
        users = await seed_demo(runtime.directory, settings.data_dir, totp=totp)
        await apply_demo_policy(runtime)
        sock = bind(settings.server.host, settings.server.port)
        port = sock.getsockname()[1]
        issuer = (settings.idp.issuer or default_issuer(port)).rstrip("/")
        apps = build_demo_apps(
            # HR checks assertions as an app owner would (docs/integration.md): the gateway's
            # issuer and its public keys, fetched over HTTP from this very process.
            issuer=issuer,
            jwks_url=f"{loopback_origin(settings.server.host, port)}/.onegate/jwks",
            oa=await register_oa(runtime, issuer=issuer, port=port),
        )
        main = build_app(runtime, "all", port=port)
        # OA is not behind the gateway: it answers on oa.localhost itself, next to the IdP.
        public = HostRouter({"oa": apps["oa"].app}, default=main, lifespan=main)
        info = {
            "port": port,
            "urls": demo_urls(port),
            "issuer": issuer,
            "apps": app_list(port),
            "users": users,
        }

        async def ready() -> None:
            _announce(demo_file, info, admin=(result.admin_username, result.admin_password))

        async with upstreams.serving(apps):
            await serve(public, sock, on_ready=ready)
    finally:
        if sock is not None:
            sock.close()
        await runtime.close()
