"""The IdP's protocol endpoints (Starlette handlers over :mod:`idp.server`).

URL map (``routes.py`` assembles it)::

    /.well-known/openid-configuration   discovery.py     OIDC Discovery §4, RFC 8414
    /jwks.json                          jwks.py          RFC 7517
    /authorize, /authorize/resume       authorize.py     RFC 6749 §4.1, OIDC Core §3.1.2
    /token                              token.py         RFC 6749 §3.2
    /userinfo                           userinfo.py      OIDC Core §5.3
    /revoke                             revocation.py    RFC 7009
    /introspect                         introspection.py RFC 7662
    /par                                par.py           RFC 9126
    /logout, /logout/confirm            idp/logout.py    RP-Initiated Logout 1.0

This module holds what several of them share: error pages, the duplicate-parameter rule,
and finding a presented token (revocation, introspection).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error
from starlette.requests import Request
from starlette.responses import Response

from idp.errors import TokenRejected, printable
from idp.server import OneGateRequest, Provider
from idp.tokens import GrantRecord, RefreshRecord

__all__ = [
    "LOCALE_DIR",
    "TEMPLATE_DIR",
    "PresentedToken",
    "duplicated",
    "error_page",
    "find_token",
    "reject_duplicates",
]

TEMPLATE_DIR = Path(__file__).parent / "templates"
LOCALE_DIR = Path(__file__).parent / "locale"


def error_page(request: Request, error: OAuth2Error) -> Response:
    """An error the browser's user sees, because it cannot go back to the client (RFC 6749
    §4.1.2.1: never redirect to an unverified redirect_uri)."""
    status = error.status_code if 400 <= (error.status_code or 0) < 600 else 400
    response: Response = request.app.state.templates.render(
        request,
        "oauth_error.html",
        {"error": error.error, "description": error.get_error_description() or ""},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )
    return response


def duplicated(pairs: Iterable[tuple[str, str]]) -> str | None:
    """The first parameter name given more than once, if any."""
    counts = Counter(name for name, _ in pairs)
    return next((name for name, n in counts.items() if n > 1), None)


def reject_duplicates(request: OneGateRequest) -> None:
    """RFC 6749 §3.1, §3.2: request parameters MUST NOT be included more than once."""
    if (name := duplicated(request.pairs())) is not None:
        raise InvalidRequestError(f"Multiple '{printable(name, 40)}' in request.")


@dataclass(frozen=True)
class PresentedToken:
    """A token a client sent to revocation or introspection, as we know it."""

    kind: str  # "access_token" | "refresh_token"
    client_id: str
    active: bool
    claims: dict[str, Any] | None = None  # access tokens
    refresh: RefreshRecord | None = None
    grant: GrantRecord | None = None

    def check_client(self, client: Any) -> bool:
        return bool(client.get_client_id() == self.client_id)

    # authlib's IntrospectionEndpoint asks these
    def is_expired(self) -> bool:
        return not self.active

    def is_revoked(self) -> bool:
        return not self.active


async def find_token(provider: Provider, token: str) -> PresentedToken | None:
    """Look ``token`` up as either kind (RFC 7009 §2.1: a hint is only a hint)."""
    if not token or len(token) > 16 * 1024:
        return None
    tokens = provider.tokens
    if token.count(".") == 2:
        try:
            claims = tokens.verify_access_token(token)
        except TokenRejected:
            return None  # expired, or not ours: nothing to revoke, inactive to introspect
        return PresentedToken("access_token", claims["client_id"], await tokens.is_active(claims), claims)
    found = await tokens.read_refresh(token)
    if found is None:
        return None
    record = found[1]
    grant = await tokens.get_grant(record.grant_id)
    active = (
        grant is not None
        and not record.used
        and record.expires_at > tokens.now()
        and not await tokens.session_ended(grant.sid)
        and (grant.offline or await provider.idp.sessions.get(grant.sid, touch=False) is not None)
    )
    return PresentedToken("refresh_token", record.client_id, active, refresh=record, grant=grant)
