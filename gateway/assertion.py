"""The identity assertion the gateway passes upstream, and its verification by an application.

Specs: JWT RFC 7519 (https://www.rfc-editor.org/rfc/rfc7519), JWS RFC 7515, JWK RFC 7517,
JWA RFC 7518, JWT best current practice RFC 8725, explicit typing RFC 8725 §3.11 / RFC 7515
§4.1.9.

Every request the gateway forwards carries ``X-OneGate-Assertion``: a compact JWS signed by the
deployment's keyvault (:class:`keyvault.signing.SigningKeyring`; ES256 by default, RS256
possible) with the header ``typ: onegate-assertion+jwt`` and the claims

``iss`` the gateway's issuer URL, ``aud`` the application name, ``sub``, ``preferred_username``,
``name``, ``groups``, ``department`` (omitted when the user has none: OpenID Connect Core §5.3.2
omits absent claims rather than sending ``null``), ``departments`` (nearest first), ``acr``,
``amr``, ``auth_time``, ``sid`` (the gateway session), ``iat``, ``nbf``, ``exp`` (at most 60 s
after ``iat``) and ``jti``.

**Issuing** (:class:`AssertionIssuer`) signs once per session, application and identity and
hands the same token out while it is younger than ``reuse_for`` (45 s of a 60 s lifetime), so
the hot path costs a dictionary look-up, not a signature. A changed identity (a step-up raises
``acr``, groups change) misses the cache and is signed afresh; :meth:`AssertionIssuer.forget`
drops a session's tokens at logout or revocation.

**Verifying** (:func:`verify`) is for application owners. It uses python-jose only the way
DESIGN.md allows (a single explicit algorithm, a typed key), because python-jose itself has no
``crit`` handling and guards against key confusion for PEM and SSH keys only. So before python-jose
sees the token, this module: bounds its size and parses the header strictly; requires the
explicit type (an ID token, ``typ: JWT``, must not pass as an assertion: RFC 8725 §3.11);
refuses ``none``, HMAC algorithms, ``crit`` (RFC 7515 §4.1.11: we understand no extension) and
every key-carrying header (``jwk``, ``jku``, ``x5u``, ``x5c``: RFC 8725 §3.10 — keys come from the
JWKS, never from the token); selects the JWK by ``kid``; and takes the algorithm *from the key*
(EC P-256 -> ES256, RSA -> RS256; RFC 8725 §3.1), refusing a header ``alg`` that differs. After
python-jose has checked the signature and the registered claims, the claims are checked again
here, strictly: ``aud`` exactly the application, ``iss``, ``exp``/``nbf``/``iat`` with a small
leeway, ``exp - iat`` at most ``max_lifetime``, and ``sub``, ``sid``, ``jti`` present.

Keys come from a JWK Set the caller passes, or from ``jwks_url`` through :class:`JwksCache`
(stdlib ``urllib`` only, bounded size and time, refetched at most once a minute for an unknown
``kid``).
"""

from __future__ import annotations

import enum
import functools
import math
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from keyvault.errors import TokenInvalid
from keyvault.jws import MIN_RSA_KEY_SIZE, b64url_decode, parse_json_object
from keyvault.signing import SigningKeyring

if TYPE_CHECKING:
    from jose.backends.base import Key as JoseKey

# python-jose (verification, for applications) is imported by verify(): the gateway, which only
# issues assertions, does not load it.

__all__ = [
    "ASSERTION_TYP",
    "MAX_ASSERTION_LENGTH",
    "MAX_LIFETIME",
    "AssertionInvalid",
    "AssertionIssuer",
    "Identity",
    "JwksCache",
    "Reason",
    "verify",
]

ASSERTION_TYP: Final = "onegate-assertion+jwt"
MAX_LIFETIME: Final = 60  # seconds; the issue's ceiling for an assertion's validity
MAX_ASSERTION_LENGTH: Final = 16 * 1024  # characters; a header value, bounded before any parsing
_MAX_HEADER_SEGMENT: Final = 1024  # our header is ~120 characters of base64url
_MAX_KID_LENGTH: Final = 256
# RFC 7515 §4.1.9: a typ without "/" stands for "application/<typ>"; both spellings are one type.
_ACCEPTED_TYPS: Final = frozenset({ASSERTION_TYP, f"application/{ASSERTION_TYP}"})
# Header parameters an assertion never carries. crit: RFC 7515 §4.1.11 (we understand no
# extension, so any listed one must be refused); jku/jwk/x5u/x5c/x5t: keys or key hints from the
# token itself (RFC 8725 §3.10); b64: RFC 7797 changes what is signed; zip/enc: JWE only.
_REFUSED_HEADERS: Final = frozenset(
    {"crit", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "b64", "zip", "enc"}
)
_REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "sid", "jti", "iat", "exp")


