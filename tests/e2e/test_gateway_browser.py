"""The gateway in a real browser (issue 6, acceptance 1; STORIES.md "A day", steps 1-3).

Debian's Chromium, driven by Playwright, opens departmental applications at
``http://<app>.localhost:<port>`` — one real ``onegate serve --role all`` process (the IdP on
``idp.localhost``, the gateway on every application host) in front of echo upstreams that answer
with the request they received, so the page itself shows the identity the gateway passed on:

* 张伟 opens HR, signs in at the IdP's zh-CN login page and lands in HR with his identity headers
  and a signed assertion; City operations opens without a login prompt (SSO, OIDC Core §3.1.2.1:
  the IdP answers the gateway's authorization request from its session); Permits shows the
  gateway's deny page (403, zh-CN, request id, styled by core's stylesheet);
* 王芳, signed in with her password only, opens HR ``/admin/``: the gateway's step-up sends her back
  to the IdP with ``acr_values=urn:onegate:acr:mfa`` (OIDC Core §3.1.2.1), the IdP asks for her
  authenticator-app code (RFC 6238), and she lands on ``/admin/`` with an assertion whose ``acr``
  is ``urn:onegate:acr:mfa``;
* signing out at the IdP's account page ends the gateway sessions of both applications
  (OIDC Back-Channel Logout 1.0 §2: the IdP posts a logout token to the gateway in the background).

Screenshots of every step go to the test's ``screenshots`` directory.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
from playwright.async_api import Browser, Page, Request, Response, expect

from tests.e2e.conftest import IDP_HOST, IdpUser
from tests.e2e.playwright_support import Screenshots
from tests.gateway.stack import GatewayStack
from tests.gateway.upstreams import UpstreamServer

pytestmark = pytest.mark.e2e

ACR_MFA = "urn:onegate:acr:mfa"
OG_PRIMARY = "rgb(11, 92, 173)"  # --og-primary in core/web/static/onegate.css
OG_DANGER_BORDER = "4px"  # .panel--error { border-top: 4px solid var(--og-danger) }
TOTP_STEP = 30  # seconds (RFC 6238 §4.1), what the IdP's provisioning URI says
LOGOUT_WAIT = 5.0  # seconds allowed for back-channel logout to reach the gateway

POLICY = """
version: 1
timezone: Asia/Shanghai
apps:
  hr:
    hosts: [hr.localhost]
    rules:
      - id: hr-staff
        description: HR staff use the HR system / 人社局工作人员使用人事系统
        effect: allow
        subjects: {departments: [hrss]}
        not_paths: [/admin]
      - id: hr-admins
        description: HR administrators manage the HR system / 人事管理员管理人事系统
        effect: allow
        paths: [/admin]
        subjects: {groups: [hr-admins]}
      - id: hr-admin-mfa
        description: HR administration needs a second factor / 人事管理需要第二重验证
        effect: step_up
        paths: [/admin]
        acr: mfa
  grid:
    hosts: [grid.localhost]
    rules:
      - id: grid-read
        description: Civil servants read the city dashboard / 公务员查看城市运行看板
        effect: allow
        methods: [GET, HEAD]
        subjects: {departments: [city]}
  permits:
    hosts: [permits.localhost]
    rules:
      - id: permits-staff
        description: Approval staff use the permits system / 审批局工作人员使用行政审批系统
        effect: allow
        subjects: {groups: [approval-staff]}
