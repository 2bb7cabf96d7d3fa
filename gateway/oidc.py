"""The gateway as an OpenID Connect relying party: signing a user in through an OpenID provider
(our IdP, or any other) and receiving the provider's back-channel logout.

Specs, and where each step lives:

* OpenID Connect Discovery 1.0 §4 (https://openid.net/specs/openid-connect-discovery-1_0.html):
  :meth:`OidcClient.metadata` reads ``<issuer>/.well-known/openid-configuration`` and refuses a
  document whose ``issuer`` is not exactly the configured one (§4.3);
* OpenID Connect Core 1.0 §3.1 (https://openid.net/specs/openid-connect-core-1_0.html), the
  authorization code flow: :meth:`OidcClient.begin` builds the authentication request (§3.1.2.1)
  with ``state``, ``nonce`` (§15.5.2) and PKCE ``S256`` (RFC 7636 §4.1-§4.3);
  :meth:`OidcClient.finish` checks the authentication response (§3.1.2.5-§3.1.2.7, RFC 9207 §2.4),
  redeems the code (§3.1.3.1, RFC 6749 §4.1.3, client authentication RFC 6749 §2.3.1) and
  validates the ID token (§3.1.3.7, ``at_hash`` §3.1.3.8);
* OpenID Connect RP-Initiated Logout 1.0 §2: :meth:`OidcClient.end_session_url`;
* OpenID Connect Back-Channel Logout 1.0 §2.4-§2.6: :meth:`OidcClient.validate_logout_token`.

Signatures are checked with ``cryptography`` against the provider's JWK Set (RFC 7517), never
with a key a token brings along. The algorithm comes from the key (RFC 8725 §3.1): a JWK's ``alg`` when it
has one, else what its key type and curve allow (EC P-256 ES256, P-384 ES384, P-521 ES512; RSA of
2048 bits or more RS256/384/512 and PS256/384/512; OKP Ed25519 EdDSA and Ed25519). ``none``, the
HMAC algorithms, ``crit`` and the key-carrying header parameters (``jwk``, ``jku``, ``x5u``,
``x5c``) are refused.

Every network answer is read with a size bound and a timeout; every failure reaches the caller as
a :class:`LoginError` with a code from a closed vocabulary (or the provider's own OAuth ``error``
code for an error response) and a description that carries no token and no secret.

Python cannot resolve ``*.localhost`` (glibc does not map it to loopback, browsers do): by
default every ``*.localhost`` host is connected to at 127.0.0.1, keeping the Host header and the
TLS server name, so the demo's ``http://idp.localhost:<port>`` works here as in a browser.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from core.logging import get_logger
from keyvault.errors import TokenInvalid
from keyvault.jws import b64url_decode, b64url_encode, decode_json_segment, split_compact
from mfa.levels import level, lowest_known

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
    from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    PublicKey = EllipticCurvePublicKey | RSAPublicKey | Ed25519PublicKey | Ed448PublicKey

__all__ = [
    "ACR_NOT_MET",
    "BACKCHANNEL_LOGOUT_EVENT",
    "EXPIRED_LOGIN",
    "INVALID_AUTHORIZATION_RESPONSE",
    "INVALID_ID_TOKEN",
    "INVALID_LOGOUT_TOKEN",
    "INVALID_PROVIDER_METADATA",
    "INVALID_REQUEST",
    "INVALID_STATE",
    "INVALID_TOKEN_RESPONSE",
    "ISSUER_MISMATCH",
    "LOGIN_TTL",
    "MAX_AGE_EXCEEDED",
    "PROVIDER_UNAVAILABLE",
    "TOKEN_REQUEST_FAILED",
    "LoginError",
    "LoginState",
    "LogoutNotice",
    "OidcClient",
    "ProviderMetadata",
    "SignIn",
]

_log = get_logger("onegate.gateway.oidc")

# -- failure codes (LoginError.code) ----------------------------------------------------------------

INVALID_REQUEST: Final = "invalid_request"  # begin() was given something it cannot send
INVALID_STATE: Final = "invalid_state"  # the response's state is not this login's (§3.1.2.7)
EXPIRED_LOGIN: Final = "expired_login"  # the login was started more than LOGIN_TTL ago
ISSUER_MISMATCH: Final = "issuer_mismatch"  # Discovery §4.3 / RFC 9207 §2.4: another issuer
INVALID_AUTHORIZATION_RESPONSE: Final = "invalid_authorization_response"
PROVIDER_UNAVAILABLE: Final = "provider_unavailable"  # network, timeout, 5xx
INVALID_PROVIDER_METADATA: Final = "invalid_provider_metadata"
# The token endpoint refused (e.g. a code already used).
TOKEN_REQUEST_FAILED: Final = "token_request_failed"  # noqa: S105 - a failure code, not a secret
INVALID_TOKEN_RESPONSE: Final = "invalid_token_response"  # noqa: S105 - a failure code, not a secret
INVALID_ID_TOKEN: Final = "invalid_id_token"  # noqa: S105 - a failure code, not a secret
ACR_NOT_MET: Final = "acr_not_met"  # the sign-in is weaker than acr_values asked
MAX_AGE_EXCEEDED: Final = "max_age_exceeded"  # the sign-in is older than max_age allowed
INVALID_LOGOUT_TOKEN: Final = "invalid_logout_token"  # noqa: S105 - a failure code, not a secret

# -- limits -----------------------------------------------------------------------------------------

LOGIN_TTL: Final = 600  # seconds a login may take from begin() to finish()
BACKCHANNEL_LOGOUT_EVENT: Final = "http://schemas.openid.net/event/backchannel-logout"
METADATA_TTL: Final = 3600.0  # discovery and JWKS are refreshed after an hour
JWKS_REFETCH_INTERVAL: Final = 60.0  # an unknown kid refetches the JWKS at most this often
MAX_TOKEN_AGE: Final = 600.0  # an ID or logout token issued longer ago than this is refused
_MAX_METADATA_BYTES: Final = 64 * 1024
_MAX_JWKS_BYTES: Final = 256 * 1024
_MAX_TOKEN_RESPONSE_BYTES: Final = 64 * 1024
_MAX_JWKS_KEYS: Final = 100
_MAX_URL: Final = 2048
_MAX_CODE: Final = 2048
_MAX_DESCRIPTION: Final = 200
_MAX_NAME: Final = 256
_MAX_GROUPS: Final = 1000
_MIN_RSA_BITS: Final = 2048  # RFC 7518 §3.3
_RANDOM_BYTES: Final = 32  # state, nonce and code_verifier: 256 bits each
_PROMPTS: Final = frozenset({"none", "login", "consent", "select_account"})  # OIDC Core §3.1.2.1
_ERROR_CODE_RE: Final = re.compile(r"[a-z0-9_]{1,64}")
_UI_LOCALES_RE: Final = re.compile(r"[A-Za-z0-9 -]{1,64}")

# Header parameters that would let a token choose its own key, or change how it is processed
# (RFC 8725 §3.1, RFC 7515 §4.1.2-§4.1.6 and §4.1.11, RFC 7797): never honoured.
_REFUSED_HEADERS: Final = frozenset({"jwk", "jku", "x5u", "x5c", "crit", "b64", "enc", "zip"})
_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_ALGORITHMS: Final = {"Ed25519": frozenset({"EdDSA", "Ed25519"}), "Ed448": frozenset({"EdDSA", "Ed448"})}
_SUPPORTED_ALGORITHMS: Final = frozenset(
    {*_RSA_ALGORITHMS, *_EC_ALGORITHMS.values(), "EdDSA", "Ed25519", "Ed448"}
)
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_ID_TOKEN_TYPES: Final = frozenset({"jwt", "application/jwt"})  # RFC 7515 §4.1.9: case-insensitive
_LOGOUT_TOKEN_TYPES: Final = frozenset({"logout+jwt", "application/logout+jwt"})  # Back-Channel §2.4


class LoginError(Exception):
    """A sign-in or logout step failed. ``code`` is one of this module's codes (or the provider's
    OAuth ``error`` code, RFC 6749 §4.1.2.1); ``description`` is plain English, safe to log and to
    show: it never contains a token or a secret. The caller words the page (zh-CN / en)."""

    def __init__(self, code: str, description: str = "") -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description


# -- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderMetadata:
    """What the relying party uses of the provider's metadata (OIDC Discovery 1.0 §3)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    authorization_response_iss_parameter_supported: bool = False  # RFC 9207 §3
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ("client_secret_basic",)  # §3 default
    code_challenge_methods_supported: tuple[str, ...] = ()
    acr_values_supported: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    backchannel_logout_supported: bool = False
    backchannel_logout_session_supported: bool = False


