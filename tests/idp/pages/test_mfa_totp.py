"""Signing in with a password and an authenticator-app code (issue 4, acceptance 2).

The app's secret is read from the enrolment page (the ``#totp-secret`` text and the otpauth URI on
``#totp-qr``) and codes are computed with pyotp, as a phone would.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from core.settings import MfaSettings
from idp.pages.transactions import COOKIE_NAME
from mfa.levels import ACR_MFA
from tests.idp.pages.conftest import Idp, IdpFactory, cookie_of, csrf_token, post_form, sign_in, utc

_SECRET = re.compile(r'id="totp-secret"[^>]*>([A-Z2-7]+)<')
_QR = re.compile(r'<img id="totp-qr"[^>]*src="(data:image/svg\+xml[^"]+)"[^>]*data-uri="([^"]+)"')


def secret_of(page: str) -> str:
    match = _SECRET.search(page)
    assert match is not None, page[:2000]
    return match.group(1)


async def enrol_on_the_security_page(idp: Idp, browser: httpx.AsyncClient) -> str:
    """Add an authenticator app on /account/security the way a user does; its secret."""
    page = await browser.get("/account/security/totp")
    assert page.status_code == 200, page.text[:500]
    secret = secret_of(page.text)
    done = await post_form(
        browser, "/account/security", "/account/security/totp", code=idp.code(secret), name="工作手机"
    )
    assert done.status_code == 200 and 'id="recovery-codes"' in done.text
    idp.clock.advance(30)  # the enrolment used this time step
    return secret


async def password_step(idp: Idp, browser: httpx.AsyncClient, **kwargs: str) -> httpx.Response:
    response = await sign_in(browser, **kwargs)
    assert response.status_code == 303 and response.headers["location"].startswith("/mfa"), response.text
    return response


async def test_the_enrolment_page_shows_qr_and_key_and_binds_only_after_a_right_code(idp: Idp) -> None:
    user = await idp.add_user()
    browser = idp.client()
    await sign_in(browser)  # no factor yet: a plain sign-in
    page = await browser.get("/account/security/totp")
    assert page.status_code == 200
    secret = secret_of(page.text)
    assert len(secret) == 32  # 160 bits (RFC 4226 §4 R6)
    match = _QR.search(page.text)
    assert match is not None
    qr_src, uri = match.group(1), match.group(2).replace("&amp;", "&")
    assert qr_src.startswith("data:image/svg+xml")  # allowed by the CSP's img-src data:
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    assert unquote(parts.path) == "/OneGate 统一身份门户:zhangwei"
    assert parse_qs(parts.query)["secret"] == [secret]
    for element in ('id="totp-confirm-code"', 'id="totp-confirm"'):
        assert element in page.text
    assert "img-src 'self' data:" in page.headers["content-security-policy"]

    wrong = await post_form(browser, "/account/security", "/account/security/totp", code="000000")
    assert wrong.status_code == 400 and "验证码不正确" in wrong.text
    assert 'id="totp-secret"' not in wrong.text  # the key is not shown a second time
    assert not await idp.ctx.mfa.totp.is_enrolled(user.id)

    right = await post_form(browser, "/account/security", "/account/security/totp", code=idp.code(secret))
    assert right.status_code == 200
    assert await idp.ctx.mfa.totp.is_enrolled(user.id)
    assert len(re.findall(r"<li>[A-Z2-9]{5}-[A-Z2-9]{5}</li>", right.text)) == 10  # first recovery codes
    assert "打印" in right.text and 'id="continue"' in right.text
    [enrolled] = idp.events_of("mfa-enrolled")
    assert enrolled.get("onegate.mfa.method") == "totp" and enrolled.get("user.id") == str(user.id)
    # Adding the first factor proved it: the session now reaches mfa, so the page stays open.
    [session] = await idp.ctx.sessions.list_for_user(user.id)
    assert session.acr == ACR_MFA and "otp" in session.amr
    listed = await browser.get("/account/security")
    assert listed.status_code == 200 and 'data-factor-id="totp:' in listed.text
    assert "身份验证器应用</strong>" in listed.text  # the default name, as nothing was typed


async def test_password_then_code_signs_in_with_otp_in_amr(idp: Idp) -> None:
    user = await idp.add_user()
    setup = idp.client("10.0.0.9")
    await sign_in(setup)
    secret = await enrol_on_the_security_page(idp, setup)

    browser = idp.client()
    response = await password_step(idp, browser)
    assert response.headers["location"] == "/mfa"
    header = next(h for h in response.headers.get_list("set-cookie") if h.startswith(f"{COOKIE_NAME}="))
    assert "HttpOnly" in header and "SameSite=lax" in header and "Domain" not in header
    assert not any(h.startswith("onegate_sso=") for h in response.headers.get_list("set-cookie"))
    assert len(await idp.ctx.sessions.list_for_user(user.id)) == 1  # only the setup browser's

    page = await browser.get("/mfa")
    assert page.status_code == 200
    for element in ('id="totp-code"', 'name="code"', 'id="totp-submit"', 'id="recovery-code"'):
        assert element in page.text
    assert 'id="webauthn-verify"' not in page.text  # no passkey registered

    done = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret))
    assert done.status_code == 303 and done.headers["location"] == "/account"
    sessions = await idp.ctx.sessions.list_for_user(user.id)
    mine = next(s for s in sessions if s.ip == "10.0.0.1")
    assert mine.amr == ("pwd", "otp", "mfa") and mine.acr == ACR_MFA
    assert cookie_of(browser, "onegate_sso").startswith(f"{mine.sid}.")  # type: ignore[union-attr]
    assert cookie_of(browser, COOKIE_NAME) is None  # the transaction cookie is gone
    login = idp.events_of("user-login")[-1]
    assert login.outcome == "success" and login.get("session.id") == mine.sid
    assert login.get("onegate.amr") == ["pwd", "otp", "mfa"] and login.get("onegate.acr") == ACR_MFA
    assert idp.events_of("mfa-verified")[-1].get("onegate.mfa.method") == "totp"
    assert utc((await idp.user("zhangwei")).last_login_at) is not None
    assert (await browser.get("/account")).status_code == 200


async def test_the_same_code_twice_is_refused(idp: Idp) -> None:
    await idp.add_user()
    secret = await idp.enrol_totp()
    first = idp.client()
    await password_step(idp, first)
    code = idp.code(secret)
    assert (await post_form(first, "/mfa", "/mfa/totp", code=code)).status_code == 303

    second = idp.client("10.0.0.2")
    await password_step(idp, second)
    replayed = await post_form(second, "/mfa", "/mfa/totp", code=code)
    assert replayed.status_code == 400
    assert "该动态码已被使用" in replayed.text
    assert idp.events_of("mfa-replayed")[-1].get("onegate.reason") == "replayed"
    assert cookie_of(second, "onegate_sso") is None
    # The next code works.
    idp.clock.advance(30)
    assert (await post_form(second, "/mfa", "/mfa/totp", code=idp.code(secret))).status_code == 303


async def test_a_code_two_steps_away_is_refused_one_step_is_tolerated(idp: Idp) -> None:
    await idp.add_user()
    secret = await idp.enrol_totp()
    browser = idp.client()
    await password_step(idp, browser)
    for steps in (2, -2):
        far = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret, steps=steps))
        assert far.status_code == 400 and "验证码不正确" in far.text
    assert [e.get("onegate.reason") for e in idp.events_of("mfa-failed")] == ["invalid", "invalid"]
    near = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret, steps=1))
    assert near.status_code == 303


async def test_brute_force_meets_the_attempt_limit_then_the_account_lockout(make_idp: IdpFactory) -> None:
    idp = await make_idp(lockout_threshold=5, mfa_settings=MfaSettings(totp_max_failures=3))
    user = await idp.add_user()
    secret = await idp.enrol_totp()
    other = idp.client("10.0.0.2")  # a second sign-in, waiting in another browser
    await password_step(idp, other)
    browser = idp.client()
    await password_step(idp, browser)

    for guess in ("111111", "222222", "333333"):
        wrong = await post_form(browser, "/mfa", "/mfa/totp", code=guess)
        assert wrong.status_code == 400
    limited = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret))  # even the right code
    assert limited.status_code == 429
    assert "错误的动态码次数过多" in limited.text
    assert idp.events_of("mfa-failed")[-1].get("onegate.reason") == "rate_limited"
    assert idp.events_of("user-locked") == []

    locked = await post_form(browser, "/mfa", "/mfa/totp", code="444444")  # 5th failure: lockout
    assert locked.status_code == 303
    assert locked.headers["location"] == "/login?notice=mfa-locked"
    [lock] = idp.events_of("user-locked")
    assert lock.get("user.name") == "zhangwei" and lock.get("onegate.reason") == "too_many_failures"
    assert utc((await idp.user("zhangwei")).locked_until) is not None
    failure = idp.events_of("user-login")[-1]
    assert failure.outcome == "failure" and failure.get("onegate.reason") == "locked"
    assert cookie_of(browser, COOKIE_NAME) is None
    notice = await browser.get("/login?notice=mfa-locked")
    assert "账号已被暂时锁定" in notice.text

    # The other browser's transaction is refused as well, even with a fresh, right code.
    idp.clock.advance(30)
    token = await csrf_token(other)
    refused = await other.post("/mfa/totp", data={"csrf_token": token, "code": idp.code(secret)})
    assert refused.status_code == 303 and refused.headers["location"] == "/login?notice=mfa-locked"
    assert cookie_of(other, COOKIE_NAME) is None
    assert await idp.ctx.sessions.list_for_user(user.id) == []


async def test_a_wrong_code_counts_toward_the_lockout_like_a_wrong_password(idp: Idp) -> None:
    await idp.add_user()  # lockout_threshold = 3 in the fixture; the app's own limit is 5
    secret = await idp.enrol_totp()
    await sign_in(idp.client("10.0.0.5"), password="guess")  # one wrong password
    browser = idp.client()
    await password_step(idp, browser)  # the right password clears the count
    for guess in ("111111", "222222"):
        assert (await post_form(browser, "/mfa", "/mfa/totp", code=guess)).status_code == 400
    assert idp.events_of("user-locked") == []
    last = await post_form(browser, "/mfa", "/mfa/totp", code="333333")
    assert last.headers["location"] == "/login?notice=mfa-locked"
    assert len(idp.events_of("user-locked")) == 1
    # While locked, even the right password and code do not sign in.
    again = await sign_in(idp.client("10.0.0.6"))
    assert again.status_code == 200 and "onegate_mfa" not in again.headers.get("set-cookie", "")
    assert secret  # (the code was never the problem)


async def test_the_transaction_belongs_to_its_browser_and_is_used_once(idp: Idp) -> None:
    await idp.add_user()
    secret = await idp.enrol_totp()
    browser = idp.client()
    await password_step(idp, browser)
    value = cookie_of(browser, COOKIE_NAME)
    assert value is not None and "." in value

    stranger = idp.client("10.0.0.66")
    assert (await stranger.get("/mfa")).headers["location"] == "/login"
    forged = idp.client("10.0.0.67")
    forged.cookies.set(COOKIE_NAME, value.split(".")[0] + ".not-the-secret", domain="idp.example.test")
    token = await csrf_token(forged)
    attempt = await forged.post("/mfa/totp", data={"csrf_token": token, "code": idp.code(secret)})
    assert attempt.status_code == 303 and attempt.headers["location"] == "/login?notice=mfa-expired"

    done = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret))
    assert done.status_code == 303 and done.headers["location"] == "/account"
    # The completed transaction cannot be replayed, even with its cookie.
    replay = idp.client("10.0.0.68")
    replay.cookies.set(COOKIE_NAME, value, domain="idp.example.test")
    idp.clock.advance(30)
    token = await csrf_token(replay)
    again = await replay.post("/mfa/totp", data={"csrf_token": token, "code": idp.code(secret)})
    assert again.status_code == 303 and again.headers["location"] == "/login?notice=mfa-expired"
    assert len(await idp.ctx.sessions.list_for_user((await idp.user("zhangwei")).id)) == 1


async def test_the_transaction_expires_after_five_minutes(idp: Idp) -> None:
    await idp.add_user()
    secret = await idp.enrol_totp()
    browser = idp.client()
    await password_step(idp, browser)
    idp.clock.advance(301)
    late = await post_form(browser, "/login", "/mfa/totp", code=idp.code(secret))
    assert late.status_code == 303 and late.headers["location"] == "/login?notice=mfa-expired"
    page = await browser.get(late.headers["location"])
    assert "登录耗时过长或已完成" in page.text


async def test_it_continues_the_authorization_request_and_speaks_english(idp: Idp) -> None:
    await idp.add_user()
    secret = await idp.enrol_totp()
    pending = await idp.pending(await idp.add_client(), ui_locales="en")
    browser = idp.client()
    response = await password_step(idp, browser, req=pending.id)
    assert response.headers["location"] == f"/mfa?req={pending.id}"
    page = await browser.get(response.headers["location"])
    assert "Confirm it is you" in page.text and "Office Automation" in page.text
    wrong = await post_form(browser, "/mfa", "/mfa/totp", code="12345")
    assert wrong.status_code == 400 and "The code is not correct" in wrong.text
    done = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret))
    assert done.headers["location"] == f"/authorize/resume?req={pending.id}"


async def test_cancel_discards_the_transaction(idp: Idp) -> None:
    await idp.add_user()
    secret = await idp.enrol_totp()
    browser = idp.client()
    await password_step(idp, browser)
    cancelled = await post_form(browser, "/mfa", "/mfa/cancel")
    assert cancelled.status_code == 303 and cancelled.headers["location"] == "/login"
    assert cookie_of(browser, COOKIE_NAME) is None
    token = await csrf_token(browser)
    after = await browser.post("/mfa/totp", data={"csrf_token": token, "code": idp.code(secret)})
    assert after.headers["location"] == "/login?notice=mfa-expired"


async def test_code_attempts_count_for_the_source_address_too(make_idp: IdpFactory) -> None:
    idp = await make_idp(lockout_threshold=10, ip_throttle_limit=3, ip_throttle_window=60)
    await idp.add_user()
    secret = await idp.enrol_totp()
    browser = idp.client("203.0.113.7")
    await password_step(idp, browser)  # a successful password gives its attempt back
    for guess in ("111111", "222222", "333333"):
        assert (await post_form(browser, "/mfa", "/mfa/totp", code=guess)).status_code == 400
    throttled = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret))
    assert throttled.status_code == 429 and 0 < int(throttled.headers["retry-after"]) <= 60
    assert "请求过于频繁" in throttled.text
    assert idp.events_of("user-login")[-1].get("onegate.reason") == "throttled"
    assert len(idp.events_of("ip-throttled")) == 1
    # The sign-in is not thrown away: once the window ends (within the transaction's five
    # minutes), the code completes it.
    idp.clock.advance(61)
    done = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret))
    assert done.status_code == 303 and done.headers["location"] == "/account"


async def test_on_https_the_transaction_cookie_is_secure_and_host_prefixed(make_idp: IdpFactory) -> None:
    idp = await make_idp(https=True)
    await idp.add_user()
    secret = await idp.enrol_totp()
    browser = idp.client()
    response = await password_step(idp, browser)
    [header] = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"__Host-{COOKIE_NAME}=")]
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert {"secure", "httponly", "path"} <= attributes and "domain" not in attributes
    done = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret))
    assert done.headers["location"] == "/account"
    assert any(h.startswith("__Host-onegate_sso=") for h in done.headers.get_list("set-cookie"))
