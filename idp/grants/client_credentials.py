"""The client credentials grant (RFC 6749 §4.4), for confidential machine clients.

Only a confidential client that authenticates (secret or ``private_key_jwt``, never
``none``) and has the grant type registered gets a token: an access token whose ``sub`` is
the client itself (RFC 9068 §2.2), no ID token (there is no user) and no refresh token
(RFC 6749 §4.4.3). Scopes must be among the client's own and may not be user scopes
(``openid``, ``profile`` ...); without ``scope`` the client gets all of its non-user scopes
(RFC 6749 §3.3 "a pre-defined default value").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidScopeError, UnauthorizedClientError
from authlib.oauth2.rfc6749 import grants as rfc6749_grants

from idp.claims import USER_SCOPES
from idp.grants import bearer
from idp.server import CONFIDENTIAL_AUTH_METHODS

if TYPE_CHECKING:
    from idp.integrations.starlette import OAuth2Response
    from idp.server import OneGateRequest, Provider

__all__ = ["ClientCredentialsGrant", "commit"]


class ClientCredentialsGrant(rfc6749_grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(CONFIDENTIAL_AUTH_METHODS)
    request: OneGateRequest

    def validate_token_request(self) -> None:
        super().validate_token_request()
        if self.request.client.is_public:  # RFC 6749 §4.4: confidential clients only
            raise UnauthorizedClientError("Public clients cannot use 'client_credentials'.")

    def validate_requested_scope(self) -> None:
        scope = self.request.payload.scope
        client = self.request.client
        if scope and any(s not in client.scopes or s in USER_SCOPES for s in scope.split()):
            raise InvalidScopeError()

    def generate_token(
        self,
        user: Any = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = False,
    ) -> dict[str, Any]:
        client = self.request.client
        tokens = self.server.tokens
        if scope:
            scope = " ".join(dict.fromkeys(scope.split()))
        else:
            scope = " ".join(sorted(client.scopes - USER_SCOPES))
        lifetime = client.lifetimes(tokens).access
        access_token = tokens.access_token(
            client_id=client.client_id, sub=client.client_id, scope=scope, lifetime=lifetime
        )
        return bearer(access_token, lifetime, scope)


async def commit(provider: Provider, request: OneGateRequest, result: OAuth2Response) -> OAuth2Response:
    """Nothing to store (the JWT is self-contained); one event."""
    provider.emit("token-issued", success=True, request=request, onegate__grant_type="client_credentials")
    return result