"""


# -- the stack and the people ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    """HR, City operations and Permits behind one gateway, each with an echo upstream of its own."""
    with UpstreamServer() as hr, UpstreamServer() as grid, UpstreamServer() as permits:
        routes = {"hr": ("hr", hr.url), "grid": ("grid", grid.url), "permits": ("permits", permits.url)}
        server = GatewayStack(tmp_path_factory.mktemp("gateway-browser"), routes, policy=POLICY).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def zhangwei(stack: GatewayStack) -> IdpUser:
    return stack.add_user("zhangwei", name="张伟", department="hrss", groups=["hr-staff"])


@pytest.fixture(scope="module")
def wangfang(stack: GatewayStack) -> IdpUser:
    return stack.add_user("wangfang", name="王芳", department="hrss", groups=["hr-staff", "hr-admins"])


# -- helpers -------------------------------------------------------------------------------------


def host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


def path_of(url: str) -> str:
    return urlsplit(url).path


def on_idp_login(url: str) -> bool:
    return host_of(url) == IDP_HOST and path_of(url) == "/login"


def record_navigations(page: Page) -> list[str]:
    """Every top-level document the tab asks for from now on, redirects included, in order."""
    seen: list[str] = []

    def on_request(request: Request) -> None:
        if request.is_navigation_request() and request.frame == page.main_frame:
            seen.append(request.url)

    page.on("request", on_request)
    return seen


def record_stylesheets(page: Page) -> list[tuple[str, int]]:
    """The URL and status of every stylesheet the tab loads from now on."""
    seen: list[tuple[str, int]] = []

    def on_response(response: Response) -> None:
        if response.request.resource_type == "stylesheet":
            seen.append((response.url, response.status))

    page.on("response", on_response)
    return seen


async def echoed(page: Page) -> dict[str, Any]:
    """What the echo upstream received, read from the JSON document the tab shows."""
    text = await page.locator("body pre").first.inner_text()
    data: dict[str, Any] = json.loads(text)
    return data


def identity(view: dict[str, Any]) -> dict[str, str]:
    """The ``x-onegate-*`` headers the upstream received (each must come exactly once)."""
    found: dict[str, str] = {}
    for name, value in view["headers"]:
        key = name.lower()
        if key.replace("_", "-").startswith("x-onegate-"):
            assert key not in found, f"{key} reached the upstream twice"
            found[key] = value
    return found


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and the claims of a compact JWS, unverified (RFC 7515 §7.1)."""
    header, payload, _signature = token.split(".")

    def decode(part: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return data

    return decode(header), decode(payload)


async def password_sign_in(page: Page, user: IdpUser) -> None:
    """Fill in and send the IdP's zh-CN login form the tab shows."""
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_role("heading", name="登录")).to_be_visible()
    await page.locator("#username").fill(user.username)
    await page.locator("#password").fill(user.password)
    await page.get_by_role("button", name="登录", exact=True).click()


async def arrive(page: Page, stack: GatewayStack, app: str, path: str = "/") -> None:
    expected = urlsplit(stack.app_url(app, path))
    await page.wait_for_url(lambda url: urlsplit(url)[:3] == expected[:3])


class AuthenticatorApp:
    """The phone app holding the key from the IdP's setup page; each RFC 6238 time step is used
    once (the IdP refuses a replayed step), the next one taken when the current one was used."""

    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret, interval=TOTP_STEP)
        self._last_step = -1

    def code(self) -> str:
        now = int(time.time()) // TOTP_STEP
        step = max(now, self._last_step + 1)
        assert step <= now + 1, "more codes asked for than the tolerance of one step allows"
        self._last_step = step
        return self.totp.at(step * TOTP_STEP)


async def enrol_totp(browser: Browser, stack: GatewayStack, user: IdpUser) -> AuthenticatorApp:
    """In a browser profile of its own: sign in to the IdP's account pages with the password, set
    up an authenticator app on /account/security, and sign out again."""
    context = await browser.new_context(locale="zh-CN", timezone_id="Asia/Shanghai")
    context.set_default_timeout(10_000)
    try:
        tab = await context.new_page()
        await tab.goto(stack.url("/login"))
        await password_sign_in(tab, user)
        await tab.wait_for_url(lambda url: path_of(url) == "/account")
        await tab.goto(stack.url("/account/security"))
        await tab.locator("#add-totp").click()
        await tab.wait_for_url(lambda url: path_of(url) == "/account/security/totp")
        app = AuthenticatorApp((await tab.locator("#totp-secret").text_content() or "").strip())
        await tab.locator("#totp-confirm-code").fill(app.code())
        await tab.locator("#totp-name").fill("我的手机")
        await tab.locator("#totp-confirm").click()
        await expect(tab.get_by_role("heading", name="您的恢复码")).to_be_visible()
        await tab.locator("#continue").click()
        await tab.wait_for_url(lambda url: path_of(url) == "/account/security")
        await expect(tab.locator("[data-factor-id^='totp:']", has_text="我的手机")).to_have_count(1)
        await tab.goto(stack.url("/account"))
        await tab.locator("form[action$='/account/logout'] button").click()
        await tab.wait_for_url(lambda url: path_of(url) == "/login")
    finally:
        await context.close()
    return app


