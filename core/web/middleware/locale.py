"""Locale negotiation per request (rules in ``core.web.i18n.negotiate_locale``).

The chosen locale lands in ``scope["state"]["locale"]``. A ``?lang=<locale>`` query parameter
is the user's explicit switch (the language links in ``base.html``): it wins for this request
and is remembered in the ``onegate_locale`` cookie (one year, SameSite=Lax, HttpOnly).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.web.i18n import negotiate_locale

__all__ = ["LOCALE_COOKIE", "SWITCH_PARAM", "LocaleMiddleware"]

LOCALE_COOKIE = "onegate_locale"
SWITCH_PARAM = "lang"
_ONE_YEAR = 365 * 24 * 3600


class LocaleMiddleware:
    """See the module docstring."""

    def __init__(
        self, app: ASGIApp, *, locales: Sequence[str], default_locale: str, https: bool = False
    ) -> None:
        if default_locale not in locales:
            raise ValueError(f"LocaleMiddleware: default_locale {default_locale!r} not in {list(locales)}")
        self.app = app
        self.locales = tuple(locales)
        self.default_locale = default_locale
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        query = QueryParams(scope.get("query_string", b""))
        switch = query.get(SWITCH_PARAM)
        chosen = switch if switch in self.locales else None
        locale = chosen or negotiate_locale(
            supported=self.locales,
            default=self.default_locale,
            ui_locales=query.get("ui_locales"),
            cookie=cookie_parser(headers.get("cookie", "")).get(LOCALE_COOKIE),
            accept_language=headers.get("accept-language"),
        )
        scope.setdefault("state", {})["locale"] = locale
        if chosen is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                secure = "; Secure" if self.https else ""
                MutableHeaders(scope=message).append(
                    "set-cookie",
                    f"{LOCALE_COOKIE}={chosen}; Path=/; Max-Age={_ONE_YEAR}; HttpOnly; SameSite=Lax{secure}",
                )
            await send(message)

        await self.app(scope, receive, send_with_cookie)
