"""core.web.middleware.errors: unexpected exceptions -> 500 with the request id only."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from core.logging import configure_logging
from core.web import ErrorCode, HTTPProblem, create_web_app

SECRET = b"x" * 32
LEAK = "db password=hunter2 at postgresql://onegate:hunter2@db/prod"


async def boom(request: Request) -> Response:
    raise RuntimeError(LEAK)


async def late_boom(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("mid-stream failure")

    return StreamingResponse(body(), media_type="text/plain")


class RaisingMiddleware:
    """Raises from inside the stack (outside the router) for selected paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mw-problem":
            raise HTTPProblem(ErrorCode.RATE_LIMITED, headers={"retry-after": "5"})
        if scope["type"] == "http" and scope["path"] == "/mw-crash":
            raise KeyError("secret-key-name")
        await self.app(scope, receive, send)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_web_app(
        name="test",
        routes=[Route("/boom", boom), Route("/late", late_boom)],
        csrf_secret=SECRET,
        extra_middleware=[Middleware(RaisingMiddleware)],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(stream=stream)
    yield stream
    configure_logging(stream=sys.stderr)


def assert_nothing_leaks(text: str) -> None:
    for needle in ("hunter2", "Traceback", "RuntimeError", "KeyError", "secret-key-name", 'File "'):
        assert needle not in text, needle


async def test_exception_becomes_500_page_with_request_id(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    response = await client.get("/boom", headers={"accept": "text/html", "x-request-id": "req-boom-0001"})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")
    assert "系统内部出现错误" in response.text
    assert "req-boom-0001" in response.text
    assert response.headers["x-request-id"] == "req-boom-0001"
    assert_nothing_leaks(response.text)
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    (crash,) = [r for r in records if r["event"] == "unhandled_exception"]
    assert crash["request_id"] == "req-boom-0001"
    assert crash["exc_type"] == "RuntimeError"
    assert "Traceback" in crash["exception"]
    assert "hunter2" not in log_stream.getvalue()  # even the log gets the secret scrubbed
    access = [r for r in records if r["event"] == "request"]
    assert access[0]["status"] == 500


async def test_exception_becomes_500_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/boom", headers={"accept": "application/json", "accept-language": "en"})
    assert response.status_code == 500
    body = response.json()
    assert body == {
        "error": "internal_error",
        "message": "Something went wrong on our side. Please try again later.",
        "request_id": response.headers["x-request-id"],
    }
    assert_nothing_leaks(response.text)


async def test_problem_raised_by_a_middleware_is_rendered(client: httpx.AsyncClient) -> None:
    response = await client.get("/mw-problem", headers={"accept": "application/json"})
    assert response.status_code == 429
    assert response.json()["error"] == "rate_limited"
    assert response.headers["retry-after"] == "5"
    assert response.headers["x-frame-options"] == "DENY"


async def test_crash_in_a_middleware_is_a_500(client: httpx.AsyncClient) -> None:
    response = await client.get("/mw-crash", headers={"accept": "text/html"})
    assert response.status_code == 500
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    assert response.headers["cache-control"] == "no-store"
    assert_nothing_leaks(response.text)


async def test_failure_after_the_response_started_is_reraised(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    with pytest.raises(RuntimeError, match="mid-stream"):
        await client.get("/late")
    assert "unhandled_exception" in log_stream.getvalue()
