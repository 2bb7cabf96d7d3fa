"""The client registry: validated registration, keyed-hash secrets, a short in-process cache.

Specs: OAuth 2.0 RFC 6749 (client types §2.1, redirection endpoint §3.1.2), OAuth 2.0
Security BCP RFC 9700 (exact redirect URI matching §2.1, no implicit / password grants
§2.1.2, §2.4), OAuth for native apps RFC 8252 (loopback redirects §7.3), OIDC Dynamic
Client Registration 1.0 §2 (the metadata names), OIDC Back-Channel Logout 1.0 §2.2, JWK
RFC 7517 and JWA RFC 7518 §6 (public key members).

Every registration or change is validated as a whole by one function
(:func:`validate_metadata`), so ``add`` and ``update`` cannot drift apart, and a problem
raises :class:`InvalidClientMetadata` naming the field.

Client secrets are 256-bit random strings shown once. Only an HMAC-SHA256 of them is stored,
keyed with the service secret ``client-secret-key`` (DESIGN.md: argon2 is for low-entropy
secrets; an argon2 verify per token request would cap client-credential grants near 10/s).

``get`` is called on every token request, so parsed clients (public keys loaded once) are
cached in this process for ``cache_ttl`` seconds (default 5). Changes made through this
registry invalidate its cache at once; a change made by another process (the CLI, another
server) is seen within ``cache_ttl`` seconds. Share one registry per process.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import Category, Event, EventEmitter, Outcome
from idp.clients.models import AuthMethod, Client, ClientType
from keyvault import SecretStore, TokenInvalid
from keyvault.jws import MIN_RSA_KEY_SIZE, PublicKey, b64url_decode

__all__ = [
    "ASSERTION_ALGORITHMS",
    "CLIENT_SECRET_KEY_NAME",
    "DEFAULT_GRANT_TYPES",
    "DEFAULT_SCOPES",
    "GRANT_TYPES",
    "STANDARD_SCOPES",
    "UNSET",
    "ClientError",
    "ClientExists",
    "ClientKey",
    "ClientMetadata",
    "ClientNotFound",
    "ClientRegistry",
    "InvalidClientMetadata",
    "RegisteredClient",
    "Unset",
    "check_url",
    "is_valid_client_id",
    "parse_jwks",
    "validate_metadata",
]

log = logging.getLogger("onegate.idp.clients")

CLIENT_SECRET_KEY_NAME: Final = "client-secret-key"  # noqa: S105 - the name of a key, not a key
STANDARD_SCOPES: Final = ("openid", "profile", "email", "phone", "groups", "department", "offline_access")
GRANT_TYPES: Final = ("authorization_code", "refresh_token", "client_credentials")
DEFAULT_GRANT_TYPES: Final = ("authorization_code", "refresh_token")
DEFAULT_SCOPES: Final = ("openid", "profile", "email")
# Signature algorithms a client may use for private_key_jwt assertions (RFC 7518 §3.3-§3.5).
# Never "none" and never HS*: a shared-key MAC verified with a public key is forgeable.
ASSERTION_ALGORITHMS: Final = ("ES256", "PS256", "RS256")

_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9._-]{3,128}")
_CUSTOM_SCOPE: Final = re.compile(r"[a-z0-9:._-]{1,64}")
# Grants that exist in the wild and are refused on purpose (RFC 9700 §2.1.2, §2.4).
_REFUSED_GRANTS: Final = {
    "implicit": "the implicit grant is not supported (RFC 9700 §2.1.2)",
    "password": "the resource owner password grant is not supported (RFC 9700 §2.4)",
}
_LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_MAX_URL_LENGTH: Final = 2000  # the column width
_MAX_URIS: Final = 20
_MAX_NAME_LENGTH: Final = 200
_MAX_KEYS: Final = 10
# JWK members that only private or symmetric keys have (RFC 7518 §6.2.2, §6.3.2, §6.4).
_PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_LIFETIME_BOUNDS: Final = {  # the same ranges as the idp.*_lifetime settings
    "id_token_lifetime": (60, 86400),
    "access_token_lifetime": (60, 86400),
    "refresh_token_lifetime": (300, 2592000),
}
_SECRET_METHODS: Final = frozenset({AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST})


# -- errors ---------------------------------------------------------------------------------------


class ClientError(Exception):
    """A client registry operation failed; the message is one line for an operator."""


class InvalidClientMetadata(ClientError):
    """Registration metadata that breaks a rule; ``field`` names it, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ClientNotFound(ClientError):
    def __init__(self, client_id: str) -> None:
        super().__init__(f"no client {client_id!r}")
        self.client_id = client_id


