"""Client registration metadata: the rules a client's settings must meet, checked in one place.

Specs: OAuth 2.0 RFC 6749 (client types §2.1, redirection endpoint §3.1.2), OAuth 2.0
Security BCP RFC 9700 (exact redirect URI matching §2.1, no implicit / password grants
§2.1.2, §2.4), OAuth for native apps RFC 8252 (loopback redirects §7.3), OIDC Dynamic
Client Registration 1.0 §2 (the metadata names), OIDC Back-Channel Logout 1.0 §2.2, JWK
RFC 7517 and JWA RFC 7518 §6 (public key members).

Every registration or change is validated as a whole by one function
(:func:`validate_metadata`), so ``ClientRegistry.add`` and ``update`` cannot drift apart, and
a problem raises :class:`~idp.clients.errors.InvalidClientMetadata` naming the field.
:func:`parse_jwks` turns a registered JWK Set into :class:`ClientKey` values, public keys only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idp.clients.errors import InvalidClientMetadata
from idp.clients.models import AuthMethod, ClientType
from keyvault import TokenInvalid
from keyvault.jws import MIN_RSA_KEY_SIZE, PublicKey, b64url_decode
from mfa.levels import ACR_LEVELS

__all__ = [
    "ASSERTION_ALGORITHMS",
    "DEFAULT_GRANT_TYPES",
    "DEFAULT_SCOPES",
    "GRANT_TYPES",
    "STANDARD_SCOPES",
    "ClientKey",
    "ClientMetadata",
    "check_url",
    "is_valid_client_id",
    "parse_jwks",
    "validate_metadata",
]

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
    minimum_acr: str | None = None  # the weakest sign-in class the client accepts (mfa.levels)
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


def _acr(value: object) -> str | None:
    if value is None or value == "":
        return None
    if value not in ACR_LEVELS:
        raise InvalidClientMetadata("minimum_acr", f"{value!r} is not one of {', '.join(ACR_LEVELS)}")
    return str(value)


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
        minimum_acr=_acr(m.minimum_acr),
        id_token_lifetime=_lifetime("id_token_lifetime", m.id_token_lifetime),
        access_token_lifetime=_lifetime("access_token_lifetime", m.access_token_lifetime),
        refresh_token_lifetime=_lifetime("refresh_token_lifetime", m.refresh_token_lifetime),
        backchannel_logout_uri=_optional_url("backchannel_logout_uri", m.backchannel_logout_uri),
        backchannel_logout_session_required=bool(m.backchannel_logout_session_required),
        jwks=dict(jwks) if jwks is not None else None,
        jwks_uri=_optional_url("jwks_uri", jwks_uri),
        description=(m.description.strip() or None) if m.description is not None else None,
    )
