"""The token endpoint: the code grant and its attacks, client_credentials, client authentication."""

from __future__ import annotations

from typing import Any

import pytest

from tests.idp.oauth.conftest import ISSUER, OP, REDIRECT, b64_json, pkce, stored


async def _signed_in(op: OP, **client: Any) -> tuple[Any, str | None, Any]:
    user = await op.add_user(
        email="zhangwei@hrss.example.gov.cn", phone="13800000000", groups=("hr-clerks",), department="hrss"
    )
    _, secret = await op.add_client(**client)
    browser = op.browser()
    await op.sign_in(browser, user)
    return user, secret, browser


def _refused(response: Any, error: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert "access_token" not in body and "id_token" not in body and "refresh_token" not in body
    assert response.headers["cache-control"] == "no-store"


async def test_the_code_grant_issues_jwt_access_token_id_token_and_refresh_token(op: OP) -> None:
    user, secret, browser = await _signed_in(op)
    code, verifier = await op.code(browser, scope="openid profile email phone groups department")
    response = await op.redeem(code, verifier, secret)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    assert body["scope"] == "openid profile email phone groups department"

    header, access = (
        b64_json(body["access_token"].split(".")[0]),
        b64_json(body["access_token"].split(".")[1]),
    )
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"  # RFC 9068
    profile = await op.ctx.directory.profile(user.id)
    assert profile is not None
    assert access["iss"] == ISSUER and access["sub"] == profile.sub and access["aud"] == "oa-app"
    assert access["client_id"] == "oa-app" and access["acr"] == "urn:onegate:acr:pwd"
    assert {"exp", "iat", "jti", "sid", "auth_time", "scope"} <= set(access)

    claims = op.tokens.verify_id_token_hint(body["id_token"])
    assert claims["sub"] == profile.sub != user.username  # opaque, stable
    assert claims["aud"] == "oa-app" and claims["nonce"] == "n-1"
    assert claims["name"] == "张伟" and claims["preferred_username"] == "zhangwei"
    assert claims["email"] == "zhangwei@hrss.example.gov.cn" and claims["phone_number"] == "13800000000"
    assert claims["groups"] == ["hr-clerks"] and claims["department"] == "市人力资源和社会保障局"
    assert claims["amr"] == ["pwd"] and claims["sid"] == access["sid"]
    assert claims["exp"] - claims["iat"] == 300

    events = op.events_of("token-issued")
    assert events[-1].outcome == "success" and events[-1].get("user.id") == str(user.id)
    assert events[-1].get("onegate.client_id") == "oa-app"


async def test_a_reused_code_fails_and_revokes_what_the_first_redemption_issued(op: OP) -> None:
    _, secret, browser = await _signed_in(op)
    code, verifier = await op.code(browser)
    first = (await op.redeem(code, verifier, secret)).json()
    assert (await op.userinfo(first["access_token"])).status_code == 200

    _refused(await op.redeem(code, verifier, secret), "invalid_grant")

    reused = op.events_of("code-reused")
    assert len(reused) == 1 and reused[0].category == "intrusion_detection"
    assert reused[0].get("labels.grant_revoked") is True
    # The first redemption's tokens stop working.
    assert (await op.userinfo(first["access_token"])).status_code == 401
    assert (await op.introspect(first["access_token"], "oa-app", secret or ""))["active"] is False
    refreshed = await op.token(
        {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=("oa-app", secret or ""),
    )
    _refused(refreshed, "invalid_grant")


@pytest.mark.parametrize("verifier", ["", "plain-not-hashed-but-long-enough-1234567890abcdefgh", "wrong"])
async def test_a_missing_or_wrong_pkce_verifier_gets_no_token(op: OP, verifier: str) -> None:
    _, secret, browser = await _signed_in(op)
    code, _ = await op.code(browser)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if verifier:
        data["code_verifier"] = verifier
    response = await op.token(data, auth=("oa-app", secret or ""))
    _refused(response, "invalid_grant" if len(verifier) >= 43 else "invalid_request")


async def test_the_plain_method_cannot_be_smuggled_as_the_challenge_itself(op: OP) -> None:
    # A "plain" PKCE client sends verifier == challenge; with S256 enforced that never matches.
    _, secret, browser = await _signed_in(op)
    verifier, _ = pkce()
    response = await op.authorize(
        browser,
        response_type="code",
        client_id="oa-app",
        redirect_uri=REDIRECT,
        scope="openid",
        code_challenge=verifier,
        code_challenge_method="S256",
    )
    code = response.headers["location"].split("code=")[1].split("&")[0]
    _refused(await op.redeem(code, verifier, secret), "invalid_grant")


async def test_a_code_presented_by_another_client_gets_no_token(op: OP) -> None:
    _, _, browser = await _signed_in(op)
    _, other_secret = await op.add_client("thief-app", redirect_uris=[REDIRECT])
    code, verifier = await op.code(browser)
    _refused(await op.redeem(code, verifier, other_secret, client_id="thief-app"), "invalid_grant")


async def test_the_redirect_uri_must_repeat_exactly_at_the_token_endpoint(op: OP) -> None:
    _, secret, browser = await _signed_in(op, redirect_uris=[REDIRECT, f"{REDIRECT}2"])
    code, verifier = await op.code(browser)
    _refused(await op.redeem(code, verifier, secret, redirect_uri=f"{REDIRECT}2"), "invalid_grant")


async def test_an_expired_code_gets_no_token(op: OP) -> None:
    _, secret, browser = await _signed_in(op)
    code, verifier = await op.code(browser)
    op.clock.advance(61)
    _refused(await op.redeem(code, verifier, secret), "invalid_grant")
    assert op.events_of("code-reused") == []


async def test_an_unknown_code_gets_no_token(op: OP) -> None:
    _, secret, _ = await _signed_in(op)
    _refused(await op.redeem("x" * 43, "v" * 43, secret), "invalid_grant")


async def test_a_public_client_redeems_with_pkce_and_its_id_only(op: OP) -> None:
    _, _, browser = await _signed_in(op, client_type="public", token_endpoint_auth_method="none")
    code, verifier = await op.code(browser)
    body = (await op.redeem(code, verifier, None)).json()
    assert "access_token" in body and "refresh_token" in body


@pytest.mark.parametrize(
    "grant_type", ["password", "implicit", "urn:ietf:params:oauth:grant-type:device_code", ""]
)
async def test_unsupported_grants(op: OP, grant_type: str) -> None:
    _, secret = await op.add_client()
    response = await op.token(
        {"grant_type": grant_type, "username": "zhangwei", "password": "x"}, auth=("oa-app", secret or "")
    )
    _refused(response, "unsupported_grant_type")


@pytest.mark.parametrize(
    ("auth", "extra", "status"),
    [
        (("oa-app", "wrong-secret"), {}, 401),
        (("nobody", "secret"), {}, 401),
        (None, {"client_id": "oa-app", "client_secret": "wrong"}, 400),
        (None, {"client_id": "oa-app"}, 400),  # a confidential client must authenticate
    ],
)
async def test_failed_client_authentication_is_invalid_client(
    op: OP, auth: tuple[str, str] | None, extra: dict[str, str], status: int
) -> None:
    await op.add_client(grant_types=["client_credentials"], scopes=["hr:read"])
    response = await op.token({"grant_type": "client_credentials", **extra}, auth=auth)
    _refused(response, "invalid_client", status)
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic")
    failure = op.events_of("token-issued")[-1]
    assert failure.outcome == "failure" and failure.get("onegate.reason").startswith("client_authentication_")


async def test_client_credentials_for_a_machine_client(op: OP) -> None:
    _, secret = await op.add_client(
        "payroll-batch", grant_types=["client_credentials"], scopes=["hr:read", "hr:write"], redirect_uris=[]
    )
    response = await op.token(
        {"grant_type": "client_credentials", "scope": "hr:read"}, auth=("payroll-batch", secret or "")
    )
    body = response.json()
    assert response.status_code == 200 and body["scope"] == "hr:read"
    assert "refresh_token" not in body and "id_token" not in body
    access = op.tokens.verify_access_token(body["access_token"])
    assert access["sub"] == "payroll-batch" and "sid" not in access
    default = (
        await op.token({"grant_type": "client_credentials"}, auth=("payroll-batch", secret or ""))
    ).json()
    assert default["scope"] == "hr:read hr:write"
    assert op.events_of("token-issued")[-1].get("onegate.grant_type") == "client_credentials"


@pytest.mark.parametrize("scope", ["openid", "hr:admin", "hr:read profile"])
async def test_client_credentials_refuses_user_and_unregistered_scopes(op: OP, scope: str) -> None:
    _, secret = await op.add_client(
        "batch", grant_types=["client_credentials"], scopes=["hr:read", "openid"], redirect_uris=[]
    )
    _refused(
        await op.token({"grant_type": "client_credentials", "scope": scope}, auth=("batch", secret or "")),
        "invalid_scope",
    )


async def test_client_credentials_needs_the_grant_type_registered(op: OP) -> None:
    _, secret = await op.add_client()
    _refused(
        await op.token({"grant_type": "client_credentials"}, auth=("oa-app", secret or "")),
        "unauthorized_client",
    )


async def test_a_repeated_parameter_at_the_token_endpoint_is_invalid_request(op: OP) -> None:
    _, secret, browser = await _signed_in(op)
    code, verifier = await op.code(browser)
    async with op.browser() as rp:
        response = await rp.post(
            "/token",
            content=f"grant_type=authorization_code&code={code}&code={code}&redirect_uri={REDIRECT}&code_verifier={verifier}",
            headers={"content-type": "application/x-www-form-urlencoded"},
            auth=("oa-app", secret or ""),
        )
    _refused(response, "invalid_request")
    assert len(stored(op, "oauth-grant:")) == 0


async def test_private_key_jwt_client_authentication(op: OP) -> None:
    import time as _time

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from jose import jwt

    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        import base64

        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    jwk = {"kty": "EC", "crv": "P-256", "x": b64(numbers.x), "y": b64(numbers.y), "kid": "k1", "alg": "ES256"}
    await op.add_client(
        "signer",
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [jwk]},
        grant_types=["client_credentials"],
        scopes=["hr:read"],
        redirect_uris=[],
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    now = int(_time.time())
    assertion = jwt.encode(
        {
            "iss": "signer",
            "sub": "signer",
            "aud": f"{ISSUER}/token",
            "iat": now,
            "exp": now + 60,
            "jti": "j-1",
        },
        pem.decode(),
        algorithm="ES256",
        headers={"kid": "k1"},
    )
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    first = await op.token(data)
    assert (
        first.status_code == 200
        and op.tokens.verify_access_token(first.json()["access_token"])["sub"] == "signer"
    )
    replayed = await op.token(data)  # the jti is single use
    _refused(replayed, "invalid_client")
    assert op.events_of("token-issued")[-1].get("onegate.reason") == "client_authentication_replayed-jti"


async def test_two_concurrent_redemptions_issue_nothing_usable(op: OP) -> None:
    import asyncio

    _, secret, browser = await _signed_in(op)
    code, verifier = await op.code(browser)
    first, second = await asyncio.gather(op.redeem(code, verifier, secret), op.redeem(code, verifier, secret))
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [200, 400]
    winner = (first if first.status_code == 200 else second).json()
    # The loser saw the code used and revoked what the winner got (RFC 6749 §4.1.2).
    assert (await op.userinfo(winner["access_token"])).status_code == 401
    assert len(op.events_of("code-reused")) == 1