class ClientExists(ClientError):
    def __init__(self, client_id: str) -> None:
        super().__init__(f"a client with id {client_id!r} exists")
        self.client_id = client_id


# -- metadata validation --------------------------------------------------------------------------


class Unset:
    """The type of :data:`UNSET`: "leave this field as it is" in :meth:`ClientRegistry.update`."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()


def is_valid_client_id(value: object) -> bool:
    return isinstance(value, str) and _CLIENT_ID.fullmatch(value) is not None


def check_url(field: str, value: object) -> str:
    """An absolute https URL (http only on loopback / ``*.localhost``), returned unchanged.

    Redirect URIs are compared by exact string (RFC 9700 §2.1), so nothing is normalised
    here: anything a browser or a parser could read two ways is refused instead.
    """
    if not isinstance(value, str) or not value:
        raise InvalidClientMetadata(field, "must be a non-empty string")
    if len(value) > _MAX_URL_LENGTH:
        raise InvalidClientMetadata(field, f"longer than {_MAX_URL_LENGTH} characters")
    if not value.isascii() or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise InvalidClientMetadata(
            field, f"{value!r} must be ASCII without spaces or control characters (percent-encode them)"
        )
    if "*" in value:
        raise InvalidClientMetadata(field, f"{value!r}: wildcards are not allowed (exact match only)")
    if "#" in value:  # RFC 6749 §3.1.2, OIDC Back-Channel Logout §2.2
        raise InvalidClientMetadata(field, f"{value!r} must not contain a fragment")
    if "\\" in value:  # browsers read "\" as "/" in the authority; parsers do not
        raise InvalidClientMetadata(field, f"{value!r} must not contain a backslash")
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        raise InvalidClientMetadata(field, f"{value!r} must be an absolute URL")
    if "@" in parts.netloc:
        raise InvalidClientMetadata(field, f"{value!r} must not contain user information")
    if "%" in parts.netloc:
        raise InvalidClientMetadata(field, f"{value!r}: the host must not be percent-encoded")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise InvalidClientMetadata(field, f"{value!r} has an invalid port") from None
    host = parts.hostname
    if not host:
        raise InvalidClientMetadata(field, f"{value!r} has no host")
    if parts.scheme == "https":
        return value
    # RFC 8252 §7.3 (loopback) and *.localhost (resolves to loopback in browsers): development only.
    if parts.scheme == "http" and (host in _LOOPBACK_HOSTS or host.endswith(".localhost")):
        return value
    raise InvalidClientMetadata(
        field, f"{value!r} must use https (http only for localhost, 127.0.0.1 and *.localhost)"
    )


def _url_list(field: str, values: Iterable[str]) -> list[str]:
    if isinstance(values, str):
        raise InvalidClientMetadata(field, "must be a list of URLs")
    out = [check_url(f"{field}[{i}]", value) for i, value in enumerate(values)]
    if len(out) > _MAX_URIS:
        raise InvalidClientMetadata(field, f"at most {_MAX_URIS} entries")
    for value in out:
        if out.count(value) > 1:
            raise InvalidClientMetadata(field, f"{value!r} is listed twice")
    return out


def _optional_url(field: str, value: str | None) -> str | None:
    return None if value is None else check_url(field, value)


def _name(field: str, value: object, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidClientMetadata(field, "must be a non-empty string")
    if len(value) > _MAX_NAME_LENGTH:
        raise InvalidClientMetadata(field, f"longer than {_MAX_NAME_LENGTH} characters")
    if not value.isprintable():
        raise InvalidClientMetadata(field, "must not contain control characters")
    return value.strip()


def _key_error(index: int, reason: str) -> InvalidClientMetadata:
    return InvalidClientMetadata(f"jwks.keys[{index}]", reason)


def _b64_int(member: object, index: int, name: str) -> bytes:
    if not isinstance(member, str):
        raise _key_error(index, f"member {name!r} must be a base64url string")
    try:
        return b64url_decode(member, f"member {name}")
    except TokenInvalid as e:
        raise _key_error(index, str(e)) from None


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One public key a client signs its assertions with, loaded once."""

    kid: str | None
    key: PublicKey = field(repr=False)
    algorithms: frozenset[str]  # the only "alg" values this key may verify


