"""Multi-factor sign-in in a real browser (issue 4, acceptance 1 and 4; STORIES.md "A day").

Debian's Chromium drives the real pages of a real ``onegate serve --role idp`` process at
``http://idp.localhost:<port>``; the DevTools virtual authenticator answers the WebAuthn
ceremonies (L3 §7.1 registration, §7.2 assertion) the pages' own script starts; a relying party
(``tests.e2e.oidc_rp``) receives the authorization responses on 127.0.0.1, redeems the codes over
HTTP and verifies the ID tokens against the JWKS, so ``acr`` / ``amr`` (RFC 8176) / ``auth_time`` /
``sid`` are read from what the IdP really signed (OIDC Core §2, §3.1.3.7).

* a passkey registered on ``/account/security`` signs its user in with no username and no
  password (acceptance 1, passwordless);
* the same kind of passkey is asked for on ``/mfa`` after a correct password, and only then is
  there a session (acceptance 1, second factor);
* a session made with password + authenticator-app code is stepped up in place through WebAuthn
  alone when a client asks ``acr_values=urn:onegate:acr:phr`` (acceptance 4) — and, for a user
  with no passkey yet, by setting one up on the way (``/mfa/setup``);
* 张伟's morning: password + code once, then a second application signs him in without a prompt.

One IdP for the module, one user per test; authenticator-app codes come from the key shown on
the setup page (pyotp), each RFC 6238 time step used once (the IdP refuses a replayed step).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from playwright.async_api import Page, Request, expect

from tests.e2e.conftest import IDP_HOST, IdpServer, IdpUser
from tests.e2e.oidc_rp import CallbackReceiver, RelyingParty
from tests.e2e.playwright_support import Screenshots, VirtualAuthenticator

pytestmark = pytest.mark.e2e

ACR_MFA = "urn:onegate:acr:mfa"
ACR_PHR = "urn:onegate:acr:phr"
SSO_COOKIE = "onegate_sso"  # idp.sessions.COOKIE_NAME (plain http: no __Host- prefix)
MFA_COOKIE = "onegate_mfa"  # idp.pages.transactions.COOKIE_NAME: a password accepted, a factor owed
RECOVERY_CODE = re.compile(r"^[A-HJ-NP-Z2-9]{5}-[A-HJ-NP-Z2-9]{5}$")  # mfa.recovery.ALPHABET, 2 groups
TOTP_STEP = 30  # seconds, RFC 6238 §4.1 default X, what the IdP's provisioning URI says


# -- the relying parties ---------------------------------------------------------------------


@dataclass(frozen=True)
class RelyingParties:
    hr: RelyingParty  # 人事管理系统, behind which 王芳 and 张伟 work
    oa: RelyingParty  # 协同办公, integrated by OIDC directly (STORIES.md)
    receiver: CallbackReceiver


@pytest.fixture(scope="module")
def rps(idp_server: IdpServer) -> Iterator[RelyingParties]:
    """Two first-party clients of the module's IdP, both redirecting to one local receiver."""
    with CallbackReceiver() as receiver:
        parties = []
        for name, name_en, path in (
            ("人事管理系统", "HR", "/hr/callback"),
            ("协同办公", "OA", "/oa/callback"),
        ):
            uri = receiver.url(path)
            client = idp_server.add_client(name=name, name_en=name_en, redirect_uris=[uri], first_party=True)
            parties.append(RelyingParty(idp_server, receiver, client, uri))
        try:
            yield RelyingParties(hr=parties[0], oa=parties[1], receiver=receiver)
        finally:
            for party in parties:
                party.close()


# -- the user's phone app --------------------------------------------------------------------


class AuthenticatorApp:
    """An authenticator app holding the key from the setup page (RFC 6238).

    Each time step is used at most once (the IdP refuses a replay, RFC 6238 §5.2); when the
    current step was used, the next one is taken — the IdP accepts one step ahead — so a test
    never waits for the clock.
    """

    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret, interval=TOTP_STEP)
        self._last_step = -1

    def code(self) -> str:
        now = int(time.time()) // TOTP_STEP
        step = max(now, self._last_step + 1)
        assert step <= now + 1, "more codes asked for than the tolerance of one step allows"
        self._last_step = step
        return self.totp.at(step * TOTP_STEP)