@dataclass(frozen=True)
class LoginState:
    """One login between :meth:`OidcClient.begin` and :meth:`OidcClient.finish`: keep it
    server-side, keyed by ``state``, and use it once (a second ``finish`` must not find it)."""

    state: str
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)
    redirect_uri: str
    return_to: str
    created_at: float
    acr_values: str | None = None
    max_age: int | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> LoginState:
        """The state :meth:`to_json` wrote; ``LoginError(invalid_state)`` for anything else."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise LoginError(INVALID_STATE, "the stored login state is not JSON") from e
        if not isinstance(data, dict):
            raise LoginError(INVALID_STATE, "the stored login state is not an object")
        strings = ("state", "nonce", "code_verifier", "redirect_uri", "return_to")
        if not all(isinstance(data.get(name), str) for name in strings):
            raise LoginError(INVALID_STATE, "the stored login state is incomplete")
        created_at, acr_values, max_age = data.get("created_at"), data.get("acr_values"), data.get("max_age")
        if not isinstance(created_at, int | float) or not _is_number(created_at):
            raise LoginError(INVALID_STATE, "the stored login state has no creation time")
        if acr_values is not None and not isinstance(acr_values, str):
            raise LoginError(INVALID_STATE, "the stored login state has a malformed acr_values")
        if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int)):
            raise LoginError(INVALID_STATE, "the stored login state has a malformed max_age")
        return cls(
            state=data["state"],
            nonce=data["nonce"],
            code_verifier=data["code_verifier"],
            redirect_uri=data["redirect_uri"],
            return_to=data["return_to"],
            created_at=float(created_at),
            acr_values=acr_values,
            max_age=max_age,
        )


@dataclass(frozen=True)
class SignIn:
    """A completed sign-in: who, how (``acr``, ``amr``, ``auth_time``) and in which provider
    session (``sid``, for back-channel logout). ``claims`` are the validated ID token claims;
    ``id_token`` is kept only as the ``id_token_hint`` of a later logout."""

    sub: str
    sid: str | None
    claims: Mapping[str, Any] = field(repr=False)
    id_token: str = field(repr=False)
    acr: str | None
    amr: tuple[str, ...]
    auth_time: int | None
    username: str
    name: str
    groups: tuple[str, ...]
    department: str | None
    departments: tuple[str, ...]


@dataclass(frozen=True)
class LogoutNotice:
    """A validated logout token (Back-Channel Logout 1.0 §2.4): end the sessions of ``sid``
    (or, without one, every session of ``sub``)."""

    iss: str
    sub: str | None
    sid: str | None
    jti: str
    iat: int


# -- networking -----------------------------------------------------------------------------------


class _AddressMap:
    """Connects to fixed addresses for some host names and resolves the rest normally.

    Only the TCP connection changes: the URL, the Host header and the TLS server name stay the
    host name's. With no map, every ``*.localhost`` (and ``localhost``) goes to 127.0.0.1, as
    RFC 6761 §6.3 reserves them for loopback.
    """

    def __init__(self, mapping: Mapping[str, str] | None) -> None:
        self._map = {_host_key(name): str(ipaddress.ip_address(ip)) for name, ip in (mapping or {}).items()}
        self._loopback_names = mapping is None

    def address(self, host: str) -> str:
        """Where to connect for ``host``: its mapped address, or the name itself (resolved by DNS)."""
        key = _host_key(host)
        address = self._map.get(key)
        if address is None and self._loopback_names and (key == "localhost" or key.endswith(".localhost")):
            address = "127.0.0.1"
        return host if address is None else address


def _host_key(name: str) -> str:
    return name.lower().rstrip(".")


# -- signing keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TrustedKey:
    kid: str | None
    key: PublicKey
    algorithms: frozenset[str]

    def verifies(self, alg: str, signed: bytes, signature: bytes) -> bool:
        """Whether ``signature`` over ``signed`` is this key's, by ``alg`` (RFC 7518 §3; RFC 8037
        §3.1 and RFC 9864 for EdDSA / Ed25519 / Ed448)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, utils

        if alg not in self.algorithms:
            return False
        key = self.key
        digests: dict[str, Callable[[], hashes.HashAlgorithm]] = {
            "256": hashes.SHA256,
            "384": hashes.SHA384,
            "512": hashes.SHA512,
        }
        digest = digests.get(alg[-3:])
        try:
            if alg.startswith("ES") and digest is not None and isinstance(key, ec.EllipticCurvePublicKey):
                size = (key.curve.key_size + 7) // 8
                if len(signature) != 2 * size:  # R || S, each the curve's size (RFC 7518 §3.4)
                    return False
                r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
                key.verify(utils.encode_dss_signature(r, s), signed, ec.ECDSA(digest()))
            elif alg.startswith("RS") and digest is not None and isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, signed, padding.PKCS1v15(), digest())
            elif alg.startswith("PS") and digest is not None and isinstance(key, rsa.RSAPublicKey):
                # RFC 7518 §3.5: MGF1 with the same hash, a salt as long as the hash output.
                pss = padding.PSS(mgf=padding.MGF1(digest()), salt_length=padding.PSS.DIGEST_LENGTH)
                key.verify(signature, signed, pss, digest())
            elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                key.verify(signature, signed)
            else:
                return False
        except InvalidSignature:
            return False
        return True