def _parse_jwk(index: int, jwk: object) -> ClientKey:
    if not isinstance(jwk, Mapping):
        raise _key_error(index, "must be a JSON object")
    present = [name for name in _PRIVATE_MEMBERS if name in jwk]
    if present:
        raise _key_error(
            index, f"holds private key members {present}: register the public key only (rotate this key)"
        )
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
        raise _key_error(index, "kid must be a non-empty string of at most 256 characters")
    use = jwk.get("use")
    if use is not None and use != "sig":  # RFC 7517 §4.2
        raise _key_error(index, f"use must be 'sig', got {use!r}")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise _key_error(index, "key_ops must include 'verify'")
    alg = jwk.get("alg")
    kty = jwk.get("kty")
    key: PublicKey
    if kty == "EC":
        if jwk.get("crv") != "P-256":
            raise _key_error(index, "only EC keys on curve P-256 are supported (ES256)")
        allowed = frozenset({"ES256"})
        x, y = _b64_int(jwk.get("x"), index, "x"), _b64_int(jwk.get("y"), index, "y")
        if len(x) != 32 or len(y) != 32:  # RFC 7518 §6.2.1.2: full-length coordinates
            raise _key_error(index, "x and y must be 32 bytes each")
        try:
            key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            ).public_key()
        except ValueError:
            raise _key_error(index, "the point is not on curve P-256") from None
    elif kty == "RSA":
        allowed = frozenset({"RS256", "PS256"})
        n, e = _b64_int(jwk.get("n"), index, "n"), _b64_int(jwk.get("e"), index, "e")
        try:
            key = rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
        except ValueError:
            raise _key_error(index, "not a valid RSA public key") from None
        if key.key_size < MIN_RSA_KEY_SIZE:  # RFC 7518 §3.3
            raise _key_error(index, f"RSA keys must have at least {MIN_RSA_KEY_SIZE} bits")
    else:
        raise _key_error(index, f"kty must be 'EC' or 'RSA', got {kty!r}")
    if alg is not None:
        # The registered key fixes the algorithm (RFC 8725 §3.1); the token cannot choose another.
        if alg not in allowed:
            raise _key_error(index, f"alg {alg!r} does not fit a {kty} key; use one of {sorted(allowed)}")
        allowed = frozenset({alg})
    return ClientKey(kid=kid, key=key, algorithms=allowed)


def parse_jwks(value: object, field: str = "jwks") -> tuple[ClientKey, ...]:
    """The public signing keys of a JWK Set (RFC 7517 §5), checked strictly.

    EC P-256 (ES256) and RSA >= 2048 bits (RS256 / PS256) only; private or symmetric key
    members are refused; with more than one key each needs a distinct ``kid``.
    """
    if not isinstance(value, Mapping) or not isinstance(value.get("keys"), list):
        raise InvalidClientMetadata(field, 'must be a JWK Set: {"keys": [...]}')
    raw_keys = value["keys"]
    if not 1 <= len(raw_keys) <= _MAX_KEYS:
        raise InvalidClientMetadata(field, f"must hold between 1 and {_MAX_KEYS} keys")
    keys = tuple(_parse_jwk(i, jwk) for i, jwk in enumerate(raw_keys))
    if len(keys) > 1:
        kids = [k.kid for k in keys]
        if None in kids or len(set(kids)) != len(kids):
            raise InvalidClientMetadata(field, "with several keys each needs a distinct kid")
    return keys


@dataclass(frozen=True, slots=True)
class ClientMetadata:
    """Everything registrable about a client; :func:`validate_metadata` makes it consistent."""

    name: str
    client_type: ClientType = ClientType.CONFIDENTIAL
    name_en: str | None = None
    token_endpoint_auth_method: AuthMethod | None = None  # None: the type's default
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    grant_types: tuple[str, ...] = DEFAULT_GRANT_TYPES
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    first_party: bool = False
    require_pkce: bool = True
    id_token_lifetime: int | None = None
    access_token_lifetime: int | None = None
    refresh_token_lifetime: int | None = None
    backchannel_logout_uri: str | None = None
    backchannel_logout_session_required: bool = True
    jwks: Mapping[str, Any] | None = None
    jwks_uri: str | None = None
    description: str | None = None


