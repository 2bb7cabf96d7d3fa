"""Protocol errors authlib has no class for, and the IdP's own token errors.

authlib has a class per error code of RFC 6749 §4.1.2.1 / §5.2, RFC 6750 §3.1 and OIDC Core
§3.1.2.6 except the ones below; every error the IdP sends is one of those classes or these,
so the code on the wire is always a registered one.

authlib refuses (``ValueError``) an ``error_description`` with characters outside RFC 6749's
``%x20-21 / %x23-5B / %x5D-7E``; :func:`printable` makes a request value safe to quote in one,
so an odd parameter value can never turn a 400 into a 500.
"""

from __future__ import annotations

from authlib.oauth2 import OAuth2Error

__all__ = [
    "IdTokenHintInvalid",
    "ServerError",
    "TemporarilyUnavailableError",
    "TokenRejected",
    "UnmetAuthenticationRequirementsError",
    "printable",
]


class ServerError(OAuth2Error):  # type: ignore[misc]
    """RFC 6749 §4.1.2.1 ``server_error``: an unexpected condition prevented the request."""

    error = "server_error"
    status_code = 500


class TemporarilyUnavailableError(OAuth2Error):  # type: ignore[misc]
    """RFC 6749 §4.1.2.1 ``temporarily_unavailable``: overloaded or in maintenance."""

    error = "temporarily_unavailable"
    status_code = 503


class UnmetAuthenticationRequirementsError(OAuth2Error):  # type: ignore[misc]
    """OpenID Connect Unmet Authentication Requirements 1.0 §2: the OP cannot authenticate
    the user as the RP asked (an essential ``acr`` it cannot reach, OIDC Core §5.5.1.1)."""

    error = "unmet_authentication_requirements"
    description = "The requested authentication requirements cannot be met."


class TokenRejected(Exception):
    """A token presented to the IdP (ID token hint, access token) is not acceptable.

    ``reason`` is a short machine-readable word for logs and events; it never quotes the token.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IdTokenHintInvalid(TokenRejected):
    """An ``id_token_hint`` (OIDC Core §3.1.2.1, RP-Initiated Logout §2) we did not issue."""


def printable(value: object, limit: int = 80) -> str:
    """``value`` reduced to the characters RFC 6749 allows in ``error_description``."""
    text = str(value)[:limit]
    return "".join(c if (0x20 <= ord(c) <= 0x7E and c not in '"\\') else "?" for c in text)
