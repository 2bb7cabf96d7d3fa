"""OpenID Provider metadata (OIDC Discovery 1.0 §3, RFC 8414 §2): ``GET /.well-known/openid-configuration``.

It states what the IdP does and nothing it does not: the code flow only, PKCE S256 only,
no request objects, ID tokens signed with the algorithms of the published keys.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from idp.claims import CLAIMS_SUPPORTED, SCOPES_SUPPORTED
from idp.server import TOKEN_AUTH_METHODS
from mfa.levels import ACR_LEVELS

if TYPE_CHECKING:
    from idp.server import Provider

__all__ = ["discovery_endpoint", "provider_metadata"]

UI_LOCALES = ("zh-CN", "en")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")


def provider_metadata(provider: Provider) -> dict[str, Any]:
    issuer = provider.idp.issuer
    algs = list(dict.fromkeys(key["alg"] for key in provider.idp.signing.jwks()["keys"]))
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks.json",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "pushed_authorization_request_endpoint": f"{issuer}/par",
        "end_session_endpoint": f"{issuer}/logout",
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "token_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256"],
        "revocation_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": [m for m in TOKEN_AUTH_METHODS if m != "none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": list(CLAIMS_SUPPORTED),
        "claims_parameter_supported": True,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,  # only PAR's urn:ietf:params:oauth:request_uri:
        "require_request_uri_registration": False,
        "ui_locales_supported": list(UI_LOCALES),
        "claim_types_supported": ["normal"],
        "acr_values_supported": list(ACR_LEVELS),
        "authorization_response_iss_parameter_supported": True,  # RFC 9207
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": False,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
    }


def discovery_endpoint(provider: Provider) -> Callable[[Request], Awaitable[Response]]:
    async def discovery(request: Request) -> Response:
        return JSONResponse(provider_metadata(provider), headers={"Cache-Control": "public, max-age=300"})

    return discovery
