"""User-facing HTTP errors: a closed vocabulary of codes, one exception, one renderer.

A role app signals an error a user should see by raising ``HTTPProblem``::

    raise HTTPProblem(ErrorCode.FORBIDDEN)                               # catalog message
    raise HTTPProblem(ErrorCode.BAD_REQUEST, reason="redirect_uri_mismatch",
                      message_zh="回调地址未注册。", message_en="The redirect URI is not registered.")

``ProblemRenderer`` turns it (and Starlette's ``HTTPException``: 404, 405 ...) into a
response in the request's locale: an HTML page (``error.html``) for browsers — clients whose
``Accept`` prefers ``text/html`` — and JSON ``{"error": code, "message": ..., "request_id":
..., "reason": ...}`` for everything else and for paths under ``json_path_prefixes``.
Unexpected exceptions become ``internal_error`` (500) carrying only the request id; their
traceback goes to the log (see ``core.web.middleware.errors``), never to the client.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from core.logging import get_logger
from core.web.i18n import N_

if TYPE_CHECKING:
    from core.web.templating import Templates

__all__ = ["ErrorCode", "HTTPProblem", "ProblemRenderer", "ProblemResponder", "wants_html"]

_log = get_logger("onegate.errors")
_REASON = re.compile(r"[a-z0-9_.-]{1,64}")


class ErrorCode(StrEnum):
    """The closed vocabulary of user-facing error codes (the JSON ``error`` member)."""

    BAD_REQUEST = "bad_request"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    CSRF_FAILED = "csrf_failed"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"
    SERVICE_UNAVAILABLE = "service_unavailable"


# code -> (default status, English message id; the zh_CN catalog translates it)
_DEFAULTS: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.BAD_REQUEST: (400, N_("The request could not be understood.")),
    ErrorCode.UNAUTHENTICATED: (401, N_("Please sign in to continue.")),
    ErrorCode.FORBIDDEN: (403, N_("You do not have permission to access this page.")),
    ErrorCode.CSRF_FAILED: (
        403,
        N_(
            "The form could not be verified. It may have expired or been "
            "sent from another site. Reload the page and try again."
        ),
    ),
    ErrorCode.NOT_FOUND: (404, N_("The page you requested was not found.")),
    ErrorCode.METHOD_NOT_ALLOWED: (405, N_("This address does not accept that kind of request.")),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, N_("The submitted data is too large.")),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: (415, N_("The submitted data is in an unsupported format.")),
    ErrorCode.RATE_LIMITED: (429, N_("Too many requests. Please wait a moment and try again.")),
    ErrorCode.INTERNAL_ERROR: (500, N_("Something went wrong on our side. Please try again later.")),
    ErrorCode.SERVICE_UNAVAILABLE: (
        503,
        N_("The service is temporarily unavailable. Please try again later."),
    ),
}
_BY_STATUS = {status: code for code, (status, _) in _DEFAULTS.items() if code is not ErrorCode.CSRF_FAILED}


class HTTPProblem(Exception):
    """An error the user should see, rendered by ``ProblemRenderer``.

    ``status`` defaults to the code's status. ``message_zh`` / ``message_en`` replace the
    code's catalog message in that locale. ``reason`` is a short machine-readable token from
    the raiser's own closed vocabulary (``[a-z0-9_.-]``), shown to the user and in JSON.
    """

    def __init__(
        self,
        code: ErrorCode,
        *,
        status: int | None = None,
        message_zh: str | None = None,
        message_en: str | None = None,
        reason: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if reason is not None and not _REASON.fullmatch(reason):
            raise ValueError(f"HTTPProblem reason must match {_REASON.pattern}, got {reason!r}")
        self.code = ErrorCode(code)
        self.status = status if status is not None else _DEFAULTS[self.code][0]
        if not 400 <= self.status <= 599:
            raise ValueError(f"HTTPProblem status must be 4xx or 5xx, got {self.status}")
        self.message_zh = message_zh
        self.message_en = message_en
        self.reason = reason
        self.headers = dict(headers or {})
        super().__init__(f"{self.status} {self.code}" + (f" ({reason})" if reason else ""))

    @classmethod
    def from_http_exception(cls, exc: HTTPException) -> HTTPProblem:
        """Map Starlette's ``HTTPException`` (its free-text detail is not shown)."""
        fallback = ErrorCode.INTERNAL_ERROR if exc.status_code >= 500 else ErrorCode.BAD_REQUEST
        code = _BY_STATUS.get(exc.status_code, fallback)
        status = exc.status_code if 400 <= exc.status_code <= 599 else 500
        return cls(code, status=status, headers=exc.headers)

    def message(self, locale: str, gettext: Callable[[str], str]) -> str:
        """The user-facing message in ``locale`` (``gettext`` is that locale's catalog)."""
        if locale.startswith("zh") and self.message_zh:
            return self.message_zh
        if locale.startswith("en") and self.message_en:
            return self.message_en
        return gettext(_DEFAULTS[self.code][1])


