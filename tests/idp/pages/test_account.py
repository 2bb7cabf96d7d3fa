"""The account page: profile, my sessions (end one / everywhere, only my own), my consents."""

from __future__ import annotations

import httpx
import pytest

from idp.consents import ConsentStore
from idp.directory.models import UserStatus
from idp.pages.account import describe_device
from tests.idp.pages.conftest import Idp, csrf_token, post_form, sign_in

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1"
)


async def _browser(idp: Idp, ip: str, user_agent: str, username: str = "zhangwei") -> httpx.AsyncClient:
    client = idp.client(ip, user_agent=user_agent)
    response = await sign_in(client, username)
    assert response.status_code == 303, response.text
    return client


async def test_without_a_session_it_sends_the_browser_to_sign_in(idp: Idp) -> None:
    response = await idp.client().get("/account")
    assert response.status_code == 303 and response.headers["location"] == "/login"


async def test_it_shows_the_profile_in_chinese(idp: Idp) -> None:
    department = await idp.add_department("hrss", "市人力资源和社会保障局", "Human Resources Bureau")
    await idp.add_user(
        groups=("hr-clerks", "staff"), department_id=department, email="zhangwei@hr.example.gov.cn"
    )
    client = await _browser(idp, "10.0.0.1", CHROME_WINDOWS)
    page = await client.get("/account")
    assert page.status_code == 200
    assert "<dd>张伟</dd>" in page.text and "<dd>zhangwei</dd>" in page.text
    assert "市人力资源和社会保障局" in page.text and "<dd>hr-clerks, staff</dd>" in page.text
    assert "zhangwei@hr.example.gov.cn" in page.text
    client.headers["accept-language"] = "en"
    english = await client.get("/account")
    assert "Human Resources Bureau" in english.text and "<dd>张伟</dd>" in english.text


async def test_my_sessions_show_device_address_and_times_with_this_one_marked(idp: Idp) -> None:
    await idp.add_user()
    office = await _browser(idp, "10.0.0.1", CHROME_WINDOWS)
    idp.clock.advance(600)
    await _browser(idp, "10.20.30.40", SAFARI_IPHONE)
    idp.clock.advance(60)
    page = (await office.get("/account")).text
    assert "Chrome · Windows" in page and "Safari · iOS" in page
    assert "10.0.0.1" in page and "10.20.30.40" in page
    # 1_800_000_000 is 2027-01-15 08:00 UTC: shown in Beijing time, machine-readable in UTC.
    assert '<time datetime="2027-01-15T08:00:00Z">2027-01-15 16:00</time>' in page
    assert '<time datetime="2027-01-15T08:10:00Z">2027-01-15 16:10</time>' in page
    assert page.count("（当前设备）") == 1
    current_row = page[page.index('class="sessions__current"') :]
    assert "Chrome · Windows" in current_row.split("</tr>")[0]


async def test_ending_another_of_my_sessions(idp: Idp) -> None:
    user = await idp.add_user()
    office = await _browser(idp, "10.0.0.1", CHROME_WINDOWS)
    phone = await _browser(idp, "10.0.0.2", SAFARI_IPHONE)
    sessions = await idp.ctx.sessions.list_for_user(user.id)
    phone_sid = next(s.sid for s in sessions if s.ip == "10.0.0.2")
    response = await post_form(office, "/account", "/account/sessions/end", sid=phone_sid)
    assert response.status_code == 303 and response.headers["location"] == "/account?notice=session-ended"
    assert idp.ended == [(phone_sid, "revoked")]
    assert (await phone.get("/account")).headers["location"] == "/login"  # effective at once
    assert (await office.get("/account")).status_code == 200
    revoked = idp.events_of("session-revoked")[-1]
    assert revoked.get("session.id") == phone_sid and revoked.get("labels.actor") == "zhangwei"


async def test_someone_elses_session_cannot_be_ended(idp: Idp) -> None:
    await idp.add_user()
    wang = await idp.add_user(username="wangfang", display_name="王芳")
    mine = await _browser(idp, "10.0.0.1", CHROME_WINDOWS)
    theirs = await _browser(idp, "10.0.0.2", CHROME_WINDOWS, username="wangfang")
    [their_session] = await idp.ctx.sessions.list_for_user(wang.id)
    refused = await post_form(mine, "/account", "/account/sessions/end", sid=their_session.sid)
    missing = await post_form(mine, "/account", "/account/sessions/end", sid="no-such-session")
    assert refused.status_code == missing.status_code == 404
    assert "unknown_session" in refused.text
    assert refused.text.replace(refused.headers["x-request-id"], "") == missing.text.replace(
        missing.headers["x-request-id"], ""
    )
    assert idp.ended == []
    assert (await theirs.get("/account")).status_code == 200


