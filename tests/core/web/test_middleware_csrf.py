"""core.web.middleware.csrf: signed double-submit token, Origin / Fetch-Metadata, body replay."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.logging import configure_logging
from core.web import create_web_app, csrf_token

SECRET = b"c" * 32
FORM_PAGE = """{% extends "base.html" %}{% block content %}
<form method="post" action="/submit"><input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
<button>{{ _("Back to the home page") }}</button></form>{% endblock %}"""


async def form_page(request: Request) -> Response:
    return request.app.state.templates.render(request, "form.html")


async def submit(request: Request) -> Response:
    async with request.form() as form:
        upload = form.get("upload")
        size = len(await upload.read()) if upload is not None and not isinstance(upload, str) else None
        return JSONResponse({"name": form.get("name"), "upload_size": size, "method": request.method})


async def api(request: Request) -> Response:
    return JSONResponse({"received": await request.json()})


async def plain_token(request: Request) -> Response:
    return JSONResponse({"token": csrf_token(request)})


def make_app(tmp_path: Path, **kwargs: Any) -> Any:
    (tmp_path / "form.html").write_text(FORM_PAGE, encoding="utf-8")
    routes = [
        Route("/form", form_page),
        Route("/submit", submit, methods=["POST", "PUT", "DELETE"]),
        Route("/api/items", api, methods=["POST"]),
        Route("/oauth/token", submit, methods=["POST"]),
        Route("/hooks/github/push", submit, methods=["POST"]),
        Route("/token", plain_token),
    ]
    return create_web_app(
        name="test",
        routes=routes,
        csrf_secret=SECRET,
        template_dirs=[tmp_path],
        csrf_exempt_paths={"/oauth/token"},
        csrf_exempt_prefixes=["/hooks/"],
        max_form_bytes=64 * 1024,
        **kwargs,
    )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(tmp_path, csrf_trusted_origins=["https://portal.city.example"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(stream=stream)
    yield stream
    configure_logging(stream=sys.stderr)


async def fetch_token(client: httpx.AsyncClient) -> str:
    response = await client.get("/form")
    assert response.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
    assert match
    return match.group(1)


JSON = {"accept": "application/json"}


async def test_form_page_issues_a_cookie_and_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/form")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("onegate_csrf=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/" in cookie
    assert "Secure" not in cookie
    again = await client.get("/form")
    assert "set-cookie" not in again.headers  # the browser's secret is kept, not rotated
    assert re.search(r'value="([^"]+)"', again.text)


async def test_pages_without_forms_set_no_cookie(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert "set-cookie" not in response.headers


async def test_correct_token_passes_and_the_handler_reads_the_form(client: httpx.AsyncClient) -> None:
    token = await fetch_token(client)
    response = await client.post("/submit", data={"csrf_token": token, "name": "张三"})
    assert response.status_code == 200
    assert response.json() == {"name": "张三", "upload_size": None, "method": "POST"}


async def test_multipart_form_with_file_is_replayed(client: httpx.AsyncClient) -> None:
    token = await fetch_token(client)
    response = await client.post(
        "/submit",
        data={"csrf_token": token, "name": "n"},
        files={"upload": ("a.csv", b"x" * 1000, "text/csv")},
    )
    assert response.status_code == 200
    assert response.json()["upload_size"] == 1000


async def test_header_token_for_fetch_requests(client: httpx.AsyncClient) -> None:
    token = await fetch_token(client)
    response = await client.post("/api/items", json={"a": 1}, headers={"x-csrf-token": token})
    assert response.status_code == 200
    assert response.json() == {"received": {"a": 1}}


async def test_post_without_token_is_refused(client: httpx.AsyncClient) -> None:
    await fetch_token(client)
    response = await client.post("/submit", data={"name": "n"}, headers=JSON)
    assert response.status_code == 403
    assert response.json()["error"] == "csrf_failed"
    assert response.json()["reason"] == "token_missing"


async def test_wrong_token_is_refused(client: httpx.AsyncClient, log_stream: io.StringIO) -> None:
    await fetch_token(client)
    response = await client.post("/submit", data={"csrf_token": "A" * 43, "name": "n"}, headers=JSON)
    assert response.status_code == 403
    assert response.json()["reason"] == "token_invalid"
    events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert any(e["event"] == "csrf_rejected" and e["reason"] == "token_invalid" for e in events)


async def test_non_ascii_token_is_refused_not_crashed(client: httpx.AsyncClient) -> None:
    await fetch_token(client)
    response = await client.post("/submit", data={"csrf_token": "令牌", "name": "n"}, headers=JSON)
    assert response.status_code == 403
    assert response.json()["reason"] == "token_invalid"


async def test_token_from_another_browser_is_refused(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as alice,
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as mallory,
    ):
        alice_token = await fetch_token(alice)
        mallory_token = await fetch_token(mallory)
        assert alice_token != mallory_token
        response = await mallory.post("/submit", data={"csrf_token": alice_token}, headers=JSON)
        assert response.status_code == 403
        assert response.json()["reason"] == "token_invalid"
        assert (await mallory.post("/submit", data={"csrf_token": mallory_token})).status_code == 200


async def test_request_without_the_cookie_is_refused(client: httpx.AsyncClient) -> None:
    token = await fetch_token(client)
    client.cookies.clear()
    response = await client.post("/submit", data={"csrf_token": token}, headers=JSON)
    assert response.status_code == 403
    assert response.json()["reason"] == "cookie_missing"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"origin": "https://evil.example"}, "origin_mismatch"),
        ({"origin": "http://testserver.evil.example"}, "origin_mismatch"),
        ({"origin": "https://testserver"}, "origin_mismatch"),  # scheme differs
        ({"origin": "null"}, "origin_mismatch"),
        ({"origin": "http://testserver:8080"}, "origin_mismatch"),
        ({"sec-fetch-site": "cross-site"}, "cross_site_request"),
        ({"sec-fetch-site": "cross-site", "origin": "http://testserver"}, "cross_site_request"),
    ],
)
async def test_cross_origin_requests_are_refused_even_with_a_valid_token(
    client: httpx.AsyncClient, headers: dict[str, str], reason: str
) -> None:
    token = await fetch_token(client)
    response = await client.post("/submit", data={"csrf_token": token}, headers={**JSON, **headers})
    assert response.status_code == 403
    assert response.json()["reason"] == reason


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://testserver", "sec-fetch-site": "same-origin"},
        {"origin": "HTTP://TestServer:80"},
        {"origin": "https://portal.city.example", "sec-fetch-site": "same-site"},
    ],
)
async def test_same_or_trusted_origin_passes(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    token = await fetch_token(client)
    response = await client.post("/submit", data={"csrf_token": token, "name": "ok"}, headers=headers)
    assert response.status_code == 200
    assert response.json()["name"] == "ok"


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_other_unsafe_methods_need_a_token(client: httpx.AsyncClient, method: str) -> None:
    token = await fetch_token(client)
    refused = await client.request(method, "/submit", headers=JSON)
    assert refused.status_code == 403
    allowed = await client.request(method, "/submit", headers={"x-csrf-token": token})
    assert allowed.status_code == 200
    assert allowed.json()["method"] == method


async def test_json_post_without_header_token_is_refused(client: httpx.AsyncClient) -> None:
    await fetch_token(client)
    response = await client.post("/api/items", json={"a": 1}, headers=JSON)
    assert response.status_code == 403
    assert response.json()["reason"] == "token_missing"


async def test_exempt_path_and_prefix_need_no_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/oauth/token", data={"name": "client-credentials"})
    assert response.status_code == 200
    assert response.json()["name"] == "client-credentials"
    hook = await client.post("/hooks/github/push", data={"name": "hook"})
    assert hook.status_code == 200
    assert hook.json()["name"] == "hook"
    # Exemption is exact: a neighbouring path is still protected.
    assert (await client.post("/oauth/token/x", data={}, headers=JSON)).status_code == 403


async def test_oversized_form_is_413(client: httpx.AsyncClient) -> None:
    await fetch_token(client)
    response = await client.post("/submit", data={"name": "x" * (70 * 1024)}, headers=JSON)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_oversized_chunked_form_is_413(client: httpx.AsyncClient) -> None:
    await fetch_token(client)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"name=" + b"x" * 8192 + b"&"

    response = await client.post(
        "/submit", content=chunks(), headers={**JSON, "content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--zzz\r\ngarbage"),  # no boundary parameter
        ("multipart/form-data; boundary=abc", b"--zzz\r\ngarbage"),  # wrong boundary
        (
            "multipart/form-data; boundary=abc",  # a part without a name
            b"--abc\r\nContent-Disposition: form-data\r\n\r\nx\r\n--abc--\r\n",
        ),
    ],
)
async def test_malformed_form_is_400_not_500(
    client: httpx.AsyncClient, content_type: str, body: bytes
) -> None:
    await fetch_token(client)
    response = await client.post("/submit", content=body, headers={**JSON, "content-type": content_type})
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert response.json()["reason"] == "malformed_body"


async def test_rejection_page_speaks_the_users_language(client: httpx.AsyncClient) -> None:
    await fetch_token(client)
    zh = await client.post("/submit", data={}, headers={"accept": "text/html"})
    assert zh.status_code == 403
    assert "表单校验失败" in zh.text
    assert "token_missing" in zh.text
    assert "Traceback" not in zh.text
    en = await client.post("/submit?lang=en", data={}, headers={"accept": "text/html"})
    assert en.status_code == 403
    assert "The form could not be verified" in en.text


async def test_https_uses_host_prefixed_secure_cookie(tmp_path: Path) -> None:
    app = make_app(tmp_path, https=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://testserver") as c:
        response = await c.get("/form")
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("__Host-onegate_csrf=")
        assert "Secure" in cookie
        assert "Path=/" in cookie
        assert "Domain" not in cookie
        token = re.search(r'value="([^"]+)"', response.text)
        assert token
        ok = await c.post(
            "/submit", data={"csrf_token": token.group(1)}, headers={"origin": "https://testserver"}
        )
        assert ok.status_code == 200
        # an http:// origin is not our https origin
        refused = await c.post(
            "/submit", data={"csrf_token": token.group(1)}, headers={"origin": "http://testserver", **JSON}
        )
        assert refused.status_code == 403


def test_csrf_token_needs_the_middleware() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    with pytest.raises(RuntimeError, match="CSRFMiddleware"):
        csrf_token(request)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"csrf_exempt_prefixes": ["/hooks"]}, "exempt prefix"),
        ({"csrf_trusted_origins": ["portal.city.example"]}, "trusted_origins"),
    ],
)
def test_bad_configuration_is_refused(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_web_app(name="test", routes=[], csrf_secret=SECRET, **kwargs)


async def test_exemption_is_relative_to_the_root_path(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    transport = httpx.ASGITransport(app=app, root_path="/portal")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.post("/portal/oauth/token", data={"name": "cc"})
        assert response.status_code == 200
        assert response.json()["name"] == "cc"
        assert (await c.post("/portal/submit", data={"name": "x"}, headers=JSON)).status_code == 403
