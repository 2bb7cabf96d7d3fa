"""Step-up at the authorization endpoint: a session whose class (acr) falls short of what the
request, its client or its user needs goes to ``/mfa``; once upgraded in place, the code and the
ID token carry the class and methods the session really reached."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
import pytest

from idp.directory.models import User
from mfa.levels import ACR_MFA, ACR_PHR, ACR_PWD
from tests.idp.oauth.conftest import OP, REDIRECT, pkce, query


def _params(**extra: str) -> dict[str, str]:
    _, challenge = pkce()
    return {
        "response_type": "code",
        "client_id": "oa-app",
        "redirect_uri": REDIRECT,
        "scope": "openid profile",
        "state": "xyz",
        "nonce": "n-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


async def _step_up_page(op: OP, response: httpx.Response) -> str:
    """The pending request id of a redirect to /mfa (and that it holds the required class)."""
    assert response.status_code == 303, response.text[:300]
    location = urlsplit(response.headers["location"])
    assert location.path == "/mfa", response.headers["location"]
    return query(response.headers["location"])["req"]


async def _session(op: OP, browser: httpx.AsyncClient, user: User, amr: tuple[str, ...], acr: str) -> str:
    session, cookie = await op.ctx.sessions.create(user_id=user.id, username=user.username, amr=amr, acr=acr)
    browser.cookies.set(op.ctx.cookie_name, cookie, domain="idp.test")
    return session.sid


@pytest.mark.parametrize(
    ("acr_values", "session_acr", "steps_up"),
    [
        (ACR_MFA, ACR_PWD, True),
        (ACR_PHR, ACR_MFA, True),
        (f"{ACR_PHR} {ACR_MFA}", ACR_MFA, False),  # any listed class will do
        (ACR_MFA, ACR_PHR, False),  # a stronger session satisfies a weaker request
        ("urn:example:unknown", ACR_PWD, False),  # unknown values are a wish, not a condition
    ],
)
async def test_acr_values_ask_for_a_class(op: OP, acr_values: str, session_acr: str, steps_up: bool) -> None:
    user = await op.add_user()
    await op.add_client()
    browser = op.browser()
    amr = {ACR_PWD: ("pwd",), ACR_MFA: ("pwd", "otp", "mfa"), ACR_PHR: ("pwd", "hwk", "user", "mfa")}
    await _session(op, browser, user, amr[session_acr], session_acr)
    response = await op.authorize(browser, **_params(acr_values=acr_values))
    if steps_up:
        req = await _step_up_page(op, response)
        pending = await op.ctx.pending.get(req)
        assert pending is not None and pending.acr in (ACR_MFA, ACR_PHR)
    else:
        assert response.status_code == 302 and "code" in query(response.headers["location"])


async def test_prompt_none_cannot_step_up(op: OP) -> None:
    user = await op.add_user()
    await op.add_client()
    browser = op.browser()
    await op.sign_in(browser, user)
    response = await op.authorize(browser, **_params(acr_values=ACR_MFA, prompt="none"))
    assert response.status_code == 302
    assert query(response.headers["location"])["error"] == "interaction_required"


async def test_the_client_minimum_cannot_be_lowered_by_the_request(op: OP) -> None:
    user = await op.add_user()
    await op.add_client(minimum_acr=ACR_MFA)
    browser = op.browser()
    await op.sign_in(browser, user)
    await _step_up_page(op, await op.authorize(browser, **_params()))
    await _step_up_page(op, await op.authorize(browser, **_params(acr_values=ACR_PWD)))


async def test_a_group_or_an_administrator_can_require_a_second_factor(op: OP) -> None:
    user = await op.add_user(groups=("finance-approvers",))
    await op.add_client()
    browser = op.browser()
    await op.sign_in(browser, user)
    assert (await op.authorize(browser, **_params())).status_code == 302  # not required yet
    await op.ctx.directory.set_group_mfa_required("finance-approvers", True)
    await _step_up_page(op, await op.authorize(browser, **_params()))
    await op.ctx.directory.set_group_mfa_required("finance-approvers", False)
    assert (await op.authorize(browser, **_params())).status_code == 302
    await op.ctx.directory.set_mfa_enrol_required(user.username, True)
    await _step_up_page(op, await op.authorize(browser, **_params()))


async def test_an_essential_acr_claim_steps_up_too(op: OP) -> None:
    user = await op.add_user()
    await op.add_client()
    browser = op.browser()
    await op.sign_in(browser, user)
    wanted = {"id_token": {"acr": {"essential": True, "values": [ACR_MFA]}}}
    await _step_up_page(op, await op.authorize(browser, **_params(claims=json.dumps(wanted))))


async def test_a_session_upgraded_in_place_gets_its_code_and_the_id_token_says_what_happened(
    op: OP,
) -> None:
    """Acceptance 4 at the protocol level: password + TOTP, the client asks for phishing-resistant,
    the session is stepped up with a WebAuthn key (the browser part is tests/e2e)."""
    user = await op.add_user()
    _, secret = await op.add_client()
    browser = op.browser()
    sid = await _session(op, browser, user, ("pwd", "otp", "mfa"), ACR_MFA)
    verifier, challenge = pkce()
    params = _params(acr_values=ACR_PHR, code_challenge=challenge)
    req = await _step_up_page(op, await op.authorize(browser, **params))
    # A resume before the step-up goes back to /mfa: nothing is issued for a weaker session.
    await _step_up_page(op, await browser.get("/authorize/resume", params={"req": req}))

    op.clock.now += 30
    upgraded = await op.ctx.sessions.upgrade(sid, ("hwk", "user"))
    assert upgraded is not None
    session, cookie = upgraded
    browser.cookies.set(op.ctx.cookie_name, cookie, domain="idp.test")
    response = await browser.get("/authorize/resume", params={"req": req})
    assert response.status_code == 302, response.text[:300]
    code = query(response.headers["location"])["code"]
    tokens = await op.redeem(code, verifier, secret)
    assert tokens.status_code == 200, tokens.text
    claims = op.tokens.verify_id_token_hint(tokens.json()["id_token"])
    assert claims["acr"] == ACR_PHR
    assert "hwk" in claims["amr"] and set(claims["amr"]) == {"pwd", "otp", "hwk", "user", "mfa"}
    assert claims["sid"] == sid and claims["auth_time"] == int(session.auth_time)


async def test_discovery_lists_the_three_classes(op: OP) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=op.app), base_url="http://idp.test") as rp:
        document = (await rp.get("/.well-known/openid-configuration")).json()
    assert document["acr_values_supported"] == [ACR_PWD, ACR_MFA, ACR_PHR]
