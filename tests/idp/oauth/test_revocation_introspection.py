"""Revocation (RFC 7009) and introspection (RFC 7662)."""

from __future__ import annotations

from typing import Any

from tests.idp.oauth.conftest import ISSUER, OP


async def _tokens(op: OP) -> tuple[Any, str, dict[str, Any]]:
    user = await op.add_user()
    _, secret = await op.add_client()
    browser = op.browser()
    await op.sign_in(browser, user)
    return user, secret or "", await op.login_tokens(browser, secret)


async def test_revoking_a_refresh_token_revokes_its_family(op: OP) -> None:
    user, secret, tokens = await _tokens(op)
    response = await op.post(
        "/revoke",
        {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=("oa-app", secret),
    )
    assert response.status_code == 200
    refreshed = await op.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, auth=("oa-app", secret)
    )
    assert refreshed.json()["error"] == "invalid_grant"
    assert (await op.userinfo(tokens["access_token"])).status_code == 401
    event = op.events_of("token-revoked")[0]
    assert event.get("onegate.reason") == "refresh_token" and event.get("user.id") == str(user.id)


async def test_revoking_an_access_token_revokes_that_token_only(op: OP) -> None:
    _, secret, tokens = await _tokens(op)
    # A wrong hint is only a hint (RFC 7009 §2.1).
    response = await op.post(
        "/revoke",
        {"token": tokens["access_token"], "token_type_hint": "refresh_token"},
        auth=("oa-app", secret),
    )
    assert response.status_code == 200
    assert (await op.userinfo(tokens["access_token"])).status_code == 401
    assert (await op.introspect(tokens["access_token"], "oa-app", secret))["active"] is False
    refreshed = await op.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, auth=("oa-app", secret)
    )
    assert refreshed.status_code == 200


async def test_unknown_tokens_revoke_quietly_and_other_clients_tokens_not_at_all(op: OP) -> None:
    _, secret, tokens = await _tokens(op)
    assert (await op.post("/revoke", {"token": "nonsense"}, auth=("oa-app", secret))).status_code == 200
    _, other = await op.add_client("other-app")
    response = await op.post("/revoke", {"token": tokens["refresh_token"]}, auth=("other-app", other or ""))
    assert response.status_code == 400
    assert (await op.userinfo(tokens["access_token"])).status_code == 200
    assert (
        await op.post("/revoke", {"token": tokens["refresh_token"]}, auth=("oa-app", "bad"))
    ).status_code == 401
    assert op.events_of("token-revoked") == []


async def test_introspection_of_live_tokens(op: OP) -> None:
    user, secret, tokens = await _tokens(op)
    access = await op.introspect(tokens["access_token"], "oa-app", secret)
    profile = await op.ctx.directory.profile(user.id)
    assert profile is not None
    assert access["active"] is True and access["client_id"] == "oa-app" and access["sub"] == profile.sub
    assert (
        access["iss"] == ISSUER and access["token_type"] == "Bearer" and access["scope"] == "openid profile"
    )
    refresh = await op.introspect(tokens["refresh_token"], "oa-app", secret)
    assert (
        refresh["active"] is True
        and refresh["token_type"] == "refresh_token"
        and refresh["username"] == "zhangwei"
    )


async def test_a_client_learns_nothing_about_another_clients_tokens(op: OP) -> None:
    _, _, tokens = await _tokens(op)
    _, other = await op.add_client(
        "resource-api", grant_types=["client_credentials"], scopes=["hr:read"], redirect_uris=[]
    )
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert await op.introspect(token, "resource-api", other or "") == {"active": False}


async def test_only_authenticated_confidential_clients_may_introspect(op: OP) -> None:
    _, _, tokens = await _tokens(op)
    await op.add_client("spa", client_type="public", token_endpoint_auth_method="none")
    public = await op.post("/introspect", {"token": tokens["access_token"], "client_id": "spa"})
    assert public.status_code in (400, 401) and public.json()["error"] == "invalid_client"
    anonymous = await op.post("/introspect", {"token": tokens["access_token"]})
    assert anonymous.json()["error"] == "invalid_client"
    assert "active" not in anonymous.json()


async def test_used_and_expired_tokens_are_inactive(op: OP) -> None:
    _, secret, tokens = await _tokens(op)
    await op.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, auth=("oa-app", secret)
    )
    assert (await op.introspect(tokens["refresh_token"], "oa-app", secret)) == {"active": False}
    op.clock.advance(601)
    assert (await op.introspect(tokens["access_token"], "oa-app", secret)) == {"active": False}