# -- the identity and the issuer ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a gateway session belongs to: what the assertion states about the user."""

    sub: str
    username: str
    name: str
    groups: tuple[str, ...]
    department: str | None
    departments: tuple[str, ...]  # nearest first
    acr: str
    amr: tuple[str, ...]
    auth_time: int
    sid: str  # the gateway session id


@dataclass(frozen=True, slots=True)
class _Cached:
    identity: Identity
    token: str
    issued_at: int  # the token's iat


class AssertionIssuer:
    """Signs identity assertions for upstream applications and reuses them per session and app.

    :param keyring: the deployment's signing keys (its active key signs; its JWKS verifies).
    :param issuer: the ``iss`` claim (the gateway's issuer URL).
    :param lifetime: seconds from ``iat`` to ``exp``, 1 to :data:`MAX_LIFETIME`.
    :param reuse_for: seconds a signed token is handed out again for the same session, app and
        identity. Capped at three quarters of ``lifetime``, so a token handed out has at least a
        quarter of its lifetime left (15 s of 60 s) when the application verifies it.
    :param max_cached: most (session, app) tokens kept; the least recently used go first, and
        tokens past ``reuse_for`` are dropped as new ones are signed.
    :param clock: seconds since the epoch (injected for tests).
    """

    def __init__(
        self,
        keyring: SigningKeyring,
        *,
        issuer: str,
        lifetime: int = MAX_LIFETIME,
        reuse_for: int = 45,
        max_cached: int = 50_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("issuer must be a non-empty string")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not 1 <= lifetime <= MAX_LIFETIME:
            raise ValueError(f"lifetime must be an integer from 1 to {MAX_LIFETIME} seconds")
        if isinstance(reuse_for, bool) or not isinstance(reuse_for, int) or reuse_for < 0:
            raise ValueError("reuse_for must be an integer >= 0 seconds")
        if isinstance(max_cached, bool) or not isinstance(max_cached, int) or max_cached < 1:
            raise ValueError("max_cached must be an integer >= 1")
        self._keyring = keyring
        self._issuer = issuer
        self._lifetime = lifetime
        self._reuse_for = min(reuse_for, lifetime * 3 // 4)
        self._max_cached = max_cached
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._apps_by_sid: dict[str, set[str]] = {}

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def lifetime(self) -> int:
        return self._lifetime

    @property
    def reuse_for(self) -> int:
        return self._reuse_for

    def __len__(self) -> int:
        return len(self._cache)

    def issue(self, identity: Identity, app: str) -> str:
        """The assertion for ``identity`` at application ``app`` (its ``aud``): a compact JWT.

        The same string is returned while it is younger than ``reuse_for`` and the identity is
        unchanged; otherwise a new one is signed (RFC 7519 §7.1) and cached.
        """
        key = (identity.sid, app)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if (
                hit is not None
                and 0 <= now - hit.issued_at < self._reuse_for
                and (hit.identity is identity or hit.identity == identity)
            ):
                self._cache.move_to_end(key)
                return hit.token
        # Sign outside the lock: an RS256 signature takes about a millisecond.
        iat = math.floor(now)
        token = self._keyring.sign(self._claims(identity, app, iat), headers={"typ": ASSERTION_TYP})
        with self._lock:
            self._store(key, _Cached(identity, token, iat), now)
        return token

    def forget(self, sid: str) -> None:
        """Drop every cached token of gateway session ``sid`` (logout, revocation)."""
        with self._lock:
            for app in self._apps_by_sid.pop(sid, ()):
                self._cache.pop((sid, app), None)

    def _claims(self, identity: Identity, app: str, iat: int) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": app,
            "sub": identity.sub,
            "preferred_username": identity.username,
            "name": identity.name,
            "groups": list(identity.groups),
            "departments": list(identity.departments),
            "acr": identity.acr,
            "amr": list(identity.amr),
            "auth_time": identity.auth_time,
            "sid": identity.sid,
            "iat": iat,
            "nbf": iat,
            "exp": iat + self._lifetime,
            "jti": secrets.token_urlsafe(16),  # 128 random bits (RFC 7519 §4.1.7)
        }
        if identity.department is not None:
            claims["department"] = identity.department
        return claims

    def _store(self, key: tuple[str, str], entry: _Cached, now: float) -> None:
        """Insert under the lock; evict stale entries from the LRU end, then the oldest beyond the bound."""
        cache = self._cache
        cache[key] = entry
        cache.move_to_end(key)
        self._apps_by_sid.setdefault(key[0], set()).add(key[1])
        # Each entry is evicted at most once, so this costs O(1) amortised per signature.
        while cache:
            oldest_key, oldest = next(iter(cache.items()))
            if len(cache) <= self._max_cached and 0 <= now - oldest.issued_at < self._reuse_for:
                break
            del cache[oldest_key]
            apps = self._apps_by_sid.get(oldest_key[0])
            if apps is not None:
                apps.discard(oldest_key[1])
                if not apps:
                    del self._apps_by_sid[oldest_key[0]]


# -- verification errors --------------------------------------------------------------------------


class Reason(enum.StrEnum):
    """Why an assertion was refused: a closed vocabulary, safe to log and to show."""

    MALFORMED = "malformed"  # not a compact JWS of bounded size, bad base64url/JSON, bad claim type
    TYP = "typ"  # not typed onegate-assertion+jwt (e.g. an ID token)
    ALG = "alg"  # none, HMAC, or an alg other than the key's
    HEADER = "header"  # crit or a key-carrying header parameter
    KEY = "key"  # no usable key with this kid in the JWK Set
    SIGNATURE = "signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    AUDIENCE = "audience"
    ISSUER = "issuer"
    LIFETIME = "lifetime"  # exp - iat longer than allowed
    CLAIMS = "claims"  # a required claim is missing or of the wrong type
    JWKS_UNAVAILABLE = "jwks_unavailable"  # the JWK Set could not be fetched


_MESSAGES: Final[Mapping[Reason, str]] = {
    Reason.MALFORMED: "the assertion is malformed",
    Reason.TYP: f"the assertion is not typed {ASSERTION_TYP!r}",
    Reason.ALG: "the assertion's algorithm is not the one of its key",
    Reason.HEADER: "the assertion carries a header parameter that is refused",
    Reason.KEY: "the assertion's signing key is not published",
    Reason.SIGNATURE: "the assertion's signature does not verify",
    Reason.EXPIRED: "the assertion has expired",
    Reason.NOT_YET_VALID: "the assertion is not valid yet",
    Reason.AUDIENCE: "the assertion is for another application",
    Reason.ISSUER: "the assertion is from another issuer",
    Reason.LIFETIME: "the assertion is valid for longer than allowed",
    Reason.CLAIMS: "the assertion lacks a required claim or has a claim of the wrong type",
    Reason.JWKS_UNAVAILABLE: "the signing keys could not be fetched",
}


class AssertionInvalid(Exception):
    """An assertion was refused. ``reason`` is a :class:`Reason`; the message names no secret."""

    def __init__(self, reason: Reason, detail: str | None = None) -> None:
        self.reason = reason
        message = _MESSAGES[reason]
        super().__init__(f"{message} ({detail})" if detail else message)


# -- keys ------------------------------------------------------------------------------------------


def _algorithm_of(jwk: Mapping[str, Any]) -> str:
    """The one algorithm a published JWK verifies with (RFC 8725 §3.1), or AssertionInvalid."""
    kty = jwk.get("kty")
    if kty == "EC" and jwk.get("crv") == "P-256":
        alg = "ES256"  # RFC 7518 §3.4
    elif kty == "RSA":
        alg = "RS256"  # RFC 7518 §3.3
    else:
        raise AssertionInvalid(Reason.KEY, "unsupported key type")
    if jwk.get("alg", alg) != alg:  # RFC 7517 §4.4: when present, it must agree
        raise AssertionInvalid(Reason.KEY, "the key's alg disagrees with its type")
    if jwk.get("use", "sig") != "sig":  # RFC 7517 §4.2
        raise AssertionInvalid(Reason.KEY, "the key is not for signatures")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):  # RFC 7517 §4.3
        raise AssertionInvalid(Reason.KEY, "the key is not for verification")
    return alg