# -- page steps ------------------------------------------------------------------------------


def path_of(url: str) -> str:
    return urlsplit(url).path


async def wait_for_path(page: Page, path: str) -> None:
    await page.wait_for_url(lambda url: path_of(url) == path)


async def password_sign_in(page: Page, user: IdpUser) -> None:
    """Fill in and send the login form the page shows."""
    await page.locator("#username").fill(user.username)
    await page.locator("#password").fill(user.password)
    await page.get_by_role("button", name="登录", exact=True).click()


async def sign_in_to_account(page: Page, idp: IdpServer, user: IdpUser) -> None:
    """Password only (the user has no second factor yet): straight to /account."""
    await page.goto(idp.url("/login"))
    await password_sign_in(page, user)
    await wait_for_path(page, "/account")
    await expect(page.locator(".account-profile")).to_contain_text(user.username)


async def sign_out(page: Page, idp: IdpServer) -> None:
    """Sign out from /account, and check that the browser has no session any more."""
    await page.goto(idp.url("/account"))
    await page.locator("form[action$='/account/logout'] button").click()
    await wait_for_path(page, "/login")
    await page.goto(idp.url("/account"))
    await wait_for_path(page, "/login")
    assert SSO_COOKIE not in await cookie_names(page)


async def cookie_names(page: Page) -> set[str]:
    return {c["name"] for c in await page.context.cookies(f"http://{IDP_HOST}/")}


async def add_passkey(
    page: Page,
    idp: IdpServer,
    authenticator: VirtualAuthenticator,
    user: IdpUser,
    name: str,
    *,
    first_factor: bool,
    screenshots: Screenshots | None = None,
) -> list[str]:
    """Register a passkey on /account/security; the recovery codes shown (first factor only)."""
    await page.goto(idp.url("/account/security"))
    await expect(page.get_by_role("heading", name="登录方式与安全")).to_be_visible()
    before = len(await authenticator.credentials())
    await page.locator("#passkey-name").fill(name)
    # The button is hidden until the script (a file, CSP) found WebAuthn support and took it over.
    await expect(page.locator("#add-passkey")).to_be_visible()
    await page.locator("#add-passkey").click()
    codes: list[str] = []
    if first_factor:
        # The first factor brings the recovery codes, shown this once in the page itself.
        await expect(page.locator("#recovery-section")).to_be_visible()
        items = page.locator("#recovery-codes li")
        await expect(items).to_have_count(10)
        codes = [text.strip() for text in await items.all_text_contents()]
        # The codes stand alone: the page's description of the state before the passkey steps aside.
        await expect(page.locator("label[for=passkey-name]")).to_be_hidden()
        await expect(page.locator("#add-totp")).to_be_hidden()
        if screenshots is not None:
            await screenshots.take(page, "passkey-added-recovery-codes")
        await page.locator("#recovery-section #continue").click()
    await page.wait_for_url(lambda url: path_of(url) == "/account/security" and "notice=" in url)
    await expect(page.get_by_role("status").first).to_have_text("通行密钥已添加。")
    row = page.locator("[data-factor-id^='webauthn:']", has_text=name)
    await expect(row).to_have_count(1)
    held = await authenticator.credentials()
    assert len(held) == before + 1
    new = held[-1]
    # A discoverable credential for our RP id, with an opaque user handle (never the username).
    assert new.resident and new.rp_id == IDP_HOST
    assert new.user_handle and user.username.encode() not in new.user_handle
    return codes


