"""The IdP's own pages: sign-in (password, second factor, passkey), consent, account, security
(second factors) and password change.

``idp.pages.routes.routes(ctx)`` lists them; the assembly passes :data:`TEMPLATE_DIR` and
:data:`LOCALE_DIR` to ``core.web.create_web_app``. One module per page (``login``, ``mfa``,
``enrolment``, ``passkey``, ``consent``, ``account``, ``security``, ``password``), with what
the MFA pages share in ``transactions``, ``subjects``, ``signin``, ``factors``, ``api`` and ``qr``;
this module holds the little they all share: building
same-site URLs (a page never redirects to a URL taken from the request, only to its own
fixed paths plus the opaque id of a pending authorization request), the pending request's
``ui_locales``, the signed-in user, and rendering.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from core.web import ErrorCode, HTTPProblem, negotiate_locale
from idp.context import IdpContext
from idp.directory.models import User, UserStatus
from idp.pending import PendingAuthorization
from idp.sessions import SSOSession
from mfa import levels

__all__ = [
    "ACR_PWD",
    "AMR_PWD",
    "LOCALE_DIR",
    "STATIC_DIR",
    "TEMPLATE_DIR",
    "SignedIn",
    "adopt_ui_locales",
    "event_ip",
    "form_field",
    "localized_name",
    "page_url",
    "pending_request",
    "problem",
    "redirect",
    "render",
    "signed_in",
]

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE / "templates"
LOCALE_DIR = HERE / "locale"
STATIC_DIR = HERE / "static"  # the pages' own script and styles (served by idp.pages.routes)

# What a password sign-in establishes (OIDC Core 1.0 §2: ``amr`` per RFC 8176 §2, "pwd");
# a second factor raises both (mfa.levels).
AMR_PWD = (levels.AMR_PWD,)
ACR_PWD = levels.ACR_PWD

# Longest value taken from a form field; longer input is cut, never an error page.
_FIELD_MAX = 1024


def page_url(request: Request, path: str, /, **params: str | None) -> str:
    """A same-site URL: one of the app's own ``path``s under its root path, with ``params``
    (None values left out) percent-encoded. Never built from a URL taken from the request."""
    scope = request.scope
    root = str(scope.get("app_root_path", scope.get("root_path", ""))).rstrip("/")
    query = urlencode({name: value for name, value in params.items() if value is not None})
    return f"{root}{path}" + (f"?{query}" if query else "")


def redirect(request: Request, path: str, /, **params: str | None) -> RedirectResponse:
    """303 See Other to one of our own paths (RFC 9110 §15.4.4: the browser follows with GET)."""
    return RedirectResponse(page_url(request, path, **params), status_code=303)


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    response: Response = request.app.state.templates.render(
        request, template, context, status_code=status_code, headers=headers
    )
    # Pages carry per-user data and form tokens: never store them in a shared cache.
    response.headers["Cache-Control"] = "no-store"
    return response


def problem(
    request: Request,
    code: ErrorCode,
    *,
    reason: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> HTTPProblem:
    """An error page (or JSON for API clients) whose text is ``message``, an English message id
    of this package's catalog, shown in Chinese or English as the request asks."""
    chinese = request.app.state.catalogs.get("zh_CN")
    return HTTPProblem(
        code,
        reason=reason,
        message_zh=chinese.gettext(message),
        message_en=message,
        headers=headers,
    )


def form_field(form: FormData, name: str) -> str:
    """A text field of a submitted form ('' when absent or a file)."""
    value = form.get(name)
    return value[:_FIELD_MAX] if isinstance(value, str) else ""


async def pending_request(
    ctx: IdpContext, request: Request
) -> tuple[str | None, PendingAuthorization | None]:
    """The ``req`` query parameter as given, and the pending authorization request it names
    (None when absent, expired or unknown)."""
    req = request.query_params.get("req") or None
    return req, await ctx.pending.get(req)


def adopt_ui_locales(request: Request, ui_locales: str | None) -> None:
    """Render this page in the pending request's ``ui_locales`` (OIDC Core 1.0 §3.1.2.1), as
    if they were in this page's own query: the user's explicit ``?lang=`` switch and a
    ``ui_locales`` of the query itself still win, and so does the locale already chosen when
    none of the tags is supported (see ``core.web.i18n.negotiate_locale`` for the order)."""
    if not ui_locales:
        return
    catalogs = request.app.state.catalogs
    query = request.query_params
    if query.get("lang") in catalogs.locales or query.get("ui_locales"):
        return
    state = request.scope.setdefault("state", {})
    current = request.app.state.templates.locale_of(request)
    state["locale"] = negotiate_locale(supported=catalogs.locales, default=current, ui_locales=ui_locales)


def localized_name(request: Request, name: str, name_en: str | None) -> str:
    """A name kept in Chinese with an optional English form, in the page's locale."""
    locale: str = request.app.state.templates.locale_of(request)
    return name_en if locale.startswith("en") and name_en else name


def event_ip(ip: str) -> str | None:
    """``ip`` when it is an IP address (events refuse anything else), else None."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


@dataclass(frozen=True)
class SignedIn:
    """The browser's live SSO session and its user's row, read afresh for this request."""

    session: SSOSession
    user: User


async def signed_in(ctx: IdpContext, request: Request) -> SignedIn | None:
    """The signed-in user, or None: no live session, or its user gone or no longer active
    (an administrator's lock or disable takes effect on the next page, like a revocation)."""
    session = await ctx.current_session(request)
    if session is None:
        return None
    user = await ctx.directory.get_user_by_id(session.user_id)
    if user is None or user.status != UserStatus.ACTIVE:
        return None
    return SignedIn(session=session, user=user)
