"""core.web.middleware.access_log: one line per request, no query strings, no secrets."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from core.logging import configure_logging
from core.web import create_web_app

SECRET = b"a" * 32


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok", status_code=202)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    yield stream
    configure_logging(stream=sys.stderr)


def access_records(stream: io.StringIO) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [r for r in records if r.get("logger") == "onegate.access"]


async def request(path: str, **kwargs: Any) -> httpx.Response:
    app = create_web_app(name="test", routes=[Route("/callback", ok)], csrf_secret=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path, **kwargs)


async def test_one_line_with_the_fields(log_stream: io.StringIO) -> None:
    response = await request(
        "/callback", headers={"user-agent": "Mozilla/5.0 Test", "x-request-id": "req-access-01"}
    )
    (record,) = access_records(log_stream)
    assert record["event"] == "request"
    assert record["level"] == "info"
    assert record["method"] == "GET"
    assert record["path"] == "/callback"
    assert record["status"] == response.status_code == 202
    assert isinstance(record["duration_ms"], float)
    assert record["duration_ms"] >= 0
    assert record["client_ip"] == "127.0.0.1"
    assert record["user_agent"] == "Mozilla/5.0 Test"
    assert record["request_id"] == "req-access-01"


async def test_query_strings_and_credential_headers_are_never_logged(log_stream: io.StringIO) -> None:
    await request(
        "/callback?code=AUTHZCODE123&state=xyz&access_token=TOKENVALUE",
        headers={"authorization": "Bearer BEARERSECRET", "cookie": "sid=COOKIESECRET"},
    )
    text = log_stream.getvalue()
    (record,) = access_records(log_stream)
    assert record["path"] == "/callback"
    # httpx's own client log line in this process is scrubbed too
    for secret in ("AUTHZCODE123", "TOKENVALUE", "BEARERSECRET", "COOKIESECRET"):
        assert secret not in text, secret


async def test_long_values_are_truncated(log_stream: io.StringIO) -> None:
    await request("/" + "p" * 5000, headers={"user-agent": "u" * 5000})
    (record,) = access_records(log_stream)
    assert record["status"] == 404
    assert len(record["path"]) == 256
    assert len(record["user_agent"]) == 256


async def test_probes_log_at_debug(log_stream: io.StringIO) -> None:
    await request("/healthz")
    (record,) = access_records(log_stream)
    assert record["level"] == "debug"
    assert record["path"] == "/healthz"
