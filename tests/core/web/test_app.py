"""core.web.app: the factory's routes, state, stack order and configuration checks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from core.web import Templates, create_web_app
from core.web.middleware import (
    AccessLogMiddleware,
    CSRFMiddleware,
    ErrorsMiddleware,
    LocaleMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
    SecurityHeadersMiddleware,
)

SECRET = b"f" * 32


class SeesState:
    """An extra middleware: records what the core stack left in scope["state"]."""

    def __init__(self, app: ASGIApp, *, seen: list[dict[str, Any]]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(dict(scope["state"]))
        await self.app(scope, receive, send)


async def hello(request: Request) -> Response:
    return JSONResponse({"hello": request.state.locale})


def client_for(app: Starlette, base_url: str = "http://testserver") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


def test_stack_order_is_fixed() -> None:
    app = create_web_app(
        name="test",
        routes=[],
        csrf_secret=SECRET,
        trusted_hosts=["testserver"],
        extra_middleware=[Middleware(SeesState, seen=[])],
    )
    layers = []
    node: Any = app.middleware_stack
    while node is not None and not isinstance(node, type(app.router)):
        layers.append(type(node))
        node = getattr(node, "app", None)
    names = [cls.__name__ for cls in layers]
    ours = [
        ErrorsMiddleware,
        RequestIdMiddleware,
        AccessLogMiddleware,
        MetricsMiddleware,
        SecurityHeadersMiddleware,
    ]
    start = names.index("ErrorsMiddleware")
    assert layers[start : start + 5] == ours
    assert names[start + 5 : start + 9] == [
        "TrustedHostMiddleware",
        "LocaleMiddleware",
        "CSRFMiddleware",
        "SeesState",
    ]
    assert names[0] == "ServerErrorMiddleware"  # Starlette's own last resort, never reached in practice
    assert names[-1] == "ExceptionMiddleware"
    assert LocaleMiddleware in layers
    assert CSRFMiddleware in layers


def test_state_exposes_templates_and_registry() -> None:
    app = create_web_app(name="idp", routes=[], csrf_secret=SECRET)
    assert app.state.name == "idp"
    assert isinstance(app.state.templates, Templates)
    assert isinstance(app.state.metrics_registry, CollectorRegistry)


def test_middleware_cannot_be_added_later() -> None:
    app = create_web_app(name="test", routes=[], csrf_secret=SECRET)
    with pytest.raises(RuntimeError):
        app.add_middleware(SeesState, seen=[])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"csrf_secret": b"short"}, "csrf_secret"),
        ({"csrf_secret": "x" * 40}, "csrf_secret"),
        ({"name": ""}, "name"),
        ({"max_form_bytes": 0}, "max_form_bytes"),
        ({"locales": ("zh_CN", "de")}, "no catalog"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"name": "test", "routes": [], "csrf_secret": SECRET, **kwargs}
    with pytest.raises(ValueError, match=match):
        create_web_app(**arguments)


async def test_extra_middleware_runs_innermost_with_the_core_state() -> None:
    seen: list[dict[str, Any]] = []
    app = create_web_app(
        name="test",
        routes=[Route("/", hello)],
        csrf_secret=SECRET,
        extra_middleware=[Middleware(SeesState, seen=seen)],
    )
    async with client_for(app) as client:
        response = await client.get("/?ui_locales=en")
    assert response.json() == {"hello": "en"}
    (state,) = seen
    assert state["locale"] == "en"
    assert len(state["request_id"]) == 32
    assert "csrf" in state


async def test_trusted_hosts() -> None:
    app = create_web_app(
        name="test", routes=[Route("/", hello)], csrf_secret=SECRET, trusted_hosts=["idp.city.example"]
    )
    async with (
        client_for(app, "http://idp.city.example") as good,
        client_for(app, "http://evil.example") as bad,
    ):
        assert (await good.get("/")).status_code == 200
        refused = await bad.get("/")
    assert refused.status_code == 400
    assert refused.headers["x-frame-options"] == "DENY"


async def test_lifespan_is_passed_through() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("start")
        yield
        events.append("stop")

    app = create_web_app(name="test", routes=[], csrf_secret=SECRET, lifespan=lifespan)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "state": {}, "asgi": {"version": "3.0"}}, receive, send)  # type: ignore[arg-type]
    assert events == ["start", "stop"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_core_routes_are_present() -> None:
    app = create_web_app(name="test", routes=[Route("/", hello)], csrf_secret=SECRET)
    async with client_for(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        css = await client.get("/static/onegate.css")
        assert css.status_code == 200
        assert "@import" not in css.text
        assert "http" not in css.text  # no external fonts or CDNs
        assert (await client.get("/")).status_code == 200