def _enum_value(field: str, kind: type[ClientType] | type[AuthMethod], value: object) -> Any:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return kind(value)
    except ValueError:
        valid = ", ".join(m.value for m in kind)
        raise InvalidClientMetadata(field, f"{value!r} is not one of {valid}") from None


def _grant_types(values: Iterable[str], client_type: ClientType) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidClientMetadata("grant_types", "must be a list")
    grants = tuple(dict.fromkeys(values))
    if not grants:
        raise InvalidClientMetadata("grant_types", "at least one grant type is needed")
    for grant in grants:
        if grant in _REFUSED_GRANTS:
            raise InvalidClientMetadata("grant_types", _REFUSED_GRANTS[grant])
        if grant not in GRANT_TYPES:
            raise InvalidClientMetadata("grant_types", f"{grant!r} is not one of {', '.join(GRANT_TYPES)}")
    if "client_credentials" in grants and client_type is ClientType.PUBLIC:
        # RFC 6749 §4.4: "The client credentials grant type MUST only be used by confidential clients".
        raise InvalidClientMetadata("grant_types", "client_credentials is only for confidential clients")
    if "refresh_token" in grants and "authorization_code" not in grants:
        # RFC 6749 §4.4.3: no refresh token for client_credentials; so only codes lead to one.
        raise InvalidClientMetadata("grant_types", "refresh_token needs authorization_code")
    return grants


