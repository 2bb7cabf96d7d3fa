"""core.web.middleware.metrics: route-template labels, status classes, per-app registries."""

from __future__ import annotations

import re

import httpx
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, Router

from core.web import create_web_app
from core.web.middleware.metrics import HTTPMetrics, route_template

SECRET = b"m" * 32


async def user(request: Request) -> Response:
    return PlainTextResponse(request.path_params["user_id"])


async def group(request: Request) -> Response:
    return PlainTextResponse(str(request.path_params["group_id"]))


async def fail(request: Request) -> Response:
    raise RuntimeError("boom")


def make_client() -> tuple[httpx.AsyncClient, CollectorRegistry]:
    routes = [
        Route("/users/{user_id}", user),
        Route("/fail", fail),
        Mount("/admin", app=Router([Route("/groups/{group_id:int}", group)])),
    ]
    app = create_web_app(name="test", routes=routes, csrf_secret=SECRET)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    return client, app.state.metrics_registry


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_counter_uses_the_route_template() -> None:
    client, registry = make_client()
    async with client:
        for user_id in ("alice", "bob", "carol"):
            assert (await client.get(f"/users/{user_id}")).status_code == 200
        text = (await client.get("/metrics")).text
    assert (
        sample(
            registry,
            "onegate_http_requests_total",
            {"method": "GET", "route": "/users/{user_id}", "status": "2xx"},
        )
        == 3
    )
    assert 'onegate_http_requests_total{method="GET",route="/users/{user_id}",status="2xx"} 3.0' in text
    assert "alice" not in text
    assert "bob" not in text


async def test_unmatched_and_error_classes() -> None:
    client, registry = make_client()
    async with client:
        for path in ("/random/1", "/random/2", "/.env"):
            assert (await client.get(path)).status_code == 404
        assert (await client.get("/fail")).status_code == 500
    assert (
        sample(
            registry, "onegate_http_requests_total", {"method": "GET", "route": "unmatched", "status": "4xx"}
        )
        == 3
    )
    assert (
        sample(registry, "onegate_http_requests_total", {"method": "GET", "route": "/fail", "status": "5xx"})
        == 1
    )


async def test_mounted_routes_and_static_files() -> None:
    client, registry = make_client()
    async with client:
        assert (await client.get("/admin/groups/7")).status_code == 200
        assert (await client.get("/static/onegate.css")).status_code == 200
    assert (
        sample(
            registry,
            "onegate_http_requests_total",
            {"method": "GET", "route": "/admin/groups/{group_id}", "status": "2xx"},
        )
        == 1
    )
    assert (
        sample(
            registry,
            "onegate_http_requests_total",
            {"method": "GET", "route": "/static/{path}", "status": "2xx"},
        )
        == 1
    )


async def test_unknown_methods_are_folded() -> None:
    client, registry = make_client()
    async with client:
        await client.request("PROPFIND", "/users/x")
    exposed = "\n".join(f"{s.labels}" for m in registry.collect() for s in m.samples)
    assert "PROPFIND" not in exposed
    assert re.search(r"'method': 'OTHER'", exposed)


async def test_latency_histogram_and_in_flight_gauge() -> None:
    client, registry = make_client()
    async with client:
        await client.get("/users/a")
    assert (
        sample(
            registry,
            "onegate_http_request_duration_seconds_count",
            {"method": "GET", "route": "/users/{user_id}"},
        )
        == 1
    )
    assert sample(registry, "onegate_http_requests_in_flight", {}) == 0


async def test_two_apps_do_not_share_a_registry() -> None:
    first, first_registry = make_client()
    second, second_registry = make_client()
    async with first, second:
        await first.get("/users/a")
    labels = {"method": "GET", "route": "/users/{user_id}", "status": "2xx"}
    assert sample(first_registry, "onegate_http_requests_total", labels) == 1
    assert sample(second_registry, "onegate_http_requests_total", labels) is None


def test_route_template_without_a_route() -> None:
    assert route_template({"type": "http"}) == "unmatched"


def test_role_metrics_share_the_app_registry() -> None:
    registry = CollectorRegistry()
    metrics = HTTPMetrics(registry, namespace="idp")
    metrics.requests.labels("GET", "/x", "2xx").inc()
    labels = {"method": "GET", "route": "/x", "status": "2xx"}
    assert registry.get_sample_value("idp_http_requests_total", labels) == 1
