"""The refresh token grant (RFC 6749 §6) with rotation and reuse detection.

Every refresh uses the presented refresh token up and returns a new one in the same grant
(the token *family*, :class:`~idp.tokens.GrantRecord`), whose scope is the original one
(RFC 6749 §6); the access token may be narrowed with ``scope``. Presenting a refresh token
that was already used — by the client after a theft, or by the thief — revokes the whole
family (all its refresh tokens, and its access tokens at userinfo and introspection) and
emits ``refresh-token-reused`` (RFC 9700 §4.14.2). Two concurrent refreshes with one token
count as a reuse too: the loser of the compare-and-set cannot tell them apart.

A refresh token works only for the client it was issued to, while its grant lives, while
the user is active, and, without ``offline_access``, while its SSO session is alive (the
refresh then counts as session activity); see :mod:`idp.tokens` for the decision.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidGrantError
from authlib.oauth2.rfc6749 import grants as rfc6749_grants

from idp.grants import bearer
from idp.server import TOKEN_AUTH_METHODS
from idp.tokens import RefreshRecord

if TYPE_CHECKING:
    from idp.integrations.starlette import OAuth2Response
    from idp.server import OneGateRequest, Provider

__all__ = ["RefreshTokenGrant", "commit", "prefetch"]


class RefreshTokenGrant(rfc6749_grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(TOKEN_AUTH_METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation
    request: OneGateRequest

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        return self.request.refresh_record  # read, and checked, by prefetch

    def authenticate_user(self, refresh_token: RefreshRecord) -> Any:
        return self.request.profile

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        return None  # the commit step marks it used, atomically

    def generate_token(
        self,
        user: Any = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        request = self.request
        grant, old = request.grant, request.refresh_record
        if grant is None or old is None:  # pragma: no cover - validate_token_request found them
            raise RuntimeError("no refresh token")
        tokens = self.server.tokens
        client = request.client
        life = client.lifetimes(tokens)
        now = tokens.now()
        scope = scope or ""
        extended = replace(grant, expires_at=max(grant.expires_at, now + max(life.access, life.refresh)))
        access_token = tokens.grant_access_token(grant, scope=scope, lifetime=life.access)
        issued = request.issued
        issued.grant = extended
        issued.refresh_token = tokens.new_secret()
        # RFC 6749 §6: the new refresh token has the scope of the one it replaces.
        issued.refresh_record = RefreshRecord(grant.id, client.client_id, old.scope, now, now + life.refresh)
        return bearer(access_token, life.access, scope, issued.refresh_token)


# -- the token endpoint's asynchronous steps for this grant ------------------------------------


def _invalid_grant(provider: Provider, request: OneGateRequest) -> OAuth2Response:
    result: OAuth2Response = provider.server.handle_error_response(request, InvalidGrantError())
    return result


async def _reused(provider: Provider, request: OneGateRequest, record: RefreshRecord) -> None:
    revoked = await provider.tokens.revoke_grant(record.grant_id)
    provider.emit(
        "refresh-token-reused",
        success=False,
        request=request,
        reason="refresh_token_reused",
        client_id=record.client_id,
        user_id=revoked.user_id if revoked else None,
        username=revoked.username if revoked else None,
        session_id=revoked.sid if revoked else None,
        labels__presented_by=request.client.client_id,
        labels__grant_revoked=revoked is not None,
    )


async def prefetch(provider: Provider, request: OneGateRequest) -> OAuth2Response | None:
    """Find the refresh token, its grant, session and user; refuse a used token at once."""
    token = request.form.get("refresh_token")
    if not token:
        return None  # authlib answers: missing refresh_token
    tokens = provider.tokens
    found = await tokens.read_refresh(token)
    if found is None:
        request.refusal = "unknown_refresh_token"
        return None
    raw, record = found
    if record.used:
        await _reused(provider, request, record)
        return _invalid_grant(provider, request)
    if record.client_id != request.client.client_id:
        request.refusal = "other_client"
        return None
    if record.expires_at <= tokens.now():
        request.refusal = "expired"
        return None
    grant_found = await tokens.read_grant(record.grant_id)
    if grant_found is None:
        request.refusal = "grant_revoked"
        return None
    grant_raw, grant = grant_found
    if await tokens.session_ended(grant.sid):
        request.refusal = "session_ended"
        return None
    if not grant.offline and await provider.idp.sessions.get(grant.sid, touch=True) is None:
        request.refusal = "session_expired"
        return None
    profile = await provider.profile(grant.user_id)
    if profile is None or profile.status != "active":
        request.refusal = "user_inactive"
        return None
    request.refresh_record, request.refresh_raw = record, raw
    request.grant, request.grant_raw, request.profile = grant, grant_raw, profile
    return None


async def commit(provider: Provider, request: OneGateRequest, result: OAuth2Response) -> OAuth2Response:
    """Use the old token up, extend the grant, store the new token."""
    token = request.form["refresh_token"]
    record, raw = request.refresh_record, request.refresh_raw
    issued = request.issued
    if (
        record is None or raw is None or request.grant_raw is None or issued.grant is None
    ):  # pragma: no cover - authlib said 200
        raise RuntimeError("commit without a refresh token")
    tokens = provider.tokens
    if not await tokens.use_refresh(token, raw, record):
        await _reused(provider, request, record)
        return _invalid_grant(provider, request)
    if not await tokens.extend_grant(request.grant_raw, issued.grant):
        request.refusal = "grant_revoked"  # revoked between prefetch and now
        return _invalid_grant(provider, request)
    if issued.refresh_token is not None and issued.refresh_record is not None:
        await tokens.store_refresh(issued.refresh_token, issued.refresh_record)
    provider.emit(
        "token-refreshed",
        success=True,
        request=request,
        user_id=issued.grant.user_id,
        username=issued.grant.username,
        session_id=issued.grant.sid,
        onegate__grant_type="refresh_token",
    )
    return result
