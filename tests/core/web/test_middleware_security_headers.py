"""core.web.middleware.security_headers: every response gets the baseline, handlers may override."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from core.web import create_web_app
from core.web.middleware.security_headers import security_headers

SECRET = b"h" * 32
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


async def page(request: Request) -> Response:
    return HTMLResponse("<p>hi</p>")


async def loosened(request: Request) -> Response:
    return HTMLResponse(
        "<p>map</p>",
        headers={
            "content-security-policy": "default-src 'self' https://tiles.example",
            "cache-control": "private, max-age=60",
        },
    )


async def text(request: Request) -> Response:
    return PlainTextResponse("plain")


async def data(request: Request) -> Response:
    return JSONResponse({"a": 1})


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


ROUTES = [
    Route("/page", page),
    Route("/loosened", loosened),
    Route("/text", text),
    Route("/data", data),
    Route("/boom", boom),
]


def client_for(**kwargs: Any) -> httpx.AsyncClient:
    app = create_web_app(name="test", routes=ROUTES, csrf_secret=SECRET, **kwargs)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


BASELINE = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/page", "text/html"),
        ("/text", "*/*"),
        ("/data", "*/*"),
        ("/missing", "text/html"),
        ("/boom", "text/html"),
        ("/boom", "application/json"),
        ("/static/onegate.css", "*/*"),
        ("/healthz", "*/*"),
    ],
)
async def test_baseline_on_every_response(path: str, accept: str) -> None:
    async with client_for() as client:
        response = await client.get(path, headers={"accept": accept})
    for name, value in BASELINE.items():
        assert response.headers[name] == value, name
    assert "camera=()" in response.headers["permissions-policy"]
    assert "strict-transport-security" not in response.headers


async def test_hsts_only_with_https() -> None:
    async with client_for(https=True) as client:
        response = await client.get("/page")
        error = await client.get("/boom")
    assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert error.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/page", "no-store"), ("/data", "no-store"), ("/text", None), ("/boom", "no-store")],
)
async def test_no_store_on_html_and_json(path: str, expected: str | None) -> None:
    async with client_for() as client:
        response = await client.get(path)
    assert response.headers.get("cache-control") == expected


async def test_static_files_are_cacheable() -> None:
    async with client_for() as client:
        response = await client.get("/static/onegate.css")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert "no-store" not in response.headers.get("cache-control", "")
    assert "etag" in response.headers


async def test_handler_headers_are_kept() -> None:
    async with client_for() as client:
        response = await client.get("/loosened")
    assert response.headers["content-security-policy"] == "default-src 'self' https://tiles.example"
    assert response.headers["cache-control"] == "private, max-age=60"
    assert response.headers["x-frame-options"] == "DENY"
    assert len(response.headers.get_list("content-security-policy")) == 1


async def test_form_action_is_configurable() -> None:
    async with client_for(form_action=["'self'", "https://idp.city.example"]) as client:
        response = await client.get("/page")
    assert response.headers["content-security-policy"].endswith("form-action 'self' https://idp.city.example")


@pytest.mark.parametrize("source", ["'self'; script-src *", "https://a.example\r\nx: y", "", "a,b"])
def test_malformed_form_action_is_refused(source: str) -> None:
    with pytest.raises(ValueError, match="form_action"):
        security_headers(https=False, form_action=[source])
    with pytest.raises(ValueError, match="form_action"):
        create_web_app(name="test", routes=[], csrf_secret=SECRET, form_action=[source])


def test_csp_allows_no_inline_script_or_style() -> None:
    csp = dict(security_headers(https=False))["content-security-policy"]
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
