"""Recovery codes at sign-in: one use each, the user told how many are left (issue 4, acceptance 5)."""

from __future__ import annotations

import re

import httpx

from tests.idp.pages.conftest import Idp, cookie_of, post_form, sign_in


async def waiting_for_a_code(idp: Idp, ip: str = "10.0.0.1") -> httpx.AsyncClient:
    browser = idp.client(ip)
    response = await sign_in(browser)
    assert response.headers["location"] == "/mfa"
    return browser


async def test_a_recovery_code_works_once_and_says_how_many_are_left(idp: Idp) -> None:
    user = await idp.add_user()
    await idp.enrol_totp()
    codes = await idp.ctx.mfa.recovery.generate(user.id)
    browser = await waiting_for_a_code(idp)
    page = await browser.get("/mfa")
    assert 'id="recovery-code"' in page.text and 'id="recovery-submit"' in page.text

    used = await post_form(browser, "/mfa", "/mfa/recovery", code=codes[0].lower().replace("-", " "))
    assert used.status_code == 200
    assert "剩余恢复码：9 个" in used.text
    assert re.search(r'<a id="continue" class="button" href="/account">', used.text)
    session = next(iter(await idp.ctx.sessions.list_for_user(user.id)))
    assert session.amr == ("pwd", "otp", "mfa")
    assert cookie_of(browser, "onegate_sso") is not None and cookie_of(browser, "onegate_mfa") is None
    event = idp.events_of("recovery-code-used")[-1]
    assert event.outcome == "success" and event.get("onegate.mfa.remaining") == 9

    again = await waiting_for_a_code(idp, "10.0.0.2")
    refused = await post_form(again, "/mfa", "/mfa/recovery", code=codes[0])
    assert refused.status_code == 400 and "恢复码无效或已被使用" in refused.text
    assert '<details class="mfa-method" open>' in refused.text  # the form stays open, with the message
    assert idp.events_of("recovery-code-used")[-1].outcome == "failure"
    assert cookie_of(again, "onegate_sso") is None

    other = await post_form(again, "/mfa", "/mfa/recovery", code=codes[1])
    assert other.status_code == 200 and "剩余恢复码：8 个" in other.text
    assert "恢复码即将用完" not in other.text


async def test_the_last_codes_warn_and_a_wrong_code_counts_toward_the_lockout(idp: Idp) -> None:
    user = await idp.add_user()
    await idp.enrol_totp()
    codes = await idp.ctx.mfa.recovery.generate(user.id)
    for code in codes[:8]:
        assert (await idp.ctx.mfa.recovery.use(user.id, code)).ok
    browser = await waiting_for_a_code(idp)
    low = await post_form(browser, "/mfa", "/mfa/recovery", code=codes[8])
    assert "剩余恢复码：1 个" in low.text and "恢复码即将用完" in low.text
    last_browser = await waiting_for_a_code(idp, "10.0.0.2")
    last = await post_form(last_browser, "/mfa", "/mfa/recovery", code=codes[9])
    assert "这是您的最后一个恢复码" in last.text

    # With none left the form is not offered at all.
    empty = await waiting_for_a_code(idp, "10.0.0.4")
    assert 'id="recovery-code"' not in (await empty.get("/mfa")).text
    assert (await post_form(empty, "/mfa", "/mfa/recovery", code=codes[0])).status_code == 400

    # lockout_threshold = 3 in the fixture: wrong recovery codes count like wrong passwords.
    await idp.ctx.mfa.recovery.generate(user.id)
    guesser = await waiting_for_a_code(idp, "10.0.0.3")
    for guess in ("AAAAA-AAAAA", "BBBBB-BBBBB"):
        assert (await post_form(guesser, "/mfa", "/mfa/recovery", code=guess)).status_code == 400
    locked = await post_form(guesser, "/mfa", "/mfa/recovery", code="CCCCC-CCCCC")
    assert locked.status_code == 303 and locked.headers["location"] == "/login?notice=mfa-locked"
    assert len(idp.events_of("user-locked")) == 1


async def test_english_tells_the_count_too(idp: Idp) -> None:
    user = await idp.add_user()
    await idp.enrol_totp()
    codes = await idp.ctx.mfa.recovery.generate(user.id)
    browser = await waiting_for_a_code(idp)
    browser.headers["accept-language"] = "en"
    used = await post_form(browser, "/mfa", "/mfa/recovery", code=codes[3])
    assert "Recovery codes left: 9. Each code works only once." in used.text
