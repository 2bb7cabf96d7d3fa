"""OAuth 2 / OIDC clients (relying parties) and the consents users gave them.

:class:`ClientRegistry` registers, changes and looks up clients (secrets stored as a keyed
SHA-256); :func:`authenticate_client` authenticates a client at the token, revocation,
introspection and PAR endpoints and returns a value, never raising for a bad request.
Registration metadata is checked in metadata.py (:func:`validate_metadata`), clients are
handed out as :class:`RegisteredClient` (records.py), and errors are :class:`ClientError`
(errors.py).

The names below are imported from their modules when first used (core.lazy): a process
that needs one of these modules does not load the others.
"""

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

if TYPE_CHECKING:
    from idp.clients.auth import (
        JWT_BEARER,
        AuthenticatedClient,
        AuthFailureReason,
        ClientAuthFailure,
        JwksUnavailable,
        RemoteJwks,
        authenticate_client,
    )
    from idp.clients.errors import ClientError, ClientExists, ClientNotFound, InvalidClientMetadata
    from idp.clients.metadata import (
        ASSERTION_ALGORITHMS,
        STANDARD_SCOPES,
        ClientKey,
        ClientMetadata,
        check_url,
        parse_jwks,
        validate_metadata,
    )
    from idp.clients.models import AuthMethod, Client, ClientType, Consent
    from idp.clients.records import RegisteredClient
    from idp.clients.services import UNSET, ClientRegistry

__getattr__ = lazy_exports(
    __name__,
    {
        "idp.clients.auth": (
            "JWT_BEARER",
            "AuthenticatedClient",
            "AuthFailureReason",
            "ClientAuthFailure",
            "JwksUnavailable",
            "RemoteJwks",
            "authenticate_client",
        ),
        "idp.clients.errors": ("ClientError", "ClientExists", "ClientNotFound", "InvalidClientMetadata"),
        "idp.clients.metadata": (
            "ASSERTION_ALGORITHMS",
            "STANDARD_SCOPES",
            "ClientKey",
            "ClientMetadata",
            "check_url",
            "parse_jwks",
            "validate_metadata",
        ),
        "idp.clients.models": ("AuthMethod", "Client", "ClientType", "Consent"),
        "idp.clients.records": ("RegisteredClient",),
        "idp.clients.services": ("UNSET", "ClientRegistry"),
    },
)

__all__ = [
    "ASSERTION_ALGORITHMS",
    "JWT_BEARER",
    "STANDARD_SCOPES",
    "UNSET",
    "AuthFailureReason",
    "AuthMethod",
    "AuthenticatedClient",
    "Client",
    "ClientAuthFailure",
    "ClientError",
    "ClientExists",
    "ClientKey",
    "ClientMetadata",
    "ClientNotFound",
    "ClientRegistry",
    "ClientType",
    "Consent",
    "InvalidClientMetadata",
    "JwksUnavailable",
    "RegisteredClient",
    "RemoteJwks",
    "authenticate_client",
    "check_url",
    "parse_jwks",
    "validate_metadata",
]