async def add_totp(page: Page, idp: IdpServer, *, screenshots: Screenshots | None = None) -> AuthenticatorApp:
    """Set up an authenticator app on /account/security from the setup page's key (first factor)."""
    await page.goto(idp.url("/account/security"))
    await page.locator("#add-totp").click()
    await wait_for_path(page, "/account/security/totp")
    secret = (await page.locator("#totp-secret").text_content() or "").strip()
    uri = await page.locator("#totp-qr").get_attribute("data-uri") or ""
    # The QR payload and the key typed by hand are one and the same key.
    scanned = pyotp.parse_uri(uri)
    assert isinstance(scanned, pyotp.TOTP) and scanned.secret == secret
    assert scanned.digits == 6 and scanned.interval == TOTP_STEP
    assert await page.locator("#totp-qr").evaluate("img => img.complete && img.naturalWidth > 0")
    if screenshots is not None:
        await screenshots.take(page, "totp-setup")
    app = AuthenticatorApp(secret)
    await page.locator("#totp-confirm-code").fill(app.code())
    await page.locator("#totp-name").fill("我的手机")
    await page.locator("#totp-confirm").click()
    # First factor: the recovery codes page, once.
    await expect(page.get_by_role("heading", name="您的恢复码")).to_be_visible()
    await expect(page.locator("#recovery-codes li")).to_have_count(10)
    await page.locator("#continue").click()
    await wait_for_path(page, "/account/security")
    await expect(page.locator("[data-factor-id^='totp:']", has_text="我的手机")).to_have_count(1)
    return app


def record_navigations(page: Page) -> list[str]:
    """Every top-level document the tab asks for from now on (its URL), in order."""
    seen: list[str] = []

    def on_request(request: Request) -> None:
        if request.is_navigation_request() and request.frame == page.main_frame:
            seen.append(request.url)

    page.on("request", on_request)
    return seen


def record_posts(page: Page) -> list[str]:
    """The paths of every POST the tab sends from now on (forms and fetch)."""
    seen: list[str] = []

    def on_request(request: Request) -> None:
        if request.method == "POST":
            seen.append(path_of(request.url))

    page.on("request", on_request)
    return seen


async def follow_to_callback(page: Page, rp: RelyingParty) -> str:
    await page.wait_for_url(lambda url: rp.is_callback(url))
    return page.url


async def assert_not_signed_in(page: Page, idp: IdpServer) -> None:
    """Another tab of the same browser finds no session: /account sends it to /login."""
    tab = await page.context.new_page()
    try:
        await tab.goto(idp.url("/account"))
        assert path_of(tab.url) == "/login", tab.url
    finally:
        await tab.close()


# -- acceptance 1: passwordless --------------------------------------------------------------


async def test_passkey_registered_on_security_page_signs_in_without_username_or_password(
    page: Page,
    authenticator: VirtualAuthenticator,
    idp_server: IdpServer,
    rps: RelyingParties,
    screenshots: Screenshots,
) -> None:
    user = idp_server.add_user(name="王芳")
    await sign_in_to_account(page, idp_server, user)

    await page.goto(idp_server.url("/account/security"))
    await screenshots.take(page, "security-page-empty")
    codes = await add_passkey(
        page, idp_server, authenticator, user, "办公室电脑", first_factor=True, screenshots=screenshots
    )
    assert len(set(codes)) == 10 and all(RECOVERY_CODE.match(code) for code in codes), codes
    # Shown once: the page seen again lists the passkey and counts the codes, but shows none.
    await page.goto(idp_server.url("/account/security"))
    await expect(page.locator("#recovery-section")).to_be_hidden()
    await expect(page.locator("#recovery-codes li")).to_have_count(0)
    await expect(page.locator("#recovery-left")).to_contain_text("10")
    html = await page.content()
    assert not any(code in html for code in codes)
    await screenshots.take(page, "security-page-with-passkey")

    await sign_out(page, idp_server)

    # The login page: nothing typed, only the passkey button.
    await page.goto(idp_server.url("/login"))
    await expect(page.locator("#username")).to_have_value("")
    await expect(page.locator("#password")).to_have_value("")
    signin = page.locator("#passkey-signin")
    await expect(signin).to_be_visible()
    await expect(signin).to_have_text("使用通行密钥登录")
    await screenshots.take(page, "login-with-passkey-button")
    count_before = (await authenticator.credentials())[0].sign_count
    posts = record_posts(page)
    await signin.click()

    await wait_for_path(page, "/account")
    await expect(page.locator(".account-profile")).to_contain_text("王芳")
    await expect(page.locator(".account-profile")).to_contain_text(user.username)
    await expect(page.locator("table.sessions tbody tr")).to_have_count(1)
    # The discoverable-credential ceremony, and no password form was ever sent.
    assert posts == ["/login/passkey/options", "/login/passkey/verify"], posts
    assert (await authenticator.credentials())[0].sign_count > count_before
    assert SSO_COOKIE in await cookie_names(page)

    # What the session is, as an application learns it: the ID token of an SSO sign-in.
    hr = rps.hr
    request = hr.authorization()
    await page.goto(request.url)
    signed = hr.complete(request, await follow_to_callback(page, hr))
    assert signed.claims["preferred_username"] == user.username
    assert signed.claims["name"] == "王芳"
    assert "hwk" in signed.amr and "pwd" not in signed.amr, signed.amr
    assert "pin" in signed.amr  # user verification by the authenticator (UV flag)
    assert signed.acr == ACR_PHR


