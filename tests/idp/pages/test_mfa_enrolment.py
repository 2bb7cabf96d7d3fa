"""Setting up a second factor during sign-in (/mfa/setup): forced enrolment, and the passkey a
phishing-resistant sign-in needs."""

from __future__ import annotations

import re

import httpx
import pytest

from core.settings import MfaSettings
from mfa.levels import ACR_MFA, ACR_PHR
from tests.idp.pages.conftest import Idp, IdpFactory, cookie_of, post_form, post_json, sign_in
from tests.idp.pages.test_mfa_totp import secret_of
from tests.idp.pages.test_mfa_webauthn import key, register


async def to_setup(browser: httpx.AsyncClient, req: str | None = None) -> httpx.Response:
    """Password, then /mfa, which sends a user without a usable factor on to /mfa/setup."""
    response = await sign_in(browser, req=req)
    query = f"?req={req}" if req else ""
    assert response.status_code == 303 and response.headers["location"] == f"/mfa{query}", response.text
    second = await browser.get(f"/mfa{query}")
    assert second.status_code == 303 and second.headers["location"] == f"/mfa/setup{query}"
    page = await browser.get(second.headers["location"])
    assert page.status_code == 200
    return page


@pytest.mark.parametrize("source", ["everyone", "group", "administrator", "client"])
async def test_a_required_second_factor_is_set_up_at_sign_in(make_idp: IdpFactory, source: str) -> None:
    idp = await make_idp(mfa_settings=MfaSettings(required=source == "everyone"))
    user = await idp.add_user(groups=("finance",) if source == "group" else ())
    if source == "group":
        await idp.ctx.directory.set_group_mfa_required("finance", True)
    if source == "administrator":
        await idp.ctx.directory.set_mfa_enrol_required("zhangwei", True)
    req = (await idp.pending(await idp.add_client(), acr=ACR_MFA)).id if source == "client" else None
    query = f"?req={req}" if req else ""
    browser = idp.client()
    page = await to_setup(browser, req)
    for element in ('id="add-totp"', 'id="add-passkey"', 'id="passkey-name"'):
        assert element in page.text
    if source != "client":
        assert "您所在单位要求登录时除密码外还需第二重验证" in page.text
    assert await idp.ctx.sessions.list_for_user(user.id) == []  # nothing yet for the password alone

    link = re.search(r'<a id="add-totp" class="button" href="([^"]+)"', page.text)
    assert link is not None and link.group(1) == f"/mfa/setup/totp{query}".replace("&", "&amp;")
    qr = await browser.get(link.group(1))
    secret = secret_of(qr.text)
    wrong = await post_form(browser, f"/mfa/setup{query}", f"/mfa/setup/totp{query}", code="000000")
    assert wrong.status_code == 400 and 'id="totp-confirm-code"' in wrong.text and secret not in wrong.text
    done = await post_form(
        browser, f"/mfa/setup{query}", f"/mfa/setup/totp{query}", code=idp.code(secret), name="我的手机"
    )
    assert done.status_code == 200
    codes = re.findall(r"<li>([A-Z2-9]{5}-[A-Z2-9]{5})</li>", done.text)
    assert len(codes) == 10 and "身份验证器应用已添加" in done.text
    onward = f"/authorize/resume?req={req}" if req else "/account"
    assert f'<a id="continue" class="button" href="{onward}">' in done.text

    [session] = await idp.ctx.sessions.list_for_user(user.id)
    assert session.amr == ("pwd", "otp", "mfa") and session.acr == ACR_MFA
    assert cookie_of(browser, "onegate_sso") is not None and cookie_of(browser, "onegate_mfa") is None
    assert not (await idp.user("zhangwei")).mfa_enrol_required  # an administrator's request is met
    assert [app.name for app in await idp.ctx.mfa.totp.list(user.id)] == ["我的手机"]
    assert idp.events_of("user-login")[-1].get("onegate.amr") == ["pwd", "otp", "mfa"]


