"""The password change page: re-authentication, policy with translated reasons, other sessions end."""

from __future__ import annotations

import httpx

from tests.idp.pages.conftest import PASSWORD, Idp, IdpFactory, post_form, sign_in, utc

NEW = "梅花香自苦寒来 plum blossoms"


async def _browser(idp: Idp, ip: str = "10.0.0.1") -> httpx.AsyncClient:
    client = idp.client(ip)
    assert (await sign_in(client)).status_code == 303
    return client


async def _change(
    client: httpx.AsyncClient, current: str, new: str, confirm: str | None = None, page: str = "/password"
) -> httpx.Response:
    return await post_form(
        client,
        page,
        page,
        current_password=current,
        new_password=new,
        confirm_password=new if confirm is None else confirm,
    )


async def test_without_a_session_it_sends_the_browser_to_sign_in(idp: Idp) -> None:
    response = await idp.client().get("/password")
    assert response.status_code == 303 and response.headers["location"] == "/login"


async def test_a_change_keeps_this_session_and_ends_the_others(idp: Idp) -> None:
    user = await idp.add_user()
    office = await _browser(idp, "10.0.0.1")
    phone = await _browser(idp, "10.0.0.2")
    [phone_sid] = [s.sid for s in await idp.ctx.sessions.list_for_user(user.id) if s.ip == "10.0.0.2"]
    idp.clock.advance(30)
    response = await _change(office, PASSWORD, NEW)
    assert response.status_code == 303
    assert response.headers["location"] == "/account?notice=password-changed"
    assert idp.ended == [(phone_sid, "password-changed")]
    assert (await phone.get("/account")).headers["location"] == "/login"
    account = await office.get(response.headers["location"])
    assert account.status_code == 200 and "密码已修改" in account.text

    stored = await idp.user("zhangwei")
    assert utc(stored.password_changed_at).timestamp() == idp.clock.now  # type: ignore[union-attr]
    [event] = idp.events_of("password-changed")
    assert event.outcome == "success" and event.get("user.name") == "zhangwei"
    assert (await sign_in(idp.client("10.0.0.3"), password=PASSWORD)).status_code == 200  # old one gone
    assert (await sign_in(idp.client("10.0.0.4"), password=NEW)).status_code == 303


async def test_a_forced_change_then_resumes_the_authorization_request(idp: Idp) -> None:
    await idp.add_user(must_change_password=True)
    oa = await idp.add_client()
    pending = await idp.pending(oa)
    client = idp.client()
    signed_in = await sign_in(client, req=pending.id)
    page = signed_in.headers["location"]
    assert page == f"/password?req={pending.id}"
    form = await client.get(page)
    assert "继续之前，您必须设置新密码。" in form.text
    response = await _change(client, PASSWORD, NEW, page=page)
    assert response.headers["location"] == f"/authorize/resume?req={pending.id}"
    assert (await idp.user("zhangwei")).must_change_password is False


async def test_a_wrong_current_password_changes_nothing_and_counts_as_a_failure(idp: Idp) -> None:
    await idp.add_user()
    client = await _browser(idp)
    before = (await idp.user("zhangwei")).password_hash
    response = await _change(client, "not my password", NEW)
    assert response.status_code == 400 and "当前密码不正确。" in response.text
    assert (await idp.user("zhangwei")).password_hash == before
    [event] = idp.events_of("password-changed")
    assert event.outcome == "failure" and event.get("onegate.reason") == "bad_password"
    for _ in range(2):  # lockout_threshold = 3: the third wrong current password locks
        await _change(client, "not my password", NEW)
    assert idp.events_of("user-locked")
    refused = await _change(client, PASSWORD, NEW)  # even the right one, while locked
    assert refused.status_code == 400 and "当前密码不正确。" in refused.text
    assert idp.events_of("password-changed")[-1].get("onegate.reason") == "locked"


async def test_policy_reasons_are_shown_translated(make_idp: IdpFactory) -> None:
    idp = await make_idp(password_min_length=12)
    await idp.add_user()
    client = await _browser(idp)
    cases = {
        "short1!": "密码至少需要 12 个字符。",
        "zhangwei-is-my-name": "密码不能包含用户名。",
        "aaaaaaaaaaaaaaa": "密码不能是重复的字符。",
        PASSWORD: "新密码不能与当前密码相同。",
    }
    for new, message in cases.items():
        response = await _change(client, PASSWORD, new)
        assert response.status_code == 400, new
        assert message in response.text, new
    mismatch = await _change(client, PASSWORD, NEW, confirm=NEW + "x")
    assert "两次输入的新密码不一致。" in mismatch.text
    client.headers["accept-language"] = "en"
    english = await _change(client, PASSWORD, "short1!")
    assert "Use at least 12 characters." in english.text
    assert (await idp.user("zhangwei")).password_hash is not None
    assert (await sign_in(idp.client("10.0.0.9"))).status_code == 303  # the password is unchanged
    reasons = [(e.get("onegate.reason"), e.get("labels.policy")) for e in idp.events_of("password-changed")]
    assert reasons == [
        ("policy", "too_short"),
        ("policy", "contains_username"),
        ("policy", "repeated"),
        ("policy", "reused"),
        ("mismatch", None),
        ("policy", "too_short"),
    ]


async def test_a_common_password_is_refused(idp: Idp) -> None:
    await idp.add_user()
    client = await _browser(idp)
    response = await _change(client, PASSWORD, "password1234")
    assert response.status_code == 400 and "该密码过于常见，请换一个。" in response.text


async def test_the_form_needs_its_csrf_token(idp: Idp) -> None:
    await idp.add_user()
    client = await _browser(idp)
    await client.get("/password")
    response = await client.post(
        "/password", data={"current_password": PASSWORD, "new_password": NEW, "confirm_password": NEW}
    )
    assert response.status_code == 403
    assert idp.events_of("password-changed") == []
