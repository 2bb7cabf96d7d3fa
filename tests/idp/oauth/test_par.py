"""Pushed authorization requests (RFC 9126)."""

from __future__ import annotations

from typing import Any

from tests.idp.oauth.conftest import ISSUER, OP, REDIRECT, pkce, query


def _request(**extra: str) -> dict[str, str]:
    _, challenge = pkce()
    return {
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "s1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


async def _setup(op: OP) -> tuple[Any, str]:
    user = await op.add_user()
    _, secret = await op.add_client()
    return user, secret or ""


async def test_a_pushed_request_is_used_once_by_its_client(op: OP) -> None:
    user, secret = await _setup(op)
    response = await op.post("/par", _request(), auth=("oa-app", secret))
    assert response.status_code == 201
    body = response.json()
    assert body["expires_in"] == 60 and body["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    browser = op.browser()
    await op.sign_in(browser, user)
    used = await op.authorize(browser, client_id="oa-app", request_uri=body["request_uri"], state="ignored")
    params = query(used.headers["location"])
    assert (
        used.status_code == 302 and params["state"] == "s1" and params["iss"] == ISSUER and "code" in params
    )
    again = await op.authorize(browser, client_id="oa-app", request_uri=body["request_uri"])
    assert again.status_code == 400 and "location" not in again.headers
    assert "invalid_request_uri" in again.text


async def test_another_client_cannot_use_a_pushed_request(op: OP) -> None:
    user, secret = await _setup(op)
    await op.add_client("other-app")
    request_uri = (await op.post("/par", _request(), auth=("oa-app", secret))).json()["request_uri"]
    browser = op.browser()
    await op.sign_in(browser, user)
    response = await op.authorize(browser, client_id="other-app", request_uri=request_uri)
    assert response.status_code == 400 and "location" not in response.headers


async def test_a_pushed_request_expires(op: OP) -> None:
    user, secret = await _setup(op)
    request_uri = (await op.post("/par", _request(), auth=("oa-app", secret))).json()["request_uri"]
    op.clock.advance(61)
    browser = op.browser()
    await op.sign_in(browser, user)
    assert (await op.authorize(browser, client_id="oa-app", request_uri=request_uri)).status_code == 400


async def test_pushed_requests_are_validated_and_errors_are_json(op: OP) -> None:
    _, secret = await _setup(op)
    bad_redirect = await op.post(
        "/par", _request(redirect_uri="https://evil.example/cb"), auth=("oa-app", secret)
    )
    assert bad_redirect.status_code == 400 and bad_redirect.json()["error"] == "invalid_request"
    no_pkce = await op.post("/par", _request(code_challenge_method="plain"), auth=("oa-app", secret))
    assert no_pkce.status_code == 400 and no_pkce.json()["error"] == "invalid_request"
    assert "location" not in no_pkce.headers
    nested = await op.post("/par", _request(request_uri="urn:x"), auth=("oa-app", secret))
    assert nested.json()["error"] == "invalid_request"
    unauthenticated = await op.post("/par", {**_request(), "client_id": "oa-app"})
    assert unauthenticated.json()["error"] == "invalid_client"
