"""Tokens: the JWTs the IdP signs, and the one-time codes, grants and refresh tokens it keeps.

JWTs (all signed by the keyring, ``alg``/``kid`` of its active key; RFC 8725 §3.11 ``typ``):

* access tokens, RFC 9068 (``typ: at+jwt``): ``iss sub aud client_id scope iat exp jti``, and
  for a user ``sid auth_time acr amr`` and ``grant_id`` (a private claim, RFC 7519 §4.3: the
  grant the token came from, so revoking the grant revokes the token at userinfo and
  introspection). ``aud`` is the client itself (no resource indicators yet). Resource
  servers verify them with the JWKS alone; the IdP also checks revocation.
* ID tokens, OIDC Core §2 (``typ: JWT``), and logout tokens, Back-Channel Logout §2.4
  (``typ: logout+jwt``).

State in the KV store (keys hold SHA-256 digests of codes and refresh tokens, never the
values, which are 256-bit random strings, so a plain digest cannot be reversed)::

    oauth-code:<digest>      an authorization code, for code_lifetime; once redeemed it stays,
                             marked with the grant it produced, as long as that grant can
                             live, so a second redemption is recognised (RFC 6749 §4.1.2)
    oauth-grant:<id>         what a user allowed a client in one authorization: user, scopes,
                             session, auth_time/acr/amr, released claims. A refresh-token
                             family is a grant: deleting it revokes every refresh token and
                             access token that came from it
    oauth-refresh:<digest>   a refresh token: its grant, expiry and whether it was used. Each
                             refresh uses it up (compare-and-set) and returns a new one
                             (rotation); presenting a used one revokes the grant (reuse
                             detection, OAuth 2.0 Security BCP RFC 9700 §4.14.2)
    oauth-revoked:<jti>      an access token revoked on its own (RFC 7009), until it expires
    oauth-sid-ended:<sid>    an SSO session that was ended (logout, administrator, SOC)

Refresh tokens and SSO sessions (a decision, documented in docs): a refresh token of a grant
*without* ``offline_access`` works only while its SSO session is alive — it dies with the
session's idle or absolute timeout and with any revocation, and each refresh counts as
activity of the session. A grant *with* ``offline_access`` (OIDC Core §11) survives the
session's natural end, but never its revocation: an ended session (``oauth-sid-ended``)
stops every token that carries its ``sid``, offline or not, because revocation is a security
action (sign out everywhere, the SOC's response) that must reach everything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from core.kv import KV
from core.settings import IdpSettings
from idp.errors import IdTokenHintInvalid, TokenRejected
from keyvault import SigningKeyring, TokenInvalid

__all__ = [
    "ACCESS_TOKEN_TYP",
    "LOGOUT_TOKEN_TYP",
    "CodeRecord",
    "GrantRecord",
    "RefreshRecord",
    "TokenService",
    "at_hash",
    "digest",
]

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 - a media type (RFC 9068 §2.1), not a secret
ID_TOKEN_TYP = "JWT"  # noqa: S105 - a media type, not a secret
LOGOUT_TOKEN_TYP = "logout+jwt"  # noqa: S105 - a media type (Back-Channel Logout §2.4)
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# The longest a refresh token may live (the bound of idp.refresh_token_lifetime): how long an
# ended session's marker must outlast every token that could name it.
MAX_REFRESH_LIFETIME = 30 * 24 * 3600
MAX_TOKEN_LIFETIME = 24 * 3600
LOGOUT_TOKEN_LIFETIME = 120  # Back-Channel Logout §2.4: "a short time"
_CLOCK_SKEW = 30.0  # for tokens that others hold (hints); ours are checked against our own clock

T = TypeVar("T")


def digest(value: str) -> str:
    """The KV handle of a code or refresh token (hex SHA-256)."""
    return hashlib.sha256(value.encode()).hexdigest()


def at_hash(access_token: str) -> str:
    """OIDC Core §3.1.3.6: left half of the hash of the access token, base64url.

    SHA-256 because every algorithm the keyring signs with (ES256, RS256) uses it.
    """
    half = hashlib.sha256(access_token.encode("ascii")).digest()[:16]
    return base64.urlsafe_b64encode(half).rstrip(b"=").decode("ascii")


def _dump(record: Any) -> bytes:
    return json.dumps(asdict(record), ensure_ascii=False, separators=(",", ":")).encode()


def _load(cls: type[T], raw: bytes) -> T:
    data = json.loads(raw)
    for name in ("amr", "id_token_claims", "userinfo_claims"):
        if name in data:
            data[name] = tuple(data[name])
    return cls(**data)


@dataclass(frozen=True)
class CodeRecord:
    """An authorization code (RFC 6749 §4.1.2), bound to client, redirect_uri and PKCE."""

    client_id: str
    redirect_uri: str
    scope: str
    user_id: int
    sid: str
    auth_time: float
    acr: str
    amr: tuple[str, ...]
    nonce: str | None
    code_challenge: str | None
    id_token_claims: tuple[str, ...]
    userinfo_claims: tuple[str, ...]
    created_at: float
    expires_at: float
    redeemed_by: str | None = None  # the grant the first redemption produced

    # authlib's AuthorizationCodeMixin
    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass(frozen=True)
class GrantRecord:
    """One authorization of a client by a user; the family of its refresh tokens."""

    id: str
    client_id: str
    user_id: int
    sub: str
    username: str
    sid: str
    scope: str
    auth_time: float
    acr: str
    amr: tuple[str, ...]
    nonce: str | None
    id_token_claims: tuple[str, ...]
    userinfo_claims: tuple[str, ...]
    offline: bool
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class RefreshRecord:
    grant_id: str
    client_id: str
    scope: str
    issued_at: float
    expires_at: float
    used: bool = False

    # authlib's TokenMixin, as far as its refresh grant uses it
    def check_client(self, client: Any) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope


@dataclass(frozen=True)
class Lifetimes:
    """Token lifetimes of one client (its own setting, else the IdP default), in seconds."""

    access: int
    id_token: int
    refresh: int
    code: int


class TokenService:
    """Sign and check the IdP's JWTs; keep codes, grants and refresh tokens in the KV store."""

    def __init__(
        self,
        *,
        issuer: str,
        kv: KV,
        signing: SigningKeyring,
        settings: IdpSettings,
        clock: Callable[[], float] = time.time,
        token_urlsafe: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self.issuer = issuer
        self._kv = kv
        self._signing = signing
        self._settings = settings
        self._clock = clock
        self._token = token_urlsafe

    def now(self) -> float:
        return self._clock()

    def new_secret(self) -> str:
        """A fresh code, refresh token or request id: 256 bits, URL-safe."""
        return self._token(32)

    def new_id(self) -> str:
        return self._token(16)

    def lifetimes(
        self, *, access: int | None = None, id_token: int | None = None, refresh: int | None = None
    ) -> Lifetimes:
        s = self._settings
        return Lifetimes(
            access=min(access or s.access_token_lifetime, MAX_TOKEN_LIFETIME),
            id_token=min(id_token or s.id_token_lifetime, MAX_TOKEN_LIFETIME),
            refresh=min(refresh or s.refresh_token_lifetime, MAX_REFRESH_LIFETIME),
            code=s.code_lifetime,
        )

    # -- JWTs -------------------------------------------------------------------------------

    def access_token(
        self,
        *,
        client_id: str,
        sub: str,
        scope: str,
        lifetime: int,
        sid: str | None = None,
        auth_time: float | None = None,
        acr: str | None = None,
        amr: tuple[str, ...] | None = None,
        grant_id: str | None = None,
    ) -> str:
        """An RFC 9068 JWT access token."""
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": client_id,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + lifetime,
            "jti": self.new_id(),
        }
        if sid is not None:
            claims["sid"] = sid
        if auth_time is not None:
            claims["auth_time"] = int(auth_time)
        if acr:
            claims["acr"] = acr
        if amr:
            claims["amr"] = list(amr)
        if grant_id is not None:
            claims["grant_id"] = grant_id
        return self._signing.sign(claims, {"typ": ACCESS_TOKEN_TYP})

    def grant_access_token(self, grant: GrantRecord, *, scope: str, lifetime: int) -> str:
        """An access token of ``grant`` (its user, session and authentication), for ``scope``."""
        return self.access_token(
            client_id=grant.client_id,
            sub=grant.sub,
            scope=scope,
            lifetime=lifetime,
            sid=grant.sid,
            auth_time=grant.auth_time,
            acr=grant.acr,
            amr=grant.amr,
            grant_id=grant.id,
        )

    def id_token(self, *, client_id: str, lifetime: int, claims: Mapping[str, Any]) -> str:
        """An ID token (OIDC Core §2) for ``client_id`` with the given user/session claims."""
        now = int(self._clock())
        body = {**claims, "iss": self.issuer, "aud": client_id, "iat": now, "exp": now + lifetime}
        return self._signing.sign(body, {"typ": ID_TOKEN_TYP})

    def logout_token(self, *, client_id: str, sub: str, sid: str) -> str:
        """A Back-Channel Logout 1.0 §2.4 logout token: never a ``nonce`` (§2.4, so it cannot
        pass for an ID token), an ``events`` member, a short lifetime, a fresh ``jti``."""
        now = int(self._clock())
        claims = {
            "iss": self.issuer,
            "aud": client_id,
            "iat": now,
            "exp": now + LOGOUT_TOKEN_LIFETIME,
            "jti": self.new_id(),
            "sub": sub,
            "sid": sid,
            "events": {BACKCHANNEL_EVENT: {}},
        }
        return self._signing.sign(claims, {"typ": LOGOUT_TOKEN_TYP})

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """The claims of one of our live access tokens (signature, typ, iss, exp); revocation
        is :meth:`is_active`'s. Raises :class:`TokenRejected`."""
        try:
            # typ at+jwt: an ID token or logout token is never accepted as an access token
            # (RFC 9068 §4, RFC 8725 §3.11). Our own clock signed it: no leeway.
            claims = self._signing.verify(token, leeway=0, require_exp=True, expected_typ=ACCESS_TOKEN_TYP)
        except TokenInvalid as e:
            raise TokenRejected("invalid_access_token") from e
        if claims.get("iss") != self.issuer or not isinstance(claims.get("client_id"), str):
            raise TokenRejected("invalid_access_token")
        return claims

    def verify_id_token_hint(self, token: str) -> dict[str, Any]:
        """The claims of an ID token we issued, expired or not (and nothing else).

        Expiry is deliberately not checked: RP-Initiated Logout §2 says the OP SHOULD accept
        expired ID tokens as hints, and OIDC Core §3.1.2.1 uses them to name a user, not to
        authenticate one. Everything else is: our key (by kid, with the key's own algorithm, so
        ``alg: none`` and HS256-with-our-public-key fail), the signature, ``typ: JWT`` (an
        access or logout token is refused), our ``iss``, a ``sub`` and an ``aud``, and
        ``iat``/``nbf`` not in the future. Keys are published until ``retire_until``, which
        bounds how old a hint can be.
        """
        try:
            claims = self._signing.verify(token, leeway=math.inf, require_exp=True, expected_typ=ID_TOKEN_TYP)
        except TokenInvalid as e:
            raise IdTokenHintInvalid("invalid_id_token_hint") from e
        now = self._clock()
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if (
            claims.get("iss") != self.issuer
            or not isinstance(claims.get("sub"), str)
            or not isinstance(audiences, list)
            or not audiences
            or not all(isinstance(a, str) for a in audiences)
            or "events" in claims  # a logout token, whatever its typ says
        ):
            raise IdTokenHintInvalid("invalid_id_token_hint")
        for name in ("iat", "nbf"):
            value = claims.get(name)
            if value is not None and float(value) > now + _CLOCK_SKEW:
                raise IdTokenHintInvalid("invalid_id_token_hint")
        return claims

    async def is_active(self, claims: Mapping[str, Any]) -> bool:
        """Whether a verified access token is still good: not revoked by ``jti``, its grant
        not revoked (nor expired), its session not ended."""
        jti = claims.get("jti")
        if not isinstance(jti, str) or await self._kv.get(f"oauth-revoked:{jti}") is not None:
            return False
        grant_id = claims.get("grant_id")
        if grant_id is not None and (not isinstance(grant_id, str) or await self.get_grant(grant_id) is None):
            return False
        sid = claims.get("sid")
        return sid is None or not await self.session_ended(str(sid))

    async def revoke_access_token(self, claims: Mapping[str, Any]) -> None:
        """RFC 7009: revoke one access token until it would have expired anyway."""
        ttl = float(claims.get("exp", 0)) - self._clock() + _CLOCK_SKEW
        if ttl > 0:
            await self._kv.set(f"oauth-revoked:{claims['jti']}", b"1", ttl=ttl)

    # -- sessions ----------------------------------------------------------------------------

    async def end_session(self, sid: str) -> None:
        """Stop every token of SSO session ``sid`` (a session listener calls this)."""
        await self._kv.set(f"oauth-sid-ended:{sid}", b"1", ttl=MAX_REFRESH_LIFETIME)

    async def session_ended(self, sid: str) -> bool:
        return await self._kv.get(f"oauth-sid-ended:{sid}") is not None

    # -- authorization codes -------------------------------------------------------------------

    async def store_code(self, code: str, record: CodeRecord) -> None:
        await self._kv.set(
            f"oauth-code:{digest(code)}", _dump(record), ttl=record.expires_at - record.created_at
        )

    async def read_code(self, code: str) -> tuple[bytes, CodeRecord] | None:
        raw = await self._kv.get(f"oauth-code:{digest(code)}")
        return None if raw is None else (raw, _load(CodeRecord, raw))

    async def redeem_code(self, code: str, raw: bytes, record: CodeRecord, grant: GrantRecord) -> bool:
        """Mark the code used by ``grant``, atomically: False when another redemption won.

        The record stays (not deleted) as long as the grant may live, so a later attempt is
        recognised as a reuse and can revoke what this one issued (RFC 6749 §4.1.2).
        """
        used = replace(record, redeemed_by=grant.id)
        ttl = max(grant.expires_at - self._clock(), 1.0)
        return await self._kv.compare_and_set(f"oauth-code:{digest(code)}", raw, _dump(used), ttl=ttl)

    # -- grants (refresh-token families) -------------------------------------------------------

    async def store_grant(self, grant: GrantRecord) -> None:
        ttl = max(grant.expires_at - self._clock(), 1.0)
        await self._kv.set(f"oauth-grant:{grant.id}", _dump(grant), ttl=ttl)

    async def get_grant(self, grant_id: str) -> GrantRecord | None:
        found = await self.read_grant(grant_id)
        return None if found is None else found[1]

    async def read_grant(self, grant_id: str) -> tuple[bytes, GrantRecord] | None:
        if not grant_id or len(grant_id) > 64:
            return None
        raw = await self._kv.get(f"oauth-grant:{grant_id}")
        return None if raw is None else (raw, _load(GrantRecord, raw))

    async def extend_grant(self, raw: bytes, grant: GrantRecord) -> bool:
        """Replace the grant read as ``raw`` (a later expiry); False when it was revoked meanwhile."""
        ttl = max(grant.expires_at - self._clock(), 1.0)
        return await self._kv.compare_and_set(f"oauth-grant:{grant.id}", raw, _dump(grant), ttl=ttl)

    async def revoke_grant(self, grant_id: str) -> GrantRecord | None:
        """Revoke a whole family: its refresh tokens fail, its access tokens turn inactive."""
        raw = await self._kv.get_and_delete(f"oauth-grant:{grant_id}")
        return None if raw is None else _load(GrantRecord, raw)

    # -- refresh tokens -------------------------------------------------------------------------

    async def store_refresh(self, token: str, record: RefreshRecord) -> None:
        ttl = max(record.expires_at - record.issued_at, 1.0)
        await self._kv.set(f"oauth-refresh:{digest(token)}", _dump(record), ttl=ttl)

    async def read_refresh(self, token: str) -> tuple[bytes, RefreshRecord] | None:
        if not token or len(token) > 512:
            return None
        raw = await self._kv.get(f"oauth-refresh:{digest(token)}")
        return None if raw is None else (raw, _load(RefreshRecord, raw))

    async def use_refresh(self, token: str, raw: bytes, record: RefreshRecord) -> bool:
        """Mark a refresh token used, atomically: False when it was used meanwhile (reuse)."""
        ttl = max(record.expires_at - self._clock(), 1.0)
        used = replace(record, used=True)
        return await self._kv.compare_and_set(f"oauth-refresh:{digest(token)}", raw, _dump(used), ttl=ttl)
