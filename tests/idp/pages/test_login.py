"""The sign-in page: cookie, new session per sign-in, no enumeration, CSRF, where it redirects."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie

import httpx
import pytest

from idp.directory.models import UserStatus
from idp.directory.passwords import PasswordHashing
from idp.pages import ACR_PWD
from tests.idp.pages.conftest import PASSWORD, Idp, IdpFactory, csrf_token, sign_in, utc


def _set_cookie(response: httpx.Response, name: str) -> SimpleCookie:
    headers = [value for value in response.headers.get_list("set-cookie") if value.startswith(f"{name}=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    cookie = SimpleCookie()
    cookie.load(headers[0])
    return cookie


def _raw_set_cookie(response: httpx.Response, name: str) -> str:
    [header] = [value for value in response.headers.get_list("set-cookie") if value.startswith(f"{name}=")]
    return header


async def test_success_sets_a_host_only_httponly_lax_cookie_for_a_new_session(idp: Idp) -> None:
    user = await idp.add_user()
    client = idp.client()
    response = await sign_in(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/account"

    header = _raw_set_cookie(response, "onegate_sso")
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert "httponly" in attributes and "samesite=lax" in header.lower() and "path=/" in header.lower()
    assert "domain" not in attributes  # host-only
    assert "secure" not in attributes  # plain http here; see the https test

    [session] = await idp.ctx.sessions.list_for_user(user.id)
    assert session.amr == ("pwd",) and session.acr == ACR_PWD
    assert session.ip == "10.0.0.1"
    assert session.auth_time == idp.clock.now
    cookie = _set_cookie(response, "onegate_sso")["onegate_sso"].value
    assert cookie.split(".")[0] == session.sid

    [login] = idp.events_of("user-login")
    assert login.outcome == "success"
    assert login.get("user.name") == "zhangwei" and login.get("session.id") == session.sid
    assert login.get("source.ip") == "10.0.0.1"
    stored = await idp.user("zhangwei")
    assert utc(stored.last_login_at) is not None
    assert utc(stored.last_login_at).timestamp() == idp.clock.now  # type: ignore[union-attr]


async def test_every_sign_in_replaces_the_session_with_a_new_id(idp: Idp) -> None:
    user = await idp.add_user()
    client = idp.client()
    await sign_in(client)
    [first] = await idp.ctx.sessions.list_for_user(user.id)
    idp.clock.advance(5)
    # Signing in again while signed in: what /authorize asks for with prompt=login or max_age.
    pending = await idp.pending(await idp.add_client())
    await sign_in(client, req=pending.id)
    [second] = await idp.ctx.sessions.list_for_user(user.id)  # not stacked: the old one ended
    assert second.sid != first.sid
    assert idp.ended == [(first.sid, "replaced")]  # the listeners (back-channel logout) ran
    assert await idp.ctx.sessions.get(first.sid) is None
    assert (await client.get("/account")).status_code == 200


async def test_a_session_id_planted_before_sign_in_is_not_adopted(idp: Idp) -> None:
    user = await idp.add_user()
    client = idp.client()
    client.cookies.set("onegate_sso", "attacker-chosen.value", domain="idp.example.test")
    response = await sign_in(client)
    [session] = await idp.ctx.sessions.list_for_user(user.id)
    assert _set_cookie(response, "onegate_sso")["onegate_sso"].value.startswith(f"{session.sid}.")
    assert session.sid != "attacker-chosen"


async def test_on_https_the_cookie_is_secure_and_host_prefixed(make_idp: IdpFactory) -> None:
    idp = await make_idp(https=True)
    await idp.add_user()
    response = await sign_in(idp.client())
    assert response.status_code == 303
    header = _raw_set_cookie(response, "__Host-onegate_sso")
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert {"secure", "httponly"} <= attributes and "domain" not in attributes
    assert "samesite=lax" in header.lower() and "path=/" in header.lower()


def _normalised(body: str) -> str:
    # The only values allowed to differ between two answers: per-request ids and form tokens.
    return re.sub(r'name="csrf_token" value="[^"]*"', 'name="csrf_token" value=""', body)


async def test_unknown_user_and_wrong_password_get_the_same_answer(idp: Idp) -> None:
    await idp.add_user()
    client = idp.client()
    wrong = await sign_in(client, "zhangwei", "wrong password")
    # Rename the account: the same username typed again is now unknown, and both answers echo it.
    await idp.set_user("zhangwei", username="zhangwei-renamed")
    verifies_before = idp.passwords.verifies
    unknown = await sign_in(client, "zhangwei", "wrong password")
    assert wrong.status_code == unknown.status_code == 200
    assert _normalised(wrong.text) == _normalised(unknown.text)
    assert wrong.headers.get("set-cookie") == unknown.headers.get("set-cookie")
    assert "登录失败" in wrong.text
    assert idp.passwords.verifies == verifies_before + 1  # an unknown user costs a verify too
    reasons = [e.get("onegate.reason") for e in idp.events_of("user-login")]
    assert reasons == ["bad_password", "unknown_user"]
    assert all(e.outcome == "failure" for e in idp.events_of("user-login"))
    assert idp.events_of("user-login")[0].get("user.id") is not None
    assert idp.events_of("user-login")[1].get("user.id") is None


@pytest.mark.parametrize(
    ("columns", "reason"),
    [
        ({"status": UserStatus.DISABLED}, "disabled"),
        ({"status": UserStatus.LOCKED}, "locked"),
        ({"password_hash": None}, "bad_password"),
    ],
)
async def test_accounts_that_cannot_sign_in_get_the_generic_answer(
    idp: Idp, columns: dict[str, object], reason: str
) -> None:
    await idp.add_user(**columns)
    client = idp.client()
    reference = await sign_in(client, "zhangwei-nobody", PASSWORD)
    refused = await sign_in(client, "zhangwei", PASSWORD)  # the right password
    assert refused.status_code == reference.status_code == 200
    assert _normalised(refused.text) == _normalised(reference.text).replace("zhangwei-nobody", "zhangwei")
    assert "onegate_sso" not in refused.headers.get("set-cookie", "")
    assert idp.events_of("user-login")[-1].get("onegate.reason") == reason


async def test_the_login_form_without_a_csrf_token_is_refused(idp: Idp) -> None:
    await idp.add_user()
    client = idp.client()
    await csrf_token(client)  # the CSRF cookie is there, the form field is not
    response = await client.post("/login", data={"username": "zhangwei", "password": PASSWORD})
    assert response.status_code == 403
    assert "csrf_failed" in response.text and "token_missing" in response.text
    assert idp.passwords.verifies == 0
    assert idp.events_of("user-login") == []
    forged = await client.post(
        "/login", data={"csrf_token": "x" * 43, "username": "zhangwei", "password": PASSWORD}
    )
    assert forged.status_code == 403 and "token_invalid" in forged.text


async def test_a_cross_site_post_is_refused(idp: Idp) -> None:
    await idp.add_user()
    client = idp.client()
    token = await csrf_token(client)
    response = await client.post(
        "/login",
        data={"csrf_token": token, "username": "zhangwei", "password": PASSWORD},
        headers={"origin": "https://evil.example"},
    )
    assert response.status_code == 403 and idp.events_of("user-login") == []


async def test_with_a_pending_request_it_shows_the_client_and_resumes_it(idp: Idp) -> None:
    await idp.add_user()
    oa = await idp.add_client()
    pending = await idp.pending(oa, login_hint="zhangwei")
    client = idp.client()
    page = await client.get(f"/login?req={pending.id}")
    assert "协同办公系统" in page.text
    assert 'value="zhangwei"' in page.text  # login_hint pre-fills the username
    assert f'action="/login?req={pending.id}"' in page.text

    response = await sign_in(client, req=pending.id)
    assert response.status_code == 303
    assert response.headers["location"] == f"/authorize/resume?req={pending.id}"
    assert idp.events_of("user-login")[-1].get("onegate.client_id") == "oa"


@pytest.mark.parametrize(
    "req", ["no-such-request", "https://evil.example/", "//evil.example", "/\\evil.example", "x" * 100]
)
async def test_an_unknown_request_id_never_leads_off_site(idp: Idp, req: str) -> None:
    await idp.add_user()
    client = idp.client()
    page = await client.get("/login", params={"req": req})
    assert page.status_code == 200
    assert "登录请求已过期" in page.text
    assert 'action="/login"' in page.text  # the bogus id is not carried on
    token = await csrf_token(client)
    response = await client.post(
        "/login",
        params={"req": req},
        data={"csrf_token": token, "username": "zhangwei", "password": PASSWORD},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/account"


async def test_a_forced_password_change_comes_first(idp: Idp) -> None:
    await idp.add_user(must_change_password=True)
    oa = await idp.add_client()
    pending = await idp.pending(oa)
    response = await sign_in(idp.client(), req=pending.id)
    assert response.headers["location"] == f"/password?req={pending.id}"
    plain = await sign_in(idp.client("10.0.0.2"))
    assert plain.headers["location"] == "/password"


async def test_an_outdated_hash_is_upgraded_at_sign_in(idp: Idp) -> None:
    old = PasswordHashing(time_cost=1, memory_cost_kib=32, parallelism=1).hash(PASSWORD)
    await idp.add_user(password_hash=old)
    assert idp.passwords.needs_rehash(old)
    assert (await sign_in(idp.client())).status_code == 303
    upgraded = (await idp.user("zhangwei")).password_hash
    assert upgraded is not None and upgraded != old
    assert not idp.passwords.needs_rehash(upgraded)
    assert idp.passwords.verify(upgraded, PASSWORD)


async def test_signed_in_users_without_a_request_go_to_their_account(idp: Idp) -> None:
    await idp.add_user()
    client = idp.client()
    await sign_in(client)
    response = await client.get("/login")
    assert response.status_code == 303 and response.headers["location"] == "/account"


async def test_the_page_is_never_cached(idp: Idp) -> None:
    page = await idp.client().get("/login")
    assert page.headers["cache-control"] == "no-store"


async def test_the_username_is_matched_without_case_or_surrounding_spaces(idp: Idp) -> None:
    user = await idp.add_user()
    response = await sign_in(idp.client(), "  ZhangWei ", PASSWORD)
    assert response.status_code == 303
    [session] = await idp.ctx.sessions.list_for_user(user.id)
    assert session.username == "zhangwei"
