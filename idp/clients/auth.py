"""Client authentication at the token, revocation, introspection and PAR endpoints.

Specs: OAuth 2.0 RFC 6749 §2.3 (client authentication; "MUST NOT use more than one
authentication method in each request"), §2.3.1 and Appendix B (HTTP Basic with
form-urlencoded id and secret), §3.2 / §3.2.1 (parameters sent at most once), §5.2
(``invalid_client``: 401 with ``WWW-Authenticate`` when the Authorization header was used);
JWT client authentication RFC 7523 §2.2 and §3, OIDC Core 1.0 §9 (``private_key_jwt``:
``iss`` = ``sub`` = client_id, ``aud``, ``exp``, ``jti``); JWT BCP RFC 8725 §3.1 (the
algorithm comes from the key, never from the token); PAR RFC 9126 §2 (accepted audiences).

:func:`authenticate_client` returns a value — :class:`AuthenticatedClient` or
:class:`ClientAuthFailure` with a closed-vocabulary :class:`AuthFailureReason` for events —
and never raises for a bad request. A client must use exactly the method it registered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol, cast
from urllib.parse import unquote_plus

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from core.kv import KV
from idp.clients.errors import ClientError, InvalidClientMetadata
from idp.clients.metadata import ASSERTION_ALGORITHMS, ClientKey, is_valid_client_id, parse_jwks
from idp.clients.models import AuthMethod
from idp.clients.records import RegisteredClient
from idp.clients.services import ClientRegistry
from keyvault import TokenInvalid
from keyvault.jws import ES256, RS256, PublicKey, b64url_decode, decode_json_segment, split_compact
from keyvault.jws import parse_json_object as parse_strict_json

__all__ = [
    "ASSERTION_LEEWAY",
    "JWT_BEARER",
    "MAX_ASSERTION_LIFETIME",
    "AuthFailureReason",
    "AuthenticatedClient",
    "ClientAuthFailure",
    "JwksUnavailable",
    "RemoteJwks",
    "authenticate_client",
]

# RFC 7523 §2.2: the client_assertion_type for a JWT bearer assertion.
JWT_BEARER: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# An assertion is for one request: refuse ones valid for longer than this (seconds ahead).
MAX_ASSERTION_LIFETIME: Final = 300
# Clock skew tolerated between the client and us for exp / nbf / iat (RFC 7519 §4.1.4).
ASSERTION_LEEWAY: Final = 30
_JTI_KEY: Final = "idp:client-assertion-jti:"
_MAX_JTI_LENGTH: Final = 256
# typ values a client assertion may carry (absent is fine too); anything else is a different
# kind of JWT being replayed here.
_ASSERTION_TYPES: Final = frozenset({"jwt", "client-authentication+jwt"})
# Header parameters that would let the token choose its own key or extensions (RFC 8725 §3.1,
# RFC 7515 §4.1.11): refused outright, keys come from registration only.
_REFUSED_HEADERS: Final = ("crit", "jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256")
_AUTH_PARAMETERS: Final = frozenset(
    {"client_id", "client_secret", "client_assertion", "client_assertion_type"}
)
_SECRET_METHODS: Final = frozenset({AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST})


class AuthFailureReason(StrEnum):
    """Why a client was not authenticated (``onegate.reason`` in events; never shown to clients)."""

    MALFORMED_REQUEST = "malformed-request"
    DUPLICATE_PARAMETER = "duplicate-parameter"
    MULTIPLE_METHODS = "multiple-methods"
    NO_CLIENT_ID = "no-client-id"
    UNSUPPORTED_SCHEME = "unsupported-authorization-scheme"
    MALFORMED_BASIC = "malformed-basic-credentials"
    CLIENT_ID_MISMATCH = "client-id-mismatch"
    UNKNOWN_CLIENT = "unknown-client"
    CLIENT_DISABLED = "client-disabled"
    METHOD_MISMATCH = "method-mismatch"
    WRONG_SECRET = "wrong-secret"  # noqa: S105 - a reason code, not a secret
    BAD_ASSERTION_TYPE = "bad-assertion-type"
    MALFORMED_ASSERTION = "malformed-assertion"
    ALGORITHM_NOT_ALLOWED = "algorithm-not-allowed"
    UNSUPPORTED_HEADER = "unsupported-assertion-header"
    KEYS_UNAVAILABLE = "keys-unavailable"
    NO_MATCHING_KEY = "no-matching-key"
    BAD_SIGNATURE = "bad-signature"
    WRONG_ISSUER = "wrong-issuer"
    WRONG_AUDIENCE = "wrong-audience"
    MISSING_EXP = "missing-exp"
    EXPIRED = "assertion-expired"
    NOT_YET_VALID = "assertion-not-yet-valid"
    LIFETIME_TOO_LONG = "assertion-lifetime-too-long"
    MISSING_JTI = "missing-jti"
    REPLAYED_JTI = "replayed-jti"


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    """The client that made the request and how it proved it.

    ``method`` ``none`` means only a public client's id was given: the caller must then
    require PKCE (RFC 9700 §2.1.1) — :attr:`requires_pkce` says so.
    """

    client: RegisteredClient
    method: AuthMethod

    @property
    def client_id(self) -> str:
        return self.client.client_id

    @property
    def requires_pkce(self) -> bool:
        return self.method is AuthMethod.NONE or self.client.require_pkce


@dataclass(frozen=True, slots=True)
class ClientAuthFailure:
    """Client authentication failed. Answer with :attr:`error` (RFC 6749 §5.2), log :attr:`reason`.

    ``client_id`` is the id the request claimed (when it is well-formed), for events only.
    """

    reason: AuthFailureReason
    client_id: str | None = None
    basic_attempted: bool = False
    error: str = "invalid_client"
    description: str = "client authentication failed"  # generic on purpose

    @property
    def status_code(self) -> int:
        # RFC 6749 §5.2: 401 (with a challenge) when the client tried the Authorization header.
        return 401 if self.basic_attempted else 400

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="onegate"'} if self.basic_attempted else {}


class JwksUnavailable(ClientError):
    """A client's ``jwks_uri`` could not be fetched or did not hold usable public keys."""


