"""Token revocation (RFC 7009): ``POST /revoke``.

The client authenticates as at the token endpoint (public clients with their ``client_id``)
and may revoke only its own tokens. Revoking a refresh token revokes its whole grant — every
refresh token of the family and, at userinfo and introspection, every access token it issued
(RFC 7009 §2.1 allows it; we always do it). Revoking an access token revokes that token
(by ``jti``) until it would have expired. An unknown, expired or malformed token is answered
with 200 (§2.2). Emits ``token-revoked``.

CSRF: exempt — client-authenticated, no browser cookie involved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from starlette.requests import Request
from starlette.responses import Response

from idp.endpoints import PresentedToken, find_token, reject_duplicates
from idp.integrations.starlette import OAuth2Response, read_oauth2_request, to_response
from idp.server import TOKEN_AUTH_METHODS, OneGateRequest

if TYPE_CHECKING:
    from idp.server import Provider

__all__ = ["RevocationEndpoint", "revocation_endpoint"]


class RevocationEndpoint(_RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = list(TOKEN_AUTH_METHODS)

    def check_params(self, request: OneGateRequest, client: Any) -> None:
        # token_type_hint is only a hint (§2.1): an unknown value is ignored, not an error.
        if not request.form.get("token"):
            raise InvalidRequestError("Missing 'token'.")

    def query_token(self, token_string: str, token_type_hint: str | None) -> PresentedToken | None:
        return None  # never called: authenticate_token answers from the prefetch

    def authenticate_token(self, request: OneGateRequest, client: Any) -> PresentedToken | None:
        self.check_params(request, client)
        token: PresentedToken | None = request.presented
        if token is not None and not token.check_client(client):
            # §2.1: the token must have been issued to the client asking.
            raise InvalidRequestError("The token was not issued to this client.")
        return token

    def revoke_token(self, token: PresentedToken, request: OneGateRequest) -> None:
        request.to_revoke = token  # done by the endpoint, after authlib answered


def revocation_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    server = provider.server

    async def revoke(request: Request) -> Response:
        oreq: OneGateRequest | None = None
        try:
            oreq = await read_oauth2_request(request, source="form", cls=OneGateRequest)
            oreq.source_ip = provider.idp.client_ip(request)
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
        result: OAuth2Response = server.create_endpoint_response("revocation", oreq)
        token: PresentedToken | None = oreq.to_revoke
        if result.status == 200 and token is not None:
            grant = token.grant
            if token.kind == "refresh_token" and token.refresh is not None:
                grant = await provider.tokens.revoke_grant(token.refresh.grant_id)
            elif token.claims is not None:
                await provider.tokens.revoke_access_token(token.claims)
            provider.emit(
                "token-revoked",
                success=True,
                request=oreq,
                reason=token.kind,
                user_id=grant.user_id if grant else None,
                username=grant.username if grant else None,
                session_id=grant.sid if grant else None,
            )
        return to_response(result)

    return revoke
