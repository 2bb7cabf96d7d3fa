"""core.web.middleware.locale: ?lang > ui_locales > cookie > Accept-Language > zh_CN, rendered."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.web import create_web_app

SECRET = b"l" * 32
ZH_404 = "您访问的页面不存在"
EN_404 = "The page you requested was not found"


async def which(request: Request) -> Response:
    return JSONResponse({"locale": request.state.locale})


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_web_app(name="test", routes=[Route("/which", which)], csrf_secret=SECRET)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


@pytest.mark.parametrize(
    ("query", "cookie", "accept_language", "expected"),
    [
        ("", None, None, "zh_CN"),
        ("", None, "en-US,en;q=0.9", "en"),
        ("", None, "fr-FR, en;q=0.5, zh;q=0.8", "zh_CN"),
        ("", "en", "zh-CN", "en"),  # cookie beats Accept-Language
        ("?ui_locales=zh-CN", "en", "en", "zh_CN"),  # ui_locales beats the cookie
        ("?ui_locales=fr%20en-GB", "zh_CN", None, "en"),  # first supported tag of the list
        ("?ui_locales=fr", "en", None, "en"),  # nothing supported: fall through
        ("?lang=en&ui_locales=zh-CN", None, "zh", "en"),  # explicit switch wins
        ("?lang=xx", None, "en", "en"),  # unknown switch is ignored
        ("", "garbage", "garbage;q=abc", "zh_CN"),
    ],
)
async def test_selection_order(
    client: httpx.AsyncClient, query: str, cookie: str | None, accept_language: str | None, expected: str
) -> None:
    headers = {}
    if cookie is not None:
        headers["cookie"] = f"onegate_locale={cookie}"
    if accept_language is not None:
        headers["accept-language"] = accept_language
    response = await client.get(f"/which{query}", headers=headers)
    assert response.json() == {"locale": expected}


@pytest.mark.parametrize(
    ("query", "headers", "text", "lang"),
    [
        ("", {}, ZH_404, "zh-CN"),
        ("", {"accept-language": "en-US,en;q=0.8"}, EN_404, "en"),
        ("", {"cookie": "onegate_locale=en", "accept-language": "zh-CN"}, EN_404, "en"),
        ("?ui_locales=zh-Hans", {"cookie": "onegate_locale=en"}, ZH_404, "zh-CN"),
    ],
)
async def test_pages_render_in_the_chosen_language(
    client: httpx.AsyncClient, query: str, headers: dict[str, str], text: str, lang: str
) -> None:
    response = await client.get(f"/nowhere{query}", headers={"accept": "text/html", **headers})
    assert response.status_code == 404
    assert text in response.text
    assert f'<html lang="{lang}">' in response.text
    other = EN_404 if text == ZH_404 else ZH_404
    assert other not in response.text


async def test_switch_sets_the_cookie_and_sticks(client: httpx.AsyncClient) -> None:
    response = await client.get("/which?lang=en")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("onegate_locale=en;")
    assert "SameSite=Lax" in cookie
    assert "Max-Age=31536000" in cookie
    follow_up = await client.get("/which", headers={"accept-language": "zh-CN"})
    assert follow_up.json() == {"locale": "en"}


async def test_no_cookie_without_a_switch(client: httpx.AsyncClient) -> None:
    response = await client.get("/which?ui_locales=en")
    assert response.json() == {"locale": "en"}
    assert "set-cookie" not in response.headers


async def test_secure_cookie_with_https() -> None:
    app = create_web_app(name="test", routes=[Route("/which", which)], csrf_secret=SECRET, https=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://testserver") as c:
        response = await c.get("/which?lang=en")
    assert "Secure" in response.headers["set-cookie"]


def test_default_locale_must_be_supported() -> None:
    with pytest.raises(ValueError, match="default_locale"):
        create_web_app(
            name="test", routes=[], csrf_secret=SECRET, default_locale="fr", locales=("zh_CN", "en")
        )
