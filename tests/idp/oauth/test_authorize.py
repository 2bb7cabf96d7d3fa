"""The authorization endpoint: validation, the error page vs. redirected errors, sessions,
prompt / max_age / id_token_hint / claims, consent, resume."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from idp.directory.models import User
from tests.idp.oauth.conftest import ISSUER, OP, REDIRECT, RP, pkce, query, stored


async def _setup(op: OP, **client: object) -> tuple[User, str | None]:
    user = await op.add_user()
    _, secret = await op.add_client(**client)
    return user, secret


def _params(**extra: str) -> dict[str, str]:
    _, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": "oa-app",
        "redirect_uri": REDIRECT,
        "scope": "openid profile",
        "state": "xyz",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v != "-"}


def _redirected_error(response: object, error: str) -> dict[str, str]:
    assert response.status_code == 302, response.text[:300]  # type: ignore[attr-defined]
    location = response.headers["location"]  # type: ignore[attr-defined]
    assert location.startswith(REDIRECT + "?")
    params = query(location)
    assert params["error"] == error, params
    assert params["state"] == "xyz" and params["iss"] == ISSUER  # RFC 9207
    assert "code" not in params
    return params


@pytest.mark.parametrize(
    "redirect_uri",
    [
        f"{RP}/callback/extra",  # prefix match
        f"{RP}/callbac",
        f"{RP}/callbackx",  # suffix
        "https://OA.example.gov.cn/callback",  # case
        "HTTPS://oa.example.gov.cn/callback",
        f"{RP}/Callback",
        f"{RP}/%63allback",  # percent-encoded
        "https%3A%2F%2Foa.example.gov.cn%2Fcallback",
        f"{REDIRECT}?x=1",  # extra query
        f"{REDIRECT}?",
        f"{REDIRECT}#frag",
        f"{REDIRECT}/",
        "https://oa.example.gov.cn:443/callback",
        "https://oa.example.gov.cn@evil.example/callback",  # userinfo@host
        "https://evil.example@oa.example.gov.cn/callback",
        "https://attacker:pw@oa.example.gov.cn/callback",
        "https://оa.example.gov.cn/callback",  # Cyrillic 'о'
        f'{REDIRECT}"',
        "",
        "-",  # absent
    ],
)
async def test_a_redirect_uri_not_exactly_registered_gets_an_error_page_never_a_redirect(
    op: OP, redirect_uri: str
) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    response = await op.authorize(browser, **_params(redirect_uri=redirect_uri))
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "text/html" in response.headers["content-type"]
    assert "invalid_request" in response.text
    assert stored(op, "oauth-code:") == []


async def test_an_unknown_client_gets_an_error_page(op: OP) -> None:
    await _setup(op)
    response = await op.authorize(op.browser(), **_params(client_id="nobody"))
    assert response.status_code == 400 and "location" not in response.headers
    assert "invalid_client" in response.text


async def test_a_repeated_parameter_gets_an_error_page(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    params = [*_params().items(), ("redirect_uri", "https://evil.example/cb")]
    response = await browser.get("/authorize", params=params)
    assert response.status_code == 400 and "location" not in response.headers
    assert "Multiple" in response.text


@pytest.mark.parametrize("response_type", ["token", "code id_token", "id_token", 'co"de\\', "-"])
async def test_only_the_code_flow_exists(op: OP, response_type: str) -> None:
    await _setup(op)
    response = await op.authorize(op.browser(), **_params(response_type=response_type))
    _redirected_error(response, "unsupported_response_type")


@pytest.mark.parametrize(
    ("extra", "hint"),
    [
        ({"code_challenge": "-", "code_challenge_method": "-"}, "PKCE"),
        ({"code_challenge_method": "plain"}, "plain"),
        ({"code_challenge_method": "-"}, "S256"),
        ({"code_challenge": "short"}, "code_challenge"),
    ],
)
async def test_pkce_s256_is_required(op: OP, extra: dict[str, str], hint: str) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    params = _redirected_error(await op.authorize(browser, **_params(**extra)), "invalid_request")
    assert hint in params["error_description"]


async def test_a_client_that_turned_pkce_off_may_omit_it(op: OP) -> None:
    user, _ = await _setup(op, require_pkce=False)
    browser = op.browser()
    await op.sign_in(browser, user)
    response = await op.authorize(browser, **_params(code_challenge="-", code_challenge_method="-"))
    assert "code" in query(response.headers["location"])


async def test_a_scope_the_client_may_not_use_is_refused(op: OP) -> None:
    user, _ = await _setup(op, scopes=["openid", "profile"])
    browser = op.browser()
    await op.sign_in(browser, user)
    _redirected_error(await op.authorize(browser, **_params(scope="openid email")), "invalid_scope")


async def test_prompt_none_without_a_session_is_login_required(op: OP) -> None:
    await _setup(op)
    _redirected_error(await op.authorize(op.browser(), **_params(prompt="none")), "login_required")
    assert stored(op, "oauth-code:") == []


async def test_a_signed_in_user_gets_a_code_with_state_and_iss(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    session = await op.sign_in(browser, user)
    response = await op.authorize(browser, **_params())
    params = query(response.headers["location"])
    assert response.status_code == 302 and urlsplit(response.headers["location"]).path == "/callback"
    assert params["state"] == "xyz" and params["iss"] == ISSUER and len(params["code"]) >= 43
    assert len(stored(op, "oauth-code:")) == 1
    # Back-channel logout will reach this client.
    live = await op.ctx.sessions.get(session.sid)
    assert live is not None and live.clients == ("oa-app",)


async def test_the_authorize_endpoint_accepts_post_even_cross_site(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    response = await browser.post(
        "/authorize", data=_params(), headers={"sec-fetch-site": "cross-site", "origin": RP}
    )
    assert response.status_code == 302 and "code" in query(response.headers["location"])


async def test_without_a_session_the_request_waits_for_the_login_page_then_resumes(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    response = await op.authorize(browser, **_params(login_hint="zhangwei", ui_locales="en"))
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/login"
    req = query(response.headers["location"])["req"]
    pending = await op.ctx.pending.get(req)
    assert pending is not None
    assert pending.client_id == "oa-app" and pending.client_name == "协同办公系统"
    assert pending.login_hint == "zhangwei" and pending.ui_locales == "en"
    assert pending.scopes == ("openid", "profile")
    assert ("state", "xyz") in pending.params

    # The login page signs the user in and sends the browser back.
    op.clock.advance(5)
    await op.sign_in(browser, user)
    resumed = await browser.get(f"/authorize/resume?req={req}")
    params = query(resumed.headers["location"])
    assert resumed.status_code == 302 and params["state"] == "xyz" and "code" in params
    assert await op.ctx.pending.get(req) is None  # used up


@pytest.mark.parametrize("extra", [{"prompt": "login"}, {"prompt": "select_account"}, {"max_age": "0"}])
async def test_a_fresh_sign_in_is_demanded_and_an_old_one_does_not_satisfy_it(
    op: OP, extra: dict[str, str]
) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    op.clock.advance(10)
    response = await op.authorize(browser, **_params(**extra))
    assert response.status_code == 303 and response.headers["location"].startswith("/login?req=")
    req = query(response.headers["location"])["req"]
    # Coming back without signing in again: back to the login page.
    again = await browser.get(f"/authorize/resume?req={req}")
    assert again.status_code == 303 and again.headers["location"].startswith("/login?req=")
    op.clock.advance(1)
    await op.sign_in(browser, user)
    done = await browser.get(f"/authorize/resume?req={req}")
    assert done.status_code == 302 and "code" in query(done.headers["location"])


async def test_max_age_is_honoured_when_the_session_is_recent_enough(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    op.clock.advance(30)
    ok = await op.authorize(browser, **_params(max_age="60"))
    assert ok.status_code == 302
    op.clock.advance(60)
    assert (await op.authorize(browser, **_params(max_age="60"))).status_code == 303
    _redirected_error(await op.authorize(browser, **_params(max_age="60", prompt="none")), "login_required")
    _redirected_error(await op.authorize(browser, **_params(max_age="-1")), "invalid_request")


async def test_prompt_none_cannot_be_combined(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    _redirected_error(await op.authorize(browser, **_params(prompt="none login")), "invalid_request")


async def test_an_id_token_hint_for_another_user_with_prompt_none_is_login_required(op: OP) -> None:
    user, secret = await _setup(op)
    other = await op.add_user("wangfang", "王芳")
    browser = op.browser()
    await op.sign_in(browser, other)
    hint = (await op.login_tokens(browser, secret))["id_token"]
    browser2 = op.browser()
    await op.sign_in(browser2, user)
    _redirected_error(
        await op.authorize(browser2, **_params(prompt="none", id_token_hint=hint)), "login_required"
    )
    # The same user's (even expired) hint is fine.
    op.clock.advance(3600)
    await op.sign_in(browser, other)
    ok = await op.authorize(browser, **_params(prompt="none", id_token_hint=hint))
    assert ok.status_code == 302 and "code" in query(ok.headers["location"])


async def test_an_invalid_id_token_hint_is_invalid_request(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    _redirected_error(await op.authorize(browser, **_params(id_token_hint="e30.e30.")), "invalid_request")


async def test_an_essential_acr_that_cannot_be_met_fails_the_authentication(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    # Only classes this IdP does not know: no step-up can reach them (OIDC Core §5.5.1.1).
    wanted = {"id_token": {"acr": {"essential": True, "values": ["urn:example:acr:gold"]}}}
    response = await op.authorize(browser, **_params(claims=json.dumps(wanted)))
    _redirected_error(response, "unmet_authentication_requirements")
    met = {"id_token": {"acr": {"essential": True, "values": ["urn:onegate:acr:pwd"]}}}
    assert (await op.authorize(browser, **_params(claims=json.dumps(met)))).status_code == 302


async def test_a_malformed_claims_parameter_is_invalid_request(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    _redirected_error(await op.authorize(browser, **_params(claims="{not json")), "invalid_request")
    _redirected_error(await op.authorize(browser, **_params(claims='{"userinfo": []}')), "invalid_request")


async def test_request_objects_are_not_supported(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    _redirected_error(await op.authorize(browser, **_params(request="e30.e30.")), "request_not_supported")
    _redirected_error(
        await op.authorize(browser, **_params(request_uri="https://rp/request.jwt")),
        "request_uri_not_supported",
    )


async def test_third_party_clients_ask_for_consent_once(op: OP) -> None:
    user, _ = await _setup(op, first_party=False)
    browser = op.browser()
    await op.sign_in(browser, user)
    _redirected_error(await op.authorize(browser, **_params(prompt="none")), "consent_required")
    response = await op.authorize(
        browser, **_params(scope="openid email", claims='{"userinfo": {"phone_number": null}}')
    )
    assert response.status_code == 303 and response.headers["location"].startswith("/consent?req=")
    req = query(response.headers["location"])["req"]
    pending = await op.ctx.pending.get(req)
    assert pending is not None and set(pending.scopes) == {"openid", "email", "phone"}  # claims count too
    # The consent page grants and resumes.
    client = await op.registry.get("oa-app")
    assert client is not None
    await op.consents.grant(user.id, client.id, pending.scopes)
    done = await browser.get(f"/authorize/resume?req={req}")
    assert done.status_code == 302 and "code" in query(done.headers["location"])
    # Next time no question is asked, unless prompt=consent.
    again = await op.authorize(browser, **_params(scope="openid email"))
    assert again.status_code == 302
    forced = await op.authorize(browser, **_params(scope="openid email", prompt="consent"))
    assert forced.status_code == 303 and forced.headers["location"].startswith("/consent?req=")


async def test_denying_consent_is_access_denied(op: OP) -> None:
    user, _ = await _setup(op, first_party=False)
    browser = op.browser()
    await op.sign_in(browser, user)
    req = query((await op.authorize(browser, **_params())).headers["location"])["req"]
    _redirected_error(await browser.get(f"/authorize/resume?req={req}&denied=1"), "access_denied")
    assert await op.ctx.pending.get(req) is None


async def test_an_unknown_resume_request_is_an_error_page(op: OP) -> None:
    response = await op.browser().get("/authorize/resume?req=nope")
    assert response.status_code == 400 and "location" not in response.headers


async def test_a_disabled_user_with_a_live_session_must_sign_in_again(op: OP) -> None:
    user, _ = await _setup(op)
    browser = op.browser()
    await op.sign_in(browser, user)
    await op.set_user(user.id, status="disabled")
    _redirected_error(await op.authorize(browser, **_params(prompt="none")), "login_required")


async def test_a_one_time_password_must_be_changed_before_any_code(op: OP) -> None:
    user, _ = await _setup(op)
    await op.set_user(user.id, must_change_password=True)
    browser = op.browser()
    await op.sign_in(browser, user)
    response = await op.authorize(browser, **_params())
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/password?req=")
    # Going straight to /authorize/resume does not skip the password change either.
    resumed = await browser.get("/authorize/resume?" + location.split("?", 1)[1])
    assert resumed.headers["location"].startswith("/password?req=")
    assert stored(op, "oauth-code:") == []
    _redirected_error(await op.authorize(browser, **_params(prompt="none")), "interaction_required")
