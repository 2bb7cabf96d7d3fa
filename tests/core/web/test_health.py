"""core.web.health: /healthz, /readyz (concurrent checks with a timeout), /metrics."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest

from core.web import create_web_app, run_readiness_checks
from core.web.health import ReadinessCheck

SECRET = b"k" * 32


def client_for(checks: dict[str, ReadinessCheck], timeout: float = 2.0) -> httpx.AsyncClient:
    app = create_web_app(
        name="test", routes=[], csrf_secret=SECRET, readiness_checks=checks, readiness_timeout=timeout
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def ok() -> None:
    return None


async def refused() -> None:
    raise ConnectionRefusedError("connect to postgresql://onegate:hunter2@db:5432/onegate refused")


async def hangs() -> None:
    await anyio.sleep_forever()


async def test_healthz_is_ok_without_checks() -> None:
    async with client_for({"db": refused}) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_all_ok() -> None:
    async with client_for({"db": ok, "kv": ok}) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"db": "ok", "kv": "ok"}}
    assert response.headers["cache-control"] == "no-store"


async def test_readyz_names_the_failing_check_without_its_secrets() -> None:
    async with client_for({"db": refused, "kv": ok}) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["failing"] == ["db"]
    assert body["checks"] == {"db": "error: ConnectionRefusedError", "kv": "ok"}
    assert "hunter2" not in response.text
    assert "postgresql" not in response.text
    assert "Traceback" not in response.text


async def test_readyz_times_out_a_hanging_check() -> None:
    started = time.monotonic()
    async with client_for({"es": hangs, "db": ok}, timeout=0.2) as client:
        response = await client.get("/readyz")
    assert time.monotonic() - started < 1.5
    assert response.status_code == 503
    assert response.json()["checks"] == {"db": "ok", "es": "timeout"}
    assert response.json()["failing"] == ["es"]


async def test_checks_run_concurrently() -> None:
    async def slow() -> None:
        await anyio.sleep(0.3)

    started = time.monotonic()
    results = await run_readiness_checks({"a": slow, "b": slow, "c": slow}, seconds_each=2.0)
    assert results == {"a": "ok", "b": "ok", "c": "ok"}
    assert time.monotonic() - started < 0.8


async def test_metrics_is_prometheus_text() -> None:
    async with client_for({}) as client:
        await client.get("/healthz")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE onegate_http_requests_total counter" in response.text


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "a/b"])
def test_bad_check_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="readiness_checks"):
        create_web_app(name="test", routes=[], csrf_secret=SECRET, readiness_checks={bad: ok})


def test_non_positive_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="readiness_timeout"):
        create_web_app(name="test", routes=[], csrf_secret=SECRET, readiness_timeout=0)
