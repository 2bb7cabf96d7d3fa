"""Discovery (OIDC Discovery §3) and the JWK Set."""

from __future__ import annotations

from idp.endpoints.jwks import jwks_max_age
from tests.idp.oauth.conftest import ISSUER, OP


async def test_metadata_states_exactly_what_the_provider_does(op: OP) -> None:
    response = await op.browser().get("/.well-known/openid-configuration")
    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == ISSUER
    for name, path in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("userinfo_endpoint", "/userinfo"),
        ("jwks_uri", "/jwks.json"),
        ("revocation_endpoint", "/revoke"),
        ("introspection_endpoint", "/introspect"),
        ("pushed_authorization_request_endpoint", "/par"),
        ("end_session_endpoint", "/logout"),
    ]:
        assert meta[name] == ISSUER + path
    assert meta["response_types_supported"] == ["code"]
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token", "client_credentials"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["id_token_signing_alg_values_supported"] == ["ES256"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",
    }
    assert "none" not in meta["introspection_endpoint_auth_methods_supported"]
    assert {"openid", "profile", "email", "phone", "groups", "department", "offline_access"} == set(
        meta["scopes_supported"]
    )
    assert {
        "sub",
        "name",
        "preferred_username",
        "email",
        "phone_number",
        "groups",
        "department",
        "acr",
        "amr",
        "sid",
    } <= set(meta["claims_supported"])
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["backchannel_logout_supported"] is True
    assert meta["backchannel_logout_session_supported"] is True
    assert meta["claims_parameter_supported"] is True
    assert meta["request_parameter_supported"] is False
    assert meta["ui_locales_supported"] == ["zh-CN", "en"]


async def test_jwks_publishes_the_keys_and_a_short_cache_lifetime(op: OP) -> None:
    response = await op.browser().get("/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert [k["kid"] for k in keys] == [k.kid for k in op.vault.signing.list_keys()]
    assert all("d" not in k for k in keys)  # public parts only
    assert response.headers["cache-control"] == "public, max-age=900"  # prepublish 3600 / 4


async def test_a_rotated_key_appears_in_the_jwks_before_it_signs(op: OP) -> None:
    new_kid = op.vault.signing.rotate()
    keys = (await op.browser().get("/jwks.json")).json()["keys"]
    assert new_kid in [k["kid"] for k in keys]
    meta = (await op.browser().get("/.well-known/openid-configuration")).json()
    assert meta["id_token_signing_alg_values_supported"] == ["ES256"]


def test_jwks_max_age_is_well_below_the_prepublication_time() -> None:
    assert jwks_max_age(3600) == 900
    assert jwks_max_age(86400) == 3600  # capped
    assert jwks_max_age(0) == 0
