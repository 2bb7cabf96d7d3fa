"""RP-Initiated Logout 1.0 at /logout: hints, exact post-logout redirects, confirmation, CSRF."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.idp.oauth.conftest import OP, RP, query
from tests.idp.oauth.test_tokens import _forged

_FORM = re.compile(r'name="csrf_token" value="([^"]+)".*?name="req" value="([^"]+)"', re.S)
BYE = f"{RP}/bye"


async def _signed_in(op: OP) -> tuple[Any, httpx.AsyncClient, dict[str, Any], Any]:
    user = await op.add_user()
    _, secret = await op.add_client()
    await op.add_client("other-app", post_logout_redirect_uris=["https://other.example.gov.cn/bye"])
    browser = op.browser()
    session = await op.sign_in(browser, user)
    tokens = await op.login_tokens(browser, secret)
    return session, browser, tokens, user


async def _alive(op: OP, sid: str) -> bool:
    return await op.ctx.sessions.get(sid, touch=False) is not None


async def test_a_hint_for_this_session_logs_out_at_once_and_returns_state(op: OP) -> None:
    session, browser, tokens, user = await _signed_in(op)
    response = await browser.get(
        "/logout",
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE, "state": "bye-1"},
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith(BYE + "?") and query(response.headers["location"]) == {
        "state": "bye-1"
    }
    assert "onegate_sso=" in response.headers["set-cookie"] and "Max-Age=0" in response.headers["set-cookie"]
    assert not await _alive(op, session.sid)
    logout = op.events_of("user-logout")[0]
    assert logout.get("user.id") == str(user.id) and logout.get("session.id") == session.sid
    assert op.events_of("session-revoked")[0].get("onegate.reason") == "logout"
    # Its tokens stop at once.
    assert (await op.userinfo(tokens["access_token"])).status_code == 401


async def test_an_expired_hint_still_identifies_the_session(op: OP) -> None:
    session, browser, tokens, _ = await _signed_in(op)
    op.clock.advance(400)  # the ID token lived 300 s; the session is still alive
    response = await browser.get(
        "/logout", params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE}
    )
    assert response.status_code == 303 and response.headers["location"] == BYE
    assert not await _alive(op, session.sid)


@pytest.mark.parametrize(
    "kind", ["tampered", "alg-none", "hs256-with-public-key", "access-token", "logout-token"]
)
async def test_a_forged_hint_ends_in_an_error_page_without_logout_or_redirect(op: OP, kind: str) -> None:
    session, browser, _, _ = await _signed_in(op)
    response = await browser.get(
        "/logout", params={"id_token_hint": _forged(op, kind), "post_logout_redirect_uri": BYE}
    )
    assert response.status_code == 400 and "location" not in response.headers
    assert await _alive(op, session.sid)
    assert op.events_of("user-logout") == []


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        f"{BYE}/x",
        f"{BYE}?next=https://evil.example",
        "https://oa.example.gov.cn@evil.example/bye",
        "https://other.example.gov.cn/bye",  # registered, but for another client
        "//evil.example",
    ],
)
async def test_no_open_redirect_through_post_logout_redirect_uri(op: OP, target: str) -> None:
    session, browser, tokens, _ = await _signed_in(op)
    response = await browser.get(
        "/logout", params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": target}
    )
    assert response.status_code == 200 and "location" not in response.headers
    assert "text/html" in response.headers["content-type"]
    assert not await _alive(op, session.sid)  # signed out all the same, on our own page


async def test_client_id_must_be_an_audience_of_the_hint(op: OP) -> None:
    session, browser, tokens, _ = await _signed_in(op)
    response = await browser.get(
        "/logout",
        params={
            "id_token_hint": tokens["id_token"],
            "client_id": "other-app",
            "post_logout_redirect_uri": "https://other.example.gov.cn/bye",
        },
    )
    assert response.status_code == 400 and "location" not in response.headers
    assert await _alive(op, session.sid)


async def test_without_a_hint_the_user_confirms_with_a_csrf_protected_form(op: OP) -> None:
    session, browser, _, _ = await _signed_in(op)
    page = await browser.get(
        "/logout", params={"client_id": "oa-app", "post_logout_redirect_uri": BYE, "state": "s"}
    )
    assert page.status_code == 200 and await _alive(op, session.sid)
    assert "协同办公系统" in page.text
    match = _FORM.search(page.text)
    assert match is not None
    token, req = match.groups()

    # Forged from another site: refused by the CSRF middleware, still signed in.
    forged = await browser.post("/logout/confirm", data={"req": req}, headers={"accept": "text/html"})
    assert forged.status_code == 403 and await _alive(op, session.sid)
    attacker = op.browser()
    cross = await attacker.post("/logout/confirm", data={"req": req, "csrf_token": token})
    assert cross.status_code == 403

    done = await browser.post("/logout/confirm", data={"req": req, "csrf_token": token})
    assert done.status_code == 303 and done.headers["location"] == f"{BYE}?state=s"
    assert not await _alive(op, session.sid)
    assert len(op.events_of("user-logout")) == 1


async def test_a_hint_for_another_session_asks_for_confirmation(op: OP) -> None:
    _, _, tokens, user = await _signed_in(op)
    second = op.browser()
    session2 = await op.sign_in(second, user)
    response = await second.get("/logout", params={"id_token_hint": tokens["id_token"]})
    assert response.status_code == 200 and _FORM.search(response.text) is not None
    assert await _alive(op, session2.sid)


async def test_posting_the_logout_request_works_like_get(op: OP) -> None:
    session, browser, tokens, _ = await _signed_in(op)
    response = await browser.post(
        "/logout",
        data={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE},
        headers={"sec-fetch-site": "cross-site", "origin": RP},
    )
    assert response.status_code == 303 and response.headers["location"] == BYE
    assert not await _alive(op, session.sid)


async def test_without_a_session_a_valid_target_is_still_honoured(op: OP) -> None:
    _, _, tokens, _ = await _signed_in(op)
    stranger = op.browser()
    ok = await stranger.get(
        "/logout", params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE}
    )
    assert ok.status_code == 303 and ok.headers["location"] == BYE
    bad = await stranger.get(
        "/logout", params={"client_id": "oa-app", "post_logout_redirect_uri": "https://evil.example/"}
    )
    assert bad.status_code == 200 and "location" not in bad.headers


async def test_the_signed_out_page_speaks_the_requested_language(op: OP) -> None:
    page = await op.browser().get("/logout", params={"ui_locales": "en"})
    assert "You are signed out." in page.text
    page = await op.browser().get("/logout")
    assert "您已退出登录。" in page.text
