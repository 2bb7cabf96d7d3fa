"""The authorization code grant (RFC 6749 §4.1) with PKCE (RFC 7636) and OpenID Connect.

* Codes are 256-bit random, live ``idp.code_lifetime`` seconds, and are bound to the
  client, the exact ``redirect_uri`` and the PKCE challenge (RFC 6749 §4.1.3).
* PKCE: only ``S256`` (RFC 9700 §2.1.1: ``plain`` refused with ``invalid_request``);
  required for public clients and every client with ``require_pkce``; a verifier without a
  challenge is refused too (RFC 9700 §4.8, downgrade). Verifiers are compared in constant time.
* Single use: the first redemption marks the code with the grant it produced
  (compare-and-set, after authlib accepted the request); a second redemption fails with
  ``invalid_grant`` and revokes that grant — every refresh token and, at userinfo and
  introspection, every access token it issued — and emits ``code-reused`` (RFC 6749 §4.1.2).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749 import grants as rfc6749_grants
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge

from idp.grants import bearer
from idp.server import TOKEN_AUTH_METHODS, answering
from idp.tokens import CodeRecord, GrantRecord, RefreshRecord

if TYPE_CHECKING:
    from idp.integrations.starlette import OAuth2Response
    from idp.server import OneGateRequest, Provider

__all__ = ["AuthorizationCodeGrant", "S256CodeChallenge", "commit", "prefetch"]


def _s256_matches(verifier: str, challenge: str) -> bool:
    return hmac.compare_digest(create_s256_code_challenge(verifier).encode(), challenge.encode())


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE with ``S256`` only, required per client (see the module docstring)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    CODE_CHALLENGE_METHODS: ClassVar[dict[str, Callable[[str, str], bool]]] = {"S256": _s256_matches}

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str | None) -> None:
        request: OneGateRequest = grant.request
        data = request.payload.data
        method = data.get("code_challenge_method")
        if method == "plain":
            raise InvalidRequestError("'code_challenge_method' plain is not allowed: use S256.")
        super().validate_code_challenge(grant, redirect_uri)
        if not data.get("code_challenge"):
            if request.client.requires_pkce:
                raise InvalidRequestError("Missing 'code_challenge': PKCE with S256 is required.")
        elif method != "S256":
            # RFC 7636 §4.3 would default to plain; we accept S256 only, stated explicitly.
            raise InvalidRequestError("'code_challenge_method' must be S256.")

    def get_authorization_code_challenge(self, authorization_code: CodeRecord) -> str | None:
        return authorization_code.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: CodeRecord) -> str | None:
        return "S256" if authorization_code.code_challenge else None


class AuthorizationCodeGrant(rfc6749_grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(TOKEN_AUTH_METHODS)
    request: OneGateRequest

    # -- authorization endpoint -------------------------------------------------------------

    def validate_authorization_request(self) -> str:
        with answering(self.request):
            redirect_uri: str = super().validate_authorization_request()
            return redirect_uri

    @staticmethod
    def validate_authorization_redirect_uri(request: OneGateRequest, client: Any) -> str:
        # authlib's version quotes the URI in error_description; an odd character there
        # makes it raise ValueError. Never redirected: the URI is what is wrong (RFC 6749 §4.1.2.1).
        redirect_uri = request.payload.redirect_uri
        if not redirect_uri:
            raise InvalidRequestError("Missing 'redirect_uri'.")
        if not client.check_redirect_uri(redirect_uri):
            raise InvalidRequestError("'redirect_uri' is not registered for this client.")
        return str(redirect_uri)

    def generate_authorization_code(self) -> str:
        return str(self.server.tokens.new_secret())

    def save_authorization_code(self, code: str, request: OneGateRequest) -> None:
        session = request.session
        if session is None:  # pragma: no cover - the endpoint only issues with a session
            raise RuntimeError("an authorization code needs the SSO session")
        tokens = self.server.tokens
        now = tokens.now()
        id_claims, userinfo_claims = request.released_claims
        record = CodeRecord(
            client_id=request.client.client_id,
            redirect_uri=str(request.payload.redirect_uri),
            scope=request.scope or "",
            user_id=session.user_id,
            sid=session.sid,
            auth_time=session.auth_time,
            acr=session.acr,
            amr=tuple(session.amr),
            nonce=request.payload.data.get("nonce"),
            code_challenge=request.payload.data.get("code_challenge"),
            id_token_claims=id_claims,
            userinfo_claims=userinfo_claims,
            created_at=now,
            expires_at=now + tokens.lifetimes().code,
        )
        request.new_code = (code, record)

    # -- token endpoint ----------------------------------------------------------------------

    def query_authorization_code(self, code: str, client: Any) -> CodeRecord | None:
        record = self.request.code_record  # read by this very code (prefetch)
        if record is None or record.client_id != client.get_client_id():
            return None  # RFC 6749 §4.1.3: issued to another client -> invalid_grant
        return record

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        return None  # the commit step marks it used, atomically

    def authenticate_user(self, authorization_code: CodeRecord) -> Any:
        profile = self.request.profile
        return profile if profile is not None and profile.status == "active" else None

    def generate_token(
        self,
        user: Any = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        request = self.request
        code = request.code_record
        if code is None:  # pragma: no cover - validate_token_request found it
            raise RuntimeError("no authorization code")
        tokens = self.server.tokens
        client = request.client
        life = client.lifetimes(tokens)
        now = tokens.now()
        scope = scope or ""
        grant = GrantRecord(
            id=tokens.new_id(),
            client_id=client.client_id,
            user_id=code.user_id,
            sub=user.sub,
            username=user.username,
            sid=code.sid,
            scope=scope,
            auth_time=code.auth_time,
            acr=code.acr,
            amr=code.amr,
            nonce=code.nonce,
            id_token_claims=code.id_token_claims,
            userinfo_claims=code.userinfo_claims,
            offline=include_refresh_token and "offline_access" in scope.split(),
            created_at=now,
            expires_at=now + max(life.access, life.refresh if include_refresh_token else 0),
        )
        access_token = tokens.grant_access_token(grant, scope=scope, lifetime=life.access)
        issued = request.issued
        issued.grant = grant
        if include_refresh_token:
            issued.refresh_token = tokens.new_secret()
            issued.refresh_record = RefreshRecord(grant.id, client.client_id, scope, now, now + life.refresh)
        return bearer(access_token, life.access, scope, issued.refresh_token)


# -- the token endpoint's asynchronous steps for this grant ------------------------------------


def _invalid_grant(provider: Provider, request: OneGateRequest) -> OAuth2Response:
    result: OAuth2Response = provider.server.handle_error_response(request, InvalidGrantError())
    return result


async def _reused(
    provider: Provider, request: OneGateRequest, record: CodeRecord, grant_id: str | None
) -> None:
    revoked = await provider.tokens.revoke_grant(grant_id) if grant_id else None
    provider.emit(
        "code-reused",
        success=False,
        request=request,
        reason="authorization_code_reused",
        user_id=record.user_id,
        session_id=record.sid,
        client_id=record.client_id,
        labels__presented_by=request.client.client_id,
        labels__grant_revoked=revoked is not None,
    )


async def prefetch(provider: Provider, request: OneGateRequest) -> OAuth2Response | None:
    """Read the code and its user before authlib runs; refuse a second redemption at once."""
    code = request.form.get("code")
    if not code or len(code) > 256:
        return None  # authlib answers: missing / invalid code
    found = await provider.tokens.read_code(code)
    if found is None:
        return None
    raw, record = found
    if record.redeemed_by is not None:
        await _reused(provider, request, record, record.redeemed_by)
        return _invalid_grant(provider, request)
    if record.expires_at <= provider.tokens.now():
        return None  # expired: authlib answers invalid_grant
    request.code_record, request.code_raw = record, raw
    request.profile = await provider.profile(record.user_id)
    return None


async def commit(provider: Provider, request: OneGateRequest, result: OAuth2Response) -> OAuth2Response:
    """Store what authlib issued, then use the code up; a lost race counts as a reuse."""
    code, record, raw = request.form["code"], request.code_record, request.code_raw
    issued = request.issued
    if record is None or raw is None or issued.grant is None:  # pragma: no cover - authlib said 200
        raise RuntimeError("commit without a redeemed code")
    tokens = provider.tokens
    # The grant first: a concurrent second redemption that sees the code used must find it
    # to revoke it.
    await tokens.store_grant(issued.grant)
    if issued.refresh_token is not None and issued.refresh_record is not None:
        await tokens.store_refresh(issued.refresh_token, issued.refresh_record)
    if not await tokens.redeem_code(code, raw, record, issued.grant):
        await tokens.revoke_grant(issued.grant.id)
        latest = await tokens.read_code(code)
        await _reused(provider, request, record, latest[1].redeemed_by if latest else None)
        return _invalid_grant(provider, request)
    provider.emit(
        "token-issued",
        success=True,
        request=request,
        user_id=record.user_id,
        username=issued.grant.username,
        session_id=record.sid,
        onegate__grant_type="authorization_code",
        labels__scope=issued.grant.scope,
    )
    return result
