"""Self-service second factors on /account/security: the step-up gate, rename, remove (never the
last one under a requirement), recovery codes regenerated and shown once."""

from __future__ import annotations

import re

import httpx

from mfa.levels import ACR_MFA
from tests.idp.pages.conftest import Idp, cookie_of, post_form, post_json, sign_in
from tests.idp.pages.test_mfa_webauthn import key, register

_CODE = re.compile(r"<li>([A-Z2-9]{5}-[A-Z2-9]{5})</li>")


async def signed_in_with_code(
    idp: Idp, secret: str, ip: str = "10.0.0.1", username: str = "zhangwei"
) -> httpx.AsyncClient:
    browser = idp.client(ip)
    assert (await sign_in(browser, username)).headers["location"] == "/mfa"
    done = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret))
    assert done.status_code == 303, done.text
    idp.clock.advance(30)
    return browser


def factor_ids(page: str) -> list[str]:
    return re.findall(r'data-factor-id="([a-z]+:\d+)"', page)


async def test_without_a_session_it_asks_to_sign_in(idp: Idp) -> None:
    browser = idp.client()
    assert (await browser.get("/account/security")).headers["location"] == "/login"
    refused = await post_json(browser, "/login", "/account/security/passkeys/options")
    assert refused.status_code == 401 and refused.json()["reason"] == "sign_in_expired"


async def test_a_password_only_session_must_prove_the_second_factor_first(idp: Idp) -> None:
    user = await idp.add_user()
    browser = idp.client()
    await sign_in(browser)  # no factor yet: a password session
    secret = await idp.enrol_totp()  # bound meanwhile (say, by another device)
    gate = await browser.get("/account/security")
    assert gate.status_code == 303 and gate.headers["location"] == "/mfa?then=security"
    refused = await post_json(browser, "/account", "/account/security/passkeys/options")
    assert refused.status_code == 403 and refused.json()["reason"] == "step_up_required"
    assert (await browser.get("/account/security/totp")).headers["location"] == "/mfa?then=security"

    page = await browser.get("/mfa?then=security")
    assert page.status_code == 200 and "您将保持登录状态" in page.text
    [before] = await idp.ctx.sessions.list_for_user(user.id)
    done = await post_form(browser, "/mfa?then=security", "/mfa/totp?then=security", code=idp.code(secret))
    assert done.status_code == 303 and done.headers["location"] == "/account/security"
    [after] = await idp.ctx.sessions.list_for_user(user.id)
    assert after.sid == before.sid and after.acr == ACR_MFA and after.amr == ("pwd", "otp", "mfa")
    assert idp.events_of("session-step-up")[-1].get("session.id") == before.sid
    assert (await browser.get("/account/security")).status_code == 200


async def test_rename_and_remove_only_my_own_factors(idp: Idp) -> None:
    me = await idp.add_user()
    secret = await idp.enrol_totp()
    await idp.add_user(username="lina", display_name="李娜")
    lina_secret = await idp.enrol_totp("lina")
    browser = await signed_in_with_code(idp, secret)
    assert (await register(browser, key(), name="钥匙")).json()["ok"]
    page = (await browser.get("/account/security")).text
    totp_ref, passkey_ref = factor_ids(page)
    assert totp_ref.startswith("totp:") and passkey_ref.startswith("webauthn:")
    assert page.count('class="remove-factor') == 2

    renamed = await post_form(
        browser, "/account/security", "/account/security/rename", factor=totp_ref, name="备用手机"
    )
    assert renamed.headers["location"] == "/account/security?notice=renamed"
    listed = (await browser.get("/account/security?notice=renamed")).text
    assert "备用手机" in listed and "名称已修改" in listed

    lina = await signed_in_with_code(idp, lina_secret, "10.0.0.2", "lina")
    lina_ref = factor_ids((await lina.get("/account/security")).text)[0]
    for action in ("/account/security/rename", "/account/security/remove"):
        foreign = await post_form(browser, "/account/security", action, factor=lina_ref, name="x")
        assert foreign.status_code == 404 and "在您的账号中未找到该登录方式" in foreign.text
        bogus = await post_form(browser, "/account/security", action, factor="sms:1", name="x")
        assert bogus.status_code == 404
    assert len(await idp.ctx.mfa.totp.list((await idp.user("lina")).id)) == 1

    removed = await post_form(browser, "/account/security", "/account/security/remove", factor=passkey_ref)
    assert removed.headers["location"] == "/account/security?notice=removed"
    assert await idp.ctx.mfa.webauthn.list(me.id) == []
    assert idp.events_of("mfa-removed")[-1].get("onegate.mfa.method") == "webauthn"


