"""Smoke tests of the browser-test stack: Debian's Chromium signs a user in to a real IdP process at
``http://idp.localhost:<port>`` through the zh-CN form, and the DevTools virtual authenticator
performs WebAuthn ceremonies (L3 §5.1.3 create, §5.1.4 get) for RP id ``idp.localhost``.

If these fail, every MFA browser test would fail for reasons that are not MFA's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import IDP_HOST, IdpServer
from tests.e2e.playwright_support import Screenshots, VirtualAuthenticator, b64url_encode

pytestmark = pytest.mark.e2e

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OG_PRIMARY = "rgb(11, 92, 173)"  # --og-primary in core/web/static/onegate.css

# navigator.credentials in the page, as the IdP's own script will call it; binary values come
# back base64url (the JSON form of L3 §5.1). A failure returns the DOMException's name.
CREATE = """async ({rpId, userId, name}) => {
  const b64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  try {
    const credential = await navigator.credentials.create({publicKey: {
      rp: {id: rpId, name: "OneGate"},
      user: {id: Uint8Array.from(userId, (c) => c.charCodeAt(0)), name: name, displayName: name},
      challenge: crypto.getRandomValues(new Uint8Array(32)),
      pubKeyCredParams: [{type: "public-key", alg: -7}, {type: "public-key", alg: -257}],
      authenticatorSelection: {residentKey: "required", userVerification: "required"},
      attestation: "none",
    }});
    return {ok: true, id: credential.id, rawId: b64(credential.rawId),
            attachment: credential.authenticatorAttachment,
            transports: credential.response.getTransports(),
            clientData: new TextDecoder().decode(credential.response.clientDataJSON)};
  } catch (e) {
    return {ok: false, error: e.name};
  }
}"""

GET = """async ({rpId}) => {
  const b64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  try {
    // No allowCredentials: the authenticator must find a discoverable credential itself.
    const assertion = await navigator.credentials.get({publicKey: {
      rpId: rpId, challenge: crypto.getRandomValues(new Uint8Array(32)), userVerification: "required",
    }});
    const data = new Uint8Array(assertion.response.authenticatorData);
    return {ok: true, id: assertion.id, userHandle: b64(assertion.response.userHandle),
            flags: data[32], clientData: new TextDecoder().decode(assertion.response.clientDataJSON)};
  } catch (e) {
    return {ok: false, error: e.name};
  }
}"""

FLAG_UP, FLAG_UV = 0x01, 0x04  # authenticator data flags, L3 §6.1


async def test_password_sign_in_lands_on_account_page(
    page: Page, idp_server: IdpServer, screenshots: Screenshots
) -> None:
    user = idp_server.add_user(name="王芳", email="wangfang@fgw.city.gov.cn")

    await page.goto(idp_server.url("/login"))
    assert page.url == f"http://{IDP_HOST}:{idp_server.port}/login"
    # The default UI is Simplified Chinese.
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_role("heading", name="登录")).to_be_visible()
    await expect(page.get_by_text("用户名", exact=True)).to_be_visible()
    # The stylesheet was served and applied (same-origin, allowed by the CSP).
    header_colour = await page.locator(".site-header").evaluate("e => getComputedStyle(e).backgroundColor")
    assert header_colour == OG_PRIMARY

    await page.get_by_label("用户名").fill(user.username)
    await page.get_by_label("密码", exact=True).fill(user.password)
    await page.get_by_role("button", name="登录", exact=True).click()

    await page.wait_for_url(idp_server.url("/account"))
    await expect(page.get_by_role("heading", name="我的账号")).to_be_visible()
    await expect(page.locator(".account-profile")).to_contain_text("王芳")
    await expect(page.locator(".account-profile")).to_contain_text(user.username)
    # One session: this browser's (the helper that set the password signed itself out).
    await expect(page.locator("table.sessions tbody tr")).to_have_count(1)
    cookies = {c["name"]: c for c in await page.context.cookies(idp_server.url("/"))}
    session_cookies = [c for c in cookies.values() if c["httpOnly"] and c["domain"] == IDP_HOST]
    assert session_cookies, f"no host-only HttpOnly cookie on {IDP_HOST}: {sorted(cookies)}"

    shot = await screenshots.take(page, "account")
    assert shot.parent == screenshots.directory and shot.name == "01-account.png"
    assert shot.read_bytes().startswith(PNG_SIGNATURE) and shot.stat().st_size > 5_000


async def test_wrong_password_stays_on_login_with_chinese_error(page: Page, idp_server: IdpServer) -> None:
    user = idp_server.add_user(name="刘洋")

    await page.goto(idp_server.url("/login"))
    await page.get_by_label("用户名").fill(user.username)
    await page.get_by_label("密码", exact=True).fill(user.password + "x")
    await page.get_by_role("button", name="登录", exact=True).click()

    await expect(page.locator("#login-error")).to_be_visible()
    await expect(page.locator("#login-error")).to_contain_text("登录失败")
    assert page.url.startswith(idp_server.url("/login"))


async def test_virtual_authenticator_creates_and_uses_a_passkey_on_idp_localhost(
    page: Page, authenticator: VirtualAuthenticator, idp_server: IdpServer
) -> None:
    await page.goto(idp_server.url("/login"))
    assert await authenticator.credentials() == []

    created: dict[str, Any] = await page.evaluate(
        CREATE, {"rpId": IDP_HOST, "userId": "user-handle-42", "name": "zhangwei"}
    )
    assert created["ok"], created
    assert created["attachment"] == "platform" and created["transports"] == ["internal"]
    client_data = json.loads(created["clientData"])
    assert client_data["type"] == "webauthn.create"
    assert client_data["origin"] == idp_server.origin

    stored = await authenticator.credentials()
    assert [c.id for c in stored] == [created["id"]]
    assert stored[0].rp_id == IDP_HOST and stored[0].resident
    assert stored[0].user_handle == b"user-handle-42"

    asserted: dict[str, Any] = await page.evaluate(GET, {"rpId": IDP_HOST})
    assert asserted["ok"], asserted
    assert asserted["id"] == created["id"]
    assert asserted["userHandle"] == b64url_encode(b"user-handle-42")
    assert asserted["flags"] & FLAG_UP and asserted["flags"] & FLAG_UV
    assert json.loads(asserted["clientData"])["type"] == "webauthn.get"
    assert (await authenticator.credentials())[0].sign_count > stored[0].sign_count

    # User verification failing (wrong PIN): a ceremony that requires it is refused.
    await authenticator.set_user_verified(False)
    refused: dict[str, Any] = await page.evaluate(GET, {"rpId": IDP_HOST})
    assert refused == {"ok": False, "error": "NotAllowedError"}
    await authenticator.set_user_verified(True)

    # A credential removed from the authenticator can no longer be used.
    await authenticator.remove_credential(created["id"])
    assert await authenticator.credentials() == []
    gone: dict[str, Any] = await page.evaluate(GET, {"rpId": IDP_HOST})
    assert gone == {"ok": False, "error": "NotAllowedError"}


async def test_an_ip_address_cannot_be_the_rp_id(
    page: Page, authenticator: VirtualAuthenticator, idp_server: IdpServer
) -> None:
    """Why the IdP is served under a host name: at 127.0.0.1 (a secure context too) WebAuthn
    refuses the RP id, since an IP address is not a valid domain (L3 §5.1.3 step 8)."""
    await page.goto(f"http://127.0.0.1:{idp_server.port}/login")
    created: dict[str, Any] = await page.evaluate(
        CREATE, {"rpId": "127.0.0.1", "userId": "user-handle-42", "name": "zhangwei"}
    )
    assert created == {"ok": False, "error": "SecurityError"}
    assert await authenticator.credentials() == []
