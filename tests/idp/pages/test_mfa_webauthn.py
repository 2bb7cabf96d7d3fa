"""Passkeys and security keys on the pages: registration, second factor, passwordless sign-in and
the step-up of a password + code session to phishing-resistant, with the software authenticator of
tests/mfa/authenticator.py standing in for the browser and the key (issue 4, acceptance 1 and 4).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from idp.directory.models import UserStatus
from mfa.levels import ACR_MFA, ACR_PHR
from tests.idp.pages.conftest import Idp, cookie_of, csrf_token, post_form, post_json, sign_in
from tests.mfa.authenticator import SoftAuthenticator

ORIGIN = "http://idp.example.test"


def key(**kwargs: Any) -> SoftAuthenticator:
    return SoftAuthenticator(origin=ORIGIN, **kwargs)


async def register(
    browser: httpx.AsyncClient,
    authenticator: SoftAuthenticator,
    *,
    name: str = "办公室电脑",
    page: str = "/account/security",
    base: str = "/account/security/passkeys",
    **tamper: Any,
) -> httpx.Response:
    """What the page's script does when the user clicks #add-passkey."""
    options = await post_json(browser, page, f"{base}/options", {"name": name})
    assert options.status_code == 200, options.text
    credential = authenticator.create(options.json()["publicKey"], **tamper)
    return await post_json(browser, page, f"{base}/verify", {"name": name, "credential": credential})


async def verify(
    browser: httpx.AsyncClient,
    authenticator: SoftAuthenticator,
    *,
    page: str = "/mfa",
    base: str = "/mfa/webauthn",
    query: str = "",
    **tamper: Any,
) -> httpx.Response:
    """What the page's script does when the user clicks #webauthn-verify (or #passkey-signin)."""
    options = await post_json(browser, page, f"{base}/options{query}")
    assert options.status_code == 200, options.text
    assertion = authenticator.get(options.json()["publicKey"], **tamper)
    return await post_json(browser, page, f"{base}/verify{query}", {"credential": assertion})


async def user_with_passkey(idp: Idp, authenticator: SoftAuthenticator, username: str = "zhangwei") -> int:
    user = await idp.add_user(username=username)
    setup = idp.client("10.0.0.200")
    assert (await sign_in(setup, username)).status_code == 303
    answer = await register(setup, authenticator)
    assert answer.status_code == 200 and answer.json()["ok"], answer.text
    return user.id


