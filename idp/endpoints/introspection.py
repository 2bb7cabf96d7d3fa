"""Token introspection (RFC 7662): ``POST /introspect``.

Only authenticated confidential clients may ask (§2.1, and §4: the endpoint must not become
a token-scanning oracle), and a client only learns about its own tokens: a token of another
client, like an unknown, expired or revoked one, is ``{"active": false}`` (§2.2). An access
token is active while its signature and expiry hold and it, its grant and its session have
not been revoked; a refresh token while it is unused, unexpired and its grant and session
live.

CSRF: exempt — client-authenticated, no browser cookie involved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint
from starlette.requests import Request
from starlette.responses import Response

from idp.endpoints import PresentedToken, find_token, reject_duplicates
from idp.integrations.starlette import OAuth2Response, read_oauth2_request, to_response
from idp.server import CONFIDENTIAL_AUTH_METHODS, OneGateRequest

if TYPE_CHECKING:
    from idp.server import Provider

__all__ = ["IntrospectionEndpoint", "introspection_endpoint"]

_ACCESS_CLAIMS = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "sid", "auth_time", "acr")


class IntrospectionEndpoint(_IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = list(CONFIDENTIAL_AUTH_METHODS)

    def check_params(self, request: OneGateRequest, client: Any) -> None:
        if not request.form.get("token"):
            raise InvalidRequestError("Missing 'token'.")

    def query_token(self, token_string: str, token_type_hint: str | None) -> PresentedToken | None:
        return None  # never called: authenticate_token answers from the prefetch

    def authenticate_token(self, request: OneGateRequest, client: Any) -> PresentedToken | None:
        self.check_params(request, client)
        token: PresentedToken | None = request.presented
        return token if token is not None and self.check_permission(token, client, request) else None

    def check_permission(self, token: PresentedToken, client: Any, request: OneGateRequest) -> bool:
        return token.check_client(client)

    def introspect_token(self, token: PresentedToken) -> dict[str, Any]:
        if token.claims is not None:
            claims = token.claims
            body = {name: claims[name] for name in _ACCESS_CLAIMS if name in claims}
            return {"active": True, "token_type": "Bearer", **body}
        grant, record = token.grant, token.refresh
        if grant is None or record is None:  # pragma: no cover - inactive tokens never get here
            return {"active": False}
        return {
            "active": True,
            "token_type": "refresh_token",
            "scope": record.scope,
            "client_id": record.client_id,
            "sub": grant.sub,
            "username": grant.username,
            "iss": self.server.issuer,
            "iat": int(record.issued_at),
            "exp": int(record.expires_at),
            "sid": grant.sid,
        }


def introspection_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    server = provider.server

    async def introspect(request: Request) -> Response:
        oreq: OneGateRequest | None = None
        try:
            oreq = await read_oauth2_request(request, source="form", cls=OneGateRequest)
            reject_duplicates(oreq)
        except OAuth2Error as error:
            return to_response(server.handle_error_response(oreq, error))
        auth = await provider.authenticate_client(oreq, request.headers)
        if auth.client is None:
            refusal = InvalidClientError(
                description="Client authentication failed.", status_code=401 if auth.used_basic else 400
            )
            return to_response(server.handle_error_response(oreq, refusal))
        oreq.client, oreq.auth_method = auth.client, auth.method
        oreq.presented = await find_token(provider, oreq.form.get("token", ""))
        result: OAuth2Response = server.create_endpoint_response("introspection", oreq)
        return to_response(result)

    return introspect