def _integer(member: Any, what: str) -> tuple[int, int]:
    """A JWK member's big-endian unsigned integer (RFC 7518 §2 Base64urlUInt) and its length."""
    if not isinstance(member, str):
        raise ValueError(f"{what} is not a string")
    raw = b64url_decode(member, what)
    return int.from_bytes(raw, "big"), len(raw)


def _public_key(member: Mapping[str, Any]) -> PublicKey:
    """The public key of a JWK (RFC 7518 §6.2.1 EC, §6.3.1 RSA; RFC 8037 §2 OKP), checked: an
    EC point on its curve with coordinates of the curve's size, an RSA modulus of at least
    2048 bits and an odd exponent, an OKP key of the curve's length. Raises ValueError."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    kty, crv = member.get("kty"), member.get("crv")
    if kty == "EC":
        curves: dict[str, Callable[[], ec.EllipticCurve]] = {
            "P-256": ec.SECP256R1,
            "P-384": ec.SECP384R1,
            "P-521": ec.SECP521R1,
        }
        curve = curves[str(crv)]()
        size = (curve.key_size + 7) // 8
        (x, x_len), (y, y_len) = _integer(member.get("x"), "x"), _integer(member.get("y"), "y")
        if x_len != size or y_len != size:
            raise ValueError("EC coordinates of the wrong length")
        return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()  # checks the point
    if kty == "RSA":
        (n, _), (e, _) = _integer(member.get("n"), "n"), _integer(member.get("e"), "e")
        if n.bit_length() < _MIN_RSA_BITS or e < 3 or e % 2 == 0:
            raise ValueError("a weak RSA key")
        return rsa.RSAPublicNumbers(e, n).public_key()
    x_member = member.get("x")
    if not isinstance(x_member, str):
        raise ValueError("x is not a string")
    raw = b64url_decode(x_member, "x")
    if crv == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    return ed448.Ed448PublicKey.from_public_bytes(raw)


def _trusted_key(member: Any) -> _TrustedKey | None:
    """One JWK of the provider's set as a verification key, or None when it is not one we use
    (RFC 7517 §4.2 ``use``, §4.3 ``key_ops``; symmetric, private or weak keys are never trusted)."""
    if not isinstance(member, dict):
        return None
    if member.get("use", "sig") != "sig":
        return None
    ops = member.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if _PRIVATE_MEMBERS & member.keys():  # a published private or symmetric key: trust none of it
        return None
    kty, crv = member.get("kty"), member.get("crv")
    if kty == "EC" and crv in _EC_ALGORITHMS:
        algorithms = frozenset({_EC_ALGORITHMS[crv]})
    elif kty == "RSA":
        algorithms = _RSA_ALGORITHMS
    elif kty == "OKP" and crv in _OKP_ALGORITHMS:
        algorithms = _OKP_ALGORITHMS[crv]
    else:
        return None
    declared = member.get("alg")
    if declared is not None:
        if declared not in algorithms:
            return None
        algorithms = frozenset({declared})
    try:
        key = _public_key(member)
    except (TokenInvalid, ValueError, TypeError, KeyError):
        return None
    kid = member.get("kid")
    return _TrustedKey(kid if isinstance(kid, str) else None, key, algorithms)


@dataclass(frozen=True)
class _KeySet:
    keys: tuple[_TrustedKey, ...]
    fetched_at: float
    uri: str

    def find(self, kid: str | None, alg: str) -> tuple[_TrustedKey | None, bool]:
        """The key for a token header: (key, False); (None, True) when the key is known but
        not for ``alg`` (never refetched: a key confusion attempt); (None, False) when unknown."""
        if kid is not None:
            named = [k for k in self.keys if k.kid == kid]
            usable = [k for k in named if alg in k.algorithms]
            if usable:
                return usable[0], False
            return None, bool(named)
        # OIDC Core §10.1: a kid may be left out only when the choice of key is unambiguous.
        usable = [k for k in self.keys if alg in k.algorithms]
        return (usable[0], False) if len(usable) == 1 else (None, False)


# -- helpers --------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _random(token_bytes: Callable[[int], bytes]) -> str:
    return b64url_encode(token_bytes(_RANDOM_BYTES))


def _safe_text(value: Any, limit: int) -> str:
    """Printable ASCII of a provider-chosen string, shortened (RFC 6749 §4.1.2.1 restricts
    ``error_description`` to %x20-21 / %x23-5B / %x5D-7E; anything else is dropped)."""
    if not isinstance(value, str):
        return ""
    kept = "".join(c for c in value if " " <= c <= "~" and c not in '"\\')
    return kept[:limit]


def _add_query(url: str, params: Sequence[tuple[str, str]]) -> str:
    """``url`` with ``params`` appended to the query it already has (OIDC Core §3.1.2.1,
    RFC 6749 §3.1: an endpoint URI may have a query component, which must be kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    return urlunsplit(parts._replace(query=urlencode([*query, *params], quote_via=quote)))


def _check_url(value: Any, what: str, *, allow_http: bool) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_URL:
        raise LoginError(INVALID_PROVIDER_METADATA, f"{what} is missing or malformed")
    parts = urlsplit(value)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.fragment or "@" in parts.netloc:
        raise LoginError(INVALID_PROVIDER_METADATA, f"{what} is not an acceptable URL")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def _parse_metadata(doc: Mapping[str, Any], issuer: str) -> ProviderMetadata:
    """OIDC Discovery 1.0 §3 and §4.3: the issuer must be exactly ours; the endpoints must be
    https (http only when the configured issuer itself is http, e.g. a development host)."""
    if doc.get("issuer") != issuer:
        raise LoginError(ISSUER_MISMATCH, "the discovery document names another issuer")
    allow_http = issuer.startswith("http://")

    def required(name: str) -> str:
        return _check_url(doc.get(name), name, allow_http=allow_http)

    def optional(name: str) -> str | None:
        return None if doc.get(name) is None else required(name)

    response_types = doc.get("response_types_supported")
    if isinstance(response_types, list) and "code" not in response_types:
        raise LoginError(INVALID_PROVIDER_METADATA, "the provider does not support the code flow")
    auth_methods = _strings(doc.get("token_endpoint_auth_methods_supported"))
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=required("authorization_endpoint"),
        token_endpoint=required("token_endpoint"),
        jwks_uri=required("jwks_uri"),
        end_session_endpoint=optional("end_session_endpoint"),
        userinfo_endpoint=optional("userinfo_endpoint"),
        authorization_response_iss_parameter_supported=(
            doc.get("authorization_response_iss_parameter_supported") is True
        ),
        id_token_signing_alg_values_supported=_strings(doc.get("id_token_signing_alg_values_supported")),
        token_endpoint_auth_methods_supported=auth_methods or ("client_secret_basic",),
        code_challenge_methods_supported=_strings(doc.get("code_challenge_methods_supported")),
        acr_values_supported=_strings(doc.get("acr_values_supported")),
        scopes_supported=_strings(doc.get("scopes_supported")),
        backchannel_logout_supported=doc.get("backchannel_logout_supported") is True,
        backchannel_logout_session_supported=doc.get("backchannel_logout_session_supported") is True,
    )


