"""Start a server process: `onegate serve` and `onegate demo`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.settings import Settings
from mfa.totp import TotpService
from onegate.apps import build_app
from onegate.bootstrap import initialise
from onegate.demo_data import seed_demo
from onegate.idp_app import default_issuer
from onegate.runtime import open_runtime
from onegate.server import bind, serve

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
    """Initialise if needed, serve every role on one port, then write ``<data dir>/demo.json``."""
    demo_file = settings.data_dir / "demo.json"
    demo_file.unlink(missing_ok=True)  # a reader must never see the previous run's port
    result = await initialise(settings)
    runtime = await open_runtime(settings)
    totp = TotpService(
        runtime.sessions,
        runtime.vault.envelope,
        runtime.kv,
        issuer_name=settings.mfa.totp_issuer,
        max_failures=settings.mfa.totp_max_failures,
        failure_window=settings.mfa.totp_failure_window,
    )
    users = await seed_demo(runtime.directory, settings.data_dir, totp=totp)
    sock = bind(settings.server.host, settings.server.port)
    port = sock.getsockname()[1]
    urls = demo_urls(port)
    issuer = settings.idp.issuer or default_issuer(port)

    async def ready() -> None:
        _write_atomically(demo_file, {"port": port, "urls": urls, "issuer": issuer, "users": users})
        print("OneGate demo is running / 演示环境已启动", flush=True)
        for name, url in urls.items():
            print(f"  {name:<8} {url}", flush=True)
        if result.admin_password:
            print(
                f"  administrator {result.admin_username} / one-time password: {result.admin_password}",
                flush=True,
            )
        for user in users:
            print(f"  {user['username']:<9} {user['password']}  {user['display_name']}", flush=True)
            if "totp_secret" in user:
                print(f"  {'':<9} TOTP key / 动态口令密钥: {user['totp_secret']}", flush=True)
        print(f"  (written to {demo_file}; Ctrl-C stops)", flush=True)

    try:
        await serve(build_app(runtime, "all", port=port), sock, on_ready=ready)
    finally:
        sock.close()
        demo_file.unlink(missing_ok=True)
        await runtime.close()