async def test_the_last_factor_stays_while_a_second_factor_is_required(idp: Idp) -> None:
    user = await idp.add_user(groups=("finance",))
    await idp.ctx.directory.set_group_mfa_required("finance", True)
    secret = await idp.enrol_totp()
    browser = await signed_in_with_code(idp, secret)
    [ref] = factor_ids((await browser.get("/account/security")).text)
    refused = await post_form(browser, "/account/security", "/account/security/remove", factor=ref)
    assert refused.status_code == 409
    assert "这是您唯一的第二重验证方式" in refused.text
    assert await idp.ctx.mfa.totp.is_enrolled(user.id)
    event = idp.events_of("mfa-removed")[-1]
    assert event.outcome == "failure" and event.get("onegate.reason") == "last_factor"

    assert (await register(browser, key())).json()["ok"]  # a second one: now the first may go
    allowed = await post_form(browser, "/account/security", "/account/security/remove", factor=ref)
    assert allowed.status_code == 303
    assert not await idp.ctx.mfa.totp.is_enrolled(user.id)
    [remaining] = factor_ids((await browser.get("/account/security")).text)
    again = await post_form(browser, "/account/security", "/account/security/remove", factor=remaining)
    assert again.status_code == 409


async def test_removing_the_last_factor_when_none_is_required_drops_the_recovery_codes(idp: Idp) -> None:
    user = await idp.add_user()
    secret = await idp.enrol_totp()
    await idp.ctx.mfa.recovery.generate(user.id)
    browser = await signed_in_with_code(idp, secret)
    [ref] = factor_ids((await browser.get("/account/security")).text)
    assert (
        await post_form(browser, "/account/security", "/account/security/remove", factor=ref)
    ).status_code == 303
    assert (await idp.ctx.mfa.factors(user.id)).count == 0
    assert await idp.ctx.mfa.recovery.remaining(user.id) == 0
    # Without a factor the next sign-in is a password one again.
    assert (await sign_in(idp.client("10.0.0.3"))).headers["location"] == "/account"


async def test_new_recovery_codes_replace_the_old_ones_and_are_shown_once(idp: Idp) -> None:
    user = await idp.add_user()
    secret = await idp.enrol_totp()
    old = await idp.ctx.mfa.recovery.generate(user.id)
    browser = await signed_in_with_code(idp, secret)
    page = (await browser.get("/account/security")).text
    assert "未使用的恢复码：10 个" in page and 'id="regenerate-recovery"' in page
    fresh = await post_form(browser, "/account/security", "/account/security/recovery")
    assert fresh.status_code == 200
    codes = _CODE.findall(fresh.text)
    assert len(codes) == 10 and not set(codes) & set(old)
    assert (
        'id="recovery-codes"' in fresh.text
        and '<a id="continue" class="button" href="/account/security">' in fresh.text
    )
    assert fresh.headers["cache-control"] == "no-store"
    later = (await browser.get("/account/security")).text
    assert not any(code in later for code in codes)  # shown once
    assert not (await idp.ctx.mfa.recovery.use(user.id, old[0])).ok
    assert (await idp.ctx.mfa.recovery.use(user.id, codes[0])).ok
    assert idp.events_of("recovery-codes-generated")[-1].get("onegate.mfa.remaining") == 10


async def test_the_account_page_links_to_the_security_page(idp: Idp) -> None:
    await idp.add_user()
    browser = idp.client()
    await sign_in(browser)
    page = await browser.get("/account")
    assert 'href="/account/security" id="security-link"' in page.text and "登录方式与安全" in page.text
    security = await browser.get("/account/security")
    assert "尚未设置" in security.text and factor_ids(security.text) == []
    nothing = await post_form(browser, "/account/security", "/account/security/recovery")
    assert nothing.status_code == 400 and "请先设置身份验证器应用或通行密钥" in nothing.text
    assert cookie_of(browser, "onegate_sso") is not None


async def test_changing_factors_needs_a_recent_proof(idp: Idp) -> None:
    """A browser left signed in for hours cannot swap the factors: after mfa.reauth_max_age (15
    minutes) the security page asks for a factor again, and the proof renews auth_time."""
    user = await idp.add_user()
    secret = await idp.enrol_totp()
    browser = await signed_in_with_code(idp, secret)
    assert (await browser.get("/account/security")).status_code == 200
    idp.clock.advance(14 * 60)
    assert (await browser.get("/account/security")).status_code == 200  # still recent
    idp.clock.advance(2 * 60)  # 16 minutes after the sign-in; the session itself is alive
    gate = await browser.get("/account/security")
    assert gate.status_code == 303 and gate.headers["location"] == "/mfa?then=security"
    refused = await post_json(browser, "/account", "/account/security/passkeys/options")
    assert refused.status_code == 403 and refused.json()["reason"] == "step_up_required"
    page = await browser.get("/mfa?then=security")
    assert page.status_code == 200 and 'id="totp-code"' in page.text  # not waved through

    [before] = await idp.ctx.sessions.list_for_user(user.id)
    done = await post_form(browser, "/mfa?then=security", "/mfa/totp?then=security", code=idp.code(secret))
    assert done.status_code == 303 and done.headers["location"] == "/account/security"
    [after] = await idp.ctx.sessions.list_for_user(user.id)
    assert after.sid == before.sid and after.auth_time == idp.clock.now > before.auth_time
    assert (await browser.get("/account/security")).status_code == 200