def _public_key(jwk: Mapping[str, Any], alg: str) -> JoseKey:
    """A python-jose key built from the public members only (a published ``d`` is never used)."""
    if alg == "ES256":
        members: tuple[str, ...] = (str(jwk.get("x")), str(jwk.get("y")))
    else:
        members = (str(jwk.get("n")), str(jwk.get("e")))
    return _construct(alg, members)


@functools.lru_cache(maxsize=64)
def _construct(alg: str, members: tuple[str, ...]) -> JoseKey:
    # Cached: building a key object (point or modulus checks) costs more than a verification.
    from jose import jwk as jose_jwk
    from jose.backends.base import Key as JoseKey
    from jose.exceptions import JOSEError

    try:
        for member in members:
            b64url_decode(member, "key member")
        if alg == "ES256":
            x, y = members
            key = jose_jwk.construct({"kty": "EC", "crv": "P-256", "x": x, "y": y}, algorithm=alg)
        else:
            n, e = members
            if len(b64url_decode(n, "key member")) * 8 < MIN_RSA_KEY_SIZE:
                raise AssertionInvalid(Reason.KEY, f"RSA keys need at least {MIN_RSA_KEY_SIZE} bits")
            key = jose_jwk.construct({"kty": "RSA", "n": n, "e": e}, algorithm=alg)
    except (TokenInvalid, JOSEError, ValueError, TypeError) as e:
        raise AssertionInvalid(Reason.KEY, "the published key does not parse") from e
    if not isinstance(key, JoseKey):  # pragma: no cover - python-jose always returns a Key
        raise AssertionInvalid(Reason.KEY, "the published key does not parse")
    return key


