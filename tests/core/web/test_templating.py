"""core.web.templating: per-locale rendering, the template context, strictness and escaping."""

from __future__ import annotations

from pathlib import Path

import httpx
import jinja2
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, Router

from core.web import create_web_app

SECRET = b"t" * 32


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text, encoding="utf-8")


def app_with(
    tmp_path: Path, page: str, context: dict[str, object] | None = None, **kwargs: object
) -> httpx.AsyncClient:
    write(tmp_path, "page.html", page)

    async def endpoint(request: Request) -> Response:
        return request.app.state.templates.render(request, "page.html", dict(context or {}), status_code=201)

    routes = [Route("/page", endpoint), Mount("/sub", app=Router([Route("/page", endpoint)]))]
    app = create_web_app(name="test", routes=routes, csrf_secret=SECRET, template_dirs=[tmp_path], **kwargs)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


PAGE = """{% extends "base.html" %}{% block content %}<p id="greet">{{ _("Hello %(name)s", name=name) }}</p>
<p id="n">{{ ngettext("%(num)d item", "%(num)d items", count) }}</p>{% endblock %}"""


async def test_render_in_chinese_by_default(tmp_path: Path) -> None:
    async with app_with(tmp_path, PAGE, {"name": "<b>张三</b>", "count": 2}) as client:
        response = await client.get("/page")
    assert response.status_code == 201
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert '<html lang="zh-CN">' in response.text
    assert "OneGate 统一身份门户" in response.text
    assert "跳到主要内容" in response.text
    # autoescaped, including values formatted into a translated string
    assert "&lt;b&gt;张三&lt;/b&gt;" in response.text
    assert "<b>张三</b>" not in response.text
    assert '<p id="n">2 items</p>' in response.text


async def test_render_in_english(tmp_path: Path) -> None:
    async with app_with(tmp_path, PAGE, {"name": "Ann", "count": 1}) as client:
        response = await client.get("/page?ui_locales=en")
    assert '<html lang="en">' in response.text
    assert "Skip to main content" in response.text
    assert "统一身份门户" not in response.text
    assert '<p id="greet">Hello Ann</p>' in response.text
    assert '<p id="n">1 item</p>' in response.text


async def test_language_switch_links_keep_the_query(tmp_path: Path) -> None:
    async with app_with(tmp_path, PAGE, {"name": "x", "count": 0}) as client:
        response = await client.get("/page?client_id=portal&state=a%20b")
    assert 'href="/page?client_id=portal&amp;state=a+b&amp;lang=en"' in response.text
    assert 'aria-current="true">中文</span>' in response.text


async def test_static_and_app_urls_follow_the_root_path(tmp_path: Path) -> None:
    page = "{{ static_url('onegate.css') }}|{{ app_url('/x') }}"
    async with app_with(tmp_path, page) as client:
        plain = await client.get("/page")
        mounted = await client.get("/sub/page")
    assert plain.text == "/static/onegate.css|/x"
    assert mounted.text == "/static/onegate.css|/x"


async def test_undefined_variables_fail_loudly(tmp_path: Path) -> None:
    async with app_with(tmp_path, "{{ misspelt }}") as client:
        response = await client.get("/page", headers={"accept": "application/json"})
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"


async def test_context_cannot_replace_the_request(tmp_path: Path) -> None:
    async with app_with(tmp_path, "{{ request.url.path }}", {"request": "forged"}) as client:
        response = await client.get("/page")
    assert response.text == "/page"


async def test_role_templates_override_and_globals_filters(tmp_path: Path) -> None:
    write(tmp_path, "page.html", "{{ product }}|{{ 'abc' | shout }}")

    async def endpoint(request: Request) -> Response:
        return request.app.state.templates.render(request, "page.html")

    app = create_web_app(
        name="test", routes=[Route("/page", endpoint)], csrf_secret=SECRET, template_dirs=[tmp_path]
    )
    app.state.templates.add_global("product", "OneGate")
    app.state.templates.add_filter("shout", str.upper)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/page")).text == "OneGate|ABC"
        assert (await client.get("/page?lang=en")).text == "OneGate|ABC"


def test_missing_template_raises(tmp_path: Path) -> None:
    app = create_web_app(name="test", routes=[], csrf_secret=SECRET)
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""})
    with pytest.raises(jinja2.TemplateNotFound):
        app.state.templates.render(request, "nope.html")


def test_base_template_has_no_inline_script_or_style() -> None:
    base = (Path(__file__).resolve().parents[3] / "core/web/templates/base.html").read_text(encoding="utf-8")
    assert "<script" not in base
    assert "style=" not in base
    assert "<style" not in base