# -- 张伟: sign in once, SSO to a second application, refused a third -----------------------------


async def test_zhang_wei_signs_in_at_hr_opens_grid_without_a_prompt_and_is_refused_permits(
    page: Page, stack: GatewayStack, zhangwei: IdpUser, screenshots: Screenshots
) -> None:
    # 1. HR sends him to the IdP's login page, in Chinese, and back with his identity.
    await page.goto(stack.app_url("hr", "/"))
    assert on_idp_login(page.url), page.url
    await screenshots.take(page, "hr-idp-login")
    await password_sign_in(page, zhangwei)
    await arrive(page, stack, "hr", "/")
    await screenshots.take(page, "hr-signed-in")
    view = await echoed(page)
    assert view["method"] == "GET" and view["target"] == "/"
    headers = identity(view)
    assert headers["x-onegate-user"] == "zhangwei"
    assert unquote(headers["x-onegate-name"]) == "张伟"
    assert headers["x-onegate-groups"] == "hr-staff"
    assert headers["x-onegate-department"] == "hrss"
    header, claims = jwt_parts(headers["x-onegate-assertion"])
    assert header["typ"] == "onegate-assertion+jwt" and header.get("kid")
    assert claims["aud"] == "hr" and claims["preferred_username"] == "zhangwei"
    assert claims["departments"] == ["hrss", "city"]
    # The gateway's session cookie stays with the gateway.
    assert not any(n.lower() == "cookie" and "onegate_gw" in v for n, v in view["headers"])

    # 2. City operations: the IdP session signs him in at once, no login form on the way.
    navigations = record_navigations(page)
    await page.goto(stack.app_url("grid", "/"))
    await arrive(page, stack, "grid", "/")
    await screenshots.take(page, "grid-signed-in-without-prompt")
    assert not any(on_idp_login(url) for url in navigations), navigations
    assert any(host_of(url) == IDP_HOST and path_of(url) == "/authorize" for url in navigations), (
        navigations  # a real sign-in at the IdP, not a cookie shared across hosts
    )
    await expect(page.locator("input[type=password]")).to_have_count(0)
    grid = identity(await echoed(page))
    assert grid["x-onegate-user"] == "zhangwei"
    _, grid_claims = jwt_parts(grid["x-onegate-assertion"])
    assert grid_claims["aud"] == "grid" and grid_claims["sid"] != claims["sid"]  # a session per host

    # 3. Permits: the gateway's deny page, in Chinese, with the request id and core's styles.
    stylesheets = record_stylesheets(page)
    response = await page.goto(stack.app_url("permits", "/"))
    assert response is not None and response.status == 403
    assert host_of(page.url) == "permits.localhost"
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_role("heading", name="无权访问")).to_be_visible()
    meta = page.locator("dl.error-meta")
    await expect(meta.locator("dt", has_text="请求编号")).to_be_visible()
    request_id = (await meta.locator("dd code").last.inner_text()).strip()
    assert len(request_id) >= 8 and request_id.isalnum(), request_id
    await expect(meta).to_contain_text("permits")
    shot = await screenshots.take(page, "permits-denied")
    print(f"deny page: {shot}")
    body = await page.locator("body").inner_text()
    assert "Traceback" not in body and "127.0.0.1" not in body
    # The stylesheet came from the gateway's own static path and was applied.
    assert any(path_of(url) == "/.onegate/static/onegate.css" for url, _ in stylesheets), stylesheets
    assert all(status == 200 for _, status in stylesheets), stylesheets
    header_colour = await page.locator(".site-header").evaluate("e => getComputedStyle(e).backgroundColor")
    assert header_colour == OG_PRIMARY
    border = await page.locator(".panel--error").evaluate("e => getComputedStyle(e).borderTopWidth")
    assert border == OG_DANGER_BORDER


# -- 王芳: step-up to a second factor for HR administration ------------------------------------


