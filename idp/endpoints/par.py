"""Pushed authorization requests (RFC 9126): ``POST /par``.

A client authenticates as at the token endpoint and posts the parameters of an authorization
request. They are validated as ``/authorize`` would (errors come back as JSON, §2.3, never
as a redirect), kept for 60 seconds, and named by
``request_uri=urn:ietf:params:oauth:request_uri:<random>`` (§2.2). ``/authorize?client_id=..&
request_uri=..`` then uses them — once (§4: one-time use), and only for the client that
pushed them; any other parameter of that ``/authorize`` request is ignored.

CSRF: exempt — client-authenticated, no browser cookie involved.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError, OAuth2Error
from authlib.oidc.core.errors import RequestNotSupportedError
from starlette.requests import Request
from starlette.responses import Response

from idp.endpoints import reject_duplicates
from idp.integrations.starlette import OAuth2Response, read_oauth2_request, to_response
from idp.server import OneGateRequest

if TYPE_CHECKING:
    from idp.server import Provider

__all__ = ["PAR_LIFETIME", "REQUEST_URI_PREFIX", "PushedRequest", "par_endpoint", "pull_request"]

REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"
PAR_LIFETIME = 60
# Client authentication parameters are not part of the authorization request (§2.1).
_AUTH_PARAMS = frozenset({"client_secret", "client_assertion", "client_assertion_type"})


@dataclass(frozen=True)
class PushedRequest:
    client_id: str
    params: tuple[tuple[str, str], ...]


async def push_request(provider: Provider, client_id: str, params: list[tuple[str, str]]) -> str:
    """Keep ``params`` for ``PAR_LIFETIME`` seconds; return their ``request_uri``."""
    reference = provider.tokens.new_secret()
    body = json.dumps({"client_id": client_id, "params": params}, ensure_ascii=False).encode()
    await provider.idp.kv.set(f"oauth-par:{reference}", body, ttl=PAR_LIFETIME)
    return REQUEST_URI_PREFIX + reference


async def pull_request(provider: Provider, request_uri: str, client_id: str | None) -> PushedRequest | None:
    """The pushed request ``request_uri`` names, used up; None when unknown, expired, used,
    or pushed by another client than ``client_id``."""
    if not request_uri.startswith(REQUEST_URI_PREFIX) or len(request_uri) > 128:
        return None
    raw = await provider.idp.kv.get_and_delete(f"oauth-par:{request_uri[len(REQUEST_URI_PREFIX) :]}")
    if raw is None:
        return None
    data = json.loads(raw)
    if data["client_id"] != client_id:
        return None
    return PushedRequest(data["client_id"], tuple((str(k), str(v)) for k, v in data["params"]))


def par_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    from idp.endpoints.authorize import validate_request

    server = provider.server

    async def par(request: Request) -> Response:
        oreq: OneGateRequest | None = None
        try:
            oreq = await read_oauth2_request(request, source="form", cls=OneGateRequest)
            reject_duplicates(oreq)
            auth = await provider.authenticate_client(oreq, request.headers)
            if auth.client is None:
                raise InvalidClientError(
                    description="Client authentication failed.", status_code=401 if auth.used_basic else 400
                )
            client = auth.client
            if "request_uri" in oreq.form:  # §2.1: MUST NOT be provided
                raise InvalidRequestError("'request_uri' is not allowed in a pushed request.")
            if "request" in oreq.form:
                raise RequestNotSupportedError()
            params = [(k, v) for k, v in oreq.pairs() if k not in _AUTH_PARAMS]
            if "client_id" not in oreq.form:
                params.append(("client_id", client.client_id))
            pushed = OneGateRequest("POST", str(request.url), {}, params, [])
            pushed.known_client = client
            validate_request(provider, pushed)
        except OAuth2Error as error:
            error.redirect_uri = None  # §2.3: errors are the response, never a redirect
            return to_response(server.handle_error_response(oreq, error))
        request_uri = await push_request(provider, client.client_id, params)
        body = {"request_uri": request_uri, "expires_in": PAR_LIFETIME}
        return to_response(OAuth2Response(201, body, [("Cache-Control", "no-store")]))

    return par