def _load_json(body: bytes, code: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise LoginError(code, f"{what} is not JSON") from e
    if not isinstance(value, dict):
        raise LoginError(code, f"{what} is not a JSON object")
    return value


def _hash_for(alg: str) -> Callable[[bytes], bytes]:
    """The hash of ``alg`` for ``at_hash`` (OIDC Core §3.1.3.8; Ed25519 uses SHA-512 and Ed448
    SHAKE256 with a 114-byte output, as the OpenID Foundation registered for EdDSA)."""
    if alg in ("EdDSA", "Ed25519"):
        return lambda data: hashlib.sha512(data).digest()
    if alg == "Ed448":
        return lambda data: hashlib.shake_256(data).digest(114)
    bits = alg[-3:]
    name = {"256": "sha256", "384": "sha384", "512": "sha512"}[bits]
    return lambda data: hashlib.new(name, data).digest()


def _at_hash(access_token: str, alg: str) -> str:
    digest = _hash_for(alg)(access_token.encode("ascii", "replace"))
    return b64url_encode(digest[: len(digest) // 2])


def _clean(value: Any, what: str, *, limit: int = _MAX_NAME) -> str:
    """A claim that becomes an identity header or a log field: a non-empty string of at most
    ``limit`` characters with no control characters."""
    if not isinstance(value, str) or not value or len(value) > limit:
        raise LoginError(INVALID_ID_TOKEN, f"claim {what} is malformed")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise LoginError(INVALID_ID_TOKEN, f"claim {what} contains control characters")
    return value


def _clean_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > _MAX_GROUPS:
        raise LoginError(INVALID_ID_TOKEN, f"claim {what} is not a list of strings")
    return tuple(_clean(item, what) for item in value)


def _acr_satisfies(acr: str | None, acr_values: str) -> bool:
    """Whether the ID token's ``acr`` answers a request's ``acr_values`` (OIDC Core §3.1.2.1,
    §3.1.3.7 step 12). Any class the request listed will do; of the classes we rank
    (``urn:onegate:acr:pwd < mfa < phr``), a stronger one does too. Unknown classes only match
    themselves."""
    if acr is None:
        return False
    requested = acr_values.split()
    if acr in requested:
        return True
    weakest = lowest_known(requested)
    return weakest is not None and level(acr) >= level(weakest)


def _sign_in(claims: dict[str, Any], id_token: str) -> SignIn:
    """The SignIn of validated ID token claims (identity claims: OIDC Core §5.1; ``groups``,
    ``department_code`` and ``departments`` are our IdP's, see idp.claims)."""
    sub = claims["sub"]
    preferred = claims.get("preferred_username")
    username = _clean(preferred, "preferred_username") if preferred not in (None, "") else sub
    display = claims.get("name")
    name = _clean(display, "name") if display not in (None, "") else username
    groups = _clean_list(claims.get("groups"), "groups")
    code = claims.get("department_code")
    department = _clean(code, "department_code") if code is not None else None
    if "departments" in claims:
        departments = _clean_list(claims["departments"], "departments")
    else:
        departments = (department,) if department is not None else ()
    sid = _clean(claims["sid"], "sid") if "sid" in claims else None
    acr = _clean(claims["acr"], "acr") if "acr" in claims else None
    amr = _clean_list(claims.get("amr"), "amr")
    auth_time = int(claims["auth_time"]) if "auth_time" in claims else None
    return SignIn(
        sub=sub,
        sid=sid,
        claims=claims,
        id_token=id_token,
        acr=acr,
        amr=amr,
        auth_time=auth_time,
        username=username,
        name=name,
        groups=groups,
        department=department,
        departments=departments,
    )


async def _read_response(
    reader: asyncio.StreamReader, *, limit: int, oversize: str, what: str
) -> tuple[int, bytes]:
    """The status and body of one HTTP/1.1 response (length, chunked or until the connection
    closes), refusing a body over ``limit`` bytes as soon as it is announced or read."""
    import httptools

    body = bytearray()
    done = headers_done = framed = False

    class Events:
        def on_headers_complete(self) -> None:
            nonlocal headers_done
            headers_done = True

        def on_header(self, name: bytes, value: bytes) -> None:
            nonlocal framed
            name = name.lower()
            framed = framed or name in (b"content-length", b"transfer-encoding")
            if name == b"content-length" and value.strip().isdigit() and int(value) > limit:
                raise LoginError(oversize, f"{what}: the response is too large")

        def on_body(self, chunk: bytes) -> None:
            body.extend(chunk)
            if len(body) > limit:
                raise LoginError(oversize, f"{what}: the response is too large")

        def on_message_complete(self) -> None:
            nonlocal done
            done = True

    parser = httptools.HttpResponseParser(Events())
    while not done:
        chunk = await reader.read(16 * 1024)
        if not chunk:
            # A body that runs to the end of the connection is complete then; any other is cut.
            if headers_done and not framed:
                break
            raise ValueError("the connection closed before the response was complete")
        try:
            parser.feed_data(chunk)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, LoginError):
                raise e.__context__ from None
            raise ValueError("a malformed response") from None
        except httptools.HttpParserError:
            raise ValueError("a malformed response") from None
    return parser.get_status_code(), bytes(body)


# -- the client -----------------------------------------------------------------------------------


class OidcClient:
    """One relying party registration at one OpenID provider.

    ``issuer``: the provider's issuer URL, exactly as its discovery document states it;
    ``client_secret``: None for a public client (PKCE alone, RFC 7636 §1); ``address_map``: host
    name -> IP address to connect to (default: ``*.localhost`` -> 127.0.0.1); ``timeout``: seconds
    for each HTTP exchange; ``leeway``: seconds of clock difference tolerated on ``exp``, ``iat``,
    ``nbf`` and ``auth_time``; ``clock`` and ``token_bytes``: injectable time and randomness.
    """

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str | None,
        scopes: Sequence[str] = ("openid", "profile", "email", "groups", "department"),
        address_map: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        leeway: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        parts = urlsplit(issuer)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"issuer {issuer!r} must be an http(s) URL without query or fragment")
        if not client_id:
            raise ValueError("client_id must not be empty")
        if "openid" not in scopes:
            raise ValueError("scopes must include 'openid' (OIDC Core §3.1.2.1)")
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self._scopes = " ".join(dict.fromkeys(scopes))
        self._resolver = _AddressMap(address_map)  # validates the map now, not at the first request
        self._timeout = timeout
        self._clock = clock
        self._leeway = leeway
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._token_bytes = token_bytes
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._metadata_lock = asyncio.Lock()
        self._jwks: _KeySet | None = None
        self._jwks_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OidcClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    # -- HTTP ---------------------------------------------------------------------------------

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        limit: int,
        oversize: str,
        what: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One request on a connection of its own (sign-ins are rare; the provider's keys and
        metadata are cached); the status and a body of at most ``limit`` bytes. Redirects are
        not followed (a token request is never re-sent elsewhere), no proxy is used."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        body = urlencode(data).encode() if data is not None else b""
        fields = {
            "Host": host if parts.port is None else f"{host}:{port}",
            "User-Agent": "OneGate-gateway",
            "Accept": "application/json",
            "Connection": "close",
            **(headers or {}),
        }
        if data is not None:
            fields["Content-Type"] = "application/x-www-form-urlencoded"
            fields["Content-Length"] = str(len(body))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        context = (
            (self._ssl if isinstance(self._ssl, ssl.SSLContext) else ssl.create_default_context())
            if tls
            else None
        )
        writer = None
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self._resolver.address(host), port, ssl=context, server_hostname=host if tls else None
                )
                writer.write(head.encode("latin-1") + b"\r\n" + body)
                return await _read_response(reader, limit=limit, oversize=oversize, what=what)
        except LoginError:
            raise
        except (TimeoutError, OSError, ValueError, UnicodeError) as e:
            _log.warning("oidc_provider_unreachable", what=what, error=type(e).__name__)
            raise LoginError(PROVIDER_UNAVAILABLE, f"{what}: the provider did not answer") from e
        finally:
            if writer is not None:
                writer.close()

    async def _get_json(self, url: str, *, limit: int, invalid: str, what: str) -> dict[str, Any]:
        status, body = await self._exchange("GET", url, limit=limit, oversize=invalid, what=what)
        if status >= 500 or status in (408, 429):
            raise LoginError(PROVIDER_UNAVAILABLE, f"{what}: HTTP {status}")
        if status != 200:
            raise LoginError(invalid, f"{what}: HTTP {status}")
        return _load_json(body, invalid, what)

    async def close(self) -> None:
        """Nothing stays open between exchanges; kept for the callers' life-cycle."""

    # -- discovery and keys ---------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        """The provider's metadata (OIDC Discovery 1.0 §4), fetched once and refreshed after an
        hour. When a refresh cannot reach the provider the last good metadata is kept (and the
        refresh retried a minute later); a document that fails the checks is never used."""
        cached = self._metadata
        if cached is not None and self._clock() - self._metadata_at < METADATA_TTL:
            return cached
        async with self._metadata_lock:
            now = self._clock()
            if self._metadata is not None and now - self._metadata_at < METADATA_TTL:
                return self._metadata
            url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"  # Discovery §4.1
            try:
                doc = await self._get_json(
                    url, limit=_MAX_METADATA_BYTES, invalid=INVALID_PROVIDER_METADATA, what="discovery"
                )
                metadata = _parse_metadata(doc, self.issuer)
            except LoginError as e:
                if e.code == PROVIDER_UNAVAILABLE and self._metadata is not None:
                    self._metadata_at = now - METADATA_TTL + JWKS_REFETCH_INTERVAL
                    return self._metadata
                if e.code != PROVIDER_UNAVAILABLE:
                    _log.error(
                        "oidc_discovery_refused", issuer=self.issuer, code=e.code, reason=e.description
                    )
                raise
            self._metadata, self._metadata_at = metadata, now
            return metadata

    async def _refresh_keys(self, metadata: ProviderMetadata, *, seen: _KeySet | None) -> _KeySet:
        async with self._jwks_lock:
            if self._jwks is not seen and self._jwks is not None:
                return self._jwks  # another task refreshed meanwhile
            now = self._clock()
            try:
                doc = await self._get_json(
                    metadata.jwks_uri, limit=_MAX_JWKS_BYTES, invalid=INVALID_PROVIDER_METADATA, what="jwks"
                )
            except LoginError as e:
                if e.code == PROVIDER_UNAVAILABLE and seen is not None and seen.uri == metadata.jwks_uri:
                    # Keep the keys we have; try again after the refetch interval.
                    self._jwks = _KeySet(seen.keys, now - METADATA_TTL + JWKS_REFETCH_INTERVAL, seen.uri)
                    return self._jwks
                raise
            members = doc.get("keys")
            if not isinstance(members, list) or len(members) > _MAX_JWKS_KEYS:
                raise LoginError(INVALID_PROVIDER_METADATA, "the JWK Set has no usable 'keys' list")
            keys = tuple(k for k in (_trusted_key(m) for m in members) if k is not None)
            self._jwks = _KeySet(keys, now, metadata.jwks_uri)
            return self._jwks

    async def _key_for(self, metadata: ProviderMetadata, kid: str | None, alg: str, code: str) -> _TrustedKey:
        """The provider key for a token header. An unknown kid refetches the JWK Set (a key
        rotation), at most once per ``JWKS_REFETCH_INTERVAL``."""
        keys = self._jwks
        now = self._clock()
        if keys is None or keys.uri != metadata.jwks_uri or now - keys.fetched_at >= METADATA_TTL:
            keys = await self._refresh_keys(metadata, seen=keys)
        found, mismatch = keys.find(kid, alg)
        if found is None and not mismatch and now - keys.fetched_at >= JWKS_REFETCH_INTERVAL:
            keys = await self._refresh_keys(metadata, seen=keys)
            found, mismatch = keys.find(kid, alg)
        if mismatch:
            raise LoginError(code, f"the token's algorithm {alg} is not its key's")
        if found is None:
            raise LoginError(code, "no key of the provider matches the token")
        return found

    # -- JWT verification -----------------------------------------------------------------------

    async def _verify(
        self, token: Any, metadata: ProviderMetadata, *, code: str, types: frozenset[str]
    ) -> tuple[str, dict[str, Any]]:
        """Verify a compact JWS from the provider: the algorithm and header checks of RFC 8725
        §3.1-§3.2 and §3.11 (``typ``, when the header has one, must be one of ``types``), the
        signature against the provider's key; the algorithm and the claims."""
        try:
            header_segment, payload_segment, signature_segment = split_compact(token)
            header = decode_json_segment(header_segment, "header")
            b64url_decode(signature_segment, "signature")  # canonical, like the other segments
            claims = decode_json_segment(payload_segment, "payload")
        except TokenInvalid as e:
            raise LoginError(code, f"the token is malformed ({e})") from e
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _SUPPORTED_ALGORITHMS:
            raise LoginError(code, "the token's algorithm is not accepted")
        allowed = metadata.id_token_signing_alg_values_supported
        if allowed and alg not in allowed:
            raise LoginError(code, "the token's algorithm is not one the provider announced")
        refused = _REFUSED_HEADERS & header.keys()
        if refused:
            raise LoginError(code, f"the token header has {', '.join(sorted(refused))}")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in types):
            raise LoginError(code, "the token has the wrong type (typ)")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > _MAX_NAME):
            raise LoginError(code, "the token's kid is malformed")
        trusted = await self._key_for(metadata, kid, alg, code)
        signed = f"{header_segment}.{payload_segment}".encode("ascii")
        if not trusted.verifies(alg, signed, b64url_decode(signature_segment, "signature")):
            raise LoginError(code, "the token's signature does not verify")
        return alg, claims

    def _check_times(self, claims: Mapping[str, Any], code: str, *, require_exp: bool) -> None:
        """``exp``, ``iat`` and ``nbf`` (RFC 7519 §4.1.4-§4.1.6; OIDC Core §3.1.3.7 steps 9-10):
        within ``leeway``, and ``iat`` no older than ``MAX_TOKEN_AGE``."""
        now, leeway = self._clock(), self._leeway
        for name in ("exp", "iat", "nbf"):
            if name in claims and not _is_number(claims[name]):
                raise LoginError(code, f"claim {name} is not a NumericDate")
        if "exp" in claims:
            if now >= claims["exp"] + leeway:
                raise LoginError(code, "the token has expired")
        elif require_exp:
            raise LoginError(code, "the token has no exp")
        if "iat" not in claims:
            raise LoginError(code, "the token has no iat")
        if claims["iat"] > now + leeway:
            raise LoginError(code, "the token was issued in the future")
        if claims["iat"] < now - MAX_TOKEN_AGE - leeway:
            raise LoginError(code, "the token was issued too long ago")
        if "nbf" in claims and now < claims["nbf"] - leeway:
            raise LoginError(code, "the token is not valid yet")

    def _check_audience(self, claims: Mapping[str, Any], issuer: str, code: str) -> None:
        """``iss`` exactly the issuer; ``aud`` lists our client_id; with several audiences an
        ``azp`` that is our client_id (OIDC Core §3.1.3.7 steps 2-5)."""
        if claims.get("iss") != issuer:
            raise LoginError(code, "the token is from another issuer")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise LoginError(code, "claim aud is malformed")
        if self.client_id not in audiences:
            raise LoginError(code, "the token is for another client")
        azp = claims.get("azp")
        if len(set(audiences)) > 1 and azp is None:
            raise LoginError(code, "a token for several audiences has no azp")
        if azp is not None and azp != self.client_id:
            raise LoginError(code, "the token was issued to another party (azp)")

    async def validate_id_token(
        self, id_token: str, login: LoginState, *, access_token: str | None = None
    ) -> dict[str, Any]:
        """The claims of an ID token from the token endpoint, validated as OIDC Core §3.1.3.7
        says: signature with the provider's key (steps 6-8), ``iss`` (2), ``aud`` / ``azp``
        (3-5), ``exp`` / ``iat`` (9-10), ``nonce`` (11, constant time), ``acr`` against the
        requested ``acr_values`` (12), ``auth_time`` against ``max_age`` (13, §3.1.2.1), and
        ``at_hash`` against the access token when both are present (§3.1.3.8)."""
        metadata = await self.metadata()
        alg, claims = await self._verify(id_token, metadata, code=INVALID_ID_TOKEN, types=_ID_TOKEN_TYPES)
        self._check_audience(claims, metadata.issuer, INVALID_ID_TOKEN)
        self._check_times(claims, INVALID_ID_TOKEN, require_exp=True)
        if "events" in claims:  # a logout token (or other security event token) is no ID token
            raise LoginError(INVALID_ID_TOKEN, "the token is a security event token")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:  # OIDC Core §2
            raise LoginError(INVALID_ID_TOKEN, "claim sub is missing or malformed")
        _clean(sub, "sub")
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(
            nonce.encode("utf-8"), login.nonce.encode("utf-8")
        ):
            raise LoginError(INVALID_ID_TOKEN, "the nonce is not this login's")
        now = self._clock()
        auth_time = claims.get("auth_time")
        if auth_time is not None:
            if not _is_number(auth_time):
                raise LoginError(INVALID_ID_TOKEN, "claim auth_time is not a NumericDate")
            if auth_time > now + self._leeway:
                raise LoginError(INVALID_ID_TOKEN, "claim auth_time is in the future")
        if login.max_age is not None:
            if auth_time is None:
                raise LoginError(MAX_AGE_EXCEEDED, "max_age was asked but the token has no auth_time")
            if now - auth_time > login.max_age + self._leeway:
                raise LoginError(MAX_AGE_EXCEEDED, "the sign-in is older than max_age allows")
        if login.acr_values is not None:
            acr = claims.get("acr")
            if not _acr_satisfies(acr if isinstance(acr, str) else None, login.acr_values):
                raise LoginError(ACR_NOT_MET, "the sign-in is weaker than acr_values asked")
        token_hash = claims.get("at_hash")
        if (
            token_hash is not None
            and access_token is not None
            and (
                not isinstance(token_hash, str)
                or not hmac.compare_digest(
                    token_hash.encode("ascii", "replace"), _at_hash(access_token, alg).encode("ascii")
                )
            )
        ):
            raise LoginError(INVALID_ID_TOKEN, "at_hash does not match the access token")
        return claims

    # -- the code flow --------------------------------------------------------------------------

    async def begin(
        self,
        redirect_uri: str,
        *,
        return_to: str,
        acr_values: str | None = None,
        max_age: int | None = None,
        prompt: str | None = None,
        ui_locales: str | None = None,
    ) -> tuple[str, LoginState]:
        """The authentication request (OIDC Core §3.1.2.1) to send the browser to, and the login
        state to keep until the callback.

        ``state`` (§3.1.2.1, RFC 6749 §10.12), ``nonce`` (§15.5.2) and the PKCE
        ``code_verifier`` (RFC 7636 §4.1: 43 characters of base64url) are each 256 random bits;
        the challenge is ``S256`` (RFC 7636 §4.2). ``acr_values`` asks for an authentication
        class and ``max_age`` for a sign-in no older than that many seconds (step-up):
        :meth:`finish` checks that the ID token meets both.
        """
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
            raise LoginError(INVALID_REQUEST, "redirect_uri must be an absolute http(s) URL without fragment")
        if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0):
            raise LoginError(INVALID_REQUEST, "max_age must be a non-negative number of seconds")
        if prompt is not None:
            values = prompt.split()
            if not values or not set(values) <= _PROMPTS or ("none" in values and len(values) > 1):
                raise LoginError(INVALID_REQUEST, "prompt has an unknown or conflicting value")
        if acr_values is not None and (
            not acr_values.split() or len(acr_values) > 1024 or not acr_values.isprintable()
        ):
            raise LoginError(INVALID_REQUEST, "acr_values is malformed")
        if ui_locales is not None and not _UI_LOCALES_RE.fullmatch(ui_locales):
            raise LoginError(INVALID_REQUEST, "ui_locales is malformed")
        metadata = await self.metadata()
        state, nonce, verifier = (_random(self._token_bytes) for _ in range(3))
        challenge = b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
        params = [
            ("response_type", "code"),
            ("client_id", self.client_id),
            ("redirect_uri", redirect_uri),
            ("scope", self._scopes),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ]
        if acr_values is not None:
            params.append(("acr_values", acr_values))
        if max_age is not None:
            params.append(("max_age", str(max_age)))
        if prompt is not None:
            params.append(("prompt", prompt))
        if ui_locales is not None:
            params.append(("ui_locales", ui_locales))
        login = LoginState(
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            redirect_uri=redirect_uri,
            return_to=return_to,
            created_at=self._clock(),
            acr_values=acr_values,
            max_age=max_age,
        )
        return _add_query(metadata.authorization_endpoint, params), login

    async def finish(self, login: LoginState, params: Mapping[str, str]) -> SignIn:
        """Complete a login from the callback's query parameters ``params``.

        In order: the login is younger than ``LOGIN_TTL``; ``state`` is this login's (constant
        time; OIDC Core §3.1.2.7, RFC 6749 §10.12); ``iss`` is our issuer when present, and must
        be present when the provider announced it (RFC 9207 §2.4: before anything else of the
        response is believed, error responses included); an ``error`` becomes
        ``LoginError(error, error_description)`` (§3.1.2.6); the code is redeemed at the token
        endpoint with the PKCE verifier (RFC 7636 §4.5) and client authentication (RFC 6749
        §2.3.1: ``client_secret_basic``, or ``client_secret_post`` when the provider supports
        only that, or none for a public client); the token response is checked (§3.1.3.3) and
        the ID token validated (:meth:`validate_id_token`).
        """
        now = self._clock()
        if not now - LOGIN_TTL <= login.created_at <= now + self._leeway:
            raise LoginError(EXPIRED_LOGIN, "the sign-in took too long; start again")
        state = params.get("state")
        if not isinstance(state, str) or not hmac.compare_digest(
            state.encode("utf-8"), login.state.encode("utf-8")
        ):
            raise LoginError(INVALID_STATE, "the response does not belong to this sign-in")
        metadata = await self.metadata()
        iss = params.get("iss")
        if iss is not None:
            if iss != metadata.issuer:
                raise LoginError(ISSUER_MISMATCH, "the response comes from another issuer")
        elif metadata.authorization_response_iss_parameter_supported:
            raise LoginError(ISSUER_MISMATCH, "the response has no iss parameter")
        error = params.get("error")
        if error is not None:
            code = error if isinstance(error, str) and _ERROR_CODE_RE.fullmatch(error) else None
            if code is None:
                raise LoginError(INVALID_AUTHORIZATION_RESPONSE, "the provider sent a malformed error")
            raise LoginError(code, _safe_text(params.get("error_description"), _MAX_DESCRIPTION))
        auth_code = params.get("code")
        if (
            not isinstance(auth_code, str)
            or not 0 < len(auth_code) <= _MAX_CODE
            or not auth_code.isprintable()
        ):
            raise LoginError(INVALID_AUTHORIZATION_RESPONSE, "the response has no code")
        tokens = await self._redeem(metadata, login, auth_code)
        id_token = tokens["id_token"]
        claims = await self.validate_id_token(id_token, login, access_token=tokens.get("access_token"))
        return _sign_in(claims, id_token)

    async def _redeem(self, metadata: ProviderMetadata, login: LoginState, code: str) -> dict[str, Any]:
        """The token request of OIDC Core §3.1.3.1 and its response (§3.1.3.3-§3.1.3.4)."""
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": login.redirect_uri,
            "code_verifier": login.code_verifier,
        }
        headers: dict[str, str] = {}
        secret = self._client_secret
        methods = metadata.token_endpoint_auth_methods_supported
        if secret is None:
            data["client_id"] = self.client_id  # a public client (RFC 6749 §4.1.3)
        elif "client_secret_basic" not in methods and "client_secret_post" in methods:
            data["client_id"], data["client_secret"] = self.client_id, secret
        else:
            # RFC 6749 §2.3.1: both parts form-urlencoded before the Basic encoding.
            pair = f"{quote(self.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        status, body = await self._exchange(
            "POST",
            metadata.token_endpoint,
            data=data,
            headers=headers,
            limit=_MAX_TOKEN_RESPONSE_BYTES,
            oversize=INVALID_TOKEN_RESPONSE,
            what="token",
        )
        if status >= 500 or status in (408, 429):
            raise LoginError(PROVIDER_UNAVAILABLE, f"token: HTTP {status}")
        if status != 200:
            try:
                error = _load_json(body, INVALID_TOKEN_RESPONSE, "token").get("error")
            except LoginError:
                error = None
            if status in (400, 401) and isinstance(error, str) and _ERROR_CODE_RE.fullmatch(error):
                # RFC 6749 §5.2: e.g. invalid_grant for a code already used or expired.
                raise LoginError(TOKEN_REQUEST_FAILED, f"the token endpoint answered {error}")
            raise LoginError(INVALID_TOKEN_RESPONSE, f"token: HTTP {status}")
        tokens = _load_json(body, INVALID_TOKEN_RESPONSE, "the token response")
        id_token, access_token, token_type = (
            tokens.get(k) for k in ("id_token", "access_token", "token_type")
        )
        if not isinstance(id_token, str) or not id_token:
            raise LoginError(INVALID_TOKEN_RESPONSE, "the token response has no id_token")
        if not isinstance(access_token, str) or not access_token:
            raise LoginError(INVALID_TOKEN_RESPONSE, "the token response has no access_token")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":  # RFC 6749 §5.1, §7.1
            raise LoginError(INVALID_TOKEN_RESPONSE, "the token response is not a Bearer token")
        return tokens

    # -- logout ---------------------------------------------------------------------------------

    async def validate_logout_token(self, token: str) -> LogoutNotice:
        """A logout token POSTed by the provider, validated as Back-Channel Logout 1.0 §2.6 says:
        signature with the provider's key (steps 1-3, as for ID tokens; ``typ``, when present,
        ``logout+jwt``, §2.4), ``iss`` / ``aud`` / ``iat`` like an ID token's and ``exp`` when
        present (4), ``sub`` or ``sid`` (5), ``events`` holding the back-channel logout event
        with a JSON object as its value (6), no ``nonce`` (7), and a ``jti`` (§2.4).

        Step 8 and the replay check of §2.6 are the caller's: remember ``jti`` (in the KV store)
        for longer than ``MAX_TOKEN_AGE`` plus the leeway and refuse a token whose ``jti`` was
        already seen.
        """
        code = INVALID_LOGOUT_TOKEN
        metadata = await self.metadata()
        _, claims = await self._verify(token, metadata, code=code, types=_LOGOUT_TOKEN_TYPES)
        self._check_audience(claims, metadata.issuer, code)
        self._check_times(claims, code, require_exp=False)
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
            raise LoginError(code, "the token has no back-channel logout event")
        if "nonce" in claims:  # §2.4: so an ID token can never pass for a logout token
            raise LoginError(code, "a logout token must not have a nonce")
        sub, sid, jti = claims.get("sub"), claims.get("sid"), claims.get("jti")
        if sub is not None and (not isinstance(sub, str) or not sub or len(sub) > 255):
            raise LoginError(code, "claim sub is malformed")
        if sid is not None and (not isinstance(sid, str) or not sid or len(sid) > _MAX_NAME):
            raise LoginError(code, "claim sid is malformed")
        if sub is None and sid is None:
            raise LoginError(code, "the token names neither sub nor sid")
        if not isinstance(jti, str) or not jti or len(jti) > _MAX_NAME:
            raise LoginError(code, "claim jti is missing or malformed")
        return LogoutNotice(iss=metadata.issuer, sub=sub, sid=sid, jti=jti, iat=int(claims["iat"]))

    async def end_session_url(
        self, *, id_token_hint: str | None, post_logout_redirect_uri: str | None, state: str | None = None
    ) -> str | None:
        """Where to send the browser to sign out at the provider too (RP-Initiated Logout 1.0
        §2: ``id_token_hint``, ``client_id``, ``post_logout_redirect_uri``, ``state``), or None
        when the provider has no ``end_session_endpoint``."""
        metadata = await self.metadata()
        if metadata.end_session_endpoint is None:
            return None
        params = [("client_id", self.client_id)]
        if id_token_hint is not None:
            params.insert(0, ("id_token_hint", id_token_hint))
        if post_logout_redirect_uri is not None:
            params.append(("post_logout_redirect_uri", post_logout_redirect_uri))
        if state is not None:
            params.append(("state", state))
        return _add_query(metadata.end_session_endpoint, params)