class _MultiDict(Protocol):
    def multi_items(self) -> list[tuple[str, Any]]: ...


FormInput = Mapping[str, Any] | Sequence[tuple[str, Any]] | _MultiDict
"""The request body: Starlette ``FormData`` (all values are read), a mapping, or pairs."""


# -- keys behind a jwks_uri -----------------------------------------------------------------------


async def _fetch_with_aiohttp(uri: str, timeout: float, max_bytes: int) -> bytes:
    import aiohttp

    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        # No redirects: the registered URI is the one trusted source (no SSRF hop elsewhere).
        session.get(uri, allow_redirects=False, headers={"Accept": "application/json"}) as response,
    ):
        if response.status != 200:
            raise JwksUnavailable(f"{uri} answered HTTP {response.status}")
        body = await response.content.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise JwksUnavailable(f"{uri} sent more than {max_bytes} bytes")
        return body


class RemoteJwks:
    """Public keys behind clients' ``jwks_uri``, fetched on demand and cached.

    Keys are cached for ``ttl`` seconds. An assertion naming a ``kid`` that is not cached
    triggers one refetch (the client rotated its keys), at most once per
    ``min_refresh_interval`` seconds per URI so made-up kids cannot make us hammer the client.
    """

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        min_refresh_interval: float = 60.0,
        timeout: float = 5.0,
        max_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str], Awaitable[bytes]] | None = None,
    ) -> None:
        self._ttl = ttl
        self._min_refresh = min_refresh_interval
        self._clock = clock
        self._fetch = fetch or (lambda uri: _fetch_with_aiohttp(uri, timeout, max_bytes))
        self._cache: dict[str, tuple[float, tuple[ClientKey, ...]]] = {}

    async def keys(self, uri: str, *, kid: str | None = None) -> tuple[ClientKey, ...]:
        """The keys at ``uri``; refetched when stale or when ``kid`` is not among them."""
        now = self._clock()
        cached = self._cache.get(uri)
        if cached is not None:
            fetched_at, keys = cached
            fresh = now - fetched_at < self._ttl
            kid_known = kid is None or any(k.kid == kid for k in keys)
            if fresh and (kid_known or now - fetched_at < self._min_refresh):
                return keys
        try:
            body = await self._fetch(uri)
        except JwksUnavailable:
            raise
        except Exception as e:  # network errors of any kind: the client's keys are unavailable
            raise JwksUnavailable(f"{uri} could not be fetched: {type(e).__name__}") from e
        try:
            keys = parse_jwks(parse_strict_json(body, "jwks"), field="jwks_uri")
        except (TokenInvalid, InvalidClientMetadata) as e:
            raise JwksUnavailable(f"{uri} does not hold usable public keys: {e}") from e
        self._cache[uri] = (now, keys)
        return keys


