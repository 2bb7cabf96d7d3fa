"""The registered client, as the protocol code sees it: an immutable snapshot of one row.

:class:`RegisteredClient` is what :class:`~idp.clients.services.ClientRegistry` hands out
(and caches); its public keys are parsed once, when the snapshot is made.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from idp.clients.errors import InvalidClientMetadata
from idp.clients.metadata import ClientKey, parse_jwks
from idp.clients.models import AuthMethod, Client, ClientType

__all__ = ["RegisteredClient"]

log = logging.getLogger("onegate.idp.clients")


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    """An immutable snapshot of one client row, with its public keys parsed.

    Field names are the model's (:class:`idp.clients.models.Client`). ``secret_hash`` is kept
    for :meth:`ClientRegistry.verify_secret` and left out of ``repr`` and :meth:`public_dict`.
    """

    id: int
    client_id: str
    name: str
    name_en: str | None
    client_type: ClientType
    token_endpoint_auth_method: AuthMethod
    secret_hash: str | None = field(repr=False)
    secret_rotated_at: datetime | None
    jwks: Mapping[str, Any] | None = field(repr=False, compare=False)  # as registered; see keys
    jwks_uri: str | None
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    first_party: bool
    require_pkce: bool
    minimum_acr: str | None
    id_token_lifetime: int | None
    access_token_lifetime: int | None
    refresh_token_lifetime: int | None
    backchannel_logout_uri: str | None
    backchannel_logout_session_required: bool
    description: str | None
    disabled: bool
    created_at: datetime
    updated_at: datetime
    keys: tuple[ClientKey, ...] = field(repr=False, compare=False)

    @property
    def is_public(self) -> bool:
        return self.client_type is ClientType.PUBLIC

    @property
    def has_secret(self) -> bool:
        return self.secret_hash is not None

    def display_name(self, locale: str) -> str:
        """The name for a page in ``locale`` (``en``: the English name when there is one)."""
        if locale.lower().startswith("en") and self.name_en:
            return self.name_en
        return self.name

    def public_dict(self) -> dict[str, Any]:
        """Everything an operator may see: never the secret or its hash."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "name_en": self.name_en,
            "client_type": self.client_type.value,
            "token_endpoint_auth_method": self.token_endpoint_auth_method.value,
            "has_secret": self.has_secret,
            "secret_rotated_at": self.secret_rotated_at.isoformat() if self.secret_rotated_at else None,
            "redirect_uris": list(self.redirect_uris),
            "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
            "grant_types": list(self.grant_types),
            "scopes": list(self.scopes),
            "first_party": self.first_party,
            "require_pkce": self.require_pkce,
            "minimum_acr": self.minimum_acr,
            "id_token_lifetime": self.id_token_lifetime,
            "access_token_lifetime": self.access_token_lifetime,
            "refresh_token_lifetime": self.refresh_token_lifetime,
            "backchannel_logout_uri": self.backchannel_logout_uri,
            "backchannel_logout_session_required": self.backchannel_logout_session_required,
            "jwks": dict(self.jwks) if self.jwks is not None else None,
            "jwks_uri": self.jwks_uri,
            "description": self.description,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }

    @classmethod
    def from_row(cls, row: Client) -> RegisteredClient:
        keys: tuple[ClientKey, ...] = ()
        if row.jwks is not None:
            try:
                keys = parse_jwks(row.jwks)
            except InvalidClientMetadata as e:
                # Stored keys were checked at registration; if the row was edited by hand, fail
                # closed (no key verifies) rather than refuse to load the client at all.
                log.warning("client %s has unusable jwks: %s", row.client_id, e)
        return cls(
            id=row.id,
            client_id=row.client_id,
            name=row.name,
            name_en=row.name_en,
            client_type=ClientType(row.client_type),
            token_endpoint_auth_method=AuthMethod(row.token_endpoint_auth_method),
            secret_hash=row.secret_hash,
            secret_rotated_at=_aware(row.secret_rotated_at),
            jwks=row.jwks,
            jwks_uri=row.jwks_uri,
            redirect_uris=tuple(row.redirect_uris or ()),
            post_logout_redirect_uris=tuple(row.post_logout_redirect_uris or ()),
            grant_types=tuple(row.grant_types or ()),
            scopes=tuple(row.scopes or ()),
            first_party=row.first_party,
            require_pkce=row.require_pkce,
            minimum_acr=row.minimum_acr,
            id_token_lifetime=row.id_token_lifetime,
            access_token_lifetime=row.access_token_lifetime,
            refresh_token_lifetime=row.refresh_token_lifetime,
            backchannel_logout_uri=row.backchannel_logout_uri,
            backchannel_logout_session_required=row.backchannel_logout_session_required,
            description=row.description,
            disabled=row.disabled,
            created_at=_aware(row.created_at) or row.created_at,
            updated_at=_aware(row.updated_at) or row.updated_at,
            keys=keys,
        )


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every one we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
