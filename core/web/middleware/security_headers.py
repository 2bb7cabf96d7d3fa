"""Security response headers (OWASP Secure Headers Project baseline).

Added to every HTTP response unless the handler set that header itself — a page that must
loosen its Content-Security-Policy sets its own and keeps it:

* ``Content-Security-Policy``: only our own scripts, styles and images (``data:`` images
  allowed), no plugins, no ``<base>``, no framing; ``form-action`` defaults to ``'self'`` and
  is configurable because a login page may one day post to another origin;
* ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` (frame-ancestors for old
  browsers), ``Cross-Origin-Opener-Policy: same-origin``, a ``Permissions-Policy`` switching
  off devices we never use (WebAuthn stays at its default, ``self``);
* ``Referrer-Policy: strict-origin-when-cross-origin``. Not ``no-referrer``: under it browsers
  send ``Origin: null`` on same-origin form POSTs (Fetch standard, "append a request Origin
  header"), which defeats the CSRF Origin check here and on our sister origins (gateway <->
  IdP). This policy still never sends a path or query string (codes, state) to another origin;
* ``Cache-Control: no-store`` on HTML and JSON (pages carry personal data and CSRF tokens);
* ``Strict-Transport-Security: max-age=31536000; includeSubDomains`` only with ``https=True``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SecurityHeadersMiddleware", "apply_security_headers", "security_headers"]

_SOURCE = re.compile(r"[A-Za-z0-9'*:/.\-_+]+")
_NO_STORE_TYPES = ("text/html", "application/json", "application/problem+json")


def security_headers(*, https: bool, form_action: Sequence[str] = ("'self'",)) -> list[tuple[str, str]]:
    """The static header set; raises ``ValueError`` for a malformed ``form_action`` source."""
    if not form_action:
        raise ValueError("form_action: at least one source (e.g. \"'self'\") is required")
    for source in form_action:
        if not _SOURCE.fullmatch(source):
            raise ValueError(f"form_action: {source!r} is not a CSP source expression")
    csp = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action {' '.join(form_action)}"
    )
    headers = [
        ("content-security-policy", csp),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    ]
    if https:
        headers.append(("strict-transport-security", "max-age=31536000; includeSubDomains"))
    return headers


def apply_security_headers(headers: MutableHeaders, static: Sequence[tuple[str, str]]) -> None:
    """Add ``static`` and the Cache-Control rule to ``headers``, keeping what is already set."""
    for name, value in static:
        if name not in headers:
            headers[name] = value
    content_type = headers.get("content-type", "").lower()
    if "cache-control" not in headers and content_type.startswith(_NO_STORE_TYPES):
        headers["cache-control"] = "no-store"


class SecurityHeadersMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, *, https: bool, form_action: Sequence[str] = ("'self'",)) -> None:
        self.app = app
        self.headers = security_headers(https=https, form_action=form_action)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                apply_security_headers(MutableHeaders(scope=message), self.headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)
