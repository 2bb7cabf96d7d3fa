"""The token endpoint (RFC 6749 §3.2): ``POST /token``.

Order of checks: form body (urlencoded only), no repeated parameter (§3.2), a supported
``grant_type`` (else ``unsupported_grant_type``: no password grant, RFC 9700 §2.4), client
authentication (§2.3; ``invalid_client``, 401 with ``WWW-Authenticate`` when HTTP Basic was
tried), then the grant's own prefetch, authlib's validation and the grant's commit (see
:mod:`idp.server`). Every refusal emits ``token-issued`` / ``token-refreshed`` with outcome
failure and a reason; secrets never appear in an event.

CSRF: exempt — clients authenticate themselves here; no browser cookie is involved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from authlib.oauth2.rfc6749 import InvalidClientError, OAuth2Error, UnsupportedGrantTypeError
from starlette.requests import Request
from starlette.responses import Response

from idp.endpoints import reject_duplicates
from idp.errors import printable
from idp.grants import authorization_code, client_credentials, refresh_token
from idp.integrations.starlette import OAuth2Response, read_oauth2_request, to_response
from idp.server import OneGateRequest

if TYPE_CHECKING:
    from idp.server import Provider

__all__ = ["token_endpoint"]

Prefetch = Callable[["Provider", OneGateRequest], Awaitable[OAuth2Response | None]]
Commit = Callable[["Provider", OneGateRequest, OAuth2Response], Awaitable[OAuth2Response]]

_GRANTS: dict[str, tuple[Prefetch | None, Commit]] = {
    "authorization_code": (authorization_code.prefetch, authorization_code.commit),
    "refresh_token": (refresh_token.prefetch, refresh_token.commit),
    "client_credentials": (None, client_credentials.commit),
}


def token_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    server = provider.server

    def refused(
        oreq: OneGateRequest | None, result: OAuth2Response, client_id: str | None = None
    ) -> Response:
        grant_type = oreq.payload.grant_type if oreq is not None else None
        error = result.body.get("error") if isinstance(result.body, dict) else None
        provider.emit(
            "token-refreshed" if grant_type == "refresh_token" else "token-issued",
            success=False,
            request=oreq,
            reason=(oreq.refusal if oreq is not None and oreq.refusal else None) or error or "refused",
            client_id=client_id,
            onegate__grant_type=printable(grant_type or "", 64),
        )
        return to_response(result)

    async def token(request: Request) -> Response:
        oreq: OneGateRequest | None = None
        try:
            oreq = await read_oauth2_request(request, source="form", cls=OneGateRequest)
            oreq.source_ip = provider.idp.client_ip(request)
            reject_duplicates(oreq)
            grant_type = oreq.payload.grant_type
            steps = _GRANTS.get(grant_type or "")
            if steps is None:
                raise UnsupportedGrantTypeError(printable(grant_type))
        except OAuth2Error as error:
            return refused(oreq, server.handle_error_response(oreq, error))
        prefetch, commit = steps

        auth = await provider.authenticate_client(oreq, request.headers)
        if auth.client is None:
            refusal = InvalidClientError(
                description="Client authentication failed.", status_code=401 if auth.used_basic else 400
            )
            oreq.refusal = f"client_authentication_{auth.reason}"
            presented = printable(auth.presented_id or "", 128)
            return refused(oreq, server.handle_error_response(oreq, refusal), presented)
        oreq.client, oreq.auth_method = auth.client, auth.method

        if prefetch is not None and (early := await prefetch(provider, oreq)) is not None:
            return refused(oreq, early)
        result: OAuth2Response = server.create_token_response(oreq)
        if result.status == 200:
            result = await commit(provider, oreq, result)
        if result.status != 200:
            return refused(oreq, result)
        return to_response(result)

    return token
