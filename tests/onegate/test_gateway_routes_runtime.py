"""The gateway role follows the routes added at run time, in-process: the table is swapped, a
pool is made for new timeouts, the new host's callback is registered at the built-in IdP (whose
client cache is told at once), and a removed host is refused (421)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from core.kv import MemoryKV
from core.settings import load_settings
from idp.clients.services import ClientRegistry
from onegate.admin.app import route_store
from onegate.bootstrap import initialise
from onegate.client_updates import ClientCacheFollower, announce
from onegate.gateway_app import build_gateway_app
from onegate.runtime import open_runtime

ROUTES = [{"app": "hr", "hosts": ["hr.localhost"], "upstream": "http://127.0.0.1:9"}]


async def _until(condition: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> float:
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_the_gateway_swaps_in_added_routes_and_registers_their_callbacks(tmp_path: Path) -> None:
    settings = load_settings(None, overrides={"data_dir": tmp_path, "gateway": {"routes": ROUTES}})
    await initialise(settings)
    runtime = await open_runtime(settings)
    await runtime.bus.start()
    built = build_gateway_app(runtime, issuer="http://idp.localhost", port=8443)
    gateway = built.gateway
    registry = ClientRegistry(runtime.sessions, runtime.vault.secrets, cache_ttl=0)
    callback = "http://permits.localhost:8443/.onegate/callback"

    async def registered() -> list[str]:
        client = await registry.get(settings.gateway.client_id, include_disabled=True)
        assert client is not None
        return list(client.redirect_uris)

    try:
        await built.start()
        assert gateway.routes.hosts() == ["hr.localhost"]
        assert "http://hr.localhost:8443/.onegate/callback" in await registered()
        store = route_store(runtime)
        spec = {"hosts": ["permits.localhost"], "upstream": "http://127.0.0.1:9", "read_timeout": 7}
        await store.create("permits", spec, actor="tests")
        await _until(lambda: _true("permits.localhost" in gateway.routes))
        route = gateway.routes.match("permits.localhost", "/")
        assert route is not None and route.app == "permits"
        pool = gateway._pool_for(route)  # made for the new pair of timeouts, once
        assert (pool.connect_timeout, pool.read_timeout) == (5.0, 7.0) and gateway._pool_for(route) is pool
        await _until(lambda: _has(registered, callback))

        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=built.app), base_url="http://permits.localhost"
        )
        async with client:
            routed = await client.get("/desk", headers={"accept": "text/html"})
            assert routed.status_code == 302 and "/.onegate/start" in routed.headers["location"]
            await store.remove("permits", actor="tests")
            await _until(lambda: _true("permits.localhost" not in gateway.routes))
            assert (await client.get("/desk", headers={"accept": "text/html"})).status_code == 421
        await _until(lambda: _has(registered, callback, present=False))
    finally:
        await built.close()
        await runtime.close()


async def _true(value: bool) -> bool:
    return value


async def _has(read: Callable[[], Awaitable[list[str]]], uri: str, *, present: bool = True) -> bool:
    return (uri in await read()) is present


async def test_an_announced_client_change_empties_the_idp_cache_at_once(tmp_path: Path) -> None:
    settings = load_settings(None, overrides={"data_dir": tmp_path})
    await initialise(settings)
    runtime = await open_runtime(settings)
    kv = MemoryKV()
    try:
        cached = ClientRegistry(runtime.sessions, runtime.vault.secrets, cache_ttl=3600)
        writer = ClientRegistry(runtime.sessions, runtime.vault.secrets)
        await writer.add(
            client_id="rp-app", name="RP", redirect_uris=["https://rp.example.gov/cb"], actor="tests"
        )
        assert (await cached.get("rp-app")).redirect_uris == ("https://rp.example.gov/cb",)  # type: ignore[union-attr]
        follower = ClientCacheFollower(cached, kv)
        await follower.start()
        await asyncio.wait_for(follower.listening.wait(), 2)
        await writer.update(
            "rp-app", actor="tests", redirect_uris=["https://rp.example.gov/cb", "https://rp2.example.gov/cb"]
        )
        assert len((await cached.get("rp-app")).redirect_uris) == 1  # type: ignore[union-attr]  # still cached
        await announce(kv, "rp-app")
        await _until(lambda: _cached_uris(cached, 2))
        await follower.stop()
    finally:
        await kv.close()
        await runtime.close()


async def _cached_uris(registry: ClientRegistry, count: int) -> bool:
    client = await registry.get("rp-app")
    return client is not None and len(client.redirect_uris) == count