ProblemResponder = Callable[[Request, HTTPProblem], Response]


def _accept_quality(accept: str, media_types: tuple[str, ...]) -> float:
    best = 0.0
    for item in accept[:1024].split(",")[:32]:
        media, *params = (part.strip().lower() for part in item.split(";"))
        if media not in media_types:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best = max(best, quality)
    return best


def wants_html(request: Request, json_path_prefixes: Sequence[str] = ()) -> bool:
    """True when the client explicitly prefers HTML (browsers); API clients get JSON."""
    if any(request.url.path.startswith(prefix) for prefix in json_path_prefixes):
        return False
    accept = request.headers.get("accept", "")
    html_q = _accept_quality(accept, ("text/html", "application/xhtml+xml"))
    json_q = _accept_quality(accept, ("application/json", "application/problem+json"))
    return html_q > 0 and html_q >= json_q


class ProblemRenderer:
    """Renders ``HTTPProblem`` as HTML or JSON in the request's locale (see module docs)."""

    def __init__(self, *, templates: Templates, json_path_prefixes: Sequence[str] = ()) -> None:
        self.templates = templates
        self.json_path_prefixes = tuple(json_path_prefixes)

    def problem_for(self, exc: Exception) -> HTTPProblem:
        """The problem to show for ``exc``: itself, a mapped HTTPException, or internal_error."""
        if isinstance(exc, HTTPProblem):
            return exc
        if isinstance(exc, HTTPException):
            return HTTPProblem.from_http_exception(exc)
        return HTTPProblem(ErrorCode.INTERNAL_ERROR)

    def response(self, request: Request, problem: HTTPProblem) -> Response:
        """The response for ``problem``; never raises for a template error."""
        state: dict[str, Any] = request.scope.setdefault("state", {})
        locale = self.templates.locale_of(request)
        message = problem.message(locale, self.templates.catalogs.get(locale).gettext)
        request_id = state.get("request_id")
        if not wants_html(request, self.json_path_prefixes):
            body: dict[str, Any] = {"error": problem.code.value, "message": message, "request_id": request_id}
            if problem.reason:
                body["reason"] = problem.reason
            return JSONResponse(body, status_code=problem.status, headers=problem.headers)
        context = {
            "status": problem.status,
            "code": problem.code.value,
            "message": message,
            "reason": problem.reason,
            "request_id": request_id,
        }
        try:
            return self.templates.render(
                request, "error.html", context, status_code=problem.status, headers=problem.headers
            )
        except Exception:
            _log.exception("error_page_render_failed", code=problem.code.value)
            page = (
                f"<!doctype html><title>{problem.status}</title><h1>{html.escape(message)}</h1>"
                f"<p>{html.escape(str(request_id or ''))}</p>"
            )
            return HTMLResponse(page, status_code=problem.status, headers=problem.headers)

    async def handle_exception(self, request: Request, exc: Exception) -> Response:
        """A Starlette exception handler for ``HTTPProblem`` and ``HTTPException``."""
        return self.response(request, self.problem_for(exc))
