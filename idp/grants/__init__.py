"""The grants the IdP supports (RFC 6749 §4.1, §4.4, §6), each a subclass of authlib's.

Only ``authorization_code`` (with PKCE S256 and OpenID Connect), ``refresh_token`` (with
rotation and reuse detection) and ``client_credentials`` are registered: no implicit, no
hybrid, no password grant (RFC 9700 §2.1.2, §2.4), so those requests end in
``unsupported_response_type`` / ``unsupported_grant_type``.

Each grant module holds the authlib subclass (synchronous: it answers from what the token
endpoint prefetched) and the endpoint's asynchronous ``prefetch`` / ``commit`` steps for that
grant (see :mod:`idp.server`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.oidc.core.grants.code import OpenIDToken

from idp.claims import user_claims
from idp.tokens import TokenService, at_hash

if TYPE_CHECKING:
    from idp.server import OneGateRequest

__all__ = ["IDToken", "bearer"]


def bearer(access_token: str, lifetime: int, scope: str, refresh_token: str | None = None) -> dict[str, Any]:
    """An RFC 6749 §5.1 token response body (``token_type`` per RFC 6750)."""
    token: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": scope,
    }
    if refresh_token is not None:
        token["refresh_token"] = refresh_token
    return token


class IDToken(OpenIDToken):  # type: ignore[misc]
    """Adds an ID token (OIDC Core §3.1.3.3, §12.2) to a token response whose scope has
    ``openid``, signed by the keyring (authlib's own encoder wants a private key in hand)."""

    def __init__(self, tokens: TokenService) -> None:
        self._tokens = tokens

    def encode_id_token(self, token: dict[str, Any], request: OneGateRequest) -> str:
        grant = request.issued.grant
        profile = request.profile
        if grant is None or profile is None:  # pragma: no cover - the grants always set both
            raise RuntimeError("an ID token needs the grant and the user's profile")
        claims = user_claims(profile, grant.scope.split(), grant.id_token_claims)
        claims.update(
            auth_time=int(grant.auth_time),  # §12.2: the original authentication, even on refresh
            acr=grant.acr,
            amr=list(grant.amr),
            sid=grant.sid,
            at_hash=at_hash(token["access_token"]),
        )
        # §12.2: a refreshed ID token SHOULD NOT carry the nonce; the first one must (§3.1.3.6).
        if request.code_record is not None and request.code_record.nonce:
            claims["nonce"] = request.code_record.nonce
        lifetime = request.client.lifetimes(self._tokens).id_token
        return self._tokens.id_token(client_id=grant.client_id, lifetime=lifetime, claims=claims)
