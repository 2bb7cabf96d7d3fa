"""The consent page: who asks for what, Allow records and resumes, Deny resumes with denied=1."""

from __future__ import annotations

import httpx
from sqlalchemy import update

from idp.clients.models import Client
from idp.consents import ConsentStore
from tests.idp.pages.conftest import Idp, csrf_token, post_form, sign_in


async def _signed_in(idp: Idp) -> tuple[httpx.AsyncClient, int]:
    user = await idp.add_user()
    client = idp.client()
    assert (await sign_in(client)).status_code == 303
    return client, user.id


async def test_without_a_session_it_sends_the_browser_to_sign_in_first(idp: Idp) -> None:
    oa = await idp.add_client()
    pending = await idp.pending(oa)
    response = await idp.client().get(f"/consent?req={pending.id}")
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?req={pending.id}"


async def test_it_names_the_client_and_describes_each_scope(idp: Idp) -> None:
    client, _ = await _signed_in(idp)
    oa = await idp.add_client()
    pending = await idp.pending(oa, scopes=("openid", "profile", "groups", "offline_access", "x-custom"))
    page = await client.get(f"/consent?req={pending.id}")
    assert page.status_code == 200
    assert "“协同办公系统”请求访问您的账号" in page.text
    assert "当前登录用户：张伟。" in page.text
    for text in ("个人资料", "所属用户组", "保持连接", "<code>x-custom</code>"):
        assert text in page.text
    assert 'name="decision" value="allow"' in page.text and 'name="decision" value="deny"' in page.text

    client.headers["accept-language"] = "en"
    english = await client.get(f"/consent?req={pending.id}")
    assert "Office Automation wants to access your account" in english.text
    assert "Your profile" in english.text and "Stay connected" in english.text


async def test_allow_records_the_consent_and_resumes(idp: Idp) -> None:
    client, user_id = await _signed_in(idp)
    oa = await idp.add_client()
    pending = await idp.pending(oa, scopes=("openid", "profile", "email"))
    page = f"/consent?req={pending.id}"
    response = await post_form(client, page, page, decision="allow")
    assert response.status_code == 303
    assert response.headers["location"] == f"/authorize/resume?req={pending.id}"
    store = ConsentStore(idp.ctx.db)
    assert await store.granted(user_id, oa.id) == {"openid", "profile", "email"}
    [event] = idp.events_of("consent-granted")
    assert event.get("onegate.client_id") == "oa" and event.get("user.name") == "zhangwei"
    assert event.get("labels.scopes") == "email openid profile"

    # Asked again later, what was allowed before is marked as such.
    again = await idp.pending(oa, scopes=("openid", "phone"))
    shown = await client.get(f"/consent?req={again.id}")
    assert shown.text.count("（此前已授权）") == 1


async def test_deny_resumes_with_denied_and_records_nothing(idp: Idp) -> None:
    client, user_id = await _signed_in(idp)
    oa = await idp.add_client()
    pending = await idp.pending(oa)
    page = f"/consent?req={pending.id}"
    response = await post_form(client, page, page, decision="deny")
    assert response.status_code == 303
    assert response.headers["location"] == f"/authorize/resume?req={pending.id}&denied=1"
    assert await ConsentStore(idp.ctx.db).granted(user_id, oa.id) == frozenset()
    assert idp.events_of("consent-granted") == []


async def test_an_unknown_request_is_a_plain_error_page(idp: Idp) -> None:
    client, _ = await _signed_in(idp)
    page = await client.get("/consent?req=https://evil.example/")
    assert page.status_code == 400
    assert "unknown_request" in page.text and "location" not in page.headers


async def test_the_form_needs_its_csrf_token_and_a_known_decision(idp: Idp) -> None:
    client, user_id = await _signed_in(idp)
    oa = await idp.add_client()
    pending = await idp.pending(oa)
    page = f"/consent?req={pending.id}"
    forged = await client.post(page, data={"decision": "allow"})
    assert forged.status_code == 403
    odd = await client.post(page, data={"csrf_token": await csrf_token(client, page), "decision": "maybe"})
    assert odd.status_code == 400 and "unknown_decision" in odd.text
    assert await ConsentStore(idp.ctx.db).granted(user_id, oa.id) == frozenset()


async def test_a_disabled_client_cannot_collect_consent(idp: Idp) -> None:
    client, _ = await _signed_in(idp)
    oa = await idp.add_client()
    pending = await idp.pending(oa)
    async with idp.ctx.db() as s, s.begin():
        await s.execute(update(Client).where(Client.id == oa.id).values(disabled=True))
    page = await client.get(f"/consent?req={pending.id}")
    assert page.status_code == 400 and "unknown_request" in page.text
