"""core.web.middleware.request_id: accept well-formed ids, generate otherwise, log with it."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.logging import configure_logging, current_request_id, get_logger
from core.web import create_web_app

SECRET = b"r" * 32


async def echo(request: Request) -> Response:
    get_logger("onegate.test").info("handler_ran")
    return JSONResponse({"state": request.state.request_id, "context": current_request_id()})


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_web_app(name="test", routes=[Route("/echo", echo)], csrf_secret=SECRET)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(stream=stream)
    yield stream
    configure_logging(stream=sys.stderr)


@pytest.mark.parametrize("incoming", ["abcdefgh", "gw-7f3a.2b_c-01", "A" * 64])
async def test_well_formed_incoming_id_is_kept(client: httpx.AsyncClient, incoming: str) -> None:
    response = await client.get("/echo", headers={"x-request-id": incoming})
    assert response.headers["x-request-id"] == incoming
    assert response.json() == {"state": incoming, "context": incoming}


@pytest.mark.parametrize(
    "incoming",
    ["short", "A" * 65, "has space inside", 'evil"quote12', "line\\nbreak12", "路径注入-abcdefgh", ""],
)
async def test_malformed_incoming_id_is_replaced(client: httpx.AsyncClient, incoming: str) -> None:
    response = await client.get("/echo", headers={"x-request-id": incoming.encode()})
    generated = response.headers["x-request-id"]
    assert generated != incoming
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert response.json()["state"] == generated


async def test_each_request_gets_its_own_id(client: httpx.AsyncClient) -> None:
    first = (await client.get("/echo")).headers["x-request-id"]
    second = (await client.get("/echo")).headers["x-request-id"]
    assert first != second


async def test_id_is_on_error_responses_too(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/missing", headers={"x-request-id": "trace-00000001", "accept": "application/json"}
    )
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "trace-00000001"
    assert response.json()["request_id"] == "trace-00000001"


async def test_every_log_line_of_the_request_carries_the_id(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    await client.get("/echo", headers={"x-request-id": "trace-12345678"})
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    ours = [r for r in records if r["logger"] in ("onegate.test", "onegate.access")]
    assert {r["event"] for r in ours} == {"handler_ran", "request"}
    assert all(r["request_id"] == "trace-12345678" for r in ours)
    assert current_request_id() is None  # unbound once the request is over
