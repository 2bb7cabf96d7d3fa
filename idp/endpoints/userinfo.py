"""The UserInfo endpoint (OIDC Core §5.3): ``GET`` and ``POST /userinfo``.

The access token comes as ``Authorization: Bearer`` (RFC 6750 §2.1) or, in a POST, as the
form field ``access_token`` (§2.2) — never both (§2: one method only). It must be one of our
access tokens (``typ: at+jwt``), unexpired, not revoked (itself, its grant, its session), for
a user (``grant_id``) and with the ``openid`` scope. The claims are those of the token's
scopes plus the single userinfo claims its authorization released (:mod:`idp.claims`), read
fresh from the directory; a locked or disabled user's tokens stop working here at once.

Errors per RFC 6750 §3: 401 with ``WWW-Authenticate: Bearer`` (``invalid_token``, or no
error code when no token was sent), 403 ``insufficient_scope``.

CSRF: exempt — bearer-authenticated, no browser cookie involved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc6750 import InsufficientScopeError, InvalidTokenError
from starlette.requests import Request
from starlette.responses import Response

from idp.claims import user_claims
from idp.errors import TokenRejected
from idp.integrations.starlette import OAuth2Response, read_form, to_response

if TYPE_CHECKING:
    from idp.server import Provider

__all__ = ["userinfo_endpoint"]

_NO_STORE = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache")]


class _NoToken(OAuth2Error):  # type: ignore[misc]
    """RFC 6750 §3.1: a request without credentials gets a bare challenge, no error code."""

    status_code = 401

    def __call__(self, uri: str | None = None) -> tuple[int, dict[str, str], list[tuple[str, str]]]:
        return 401, {}, [*_NO_STORE, ("WWW-Authenticate", 'Bearer realm="userinfo"')]


def _error(error: OAuth2Error) -> Response:
    status, body, headers = error()
    return to_response(OAuth2Response(status, body, headers))


async def _presented_token(request: Request) -> str:
    header = request.headers.get("authorization")
    form_token: str | None = None
    if request.method == "POST" and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        values = [v for k, v in await read_form(request) if k == "access_token"]
        if len(values) > 1:
            raise InvalidRequestError("Multiple 'access_token' in request.")
        form_token = values[0] if values else None
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip() or form_token is not None:
            raise InvalidTokenError(realm="userinfo")
        return value.strip()
    if form_token:
        return form_token
    raise _NoToken()


def userinfo_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    tokens = provider.tokens

    async def userinfo(request: Request) -> Response:
        try:
            token = await _presented_token(request)
            try:
                claims = tokens.verify_access_token(token)
            except TokenRejected as e:
                raise InvalidTokenError(realm="userinfo") from e
            grant_id = claims.get("grant_id")
            grant = await tokens.get_grant(grant_id) if isinstance(grant_id, str) else None
            if grant is None or not await tokens.is_active(claims):
                raise InvalidTokenError(realm="userinfo")
            scopes = str(claims.get("scope", "")).split()
            if "openid" not in scopes:
                raise InsufficientScopeError()
            profile = await provider.profile(grant.user_id)
            if profile is None or profile.status != "active" or profile.sub != claims.get("sub"):
                raise InvalidTokenError(realm="userinfo")
        except OAuth2Error as error:
            return _error(error)
        return to_response(
            OAuth2Response(200, user_claims(profile, scopes, grant.userinfo_claims), _NO_STORE)
        )

    return userinfo
