"""Events reaching the SOC from other processes: the Redis stream (an IdP role app publishes, a
SOC role app consumes in its group), the HTTP bulk endpoint and syslog; and the SOC's /metrics.
Both role apps are the real ones (onegate.apps.build_app), run through their ASGI lifespans."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.eventstore import Query
from core.settings import Settings, load_settings
from idp.events import auth_event
from onegate.apps import build_app
from onegate.runtime import Runtime, open_runtime
from tests.conftest import _run

INGEST_KEY = "firewall-key-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run ``app``'s ASGI lifespan: started inside the block, shut down after it."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    started = await asyncio.wait_for(outbox.get(), 30)
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(outbox.get(), 30)
        await task


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, redis_prefix: str) -> Settings:
    from onegate.bootstrap import initialise

    overrides = {
        "data_dir": tmp_path / "data",
        "kv": {"backend": "redis", "url": redis_url, "prefix": redis_prefix},
        "soc": {
            "transport": "redis",
            "consumer": "soc-1",
            "ingest_keys": {"firewall": INGEST_KEY},
            "syslog_port": _free_port(),
            "rule_params": {"onegate.brute-force": {"threshold": 3}},
        },
    }
    made = load_settings(None, overrides=overrides)
    _run(initialise(made))
    return made


async def test_events_from_another_process_the_bulk_endpoint_and_syslog_reach_the_soc(
    settings: Settings,
) -> None:
    soc_runtime: Runtime = await open_runtime(settings)
    idp_runtime: Runtime = await open_runtime(settings)
    soc_app = build_app(soc_runtime, "soc", port=settings.server.port)
    idp_app = build_app(idp_runtime, "idp", port=settings.server.port)
    try:
        async with lifespan(soc_app), lifespan(idp_app):
            # 1. The IdP process publishes; the SOC process reads the stream in its group.
            for _ in range(3):
                idp_runtime.bus.emit(
                    auth_event(
                        "user-login",
                        success=False,
                        reason="bad_password",
                        username="lina",
                        source_ip="198.51.100.4",
                    )
                )
            soc = _soc_of(soc_app)

            async def alerted() -> bool:
                return (await soc.alerts.list()).total == 1

            await _until(alerted)
            assert (await soc.alerts.list()).alerts[0].rule_id == "onegate.brute-force"

            # 2. The HTTP bulk endpoint, with the firewall's key.
            transport = httpx.ASGITransport(app=soc_app, client=("10.0.0.9", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://soc.localhost") as client:
                lines = "\n".join(
                    json.dumps(
                        {
                            "@timestamp": "2026-11-29T01:00:00Z",
                            "event": {"action": "deny"},
                            "source": {"ip": f"203.0.113.{n}"},
                        }
                    )
                    for n in range(2)
                )
                refused = await client.post(
                    "/ingest/v1/bulk",
                    content=lines,
                    headers={
                        "content-type": "application/x-ndjson",
                        "authorization": "Bearer wrong-key-0000000000",
                    },
                )
                assert refused.status_code == 401
                accepted = await client.post(
                    "/ingest/v1/bulk",
                    content=lines + "\n",
                    headers={"content-type": "application/x-ndjson", "authorization": f"Bearer {INGEST_KEY}"},
                )
                assert accepted.status_code == 200, accepted.text
                assert accepted.json()["accepted"] == 2
                metrics = await client.get("/metrics")
                assert "onegate_soc_spool_fill_ratio" in metrics.text

            # 3. Syslog over TCP.
            port = settings.soc.syslog_port
            assert port is not None
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            message = b"<34>1 2026-11-29T01:02:03Z fw01 filterlog 42 DROP - blocked 203.0.113.9\n"
            writer.write(message)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

            async def stored() -> bool:
                await soc.ingest.drain(5)
                bulk = await soc.store.count(Query(text='observer.name:"firewall"'))
                syslog = await soc.store.count(Query(text='host.hostname:"fw01"'))
                logins = await soc.store.count(Query(text="event.action:user-login"))
                return (bulk, syslog, logins) == (2, 1, 3)

            await _until(stored)
    finally:
        await soc_runtime.close()
        await idp_runtime.close()


def _soc_of(app: Any) -> Any:
    """The Soc behind a SOC role app (its lifespan's closers hold it)."""
    lifespan_app = app._lifespan
    for close in lifespan_app._closers:
        owner = getattr(close, "__self__", None)
        if owner is not None and type(owner).__name__ == "Soc":
            return owner
    raise AssertionError("no Soc in the app's lifespan")