async def test_registering_several_named_passkeys_on_the_security_page(idp: Idp) -> None:
    user = await idp.add_user()
    browser = idp.client()
    await sign_in(browser)
    page = await browser.get("/account/security")
    for element in (
        'id="passkey-name"',
        'id="add-passkey"',
        'id="add-totp"',
        'src="/assets/idp/webauthn.js"',
    ):
        assert element in page.text
    script = await browser.get("/assets/idp/webauthn.js")
    assert script.status_code == 200 and "navigator.credentials.create" in script.text
    assert "javascript" in script.headers["content-type"]

    office = key()
    options = await post_json(browser, "/account/security", "/account/security/passkeys/options")
    public = options.json()["publicKey"]
    assert public["rp"]["id"] == "idp.example.test" and public["user"]["name"] == "zhangwei"
    assert public["authenticatorSelection"]["residentKey"] == "required"  # a passkey: usable without a name
    assert "onegate_webauthn" in options.headers["set-cookie"] and "HttpOnly" in options.headers["set-cookie"]
    before = cookie_of(browser, "onegate_sso")
    credential = office.create(public)
    first = await post_json(
        browser,
        "/account/security",
        "/account/security/passkeys/verify",
        {"name": "办公室电脑", "credential": credential},
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["ok"] and body["next"] == "/account/security?notice=passkey-added"
    assert len(body["recovery_codes"]) == 10  # the first factor brings the recovery codes, shown once
    # The first factor proved is a second factor for this session: stepped up in place.
    [session] = await idp.ctx.sessions.list_for_user(user.id)
    assert session.acr == ACR_PHR and {"pwd", "hwk", "pin", "mfa"} <= set(session.amr)
    assert cookie_of(browser, "onegate_sso") != before and before is not None
    assert cookie_of(browser, "onegate_sso").startswith(session.sid)  # type: ignore[union-attr]

    second = await register(browser, key(backup_eligible=True, backed_up=True), name="我的手机")
    assert second.status_code == 200 and second.json()["recovery_codes"] == []  # still has codes
    listed = await browser.get("/account/security?notice=passkey-added")
    assert "办公室电脑" in listed.text and "我的手机" in listed.text and "通行密钥已添加" in listed.text
    assert listed.text.count('data-factor-id="webauthn:') == 2
    assert "可能在您的多台设备间同步" in listed.text  # the synced one says so
    enrolled = idp.events_of("mfa-enrolled")
    assert [e.get("onegate.mfa.method") for e in enrolled] == ["webauthn", "webauthn"]

    # The same key again: the browser refuses it (excludeCredentials); forced through, the server does.
    existing = next(iter(office.credentials))
    again = await register(browser, office, ignore_exclude=True, credential_id=existing)
    assert again.status_code == 400
    assert again.json()["reason"] == "duplicate" and again.json()["message"] == "该通行密钥或安全密钥已登记。"


async def test_a_passkey_as_second_factor_after_the_password(idp: Idp) -> None:
    security_key = key()
    user_id = await user_with_passkey(idp, security_key)
    browser = idp.client()
    response = await sign_in(browser)
    assert response.headers["location"] == "/mfa"
    page = await browser.get("/mfa")
    assert 'id="webauthn-verify"' in page.text and 'id="totp-code"' not in page.text
    assert 'id="recovery-code"' in page.text  # the codes from the registration

    done = await verify(browser, security_key)
    assert done.status_code == 200, done.text
    assert done.json() == {"ok": True, "next": "/account"}
    mine = next(s for s in await idp.ctx.sessions.list_for_user(user_id) if s.ip == "10.0.0.1")
    assert mine.amr == ("pwd", "hwk", "user", "pin", "mfa") and mine.acr == ACR_PHR
    login = idp.events_of("user-login")[-1]
    assert login.outcome == "success" and login.get("onegate.amr") == list(mine.amr)
    assert idp.events_of("mfa-verified")[-1].get("onegate.mfa.method") == "webauthn"
    assert cookie_of(browser, "onegate_mfa") is None and cookie_of(browser, "onegate_webauthn") is None


async def test_a_failed_assertion_is_a_json_answer_with_its_reason(idp: Idp) -> None:
    security_key = key()
    await user_with_passkey(idp, security_key)
    browser = idp.client()
    await sign_in(browser)
    tampered = await verify(browser, security_key, tamper_signature=True)
    assert tampered.status_code == 400
    assert (
        tampered.json()["reason"] == "invalid"
        and tampered.json()["message"] == "无法验证通行密钥的响应，请重试。"
    )
    phished = await verify(browser, security_key, origin="http://idp.example.test.evil.example")
    assert phished.json()["reason"] == "origin"
    assert [e.get("onegate.reason") for e in idp.events_of("mfa-failed")] == ["invalid", "origin"]
    browser.headers["accept-language"] = "en"
    english = await verify(browser, security_key, rp_id="evil.example")
    assert english.json()["reason"] == "rp_id"
    assert english.json()["message"] == "This passkey belongs to another site and cannot be used here."
    assert cookie_of(browser, "onegate_sso") is None  # still not signed in
    assert (await verify(browser, security_key)).json()["ok"]


async def test_the_ceremony_belongs_to_the_browser_that_began_it_and_is_used_once(idp: Idp) -> None:
    security_key = key()
    await user_with_passkey(idp, security_key)
    browser = idp.client()
    await sign_in(browser)
    options = await post_json(browser, "/mfa", "/mfa/webauthn/options")
    assertion = security_key.get(options.json()["publicKey"])

    # Another browser in the middle of its own sign-in of the same user cannot finish this ceremony.
    other = idp.client("10.0.0.2")
    await sign_in(other)
    stolen = await post_json(other, "/mfa", "/mfa/webauthn/verify", {"credential": assertion})
    assert stolen.status_code == 400 and stolen.json()["reason"] == "challenge"

    first = await post_json(browser, "/mfa", "/mfa/webauthn/verify", {"credential": assertion})
    assert first.json()["ok"]
    # Replaying the same assertion, even with the ceremony cookie put back, finds nothing to finish.
    replay = idp.client("10.0.0.3")
    await sign_in(replay)
    replay.cookies.set(
        "onegate_webauthn", browser.cookies.get("onegate_webauthn") or "x" * 43, domain="idp.example.test"
    )
    again = await post_json(replay, "/mfa", "/mfa/webauthn/verify", {"credential": assertion})
    assert again.status_code == 400 and again.json()["reason"] == "challenge"


async def test_passwordless_sign_in_with_a_discoverable_passkey(idp: Idp) -> None:
    passkey = key()
    user_id = await user_with_passkey(idp, passkey)
    pending = await idp.pending(await idp.add_client())
    browser = idp.client()
    page = await browser.get(f"/login?req={pending.id}")
    assert 'id="passkey-signin"' in page.text and "使用通行密钥登录" in page.text
    query = f"?req={pending.id}"
    options = await post_json(browser, "/login", f"/login/passkey/options{query}")
    public = options.json()["publicKey"]
    assert public["userVerification"] == "required" and not public.get("allowCredentials")
    assertion = passkey.get(public)
    assert assertion["response"]["userHandle"]  # the account comes from the credential
    done = await post_json(browser, "/login", f"/login/passkey/verify{query}", {"credential": assertion})
    assert done.status_code == 200, done.text
    assert done.json()["next"] == f"/authorize/resume?req={pending.id}"
    session = next(s for s in await idp.ctx.sessions.list_for_user(user_id) if s.ip == "10.0.0.1")
    assert session.amr == ("hwk", "user", "pin", "mfa") and session.acr == ACR_PHR
    login = idp.events_of("user-login")[-1]
    assert login.outcome == "success" and login.get("user.name") == "zhangwei"
    assert login.get("onegate.client_id") == "oa" and login.get("onegate.acr") == ACR_PHR


async def test_passwordless_refuses_disabled_and_locked_accounts_like_the_login_page(idp: Idp) -> None:
    passkey = key()
    await user_with_passkey(idp, passkey)
    browser = idp.client()
    await idp.set_user("zhangwei", status=UserStatus.DISABLED)
    disabled = await verify(browser, passkey, page="/login", base="/login/passkey")
    assert disabled.status_code == 403 and disabled.json()["reason"] == "refused"
    assert "登录失败" in disabled.json()["message"]
    assert idp.events_of("user-login")[-1].get("onegate.reason") == "disabled"

    await idp.set_user("zhangwei", status=UserStatus.ACTIVE, locked_until=_in_a_minute(idp))
    locked = await verify(browser, passkey, page="/login", base="/login/passkey")
    assert locked.status_code == 403 and locked.json()["reason"] == "refused"
    assert idp.events_of("user-login")[-1].get("onegate.reason") == "locked"
    assert cookie_of(browser, "onegate_sso") is None

    stray = key()  # a passkey for this site that was never registered here
    stray.create(
        {
            "rp": {"id": "idp.example.test"},
            "user": {"id": "c3RyYXk"},
            "challenge": "AAAA",
            "authenticatorSelection": {"residentKey": "required"},
        }
    )
    unknown = await verify(browser, stray, page="/login", base="/login/passkey")
    assert unknown.status_code == 400 and unknown.json()["reason"] == "unknown_credential"


async def test_passwordless_needs_user_verification(idp: Idp) -> None:
    await user_with_passkey(idp, passkey := key())
    browser = idp.client()
    refused = await verify(browser, passkey, page="/login", base="/login/passkey", user_verified=False)
    assert refused.status_code == 400 and refused.json()["reason"] == "user_verification"
    failure = idp.events_of("user-login")[-1]
    assert failure.outcome == "failure" and failure.get("onegate.reason") == "bad_passkey"
    assert failure.get("onegate.mfa.reason") == "user_verification"


async def test_step_up_of_a_password_and_code_session_to_phishing_resistant(idp: Idp) -> None:
    security_key = key()
    user_id = await user_with_passkey(idp, security_key)
    secret = await idp.enrol_totp()
    browser = idp.client()
    await sign_in(browser)
    assert (await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret))).status_code == 303
    old_cookie = cookie_of(browser, "onegate_sso")
    assert old_cookie is not None
    session = await idp.ctx.sessions.from_cookie(old_cookie)
    assert session is not None and session.acr == ACR_MFA and session.amr == ("pwd", "otp", "mfa")

    pending = await idp.pending(await idp.add_client(), acr=ACR_PHR)
    idp.clock.advance(60)
    page = await browser.get(f"/mfa?req={pending.id}")
    assert page.status_code == 200
    assert 'id="webauthn-verify"' in page.text and "该应用要求使用通行密钥或安全密钥" in page.text
    assert 'id="totp-code"' not in page.text and 'id="recovery-code"' not in page.text  # phr: WebAuthn only
    code_anyway = await post_form(
        browser, f"/mfa?req={pending.id}", f"/mfa/totp?req={pending.id}", code="123456"
    )
    assert code_anyway.status_code == 400

    done = await verify(browser, security_key, page=f"/mfa?req={pending.id}", query=f"?req={pending.id}")
    assert done.json() == {"ok": True, "next": f"/authorize/resume?req={pending.id}"}
    stepped = await idp.ctx.sessions.get(session.sid)
    assert stepped is not None and stepped.sid == session.sid  # upgraded in place
    assert stepped.acr == ACR_PHR and {"pwd", "otp", "hwk", "mfa"} <= set(stepped.amr)
    assert stepped.auth_time == idp.clock.now
    new_cookie = cookie_of(browser, "onegate_sso")
    assert new_cookie is not None and new_cookie != old_cookie and new_cookie.startswith(f"{session.sid}.")
    assert await idp.ctx.sessions.from_cookie(old_cookie) is None  # the old cookie is dead
    assert await idp.ctx.sessions.from_cookie(new_cookie) is not None
    [event] = [e for e in idp.events_of("session-step-up") if e.get("session.id") == session.sid]
    assert event.get("session.id") == session.sid and event.get("onegate.acr") == ACR_PHR
    assert event.get("onegate.client_id") == "oa" and "hwk" in event.get("onegate.amr")
    assert len(await idp.ctx.sessions.list_for_user(user_id)) == 2  # no session added (setup's + this)
    # Asked again, the page has nothing more to prove and goes on.
    again = await browser.get(f"/mfa?req={pending.id}")
    assert again.status_code == 303 and again.headers["location"] == f"/authorize/resume?req={pending.id}"