async def test_wang_fang_is_asked_for_her_second_factor_for_hr_admin(
    page: Page, browser: Browser, stack: GatewayStack, wangfang: IdpUser, screenshots: Screenshots
) -> None:
    # Her morning sign-in, with the password only (she had no authenticator app yet).
    await page.goto(stack.app_url("hr", "/"))
    assert on_idp_login(page.url), page.url
    await password_sign_in(page, wangfang)
    await arrive(page, stack, "hr", "/")
    _, first = jwt_parts(identity(await echoed(page))["x-onegate-assertion"])
    assert first["acr"] == "urn:onegate:acr:pwd", first

    # She sets up her authenticator app (another browser profile: this one's session stays pwd).
    app = await enrol_totp(browser, stack, wangfang)

    # /admin/ needs mfa: the gateway sends her to the IdP asking for it, the IdP asks for the code.
    navigations = record_navigations(page)
    await page.goto(stack.app_url("hr", "/admin/"))
    await page.wait_for_url(lambda url: host_of(url) == IDP_HOST and path_of(url) == "/mfa")
    authorize = next(url for url in navigations if host_of(url) == IDP_HOST and path_of(url) == "/authorize")
    assert parse_qs(urlsplit(authorize).query).get("acr_values") == [ACR_MFA], authorize
    assert not any(on_idp_login(url) for url in navigations), navigations  # no password again
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_role("heading", name="验证您的身份")).to_be_visible()
    await expect(page.locator("#totp-code")).to_be_visible()
    await expect(page.locator("input[type=password]")).to_have_count(0)
    shot = await screenshots.take(page, "hr-admin-step-up-totp")
    print(f"step-up page: {shot}")
    await page.locator("#totp-code").fill(app.code())
    await page.locator("#totp-submit").click()

    await arrive(page, stack, "hr", "/admin/")
    await screenshots.take(page, "hr-admin-allowed")
    view = await echoed(page)
    assert view["target"] == "/admin/"
    headers = identity(view)
    assert headers["x-onegate-user"] == "wangfang"
    assert set(headers["x-onegate-groups"].split(",")) == {"hr-staff", "hr-admins"}
    _, claims = jwt_parts(headers["x-onegate-assertion"])
    assert claims["acr"] == ACR_MFA, claims
    assert {"pwd", "otp"} <= set(claims["amr"]), claims["amr"]
    assert claims["aud"] == "hr" and claims["preferred_username"] == "wangfang"


# -- signing out at the IdP ends every application session ------------------------------------


async def test_signing_out_at_the_idp_ends_the_hr_and_grid_sessions(
    page: Page, stack: GatewayStack, zhangwei: IdpUser, screenshots: Screenshots
) -> None:
    await page.goto(stack.app_url("hr", "/"))
    assert on_idp_login(page.url), page.url
    await password_sign_in(page, zhangwei)
    await arrive(page, stack, "hr", "/")
    await page.goto(stack.app_url("grid", "/"))
    await arrive(page, stack, "grid", "/")
    assert identity(await echoed(page))["x-onegate-user"] == "zhangwei"

    # Sign out on the IdP's own account page.
    await page.goto(stack.url("/account"))
    await expect(page.locator(".account-profile")).to_contain_text("张伟")
    await screenshots.take(page, "idp-account-before-sign-out")
    await page.locator("form[action$='/account/logout'] button").click()
    await page.wait_for_url(lambda url: on_idp_login(url))

    # Back-channel logout reaches the gateway in the background: each application, opened again,
    # soon sends him to the IdP's login page.
    deadline = time.monotonic() + LOGOUT_WAIT
    for app in ("hr", "grid"):
        while True:
            await page.goto(stack.app_url(app, "/"))
            if on_idp_login(page.url):
                break
            assert host_of(page.url) == f"{app}.localhost", page.url
            assert time.monotonic() < deadline, (
                f"{app}: still signed in {LOGOUT_WAIT} s after signing out at the IdP\n" + stack.log()[-4000:]
            )
            await page.wait_for_timeout(100)
        await expect(page.locator("#password")).to_be_visible()
        await screenshots.take(page, f"{app}-after-idp-sign-out")