def _scopes(values: Iterable[str], grants: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidClientMetadata("scopes", "must be a list")
    scopes = tuple(dict.fromkeys(values))
    if not scopes:
        raise InvalidClientMetadata("scopes", "at least one scope is needed")
    for scope in scopes:
        if not isinstance(scope, str) or not _CUSTOM_SCOPE.fullmatch(scope):
            raise InvalidClientMetadata(
                "scopes",
                f"{scope!r} is neither a standard scope ({', '.join(STANDARD_SCOPES)}) nor a custom "
                "scope of lower-case letters, digits and ':._-'",
            )
    if "offline_access" in scopes and "refresh_token" not in grants:
        raise InvalidClientMetadata("scopes", "offline_access needs the refresh_token grant")
    return scopes


def _lifetime(field: str, value: object) -> int | None:
    if value is None:
        return None
    low, high = _LIFETIME_BOUNDS[field]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidClientMetadata(field, f"must be whole seconds between {low} and {high}, got {value!r}")
    return value


def validate_metadata(m: ClientMetadata) -> ClientMetadata:
    """``m`` made consistent (defaults filled in), or :class:`InvalidClientMetadata` naming the field."""
    client_type = _enum_value("client_type", ClientType, m.client_type)
    method = m.token_endpoint_auth_method
    if method is None:
        method = AuthMethod.NONE if client_type is ClientType.PUBLIC else AuthMethod.CLIENT_SECRET_BASIC
    method = _enum_value("token_endpoint_auth_method", AuthMethod, method)
    # RFC 6749 §2.1: a public client cannot keep a credential, so it authenticates with none.
    if client_type is ClientType.PUBLIC and method is not AuthMethod.NONE:
        raise InvalidClientMetadata("token_endpoint_auth_method", "public clients use 'none'")
    if client_type is ClientType.CONFIDENTIAL and method is AuthMethod.NONE:
        raise InvalidClientMetadata(
            "token_endpoint_auth_method",
            "confidential clients use client_secret_basic, client_secret_post or private_key_jwt",
        )
    if client_type is ClientType.PUBLIC and not m.require_pkce:
        raise InvalidClientMetadata("require_pkce", "public clients always use PKCE (RFC 9700 §2.1.1)")

    grants = _grant_types(m.grant_types, client_type)
    redirect_uris = _url_list("redirect_uris", m.redirect_uris)
    if "authorization_code" in grants and not redirect_uris:
        raise InvalidClientMetadata("redirect_uris", "the authorization_code grant needs a redirect URI")

    jwks, jwks_uri = m.jwks, m.jwks_uri
    if method is AuthMethod.PRIVATE_KEY_JWT:
        if (jwks is None) == (jwks_uri is None):
            raise InvalidClientMetadata("jwks", "private_key_jwt needs exactly one of jwks and jwks_uri")
        if jwks is not None:
            parse_jwks(jwks)
    elif jwks is not None or jwks_uri is not None:
        raise InvalidClientMetadata("jwks", "keys are registered only for private_key_jwt")

    return ClientMetadata(
        name=_name("name", m.name, required=True) or "",
        client_type=client_type,
        name_en=_name("name_en", m.name_en, required=False),
        token_endpoint_auth_method=method,
        redirect_uris=tuple(redirect_uris),
        post_logout_redirect_uris=tuple(_url_list("post_logout_redirect_uris", m.post_logout_redirect_uris)),
        grant_types=grants,
        scopes=_scopes(m.scopes, grants),
        first_party=bool(m.first_party),
        require_pkce=bool(m.require_pkce),
        id_token_lifetime=_lifetime("id_token_lifetime", m.id_token_lifetime),
        access_token_lifetime=_lifetime("access_token_lifetime", m.access_token_lifetime),
        refresh_token_lifetime=_lifetime("refresh_token_lifetime", m.refresh_token_lifetime),
        backchannel_logout_uri=_optional_url("backchannel_logout_uri", m.backchannel_logout_uri),
        backchannel_logout_session_required=bool(m.backchannel_logout_session_required),
        jwks=dict(jwks) if jwks is not None else None,
        jwks_uri=_optional_url("jwks_uri", jwks_uri),
        description=(m.description.strip() or None) if m.description is not None else None,
    )


# -- the registered client, as the protocol code sees it ------------------------------------------


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


def _metadata_of(row: Client) -> ClientMetadata:
    return ClientMetadata(
        name=row.name,
        client_type=ClientType(row.client_type),
        name_en=row.name_en,
        token_endpoint_auth_method=AuthMethod(row.token_endpoint_auth_method),
        redirect_uris=tuple(row.redirect_uris or ()),
        post_logout_redirect_uris=tuple(row.post_logout_redirect_uris or ()),
        grant_types=tuple(row.grant_types or ()),
        scopes=tuple(row.scopes or ()),
        first_party=row.first_party,
        require_pkce=row.require_pkce,
        id_token_lifetime=row.id_token_lifetime,
        access_token_lifetime=row.access_token_lifetime,
        refresh_token_lifetime=row.refresh_token_lifetime,
        backchannel_logout_uri=row.backchannel_logout_uri,
        backchannel_logout_session_required=row.backchannel_logout_session_required,
        jwks=row.jwks,
        jwks_uri=row.jwks_uri,
        description=row.description,
    )


_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(ClientMetadata) if f.name != "client_type")


def _write(row: Client, m: ClientMetadata) -> list[str]:
    """Copy validated metadata onto the row; the names of the columns that changed."""
    changed = []
    for name in _COLUMNS:
        value = getattr(m, name)
        if isinstance(value, tuple):
            value = list(value)
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed.append(name)
    return changed


# -- the registry ---------------------------------------------------------------------------------