# -- request parsing ------------------------------------------------------------------------------


def _form_pairs(form: FormInput) -> list[tuple[str, Any]]:
    multi_items = getattr(form, "multi_items", None)
    if callable(multi_items):
        return list(multi_items())
    if isinstance(form, Mapping):
        return list(form.items())
    return list(cast("Sequence[tuple[str, Any]]", form))


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    getlist = getattr(headers, "getlist", None)
    if callable(getlist):
        return list(getlist(name))
    return [value for key, value in headers.items() if key.lower() == name]


def _parse_basic(value: str) -> tuple[str, str] | AuthFailureReason:
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return AuthFailureReason.UNSUPPORTED_SCHEME
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        client_id, sep, secret = decoded.partition(":")
        # RFC 6749 §2.3.1 / Appendix B: both halves are form-urlencoded before Basic encoding.
        client_id = unquote_plus(client_id, errors="strict")
        secret = unquote_plus(secret, errors="strict")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return AuthFailureReason.MALFORMED_BASIC
    if not sep or not client_id:
        return AuthFailureReason.MALFORMED_BASIC
    return client_id, secret


@dataclass(slots=True)
class _Assertion:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes = field(repr=False)
    signature: bytes = field(repr=False)


def _parse_assertion(token: str) -> _Assertion | None:
    try:
        header_segment, payload_segment, signature_segment = split_compact(token)
        header = decode_json_segment(header_segment, "assertion header")
        claims = decode_json_segment(payload_segment, "assertion payload")
        signature = b64url_decode(signature_segment, "assertion signature")
    except TokenInvalid:
        return None
    return _Assertion(header, claims, f"{header_segment}.{payload_segment}".encode("ascii"), signature)


# -- signatures (RFC 7518 §3.3-§3.5), one explicit branch per allowed algorithm ------------------


def _signature_valid(alg: str, key: PublicKey, data: bytes, signature: bytes) -> bool:
    try:
        if alg == "ES256":
            ES256().verify(key, data, signature)
        elif alg == "RS256":
            RS256().verify(key, data, signature)
        elif alg == "PS256":
            if not isinstance(key, rsa.RSAPublicKey):
                return False
            # RFC 7518 §3.5: MGF1 with SHA-256 and a salt as long as the hash (32 bytes).
            key.verify(
                signature,
                data,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                hashes.SHA256(),
            )
        else:  # unreachable: the header check allows only ASSERTION_ALGORITHMS
            return False
    except InvalidSignature:
        return False
    return True


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(name)
    return float(value)


# -- the entry point ------------------------------------------------------------------------------


