"""core.web.errors: HTTPProblem, HTML vs JSON, locale, 404 / 405 rendering."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.web import ErrorCode, HTTPProblem, create_web_app, wants_html

SECRET = b"e" * 32
HTML = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
JSON = {"accept": "application/json"}


async def forbidden(request: Request) -> Response:
    raise HTTPProblem(ErrorCode.FORBIDDEN)


async def custom(request: Request) -> Response:
    raise HTTPProblem(
        ErrorCode.BAD_REQUEST,
        reason="redirect_uri_mismatch",
        message_zh="回调地址未注册。",
        message_en="The redirect URI is not registered.",
        headers={"x-extra": "1"},
    )


async def starlette_401(request: Request) -> Response:
    raise HTTPException(401, detail="internal detail <script>", headers={"WWW-Authenticate": "Bearer"})


async def teapot(request: Request) -> Response:
    raise HTTPException(418, detail="short and stout")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    routes = [
        Route("/forbidden", forbidden),
        Route("/custom", custom),
        Route("/auth", starlette_401),
        Route("/teapot", teapot),
        Route("/only-post", forbidden, methods=["POST"]),
        Route("/api/thing", forbidden),
    ]
    app = create_web_app(name="test", routes=routes, csrf_secret=SECRET, json_path_prefixes=["/api/"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


async def test_404_in_chinese_and_english(client: httpx.AsyncClient) -> None:
    zh = await client.get("/does/not/exist", headers=HTML)
    assert zh.status_code == 404
    assert zh.headers["content-type"].startswith("text/html")
    assert "您访问的页面不存在。" in zh.text
    assert "错误 404" in zh.text
    assert "not_found" in zh.text
    en = await client.get("/does/not/exist", headers={**HTML, "accept-language": "en"})
    assert en.status_code == 404
    assert "The page you requested was not found." in en.text
    assert "Error 404" in en.text


async def test_404_as_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/does/not/exist", headers=JSON)
    body = response.json()
    assert response.status_code == 404
    assert body["error"] == "not_found"
    assert body["message"] == "您访问的页面不存在。"
    assert body["request_id"] == response.headers["x-request-id"]
    assert "reason" not in body


async def test_405_keeps_the_allow_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/only-post", headers={**JSON, "accept-language": "en"})
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


async def test_http_problem_default_message(client: httpx.AsyncClient) -> None:
    response = await client.get("/forbidden", headers=HTML)
    assert response.status_code == 403
    assert "您没有访问此页面的权限。" in response.text


@pytest.mark.parametrize(
    ("language", "message"), [("zh-CN", "回调地址未注册。"), ("en", "The redirect URI is not registered.")]
)
async def test_http_problem_own_messages_and_reason(
    client: httpx.AsyncClient, language: str, message: str
) -> None:
    response = await client.get("/custom", headers={**JSON, "accept-language": language})
    assert response.status_code == 400
    assert response.headers["x-extra"] == "1"
    assert response.json()["message"] == message
    assert response.json()["reason"] == "redirect_uri_mismatch"
    page = await client.get("/custom", headers={**HTML, "accept-language": language})
    assert message in page.text
    assert "redirect_uri_mismatch" in page.text


async def test_starlette_detail_is_not_shown(client: httpx.AsyncClient) -> None:
    response = await client.get("/auth", headers=HTML)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "请先登录后继续。" in response.text
    assert "internal detail" not in response.text


async def test_unknown_4xx_keeps_its_status(client: httpx.AsyncClient) -> None:
    response = await client.get("/teapot", headers=JSON)
    assert response.status_code == 418
    assert response.json()["error"] == "bad_request"
    assert "stout" not in response.text


async def test_json_path_prefix_forces_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/thing", headers=HTML)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html", True),
        (HTML["accept"], True),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0.9, application/json;q=0.1", True),
        ("*/*", False),
        ("", False),
        ("text/html;q=0", False),
    ],
)
def test_wants_html(accept: str, html: bool) -> None:
    request = Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/x",
            "query_string": b"",
            "headers": [(b"accept", accept.encode())],
        }
    )
    assert wants_html(request) is html


def test_problem_validation() -> None:
    with pytest.raises(ValueError, match="reason"):
        HTTPProblem(ErrorCode.BAD_REQUEST, reason="Has Spaces <b>")
    with pytest.raises(ValueError, match="status"):
        HTTPProblem(ErrorCode.BAD_REQUEST, status=302)
    with pytest.raises(ValueError):
        HTTPProblem("no_such_code")  # type: ignore[arg-type]
    problem = HTTPProblem(ErrorCode.RATE_LIMITED, headers={"retry-after": "30"})
    assert (problem.status, problem.code, problem.headers) == (429, "rate_limited", {"retry-after": "30"})


def test_every_code_has_a_default() -> None:
    for code in ErrorCode:
        assert 400 <= HTTPProblem(code).status <= 599
