"""zh-CN by default, English on request: Accept-Language, ui_locales (query or pending request), ?lang."""

from __future__ import annotations

from tests.idp.pages.conftest import Idp


async def test_chinese_is_the_default(idp: Idp) -> None:
    page = await idp.client().get("/login")
    assert '<html lang="zh-CN">' in page.text
    assert '<h1 id="login-title">登录</h1>' in page.text and "用户名" in page.text


async def test_accept_language_selects_english(idp: Idp) -> None:
    client = idp.client()
    client.headers["accept-language"] = "en-US,en;q=0.9,zh;q=0.5"
    page = await client.get("/login")
    assert '<html lang="en">' in page.text
    assert '<h1 id="login-title">Sign in</h1>' in page.text and "Username" in page.text


async def test_the_pending_requests_ui_locales_wins_over_accept_language(idp: Idp) -> None:
    oa = await idp.add_client()
    pending = await idp.pending(oa, ui_locales="en-GB zh-CN")
    client = idp.client()
    client.headers["accept-language"] = "zh-CN"
    page = await client.get(f"/login?req={pending.id}")
    assert '<html lang="en">' in page.text
    assert "Sign in to continue to Office Automation." in page.text  # the client's English name
    assert "协同办公系统" not in page.text


async def test_the_users_own_switch_wins_over_the_pending_requests_ui_locales(idp: Idp) -> None:
    oa = await idp.add_client()
    pending = await idp.pending(oa, ui_locales="en")
    page = await idp.client().get(f"/login?req={pending.id}&lang=zh_CN")
    assert '<html lang="zh-CN">' in page.text
    assert "登录后继续访问“协同办公系统”。" in page.text


async def test_unsupported_ui_locales_leave_the_negotiated_locale(idp: Idp) -> None:
    oa = await idp.add_client()
    pending = await idp.pending(oa, ui_locales="fr-CA de")
    client = idp.client()
    client.headers["accept-language"] = "en"
    page = await client.get(f"/login?req={pending.id}")
    assert '<html lang="en">' in page.text


async def test_ui_locales_in_the_query(idp: Idp) -> None:
    page = await idp.client().get("/login?ui_locales=en")
    assert '<html lang="en">' in page.text


async def test_a_client_without_an_english_name_keeps_its_chinese_one(idp: Idp) -> None:
    hr = await idp.add_client("hr", name="人事管理系统", name_en=None)
    pending = await idp.pending(hr, ui_locales="en")
    page = await idp.client().get(f"/login?req={pending.id}")
    assert "Sign in to continue to 人事管理系统." in page.text
