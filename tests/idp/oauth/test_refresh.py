"""The refresh grant: rotation, reuse detection (family revocation), session binding, offline_access."""

from __future__ import annotations

from typing import Any

from tests.idp.oauth.conftest import OP


async def _start(
    op: OP, scope: str = "openid profile", **client: Any
) -> tuple[Any, str, dict[str, Any], Any]:
    user = await op.add_user()
    _, secret = await op.add_client(**client)
    browser = op.browser()
    session = await op.sign_in(browser, user)
    tokens = await op.login_tokens(browser, secret, scope=scope)
    return user, secret or "", tokens, session


async def _refresh(op: OP, secret: str, refresh_token: str, **extra: str) -> Any:
    return await op.token(
        {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}, auth=("oa-app", secret)
    )


async def test_each_refresh_rotates_the_refresh_token(op: OP) -> None:
    _, secret, first, session = await _start(op)
    response = await _refresh(op, secret, first["refresh_token"])
    second = response.json()
    assert response.status_code == 200
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    id_claims = op.tokens.verify_id_token_hint(second["id_token"])
    assert "nonce" not in id_claims  # OIDC Core §12.2
    assert id_claims["auth_time"] == int(session.auth_time) and id_claims["sid"] == session.sid
    third = (await _refresh(op, secret, second["refresh_token"])).json()
    assert "access_token" in third
    refreshed = op.events_of("token-refreshed")
    assert [e.outcome for e in refreshed] == ["success", "success"]


async def test_a_reused_refresh_token_revokes_the_whole_family(op: OP) -> None:
    user, secret, first, _ = await _start(op)
    second = (await _refresh(op, secret, first["refresh_token"])).json()

    reuse = await _refresh(op, secret, first["refresh_token"])  # the stolen, already used one
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert "access_token" not in reuse.json()
    event = op.events_of("refresh-token-reused")[0]
    assert event.category == "intrusion_detection" and event.get("user.id") == str(user.id)

    # The whole family: the newest refresh token and every access token from it.
    after = await _refresh(op, secret, second["refresh_token"])
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    for access_token in (first["access_token"], second["access_token"]):
        assert (await op.userinfo(access_token)).status_code == 401
        assert (await op.introspect(access_token, "oa-app", secret))["active"] is False


async def test_scope_may_be_narrowed_but_never_widened(op: OP) -> None:
    _, secret, first, _ = await _start(op, scope="openid profile email")
    narrowed = (await _refresh(op, secret, first["refresh_token"], scope="openid")).json()
    assert narrowed["scope"] == "openid"
    # The new refresh token keeps the original scope (RFC 6749 §6).
    wide = (await _refresh(op, secret, narrowed["refresh_token"])).json()
    assert wide["scope"] == "openid profile email"
    widened = await _refresh(op, secret, wide["refresh_token"], scope="openid phone")
    assert widened.status_code == 400 and widened.json()["error"] == "invalid_scope"


async def test_a_refresh_token_is_bound_to_its_client(op: OP) -> None:
    _, _, first, _ = await _start(op)
    _, other_secret = await op.add_client("other-app")
    response = await op.token(
        {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=("other-app", other_secret or ""),
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert op.events_of("refresh-token-reused") == []


async def test_ending_the_session_stops_its_refresh_and_access_tokens(op: OP) -> None:
    _, secret, first, session = await _start(op)
    await op.ctx.end_session(session.sid, reason="revoked", actor="soc")
    response = await _refresh(op, secret, first["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert op.events_of("token-refreshed")[-1].get("onegate.reason") == "session_ended"
    assert (await op.userinfo(first["access_token"])).status_code == 401
    assert (await op.introspect(first["access_token"], "oa-app", secret))["active"] is False


async def test_without_offline_access_the_refresh_token_dies_with_the_idle_session(op: OP) -> None:
    _, secret, first, _ = await _start(op)
    op.clock.advance(op.ctx.settings.session_idle_timeout + 1)
    response = await _refresh(op, secret, first["refresh_token"])
    assert response.status_code == 400
    assert op.events_of("token-refreshed")[-1].get("onegate.reason") == "session_expired"


async def test_refreshing_counts_as_session_activity(op: OP) -> None:
    _, secret, tokens, session = await _start(op)
    for _ in range(3):  # 3 x 20 min > the 30 min idle timeout, but the session stays alive
        op.clock.advance(20 * 60)
        tokens = (await _refresh(op, secret, tokens["refresh_token"])).json()
        assert "access_token" in tokens
    assert await op.ctx.sessions.get(session.sid, touch=False) is not None


async def test_offline_access_survives_the_sessions_natural_end(op: OP) -> None:
    _, secret, tokens, session = await _start(op, scope="openid offline_access")
    op.clock.advance(op.ctx.settings.session_idle_timeout + 1)
    assert await op.ctx.sessions.get(session.sid) is None
    tokens = (await _refresh(op, secret, tokens["refresh_token"])).json()
    assert "access_token" in tokens


async def test_offline_access_does_not_survive_a_revocation(op: OP) -> None:
    _, secret, tokens, session = await _start(op, scope="openid offline_access")
    await op.ctx.end_user_sessions(session.user_id, reason="revoked", actor="soc")
    response = await _refresh(op, secret, tokens["refresh_token"])
    assert response.status_code == 400
    assert op.events_of("token-refreshed")[-1].get("onegate.reason") == "session_ended"


async def test_a_disabled_user_cannot_refresh(op: OP) -> None:
    user, secret, tokens, _ = await _start(op, scope="openid offline_access")
    await op.set_user(user.id, status="disabled")
    response = await _refresh(op, secret, tokens["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert (await op.userinfo(tokens["access_token"])).status_code == 401


async def test_an_expired_refresh_token_fails(op: OP) -> None:
    _, secret, tokens, _ = await _start(op, scope="openid offline_access")
    op.clock.advance(op.ctx.settings.refresh_token_lifetime + 1)
    response = await _refresh(op, secret, tokens["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


async def test_two_concurrent_refreshes_with_one_token_count_as_reuse(op: OP) -> None:
    import asyncio

    _, secret, first, _ = await _start(op)
    a, b = await asyncio.gather(
        _refresh(op, secret, first["refresh_token"]), _refresh(op, secret, first["refresh_token"])
    )
    assert sorted([a.status_code, b.status_code]) == [200, 400]
    winner = (a if a.status_code == 200 else b).json()
    assert (await _refresh(op, secret, winner["refresh_token"])).status_code == 400  # family revoked
    assert len(op.events_of("refresh-token-reused")) == 1