async def authenticate_client(
    registry: ClientRegistry,
    *,
    headers: Mapping[str, str],
    form: FormInput,
    token_endpoint_url: str,
    kv: KV,
    clock: Callable[[], float] = time.time,
    issuer: str | None = None,
    endpoint_url: str | None = None,
    remote_jwks: RemoteJwks | None = None,
) -> AuthenticatedClient | ClientAuthFailure:
    """Authenticate the client of a token / revocation / introspection / PAR request.

    ``headers`` and ``form`` are the request's (all values of each form key are read, so a
    repeated parameter is noticed). For ``private_key_jwt`` the assertion's ``aud`` must name
    ``token_endpoint_url``, ``issuer`` or ``endpoint_url`` (the URL of the endpoint called, for
    PAR: RFC 9126 §2), and its ``jti`` is remembered in ``kv`` until it expires. ``remote_jwks``
    serves clients registered with a ``jwks_uri``; without it they fail ``keys-unavailable``.
    """
    pairs = _form_pairs(form)
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if name in _AUTH_PARAMETERS:
            if not isinstance(value, str):  # e.g. a file upload in a multipart body
                return ClientAuthFailure(AuthFailureReason.MALFORMED_REQUEST)
            values.setdefault(name, []).append(value)
    authorization = _header_values(headers, "authorization")
    basic_attempted = bool(authorization)
    form_client_id = values.get("client_id", [None])[0]
    claimed = form_client_id if is_valid_client_id(form_client_id) else None

    def failure(reason: AuthFailureReason, client_id: str | None = None) -> ClientAuthFailure:
        return ClientAuthFailure(reason, client_id or claimed, basic_attempted)

    # RFC 6749 §3.2: parameters MUST NOT be included more than once.
    if any(len(v) > 1 for v in values.values()) or len(authorization) > 1:
        return failure(AuthFailureReason.DUPLICATE_PARAMETER)
    form_secret = values.get("client_secret", [None])[0]
    assertion = values.get("client_assertion", [None])[0]
    assertion_type = values.get("client_assertion_type", [None])[0]

    presented = [
        method
        for method, used in (
            (AuthMethod.CLIENT_SECRET_BASIC, basic_attempted),
            (AuthMethod.CLIENT_SECRET_POST, form_secret is not None),
            (AuthMethod.PRIVATE_KEY_JWT, assertion is not None or assertion_type is not None),
        )
        if used
    ]
    if len(presented) > 1:  # RFC 6749 §2.3: one method per request
        return failure(AuthFailureReason.MULTIPLE_METHODS)
    method = presented[0] if presented else AuthMethod.NONE

    secret: str | None = None
    parsed: _Assertion | None = None
    if method is AuthMethod.CLIENT_SECRET_BASIC:
        basic = _parse_basic(authorization[0])
        if isinstance(basic, AuthFailureReason):
            return failure(basic)
        client_id, secret = basic
        if form_client_id is not None and form_client_id != client_id:
            return failure(AuthFailureReason.CLIENT_ID_MISMATCH)
    elif method is AuthMethod.PRIVATE_KEY_JWT:
        if assertion_type != JWT_BEARER:
            return failure(AuthFailureReason.BAD_ASSERTION_TYPE)
        parsed = _parse_assertion(assertion or "")
        if parsed is None:
            return failure(AuthFailureReason.MALFORMED_ASSERTION)
        issuer_claim = parsed.claims.get("iss")
        if not isinstance(issuer_claim, str):
            return failure(AuthFailureReason.WRONG_ISSUER)
        # RFC 7523 §3: client_id is optional here; when present it must name the same client.
        if form_client_id is not None and form_client_id != issuer_claim:
            return failure(AuthFailureReason.CLIENT_ID_MISMATCH)
        client_id = issuer_claim
    else:
        if form_client_id is None:
            return failure(AuthFailureReason.NO_CLIENT_ID)
        client_id = form_client_id
        secret = form_secret
    if is_valid_client_id(client_id):
        claimed = client_id

    client = await registry.get(client_id, include_disabled=True)
    problem: AuthFailureReason | None = None
    if client is None:
        problem = AuthFailureReason.UNKNOWN_CLIENT
    elif client.disabled:
        problem = AuthFailureReason.CLIENT_DISABLED
    elif client.token_endpoint_auth_method is not method:
        problem = AuthFailureReason.METHOD_MISMATCH
    if problem is not None or client is None:
        if method in _SECRET_METHODS:
            registry.verify_secret(None, secret)  # the same work as a real check: no id oracle
        return failure(problem or AuthFailureReason.UNKNOWN_CLIENT)

    if method in _SECRET_METHODS:
        if not registry.verify_secret(client, secret):
            return failure(AuthFailureReason.WRONG_SECRET)
        return AuthenticatedClient(client, method)
    if method is AuthMethod.NONE:
        return AuthenticatedClient(client, method)

    if parsed is None:  # set in the private_key_jwt branch above; checked again to fail closed
        return failure(AuthFailureReason.MALFORMED_ASSERTION)
    audiences = {url for url in (token_endpoint_url, issuer, endpoint_url) if url}
    reason = await _verify_assertion(
        client, parsed, audiences=audiences, kv=kv, now=clock(), remote_jwks=remote_jwks
    )
    if reason is not None:
        return failure(reason)
    return AuthenticatedClient(client, method)