class ClientRegistry:
    """OIDC clients in the SQL database. Every method runs in a transaction of its own."""

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        secrets_store: SecretStore,
        *,
        events: EventEmitter | None = None,
        cache_ttl: float = 5.0,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        token_urlsafe: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self._sessions = sessions
        self._secrets_store = secrets_store
        self._events = events
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._clock = clock
        self._token_urlsafe = token_urlsafe
        self._cache: OrderedDict[str, tuple[float, RegisteredClient | None]] = OrderedDict()
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return f"ClientRegistry(cache_ttl={self._cache_ttl}, cached={len(self._cache)})"

    # -- secrets (keyed SHA-256; see the module docstring) -------------------------------------------

    def _mac(self, client_id: str, secret: str) -> str:
        if self._key is None:
            self._key = self._secrets_store.get_or_create(CLIENT_SECRET_KEY_NAME)
        # Binding the client id (which cannot contain NUL) means a hash copied onto another
        # client's row does not make that client accept the first one's secret.
        message = b"onegate client secret v1\x00" + client_id.encode() + b"\x00"
        message += secret.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _new_secret(self, client_id: str) -> tuple[str, str]:
        secret = self._token_urlsafe(32)  # 256 bits
        return secret, self._mac(client_id, secret)

    def verify_secret(self, client: RegisteredClient | None, presented: str | None) -> bool:
        """True when ``presented`` is ``client``'s current secret; constant time.

        An unknown client, a client without a secret and an empty secret cost the same HMAC
        and comparison as a real check, so timing does not tell which of them it was.
        """
        real = client is not None and client.secret_hash is not None and bool(presented)
        client_id = client.client_id if client is not None else ""
        expected = client.secret_hash if client is not None and client.secret_hash else "0" * 64
        actual = self._mac(client_id, presented or "")
        return hmac.compare_digest(actual.encode(), expected.encode()) and real

    # -- reading -----------------------------------------------------------------------------------

    def invalidate(self, client_id: str | None = None) -> None:
        """Forget one cached client (or all); the next ``get`` reads the database."""
        if client_id is None:
            self._cache.clear()
        else:
            self._cache.pop(client_id, None)

    async def get(self, client_id: str, *, include_disabled: bool = False) -> RegisteredClient | None:
        """The client, or None; disabled clients only with ``include_disabled`` (fail closed).

        Served from a per-process cache for up to ``cache_ttl`` seconds (unknown ids too, so
        a flood of made-up ids does not reach the database each time).
        """
        if not is_valid_client_id(client_id):
            return None
        now = self._clock()
        cached = self._cache.get(client_id)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(client_id)
            client = cached[1]
        else:
            async with self._sessions() as s:
                row = await self._row(s, client_id)
                client = RegisteredClient.from_row(row) if row is not None else None
            self._cache[client_id] = (now + self._cache_ttl, client)
            self._cache.move_to_end(client_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if client is not None and client.disabled and not include_disabled:
            return None
        return client

    async def require(self, client_id: str) -> RegisteredClient:
        """The client, disabled or not, read afresh; :class:`ClientNotFound` if there is none."""
        self.invalidate(client_id)
        client = await self.get(client_id, include_disabled=True)
        if client is None:
            raise ClientNotFound(client_id)
        return client

    async def list(self) -> builtins.list[RegisteredClient]:
        """Every client, disabled ones too, by client_id."""
        async with self._sessions() as s:
            rows = (await s.execute(select(Client).order_by(Client.client_id))).scalars().all()
            return [RegisteredClient.from_row(row) for row in rows]

    @staticmethod
    async def _row(session: Any, client_id: str) -> Client | None:
        row: Client | None = (
            await session.execute(select(Client).where(Client.client_id == client_id))
        ).scalar_one_or_none()
        return row

    # -- changing ----------------------------------------------------------------------------------

    async def add(
        self,
        *,
        name: str,
        client_type: ClientType | str = ClientType.CONFIDENTIAL,
        client_id: str | None = None,
        name_en: str | None = None,
        token_endpoint_auth_method: AuthMethod | str | None = None,
        redirect_uris: Iterable[str] = (),
        post_logout_redirect_uris: Iterable[str] = (),
        grant_types: Iterable[str] = DEFAULT_GRANT_TYPES,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        first_party: bool = False,
        require_pkce: bool = True,
        id_token_lifetime: int | None = None,
        access_token_lifetime: int | None = None,
        refresh_token_lifetime: int | None = None,
        backchannel_logout_uri: str | None = None,
        backchannel_logout_session_required: bool = True,
        jwks: Mapping[str, Any] | None = None,
        jwks_uri: str | None = None,
        description: str | None = None,
        actor: str | None = None,
    ) -> tuple[RegisteredClient, str | None]:
        """Register a client; returns it and its secret (None unless it uses one). Show the secret once."""
        if client_id is None:
            client_id = self._token_urlsafe(16)
        if not is_valid_client_id(client_id):
            raise InvalidClientMetadata("client_id", "3 to 128 characters of A-Z a-z 0-9 . _ -")
        metadata = validate_metadata(
            ClientMetadata(
                name=name,
                client_type=_enum_value("client_type", ClientType, client_type),
                name_en=name_en,
                token_endpoint_auth_method=(
                    None
                    if token_endpoint_auth_method is None
                    else _enum_value("token_endpoint_auth_method", AuthMethod, token_endpoint_auth_method)
                ),
                redirect_uris=tuple(_strings("redirect_uris", redirect_uris)),
                post_logout_redirect_uris=tuple(
                    _strings("post_logout_redirect_uris", post_logout_redirect_uris)
                ),
                grant_types=tuple(_strings("grant_types", grant_types)),
                scopes=tuple(_strings("scopes", scopes)),
                first_party=first_party,
                require_pkce=require_pkce,
                id_token_lifetime=id_token_lifetime,
                access_token_lifetime=access_token_lifetime,
                refresh_token_lifetime=refresh_token_lifetime,
                backchannel_logout_uri=backchannel_logout_uri,
                backchannel_logout_session_required=backchannel_logout_session_required,
                jwks=jwks,
                jwks_uri=jwks_uri,
                description=description,
            )
        )
        secret: str | None = None
        row = Client(client_id=client_id, client_type=metadata.client_type)
        _write(row, metadata)
        if metadata.token_endpoint_auth_method in _SECRET_METHODS:
            secret, row.secret_hash = self._new_secret(client_id)
            row.secret_rotated_at = datetime.now(UTC)
        try:
            async with self._sessions() as s, s.begin():
                if await self._row(s, client_id) is not None:
                    raise ClientExists(client_id)
                s.add(row)
        except IntegrityError as e:  # a concurrent add of the same id
            raise ClientExists(client_id) from e
        self.invalidate(client_id)
        client = RegisteredClient.from_row(row)
        self._emit("client-created", client_id, actor, ["creation"], client_type=client.client_type.value)
        return client, secret

    async def update(
        self,
        client_id: str,
        *,
        name: str | Unset = UNSET,
        name_en: str | Unset | None = UNSET,
        token_endpoint_auth_method: AuthMethod | str | Unset = UNSET,
        redirect_uris: Iterable[str] | Unset = UNSET,
        post_logout_redirect_uris: Iterable[str] | Unset = UNSET,
        grant_types: Iterable[str] | Unset = UNSET,
        scopes: Iterable[str] | Unset = UNSET,
        first_party: bool | Unset = UNSET,
        require_pkce: bool | Unset = UNSET,
        id_token_lifetime: int | Unset | None = UNSET,
        access_token_lifetime: int | Unset | None = UNSET,
        refresh_token_lifetime: int | Unset | None = UNSET,
        backchannel_logout_uri: str | Unset | None = UNSET,
        backchannel_logout_session_required: bool | Unset = UNSET,
        jwks: Mapping[str, Any] | Unset | None = UNSET,
        jwks_uri: str | Unset | None = UNSET,
        description: str | Unset | None = UNSET,
        actor: str | None = None,
    ) -> tuple[RegisteredClient, str | None]:
        """Change the given fields (``UNSET`` ones stay); the result is validated as a whole.

        ``client_id`` and ``client_type`` cannot change. Switching a confidential client to a
        secret method when it has no secret creates one (returned, shown once); switching away
        from secrets deletes the stored hash, and away from private_key_jwt its keys.
        """
        given: dict[str, Any] = {
            key: value
            for key, value in {
                "name": name,
                "name_en": name_en,
                "token_endpoint_auth_method": token_endpoint_auth_method,
                "redirect_uris": redirect_uris,
                "post_logout_redirect_uris": post_logout_redirect_uris,
                "grant_types": grant_types,
                "scopes": scopes,
                "first_party": first_party,
                "require_pkce": require_pkce,
                "id_token_lifetime": id_token_lifetime,
                "access_token_lifetime": access_token_lifetime,
                "refresh_token_lifetime": refresh_token_lifetime,
                "backchannel_logout_uri": backchannel_logout_uri,
                "backchannel_logout_session_required": backchannel_logout_session_required,
                "jwks": jwks,
                "jwks_uri": jwks_uri,
                "description": description,
            }.items()
            if value is not UNSET
        }
        for key in ("redirect_uris", "post_logout_redirect_uris", "grant_types", "scopes"):
            if key in given:
                given[key] = tuple(_strings(key, given[key]))
        if "token_endpoint_auth_method" in given:
            given["token_endpoint_auth_method"] = _enum_value(
                "token_endpoint_auth_method", AuthMethod, given["token_endpoint_auth_method"]
            )
            # Leaving private_key_jwt drops its keys unless the caller says otherwise.
            if given["token_endpoint_auth_method"] is not AuthMethod.PRIVATE_KEY_JWT:
                given.setdefault("jwks", None)
                given.setdefault("jwks_uri", None)
        secret: str | None = None
        async with self._sessions() as s, s.begin():
            row = await self._row(s, client_id)
            if row is None:
                raise ClientNotFound(client_id)
            metadata = validate_metadata(dataclasses.replace(_metadata_of(row), **given))
            changed = _write(row, metadata)
            if metadata.token_endpoint_auth_method in _SECRET_METHODS:
                if row.secret_hash is None:
                    secret, row.secret_hash = self._new_secret(client_id)
                    row.secret_rotated_at = datetime.now(UTC)
                    changed.append("secret")
            elif row.secret_hash is not None:
                row.secret_hash = None
                row.secret_rotated_at = None
                changed.append("secret")
            if changed:
                row.updated_at = datetime.now(UTC)
        self.invalidate(client_id)
        if changed:
            self._emit("client-updated", client_id, actor, ["change"], changed=changed)
        return RegisteredClient.from_row(row), secret

    async def rotate_secret(self, client_id: str, *, actor: str | None = None) -> str:
        """A new secret (show it once); the old one stops working at once, without a grace period.

        "At once" holds in this process; other processes notice within ``cache_ttl`` seconds.
        """
        async with self._sessions() as s, s.begin():
            row = await self._row(s, client_id)
            if row is None:
                raise ClientNotFound(client_id)
            if AuthMethod(row.token_endpoint_auth_method) not in _SECRET_METHODS:
                raise ClientError(
                    f"client {client_id!r} authenticates with {row.token_endpoint_auth_method.value}, "
                    "not a secret"
                )
            secret, row.secret_hash = self._new_secret(client_id)
            row.secret_rotated_at = row.updated_at = datetime.now(UTC)
        self.invalidate(client_id)
        self._emit("client-secret-rotated", client_id, actor, ["change"])
        return secret

    async def remove(self, client_id: str, *, actor: str | None = None) -> None:
        """Delete the client and (by cascade) the consents given to it."""
        async with self._sessions() as s, s.begin():
            result = await s.execute(delete(Client).where(Client.client_id == client_id))
            if not getattr(result, "rowcount", 0):
                raise ClientNotFound(client_id)
        self.invalidate(client_id)
        self._emit("client-removed", client_id, actor, ["deletion"])

    async def disable(self, client_id: str, *, actor: str | None = None) -> RegisteredClient:
        """Refuse the client everywhere (authorize, token, ...) until enabled again."""
        return await self._set_disabled(client_id, True, actor)

    async def enable(self, client_id: str, *, actor: str | None = None) -> RegisteredClient:
        return await self._set_disabled(client_id, False, actor)

    async def _set_disabled(self, client_id: str, disabled: bool, actor: str | None) -> RegisteredClient:
        async with self._sessions() as s, s.begin():
            row = await self._row(s, client_id)
            if row is None:
                raise ClientNotFound(client_id)
            changed = row.disabled != disabled
            if changed:
                row.disabled = disabled
                row.updated_at = datetime.now(UTC)
        self.invalidate(client_id)
        if changed:
            self._emit("client-updated", client_id, actor, ["change"], changed=["disabled"])
        return RegisteredClient.from_row(row)

    def _emit(
        self,
        action: str,
        client_id: str,
        actor: str | None,
        types: builtins.list[str],
        *,
        changed: builtins.list[str] | None = None,
        client_type: str | None = None,
    ) -> None:
        if self._events is None:
            return
        fields: dict[str, Any] = {"event.type": types, "onegate.client_id": client_id}
        if actor:
            fields["labels.actor"] = actor
        if changed:
            fields["onegate.changed"] = sorted(changed)
        if client_type:
            fields["onegate.client_type"] = client_type
        self._events.emit(
            Event(
                action=action,
                category=Category.CONFIGURATION,
                outcome=Outcome.SUCCESS,
                dataset="onegate.idp",
                fields=fields,
            )
        )


def _strings(field: str, values: object) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidClientMetadata(field, "must be a list of strings")
    out = list(values)
    if not all(isinstance(v, str) for v in out):
        raise InvalidClientMetadata(field, "must be a list of strings")
    return out