def _index_jwks(jwks: Mapping[str, Any]) -> dict[str, Mapping[str, Any] | None]:
    """kid -> JWK of a JWK Set (RFC 7517 §5); a kid listed twice maps to None (ambiguous)."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise AssertionInvalid(Reason.KEY, "the JWK Set has no keys list")
    out: dict[str, Mapping[str, Any] | None] = {}
    for entry in keys[:100]:
        if isinstance(entry, Mapping) and isinstance(kid := entry.get("kid"), str):
            out[kid] = None if kid in out else entry
    return out


class JwksCache:
    """A JWK Set fetched from ``url`` (the IdP's ``jwks_uri`` or the gateway's ``/.onegate/jwks``).

    Fetched with the standard library (``urllib``; no redirects followed, ``timeout`` seconds,
    at most ``max_bytes``). Kept for ``max_age`` seconds; an unknown ``kid`` triggers a refetch
    at most once per ``min_refetch_interval`` seconds (so a flood of forged kids costs the IdP
    one request a minute); when a refresh fails the keys already held stay usable for
    ``max_stale`` seconds, then every verification fails closed. Thread-safe.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        max_bytes: int = 256 * 1024,
        max_age: float = 300.0,
        min_refetch_interval: float = 60.0,
        max_stale: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.lower().startswith(("https://", "http://")):
            raise ValueError("jwks_url must be an http:// or https:// URL")
        self.url = url
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._min_interval = min_refetch_interval
        self._max_stale = max_stale
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, Mapping[str, Any] | None] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self.fetches = 0  # attempts made (for operators and tests)

    def key(self, kid: str) -> Mapping[str, Any] | None:
        """The JWK with ``kid``, or None when the set (even refetched) does not hold it.

        Raises :class:`AssertionInvalid` (``jwks_unavailable``) when no usable set is held.
        """
        now = self._clock()
        with self._lock:
            fresh = self._fetched_at is not None and now - self._fetched_at < self._max_age
            if fresh and kid in self._keys:
                return self._keys[kid]
            if self._may_fetch(now):
                self._fetch(now)
            if self._fetched_at is None or now - self._fetched_at >= self._max_stale:
                raise AssertionInvalid(Reason.JWKS_UNAVAILABLE)
            return self._keys.get(kid)

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_interval

    def _fetch(self, now: float) -> None:
        self._attempted_at = now
        self.fetches += 1
        try:
            keys = _index_jwks(self._download())
        except (AssertionInvalid, OSError, ValueError, TokenInvalid):
            return  # keep what is held; key() decides whether it is still usable
        self._keys = keys
        self._fetched_at = now

    def _download(self) -> dict[str, Any]:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked in __init__
        with _OPENER.open(request, timeout=self._timeout) as response:
            if response.status != 200:
                raise ValueError("unexpected status")
            body = response.read(self._max_bytes + 1)
        if len(body) > self._max_bytes:
            raise ValueError("JWK Set too large")
        return parse_json_object(body, "JWK Set")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The JWK Set URL is configured exactly; a redirect could lead anywhere, so none is followed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER: Final = urllib.request.build_opener(_NoRedirect)