async def _client_keys(
    client: RegisteredClient, kid: str | None, remote_jwks: RemoteJwks | None
) -> tuple[ClientKey, ...] | None:
    if client.jwks_uri is None:
        return client.keys
    if remote_jwks is None:
        return None
    try:
        return await remote_jwks.keys(client.jwks_uri, kid=kid)
    except JwksUnavailable:
        return None


async def _verify_assertion(
    client: RegisteredClient,
    assertion: _Assertion,
    *,
    audiences: Iterable[str],
    kv: KV,
    now: float,
    remote_jwks: RemoteJwks | None,
) -> AuthFailureReason | None:
    """RFC 7523 §3 and OIDC Core §9 checks of a signed client assertion; None when it passes."""
    header, claims = assertion.header, assertion.claims
    # Header first, before any key is touched. The allowed algorithms are spelled out: never
    # "none", never HS* (an HMAC "signed" with the public key bytes would verify otherwise).
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASSERTION_ALGORITHMS:
        return AuthFailureReason.ALGORITHM_NOT_ALLOWED
    if any(name in header for name in _REFUSED_HEADERS):
        return AuthFailureReason.UNSUPPORTED_HEADER
    typ = header.get("typ")
    if typ is not None and (
        not isinstance(typ, str) or typ.lower().removeprefix("application/") not in _ASSERTION_TYPES
    ):
        return AuthFailureReason.UNSUPPORTED_HEADER
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        return AuthFailureReason.MALFORMED_ASSERTION

    keys = await _client_keys(client, kid, remote_jwks)
    if not keys:
        return AuthFailureReason.KEYS_UNAVAILABLE
    candidates = [k for k in keys if k.kid == kid] if kid is not None else list(keys)
    if not candidates:
        return AuthFailureReason.NO_MATCHING_KEY
    # RFC 8725 §3.1: the registered key decides the algorithm; the header only has to agree.
    candidates = [k for k in candidates if alg in k.algorithms]
    if not candidates:
        return AuthFailureReason.ALGORITHM_NOT_ALLOWED
    if not any(
        _signature_valid(alg, k.key, assertion.signing_input, assertion.signature) for k in candidates
    ):
        return AuthFailureReason.BAD_SIGNATURE

    # Claims, only now that they are known to come from the client.
    if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
        return AuthFailureReason.WRONG_ISSUER
    aud = claims.get("aud")
    aud_values = [aud] if isinstance(aud, str) else aud
    if not isinstance(aud_values, list) or not all(isinstance(a, str) for a in aud_values):
        return AuthFailureReason.WRONG_AUDIENCE
    if not set(aud_values) & set(audiences):
        return AuthFailureReason.WRONG_AUDIENCE
    try:
        exp = _numeric_date(claims, "exp")
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")
    except (ValueError, OverflowError):
        return AuthFailureReason.MALFORMED_ASSERTION
    if exp is None:  # OIDC Core §9: exp REQUIRED
        return AuthFailureReason.MISSING_EXP
    if now >= exp + ASSERTION_LEEWAY:
        return AuthFailureReason.EXPIRED
    if exp > now + MAX_ASSERTION_LIFETIME + ASSERTION_LEEWAY:
        return AuthFailureReason.LIFETIME_TOO_LONG
    if (nbf is not None and now + ASSERTION_LEEWAY < nbf) or (
        iat is not None and iat > now + ASSERTION_LEEWAY
    ):
        return AuthFailureReason.NOT_YET_VALID
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI_LENGTH:  # OIDC Core §9: jti REQUIRED
        return AuthFailureReason.MISSING_JTI
    # RFC 7523 §3 item 7 / OIDC Core §9: single use. Remembered (hashed, per client) until the
    # assertion could no longer pass the exp check anyway; stored last so that forged or
    # expired assertions cannot burn a client's jti values.
    digest = hashlib.sha256(f"{client.client_id}\x00{jti}".encode()).hexdigest()
    ttl = max(1.0, exp + ASSERTION_LEEWAY - now)
    if not await kv.set(_JTI_KEY + digest, b"1", ttl=ttl, only_if_absent=True):
        return AuthFailureReason.REPLAYED_JTI
    return None