async def test_json_endpoints_refuse_requests_without_a_valid_csrf_header(idp: Idp) -> None:
    await user_with_passkey(idp, key())
    browser = idp.client()
    await sign_in(browser)
    json_headers = {"accept": "application/json", "content-type": "application/json"}
    for path in (
        "/mfa/webauthn/options",
        "/mfa/webauthn/verify",
        "/login/passkey/options",
        "/login/passkey/verify",
        "/account/security/passkeys/options",
        "/mfa/setup/passkey/verify",
    ):
        missing = await browser.post(path, content=b"{}", headers=json_headers)
        assert missing.status_code == 403, path
        assert missing.json()["error"] == "csrf_failed" and missing.json()["reason"] == "token_missing"
        wrong = await browser.post(path, content=b"{}", headers={**json_headers, "x-csrf-token": "forged"})
        assert wrong.json()["reason"] == "token_invalid"
    token = await csrf_token(browser, "/mfa")
    cross = await browser.post(
        "/mfa/webauthn/options",
        content=b"{}",
        headers={**json_headers, "x-csrf-token": token, "sec-fetch-site": "cross-site"},
    )
    assert cross.status_code == 403 and cross.json()["reason"] == "cross_site_request"
    evil = await browser.post(
        "/login/passkey/verify",
        content=b"{}",
        headers={**json_headers, "x-csrf-token": token, "origin": "https://evil.example"},
    )
    assert evil.status_code == 403 and evil.json()["reason"] == "origin_mismatch"
    assert idp.events_of("mfa-failed") == []  # nothing reached the WebAuthn service