_CACHES_BY_URL: OrderedDict[str, JwksCache] = OrderedDict()
_CACHES_LOCK: Final = threading.Lock()
_MAX_URLS: Final = 16


def _cache_for(url: str) -> JwksCache:
    """One shared :class:`JwksCache` per URL, so ``verify(jwks_url=...)`` fetches once, not per call."""
    with _CACHES_LOCK:
        cache = _CACHES_BY_URL.get(url)
        if cache is None:
            cache = _CACHES_BY_URL[url] = JwksCache(url)
            while len(_CACHES_BY_URL) > _MAX_URLS:
                _CACHES_BY_URL.popitem(last=False)
        _CACHES_BY_URL.move_to_end(url)
        return cache


# -- verify -----------------------------------------------------------------------------------------


def verify(
    token: str,
    *,
    audience: str,
    issuer: str,
    jwks: Mapping[str, Any] | None = None,
    jwks_url: str | None = None,
    jwks_cache: JwksCache | None = None,
    leeway: int = 5,
    max_lifetime: int = 120,
) -> dict[str, Any]:
    """Verify an ``X-OneGate-Assertion`` for application ``audience``; return its claims.

    Give the keys as exactly one of: ``jwks`` (a JWK Set you hold), ``jwks_url`` (fetched and
    cached per URL, see :class:`JwksCache`) or ``jwks_cache`` (your own cache). ``leeway``
    (seconds) allows for clock skew on ``exp``, ``nbf`` and ``iat``; ``max_lifetime`` bounds
    ``exp - iat``. Raises :class:`AssertionInvalid` with a :class:`Reason`.
    """
    if not isinstance(audience, str) or not audience:
        raise ValueError("audience must be a non-empty string")
    if not isinstance(issuer, str) or not issuer:
        raise ValueError("issuer must be a non-empty string")
    if sum(x is not None for x in (jwks, jwks_url, jwks_cache)) != 1:
        raise ValueError("give exactly one of jwks, jwks_url, jwks_cache")
    if not 0 <= leeway <= 300 or not 0 < max_lifetime <= 3600:
        raise ValueError("leeway must be 0..300 s and max_lifetime 1..3600 s")

    header, payload = _parse(token)
    kid = _check_header(header)
    if jwks is not None:
        jwk = _index_jwks(jwks).get(kid)
    else:
        jwk = (jwks_cache or _cache_for(str(jwks_url))).key(kid)
    if jwk is None:
        raise AssertionInvalid(Reason.KEY, "unknown or ambiguous kid")
    alg = _algorithm_of(jwk)
    # RFC 8725 §3.1: the key decides the algorithm; the header may only agree with it.
    if header["alg"] != alg:
        raise AssertionInvalid(Reason.ALG)
    key = _public_key(jwk, alg)
    from jose import jwt as jose_jwt
    from jose.exceptions import ExpiredSignatureError, JWSError, JWTError

    try:
        claims = jose_jwt.decode(
            token,
            key,
            algorithms=[alg],  # exactly one: the key's own
            audience=audience,
            issuer=issuer,
            options={
                "verify_signature": True,
                "verify_aud": True,
                "verify_iss": True,
                "verify_exp": True,
                "verify_nbf": True,
                "verify_iat": True,
                "verify_sub": True,
                "verify_jti": True,
                "verify_at_hash": True,  # an assertion has no at_hash; one present is refused
                # python-jose only checks aud/iss/exp when present: require them.
                "require_aud": True,
                "require_iss": True,
                "require_exp": True,
                "require_iat": True,
                "require_sub": True,
                "require_jti": True,
                "require_nbf": False,  # checked when present; required: iat (below)
                "require_at_hash": False,
                "leeway": leeway,
            },
        )
    except ExpiredSignatureError:
        # python-jose checks claims only after the signature verified.
        raise AssertionInvalid(Reason.EXPIRED) from None
    except JWTError as e:
        if isinstance(e.__context__, JWSError):  # jwt.decode wraps the JWS failure
            raise AssertionInvalid(Reason.SIGNATURE) from None
        # The signature verified, so the payload is authentic: say which claim is wrong.
        _check_claims(payload, audience, issuer, leeway, max_lifetime)
        raise AssertionInvalid(Reason.CLAIMS) from None
    # The strict parse of the same verified bytes (no duplicate members) is what is checked again
    # and returned; python-jose's own result differs from it only where the strict parse refused.
    del claims
    _check_claims(payload, audience, issuer, leeway, max_lifetime)
    return payload