# -- acceptance 1: passkey as the second factor ----------------------------------------------


async def test_passkey_is_asked_for_after_the_password_and_only_then_signs_in(
    page: Page,
    authenticator: VirtualAuthenticator,
    idp_server: IdpServer,
    rps: RelyingParties,
    screenshots: Screenshots,
) -> None:
    user = idp_server.add_user(name="李娜")
    await sign_in_to_account(page, idp_server, user)
    await add_passkey(page, idp_server, authenticator, user, "我的安全密钥", first_factor=True)
    await sign_out(page, idp_server)

    hr = rps.hr
    request = hr.authorization()
    await page.goto(request.url)
    await wait_for_path(page, "/login")
    await expect(page.locator(".login-client")).to_contain_text("人事管理系统")
    await password_sign_in(page, user)

    # The password was right, yet there is no session: a sign-in transaction owes a factor.
    await wait_for_path(page, "/mfa")
    req = parse_qs(urlsplit(page.url).query).get("req")
    assert req, page.url
    await expect(page.get_by_role("heading", name="验证您的身份")).to_be_visible()
    await expect(page.get_by_text("密码正确。请使用第二重验证方式完成登录。")).to_be_visible()
    await expect(page.locator("#webauthn-verify")).to_be_visible()
    await expect(page.locator("#totp-code")).to_have_count(0)  # no authenticator app set up
    await expect(page.locator("#recovery-code")).to_have_count(1)  # the codes of the first factor
    cookies = await cookie_names(page)
    assert MFA_COOKIE in cookies and SSO_COOKIE not in cookies, cookies
    await assert_not_signed_in(page, idp_server)
    assert not any(request.state in received for received in rps.receiver.received)  # no code yet
    await screenshots.take(page, "mfa-second-factor")

    await page.locator("#webauthn-verify").click()
    signed = hr.complete(request, await follow_to_callback(page, hr))
    assert signed.claims["preferred_username"] == user.username
    assert {"pwd", "hwk", "mfa"} <= set(signed.amr), signed.amr
    assert signed.acr == ACR_PHR
    cookies = await cookie_names(page)
    assert SSO_COOKIE in cookies and MFA_COOKIE not in cookies, cookies


# -- acceptance 4: step-up to phishing-resistant ---------------------------------------------