async def test_malformed_json_bodies_get_a_reason_never_a_500(idp: Idp) -> None:
    await user_with_passkey(idp, key())
    browser = idp.client()
    await sign_in(browser)
    token = await csrf_token(browser, "/mfa")
    headers = {"x-csrf-token": token, "accept": "application/json"}
    await post_json(browser, "/mfa", "/mfa/webauthn/options")
    for body, content_type in (
        (b"not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"credential": "x"}', "application/json"),
        (b'{"credential": {}}', "text/plain"),
        (b"{" * 100_000, "application/json"),
    ):
        answer = await browser.post(
            "/mfa/webauthn/verify", content=body, headers={**headers, "content-type": content_type}
        )
        assert answer.status_code == 400, (body[:20], answer.text)
        assert answer.json()["reason"] == "bad_request" and answer.json()["message"]
    garbage = await post_json(
        browser, "/mfa", "/mfa/webauthn/verify", {"credential": {"type": "public-key", "rawId": "!!"}}
    )
    assert garbage.status_code == 400 and garbage.json()["reason"] == "invalid"
    nobody = idp.client("10.0.0.99")
    expired = await post_json(nobody, "/login", "/mfa/webauthn/options")
    assert expired.status_code == 401 and expired.json()["reason"] == "sign_in_expired"


def _in_a_minute(idp: Idp) -> datetime:
    return datetime.fromtimestamp(idp.clock.now + 60, UTC)