async def test_forced_enrolment_with_a_passkey(make_idp: IdpFactory) -> None:
    idp = await make_idp(mfa_settings=MfaSettings(required=True))
    user = await idp.add_user()
    browser = idp.client()
    await to_setup(browser)
    answer = await register(browser, key(), page="/mfa/setup", base="/mfa/setup/passkey")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["next"] == "/account" and len(body["recovery_codes"]) == 10
    [session] = await idp.ctx.sessions.list_for_user(user.id)
    assert session.acr == ACR_PHR and session.amr[0] == "pwd" and "hwk" in session.amr
    assert cookie_of(browser, "onegate_mfa") is None


async def test_a_password_alone_never_adds_a_factor_to_an_account_that_has_one(idp: Idp) -> None:
    await idp.add_user()
    await idp.enrol_totp()
    browser = idp.client()
    await sign_in(browser)
    for path in ("/mfa/setup", "/mfa/setup/totp"):
        response = await browser.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/mfa", path
    refused = await post_json(browser, "/mfa", "/mfa/setup/passkey/options")
    assert refused.status_code == 403 and refused.json()["reason"] == "step_up_required"
    forged = await post_form(browser, "/mfa", "/mfa/setup/totp", code="123456")
    assert forged.status_code == 303 and forged.headers["location"] == "/mfa"


async def test_phishing_resistant_without_a_passkey_proves_a_code_then_sets_one_up(idp: Idp) -> None:
    user = await idp.add_user()
    secret = await idp.enrol_totp()
    pending = await idp.pending(await idp.add_client(), acr=ACR_PHR)
    query = f"?req={pending.id}"
    browser = idp.client()
    await sign_in(browser, req=pending.id)
    page = await browser.get(f"/mfa{query}")
    assert 'id="totp-code"' in page.text and "随后设置通行密钥" in page.text
    assert 'id="webauthn-verify"' not in page.text

    code = await post_form(browser, f"/mfa{query}", f"/mfa/totp{query}", code=idp.code(secret))
    assert code.status_code == 303 and code.headers["location"] == f"/mfa{query}"
    assert await idp.ctx.sessions.list_for_user(user.id) == []  # mfa is not phr: not signed in yet
    onward = await browser.get(code.headers["location"])
    assert onward.headers["location"] == f"/mfa/setup{query}"
    setup = await browser.get(onward.headers["location"])
    assert 'id="add-passkey"' in setup.text and 'id="add-totp"' not in setup.text
    assert (await browser.get(f"/mfa/setup/totp{query}")).headers["location"] == f"/mfa/setup{query}"

    answer = await register(browser, key(), page=f"/mfa/setup{query}", base="/mfa/setup/passkey", name="钥匙")
    assert answer.status_code == 200, answer.text
    assert answer.json()["next"] == f"/authorize/resume?req={pending.id}"
    assert len(answer.json()["recovery_codes"]) == 10  # the app was bound without codes: a first set
    [session] = await idp.ctx.sessions.list_for_user(user.id)
    assert session.acr == ACR_PHR and {"pwd", "otp", "hwk", "mfa"} <= set(session.amr)


async def test_a_step_up_that_needs_a_passkey_first_sets_one_up_and_can_be_declined(idp: Idp) -> None:
    """Signed in with password + code; an application asks for phishing-resistant, and the user has
    no passkey: the setup page says who asks, offers only a passkey, and a way back (no cancel of
    the sign-in: the user stays signed in)."""
    await idp.add_user()
    secret = await idp.enrol_totp()
    browser = idp.client()
    await sign_in(browser)
    idp.clock.advance(30)
    done = await post_form(browser, "/mfa", "/mfa/totp", code=idp.code(secret))
    assert done.status_code == 303 and done.headers["location"] == "/account"
    pending = await idp.pending(await idp.add_client(), acr=ACR_PHR)
    query = f"?req={pending.id}"

    onward = await browser.get(f"/mfa{query}")
    assert onward.status_code == 303 and onward.headers["location"] == f"/mfa/setup{query}"
    setup = await browser.get(onward.headers["location"])
    assert "需要更高强度的身份验证" in setup.text and "登录后继续访问" not in setup.text
    assert 'id="add-passkey"' in setup.text and 'id="add-totp"' not in setup.text
    assert 'id="not-now"' in setup.text and "/mfa/cancel" not in setup.text