async def test_step_up_to_phishing_resistant_goes_through_webauthn_only_and_keeps_the_session(
    page: Page,
    authenticator: VirtualAuthenticator,
    idp_server: IdpServer,
    rps: RelyingParties,
    screenshots: Screenshots,
) -> None:
    user = idp_server.add_user(name="王芳")
    await sign_in_to_account(page, idp_server, user)
    app = await add_totp(page, idp_server)
    # The session is now password + code (the first factor upgraded it), which the security page
    # needs before it lets a second factor be added: a passkey, with no new recovery codes.
    await add_passkey(page, idp_server, authenticator, user, "办公室电脑", first_factor=False)
    await sign_out(page, idp_server)

    # An ordinary sign-in at the application: password and a code from the phone.
    hr = rps.hr
    first_request = hr.authorization()
    await page.goto(first_request.url)
    await wait_for_path(page, "/login")
    await password_sign_in(page, user)
    await wait_for_path(page, "/mfa")
    await expect(page.locator("#webauthn-verify")).to_be_visible()  # offered, not used here
    await page.locator("#totp-code").fill(app.code())
    await page.locator("#totp-submit").click()
    first = hr.complete(first_request, await follow_to_callback(page, hr))
    assert first.acr == ACR_MFA
    assert {"pwd", "otp", "mfa"} <= set(first.amr) and "hwk" not in first.amr, first.amr

    # auth_time has one-second resolution (OIDC Core §2) and the IdP process reads the wall clock:
    # let it pass the first sign-in's second, so "newer" is observable.
    await asyncio.sleep(max(0.0, first.claims["auth_time"] + 1 - time.time()))

    # The application now asks for a phishing-resistant sign-in.
    navigations = record_navigations(page)
    posts = record_posts(page)
    second_request = hr.authorization(acr_values=ACR_PHR)
    await page.goto(second_request.url)
    await wait_for_path(page, "/mfa")
    await expect(page.get_by_text("该应用要求使用通行密钥或安全密钥。")).to_be_visible()
    await expect(page.get_by_text("此操作需要比当前更高的登录安全级别", exact=False)).to_be_visible()
    # WebAuthn only: no password, no code, no recovery code.
    await expect(page.locator("input[type=password]")).to_have_count(0)
    await expect(page.locator("#totp-code")).to_have_count(0)
    await expect(page.locator("#recovery-code")).to_have_count(0)
    await expect(page.locator("#webauthn-verify")).to_be_visible()
    await screenshots.take(page, "step-up-phr")
    await page.locator("#webauthn-verify").click()
    second = hr.complete(second_request, await follow_to_callback(page, hr))

    # Straight to the second-factor page and back: no login page on the way.
    assert [path_of(url) for url in navigations] == [
        "/authorize",
        "/mfa",
        "/authorize/resume",
        "/hr/callback",
    ]
    assert "/login" not in posts and posts == ["/mfa/webauthn/options", "/mfa/webauthn/verify"], posts
    assert second.acr == ACR_PHR
    assert "hwk" in second.amr, second.amr
    assert {"pwd", "otp"} <= set(second.amr)  # what the session proved before is kept
    # Upgraded in place: the same session, a newer authentication.
    assert second.claims["sid"] == first.claims["sid"]
    assert second.claims["sub"] == first.claims["sub"]
    assert second.claims["auth_time"] > first.claims["auth_time"]