async def test_sign_out_everywhere_ends_every_session_and_tells_the_listeners(idp: Idp) -> None:
    user = await idp.add_user()
    office = await _browser(idp, "10.0.0.1", CHROME_WINDOWS)
    phone = await _browser(idp, "10.0.0.2", SAFARI_IPHONE)
    sids = {s.sid for s in await idp.ctx.sessions.list_for_user(user.id)}
    response = await post_form(office, "/account", "/account/logout-everywhere")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?notice=signed-out-everywhere"
    assert (
        'onegate_sso=""' in response.headers["set-cookie"] and "Max-Age=0" in response.headers["set-cookie"]
    )
    assert {sid for sid, _ in idp.ended} == sids and {r for _, r in idp.ended} == {"everywhere"}
    assert await idp.ctx.sessions.list_for_user(user.id) == []
    for browser in (office, phone):
        assert (await browser.get("/account")).headers["location"] == "/login"
    [logout] = idp.events_of("user-logout")
    assert logout.get("onegate.reason") == "everywhere"
    notice = await office.get("/login?notice=signed-out-everywhere")
    assert "您已在所有设备上退出登录。" in notice.text


async def test_sign_out_this_session(idp: Idp) -> None:
    user = await idp.add_user()
    office = await _browser(idp, "10.0.0.1", CHROME_WINDOWS)
    await _browser(idp, "10.0.0.2", SAFARI_IPHONE)
    response = await post_form(office, "/account", "/account/logout")
    assert response.headers["location"] == "/login?notice=signed-out"
    [(sid, reason)] = idp.ended
    assert reason == "logout"
    [left] = await idp.ctx.sessions.list_for_user(user.id)
    assert left.sid != sid and left.ip == "10.0.0.2"


async def test_the_forms_need_their_csrf_token(idp: Idp) -> None:
    user = await idp.add_user()
    office = await _browser(idp, "10.0.0.1", CHROME_WINDOWS)
    await csrf_token(office, "/account")
    for action in ("/account/logout-everywhere", "/account/logout", "/account/sessions/end"):
        assert (await office.post(action, data={})).status_code == 403
    assert idp.ended == [] and len(await idp.ctx.sessions.list_for_user(user.id)) == 1


async def test_my_consents_are_listed_and_can_be_withdrawn(idp: Idp) -> None:
    user = await idp.add_user()
    wang = await idp.add_user(username="wangfang", display_name="王芳")
    oa = await idp.add_client()
    hr = await idp.add_client("hr", "人事管理系统", None)
    store = ConsentStore(idp.ctx.db, clock=idp.clock)
    await store.grant(user.id, oa.id, ["openid", "profile"])
    await store.grant(wang.id, hr.id, ["openid"])
    office = await _browser(idp, "10.0.0.1", CHROME_WINDOWS)
    page = (await office.get("/account")).text
    assert "协同办公系统" in page and "openid profile" in page
    assert "人事管理系统" not in page  # wangfang's consent is not mine

    # Someone else's consent (by client) is not mine to withdraw: nothing happens to it.
    refused = await post_form(office, "/account", "/account/consents/revoke", client=str(hr.id))
    assert refused.status_code == 404 and "unknown_consent" in refused.text
    assert await store.granted(wang.id, hr.id) == {"openid"}

    response = await post_form(office, "/account", "/account/consents/revoke", client=str(oa.id))
    assert response.headers["location"] == "/account?notice=consent-revoked"
    assert await store.granted(user.id, oa.id) == frozenset()
    [event] = idp.events_of("consent-revoked")
    assert event.get("onegate.client_id") == "oa" and event.get("user.name") == "zhangwei"
    after = (await office.get("/account?notice=consent-revoked")).text
    assert "已撤销该应用的访问授权。" in after and "您尚未授权任何第三方应用。" in after


async def test_a_disabled_account_loses_the_page_at_once(idp: Idp) -> None:
    await idp.add_user()
    office = await _browser(idp, "10.0.0.1", CHROME_WINDOWS)
    await idp.set_user("zhangwei", status=UserStatus.DISABLED)
    assert (await office.get("/account")).headers["location"] == "/login"


async def test_a_pending_password_change_comes_before_the_account_page(idp: Idp) -> None:
    await idp.add_user()
    office = await _browser(idp, "10.0.0.1", CHROME_WINDOWS)
    await idp.set_user("zhangwei", must_change_password=True)
    assert (await office.get("/account")).headers["location"] == "/password"


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (CHROME_WINDOWS, ("Chrome", "Windows")),
        (SAFARI_IPHONE, ("Safari", "iOS")),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.4 Safari/605.1.15",
            ("Safari", "macOS"),
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
            ("Edge", "Windows"),
        ),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", ("Firefox", "Linux")),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Mobile Safari/537.36 MicroMessenger/8.0.47",
            ("WeChat", "Android"),
        ),
        ("python-httpx/0.28.1", (None, None)),
        ("", (None, None)),
    ],
)
def test_describe_device(user_agent: str, expected: tuple[str | None, str | None]) -> None:
    assert describe_device(user_agent) == expected
