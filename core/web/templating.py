"""Jinja2 templates rendered in the request's locale.

The app factory puts one ``Templates`` on ``app.state.templates``. A role's endpoint renders
a page with::

    async def login_page(request: Request) -> Response:
        templates: Templates = request.app.state.templates
        return templates.render(request, "login.html", {"client": client}, status_code=200)

Pages extend ``base.html`` (``{% extends "base.html" %}`` + ``{% block content %}``). The
role's template directories are searched before core's, so a role may add pages freely.

Every template sees, besides the given context:

* ``request``, ``locale`` (``zh_CN``), ``html_lang`` (``zh-CN``);
* ``_`` / ``gettext`` / ``ngettext`` and ``{% trans %}`` (jinja2.ext.i18n, new-style
  gettext: ``_("Hello %(name)s", name=user)`` formats and escapes);
* ``csrf_token()`` — the token for a form's hidden ``csrf_token`` field;
* ``app_url("/path")`` (under the app's root path), ``static_url("onegate.css")`` and
  ``locale_url("en")`` (the current page in another locale);
* ``available_locales`` — ``(locale, BCP 47 tag, native name)`` for a language switch.

There is one ``jinja2.Environment`` per locale, each with its catalog installed once at
start-up, so concurrent requests in different locales never share mutable state. Undefined
variables raise (``StrictUndefined``): a misspelt name is a failing test, not a blank field.
Autoescaping is always on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from core.web.i18n import Catalogs, html_lang
from core.web.middleware.csrf import csrf_token as _csrf_token

__all__ = ["CORE_TEMPLATE_DIR", "STATIC_PATH", "Templates"]

CORE_TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_PATH = "/static"
_NATIVE_NAMES = {"zh_CN": "中文", "en": "English"}


@jinja2.pass_context
def _csrf_token_global(context: Any) -> str:
    return _csrf_token(context["request"])


@jinja2.pass_context
def _app_url(context: Any, path: str = "/") -> str:
    scope = context["request"].scope
    root = str(scope.get("app_root_path", scope.get("root_path", ""))).rstrip("/")
    return f"{root}/{path.lstrip('/')}"


@jinja2.pass_context
def _static_url(context: Any, path: str) -> str:
    return str(_app_url(context, f"{STATIC_PATH}/{path.lstrip('/')}"))


@jinja2.pass_context
def _locale_url(context: Any, locale: str) -> str:
    url = context["request"].url.include_query_params(lang=locale)
    return f"{url.path}?{url.query}"


class Templates:
    """Per-locale Jinja2 rendering (see the module docstring for the template contract)."""

    def __init__(self, *, directories: Sequence[Path], catalogs: Catalogs, auto_reload: bool = False) -> None:
        self.catalogs = catalogs
        loader = jinja2.FileSystemLoader([*map(str, directories), str(CORE_TEMPLATE_DIR)])
        self._by_locale: dict[str, Jinja2Templates] = {}
        for locale in catalogs.locales:
            env = jinja2.Environment(
                loader=loader,
                autoescape=True,  # every template is HTML; never render unescaped user data
                undefined=jinja2.StrictUndefined,
                extensions=["jinja2.ext.i18n"],
                auto_reload=auto_reload,
            )
            env.install_gettext_translations(catalogs.get(locale), newstyle=True)  # type: ignore[attr-defined]
            env.globals.update(
                csrf_token=_csrf_token_global,
                app_url=_app_url,
                static_url=_static_url,
                locale_url=_locale_url,
                available_locales=[
                    (code, html_lang(code), _NATIVE_NAMES.get(code, code)) for code in catalogs.locales
                ],
            )
            self._by_locale[locale] = Jinja2Templates(env=env)

    def locale_of(self, request: Request) -> str:
        """The request's negotiated locale (set by the locale middleware), else the default."""
        locale = request.scope.get("state", {}).get("locale")
        return locale if locale in self._by_locale else self.catalogs.default_locale

    def add_global(self, name: str, value: Any) -> None:
        """Expose ``value`` to every template in every locale (call at assembly time only)."""
        for templates in self._by_locale.values():
            templates.env.globals[name] = value

    def add_filter(self, name: str, function: Any) -> None:
        """Register a Jinja filter in every locale (call at assembly time only)."""
        for templates in self._by_locale.values():
            templates.env.filters[name] = function

    def render(
        self,
        request: Request,
        name: str,
        context: Mapping[str, Any] | None = None,
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Render template ``name`` in the request's locale as an HTML response."""
        locale = self.locale_of(request)
        full: dict[str, Any] = {
            "locale": locale,
            "html_lang": html_lang(locale),
            **(context or {}),
            "request": request,
        }
        return self._by_locale[locale].TemplateResponse(
            request, name, full, status_code=status_code, headers=headers
        )
