"""UserInfo (OIDC Core §5.3): bearer tokens only, claims by scope and by the claims parameter."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.idp.oauth.conftest import OP


async def _tokens(op: OP, scope: str, **extra: str) -> tuple[Any, dict[str, Any]]:
    user = await op.add_user(
        email="zw@hrss.example.gov.cn", phone="13800000000", groups=("hr-clerks", "staff")
    )
    _, secret = await op.add_client()
    browser = op.browser()
    await op.sign_in(browser, user)
    return user, await op.login_tokens(browser, secret, scope=scope, **extra)


async def test_claims_follow_the_scopes(op: OP) -> None:
    user, tokens = await _tokens(op, "openid email")
    response = await op.userinfo(tokens["access_token"])
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    profile = await op.ctx.directory.profile(user.id)
    assert profile is not None
    assert response.json() == {"sub": profile.sub, "email": "zw@hrss.example.gov.cn"}


async def test_get_and_post_with_header_or_form(op: OP) -> None:
    _, tokens = await _tokens(op, "openid profile groups")
    async with op.browser() as rp:
        by_post = await rp.post("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        by_form = await rp.post("/userinfo", data={"access_token": tokens["access_token"]})
        both = await rp.post(
            "/userinfo",
            data={"access_token": tokens["access_token"]},
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
    assert by_post.json() == by_form.json()
    assert by_post.json()["name"] == "张伟" and by_post.json()["groups"] == ["hr-clerks", "staff"]
    assert both.status_code == 401  # RFC 6750 §2: one method only


async def test_single_claims_asked_for_with_the_claims_parameter(op: OP) -> None:
    claims = json.dumps({"userinfo": {"phone_number": None, "email": {"essential": True}}})
    _, tokens = await _tokens(op, "openid", claims=claims)
    body = (await op.userinfo(tokens["access_token"])).json()
    assert body["phone_number"] == "13800000000" and body["email"] == "zw@hrss.example.gov.cn"
    assert "name" not in body
    id_claims = op.tokens.verify_id_token_hint(tokens["id_token"])
    assert "phone_number" not in id_claims  # asked for at userinfo only


async def test_the_claims_parameter_cannot_reach_beyond_the_clients_scopes(op: OP) -> None:
    user = await op.add_user(phone="13800000000")
    _, secret = await op.add_client(scopes=["openid", "profile"])
    browser = op.browser()
    await op.sign_in(browser, user)
    tokens = await op.login_tokens(
        browser, secret, scope="openid", claims='{"userinfo": {"phone_number": null}}'
    )
    assert "phone_number" not in (await op.userinfo(tokens["access_token"])).json()


async def test_no_token_gets_a_bare_challenge(op: OP) -> None:
    async with op.browser() as rp:
        response = await rp.get("/userinfo")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="userinfo"'


@pytest.mark.parametrize("kind", ["garbage", "id_token", "basic", "expired"])
async def test_bad_tokens_are_invalid_token(op: OP, kind: str) -> None:
    _, tokens = await _tokens(op, "openid")
    header = {
        "garbage": "Bearer abc.def.ghi",
        "id_token": f"Bearer {tokens['id_token']}",
        "basic": "Basic b2E6eA==",
        "expired": f"Bearer {tokens['access_token']}",
    }[kind]
    if kind == "expired":
        op.clock.advance(601)
    async with op.browser() as rp:
        response = await rp.get("/userinfo", headers={"Authorization": header})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_a_token_without_openid_is_insufficient_scope(op: OP) -> None:
    _, tokens = await _tokens(op, "profile")
    response = await op.userinfo(tokens["access_token"])
    assert response.status_code == 403 and response.json()["error"] == "insufficient_scope"


async def test_client_credentials_tokens_get_nothing(op: OP) -> None:
    _, secret = await op.add_client(
        "batch", grant_types=["client_credentials"], scopes=["hr:read"], redirect_uris=[]
    )
    access = (await op.token({"grant_type": "client_credentials"}, auth=("batch", secret or ""))).json()[
        "access_token"
    ]
    assert (await op.userinfo(access)).status_code == 401