def _parse(token: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a bounded compact JWS, strictly decoded (RFC 7515 §3.1, §5.2)."""
    if not isinstance(token, str) or len(token) > MAX_ASSERTION_LENGTH:
        raise AssertionInvalid(Reason.MALFORMED)
    parts = token.split(".")
    if len(parts) != 3 or len(parts[0]) > _MAX_HEADER_SEGMENT:  # 5 parts would be JWE
        raise AssertionInvalid(Reason.MALFORMED)
    try:
        header = parse_json_object(b64url_decode(parts[0], "header"), "header")
        payload = parse_json_object(b64url_decode(parts[1], "payload"), "payload")
        b64url_decode(parts[2], "signature")
    except TokenInvalid:
        raise AssertionInvalid(Reason.MALFORMED) from None
    # NumericDate types are checked before python-jose converts them (it calls int() on them).
    for name in ("exp", "nbf", "iat", "auth_time"):
        if name in payload and not _is_numeric_date(payload[name]):
            raise AssertionInvalid(Reason.MALFORMED)
    return header, payload


def _check_header(header: Mapping[str, Any]) -> str:
    """Everything decided from the header alone; returns the kid."""
    typ = header.get("typ")
    # RFC 8725 §3.11 explicit typing; RFC 7515 §4.1.9: compared case-insensitively.
    if not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPS:
        raise AssertionInvalid(Reason.TYP)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none" or alg.upper().startswith("HS"):
        # RFC 8725 §3.2 (none) and §2.1 (HMAC with a public key as the secret).
        raise AssertionInvalid(Reason.ALG)
    if refused := _REFUSED_HEADERS.intersection(header):
        raise AssertionInvalid(Reason.HEADER, ", ".join(sorted(refused)))
    kid = header.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= _MAX_KID_LENGTH:
        raise AssertionInvalid(Reason.KEY, "no kid")
    return kid


def _check_claims(
    claims: Mapping[str, Any], audience: str, issuer: str, leeway: int, max_lifetime: int
) -> None:
    """The registered claims, strictly (RFC 7519 §4.1), on a payload whose signature verified."""
    missing = [name for name in _REQUIRED_CLAIMS if name not in claims]
    if missing:
        raise AssertionInvalid(Reason.CLAIMS, "missing " + ", ".join(missing))
    for name in ("sub", "sid", "jti"):
        value = claims[name]
        if not isinstance(value, str) or not value:
            raise AssertionInvalid(Reason.CLAIMS, f"{name} must be a non-empty string")
    if claims["iss"] != issuer:  # RFC 7519 §4.1.1: case-sensitive
        raise AssertionInvalid(Reason.ISSUER)
    # RFC 7519 §4.1.3 allows a list; an assertion is for exactly one application.
    if claims["aud"] != audience or not isinstance(claims["aud"], str):
        raise AssertionInvalid(Reason.AUDIENCE)
    now = math.floor(time.time())  # whole seconds, as python-jose compares
    exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf")
    if now >= exp + leeway:  # RFC 7519 §4.1.4: "on or after" exp is refused
        raise AssertionInvalid(Reason.EXPIRED)
    if (nbf is not None and now + leeway < nbf) or now + leeway < iat:  # §4.1.5, §4.1.6
        raise AssertionInvalid(Reason.NOT_YET_VALID)
    if exp - iat > max_lifetime:
        raise AssertionInvalid(Reason.LIFETIME)


def _is_numeric_date(value: object) -> bool:
    # RFC 7519 §2: a JSON number; bool is an int subclass in Python and is not one.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and abs(value) < 1e12