async def test_step_up_to_phishing_resistant_sets_up_a_first_passkey_on_the_way(
    page: Page,
    authenticator: VirtualAuthenticator,
    idp_server: IdpServer,
    rps: RelyingParties,
    screenshots: Screenshots,
) -> None:
    """A password + code session whose user has no passkey yet: no code can reach ``phr``, so the
    step-up sets a passkey up (/mfa/setup) and the registration itself upgrades the session."""
    user = idp_server.add_user(name="刘洋")
    await sign_in_to_account(page, idp_server, user)
    app = await add_totp(page, idp_server)
    await sign_out(page, idp_server)

    hr = rps.hr
    first_request = hr.authorization()
    await page.goto(first_request.url)
    await wait_for_path(page, "/login")
    await password_sign_in(page, user)
    await wait_for_path(page, "/mfa")
    await expect(page.locator("#webauthn-verify")).to_have_count(0)
    await page.locator("#totp-code").fill(app.code())
    await page.locator("#totp-submit").click()
    first = hr.complete(first_request, await follow_to_callback(page, hr))
    assert first.acr == ACR_MFA
    await asyncio.sleep(max(0.0, first.claims["auth_time"] + 1 - time.time()))  # see the test above

    navigations = record_navigations(page)
    second_request = hr.authorization(acr_values=ACR_PHR)
    await page.goto(second_request.url)
    await wait_for_path(page, "/mfa/setup")
    await expect(page.get_by_role("heading", name="设置第二重验证")).to_be_visible()
    await expect(
        page.get_by_text("该应用要求使用通行密钥或安全密钥。请在本设备上设置通行密钥")
    ).to_be_visible()
    await expect(page.locator("#add-totp")).to_have_count(0)  # a code app cannot reach phr
    await expect(page.locator("input[type=password]")).to_have_count(0)
    await screenshots.take(page, "step-up-setup-passkey")
    await page.locator("#passkey-name").fill("工作手机")
    await page.locator("#add-passkey").click()
    second = hr.complete(second_request, await follow_to_callback(page, hr))

    paths = [path_of(url) for url in navigations]
    assert paths == ["/authorize", "/mfa", "/mfa/setup", "/authorize/resume", "/hr/callback"], paths
    assert len(await authenticator.credentials()) == 1
    assert second.acr == ACR_PHR and "hwk" in second.amr, second.amr
    assert second.claims["sid"] == first.claims["sid"]
    assert second.claims["auth_time"] > first.claims["auth_time"]
    # The new passkey is listed as the user's, under the name given.
    await page.goto(idp_server.url("/account/security"))
    await expect(page.locator("[data-factor-id^='webauthn:']", has_text="工作手机")).to_have_count(1)


# -- STORIES.md: 张伟's morning ---------------------------------------------------------------


async def test_zhang_wei_signs_in_once_with_password_and_code_then_oa_opens_without_a_prompt(
    page: Page, idp_server: IdpServer, rps: RelyingParties, screenshots: Screenshots
) -> None:
    user = idp_server.add_user(name="张伟", email="zhangwei@hrss.city.gov.cn")
    await sign_in_to_account(page, idp_server, user)
    app = await add_totp(page, idp_server, screenshots=screenshots)
    await sign_out(page, idp_server)

    # 08:30, HR: the login page names the application, then password, then the phone's code.
    hr, oa = rps.hr, rps.oa
    hr_request = hr.authorization()
    await page.goto(hr_request.url)
    await wait_for_path(page, "/login")
    await expect(page.locator(".login-client")).to_contain_text("人事管理系统")
    await screenshots.take(page, "login-for-hr")
    await password_sign_in(page, user)
    await wait_for_path(page, "/mfa")
    await expect(page.locator(".login-client")).to_contain_text("人事管理系统")
    await expect(page.locator("#webauthn-verify")).to_have_count(0)  # he has no passkey
    await screenshots.take(page, "mfa-totp")
    await page.locator("#totp-code").fill(app.code())
    await page.locator("#totp-submit").click()
    at_hr = hr.complete(hr_request, await follow_to_callback(page, hr))
    assert at_hr.claims["name"] == "张伟"
    assert at_hr.acr == ACR_MFA
    assert {"pwd", "otp", "mfa"} <= set(at_hr.amr), at_hr.amr

    # Then OA: the IdP answers straight away with a code — no login page, no second factor.
    navigations = record_navigations(page)
    oa_request = oa.authorization()
    await page.goto(oa_request.url)
    at_oa = oa.complete(oa_request, await follow_to_callback(page, oa))
    assert [path_of(url) for url in navigations] == ["/authorize", "/oa/callback"], navigations
    assert at_oa.claims["aud"] in (oa.client_id, [oa.client_id])
    assert at_oa.claims["sub"] == at_hr.claims["sub"]
    assert at_oa.claims["sid"] == at_hr.claims["sid"]
    assert at_oa.claims["auth_time"] == at_hr.claims["auth_time"]  # no new authentication
    assert (at_oa.acr, sorted(at_oa.amr)) == (at_hr.acr, sorted(at_hr.amr))
    assert at_oa.tokens["access_token"] != at_hr.tokens["access_token"]
