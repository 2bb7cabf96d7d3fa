"""Client metadata validation: redirect URIs, grants, scopes, methods, lifetimes, JWKS (table-driven)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idp.clients import (
    AuthMethod,
    ClientError,
    ClientMetadata,
    ClientType,
    InvalidClientMetadata,
    check_url,
    parse_jwks,
    validate_metadata,
)
from keyvault.jws import ES256, RS256, b64url_encode

OA = "https://oa.example.gov.cn/oidc/callback"


def ec_jwk(**extra: Any) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    return {**ES256().jwk_members(key.public_key()), **extra}


def rsa_jwk(bits: int = 2048, **extra: Any) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return {**RS256().jwk_members(key.public_key()), **extra}


def meta(**changes: Any) -> ClientMetadata:
    base = ClientMetadata(name="协同办公系统", redirect_uris=(OA,))
    return dataclasses.replace(base, **changes)


# -- URLs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        OA,
        "https://oa.example.gov.cn/cb?tenant=hr",  # a query is fine; it is matched exactly
        "https://oa.example.gov.cn:8443/cb",
        "HTTPS://OA.example.gov.cn/CB",  # stored as given, compared byte for byte
        "http://localhost/cb",
        "http://localhost:8080/cb",
        "http://127.0.0.1:53682/cb",
        "http://[::1]:8080/cb",
        "http://oa.localhost:8000/cb",
        "https://oa.example.gov.cn/%E5%9B%9E%E8%B0%83",  # percent-encoded path
    ],
)
def test_accepted_urls_are_kept_exactly(uri: str) -> None:
    assert check_url("redirect_uris[0]", uri) == uri
    assert validate_metadata(meta(redirect_uris=(uri,))).redirect_uris == (uri,)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("http://oa.example.gov.cn/cb", "must use https"),
        ("http://localhost.evil.example/cb", "must use https"),
        ("http://127.0.0.1.nip.io/cb", "must use https"),
        ("https://oa.example.gov.cn/cb#frag", "fragment"),
        ("https://oa.example.gov.cn/cb#", "fragment"),
        ("https://*.example.gov.cn/cb", "wildcards"),
        ("https://oa.example.gov.cn/*", "wildcards"),
        ("/oidc/callback", "absolute URL"),
        ("oa.example.gov.cn/cb", "absolute URL"),
        ("//oa.example.gov.cn/cb", "absolute URL"),
        ("https:///cb", "absolute URL"),
        ("https://user@oa.example.gov.cn/cb", "user information"),
        ("https://oa.example.gov.cn@evil.example/cb", "user information"),
        ("https://oa.example.gov.cn%2F@evil.example/cb", "user information"),
        ("https://oa%2Eexample.gov.cn/cb", "percent-encoded"),
        ("https://oa.example.gov.cn:99999/cb", "invalid port"),
        ("https://oa.example.gov.cn\\@evil.example/cb", "backslash"),
        ("https://oa.example.gov.cn/c b", "without spaces"),
        ("https://oa.example.gov.cn/cb\n", "without spaces"),
        ("https://办公.example.gov.cn/cb", "must be ASCII"),
        ("javascript:alert(1)", "absolute URL"),
        ("com.example.oa:/callback", "absolute URL"),
        ("ftp://oa.example.gov.cn/cb", "must use https"),
        ("", "non-empty"),
        ("https://oa.example.gov.cn/" + "a" * 2000, "longer than"),
    ],
)
def test_refused_urls_name_the_field(uri: str, reason: str) -> None:
    with pytest.raises(InvalidClientMetadata) as info:
        validate_metadata(meta(redirect_uris=(uri,)))
    assert info.value.field == "redirect_uris[0]"
    assert reason in info.value.reason
    assert isinstance(info.value, ClientError)
    assert "\n" not in str(info.value)  # one line for the CLI, even for a value with a newline


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"post_logout_redirect_uris": ("http://oa.example.gov.cn/bye",)}, "post_logout_redirect_uris[0]"),
        ({"post_logout_redirect_uris": ("https://oa.example.gov.cn/bye#x",)}, "post_logout_redirect_uris[0]"),
        ({"backchannel_logout_uri": "http://oa.example.gov.cn/bcl"}, "backchannel_logout_uri"),
        ({"backchannel_logout_uri": "https://oa.example.gov.cn/bcl#x"}, "backchannel_logout_uri"),
        ({"redirect_uris": (OA, OA)}, "redirect_uris"),
        ({"redirect_uris": ()}, "redirect_uris"),
        ({"redirect_uris": tuple(f"{OA}/{i}" for i in range(21))}, "redirect_uris"),
    ],
)
def test_other_url_fields_follow_the_same_rules(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidClientMetadata) as info:
        validate_metadata(meta(**changes))
    assert info.value.field == field


def test_machine_client_needs_no_redirect_uri() -> None:
    m = validate_metadata(
        meta(redirect_uris=(), grant_types=("client_credentials",), scopes=("reports:read",))
    )
    assert m.grant_types == ("client_credentials",)
    assert m.token_endpoint_auth_method is AuthMethod.CLIENT_SECRET_BASIC


# -- types, methods, grants, scopes ------------------------------------------------------------------


def test_defaults() -> None:
    m = validate_metadata(meta())
    assert m.client_type is ClientType.CONFIDENTIAL
    assert m.token_endpoint_auth_method is AuthMethod.CLIENT_SECRET_BASIC
    assert m.grant_types == ("authorization_code", "refresh_token")
    assert m.scopes == ("openid", "profile", "email")
    assert m.require_pkce is True
    public = validate_metadata(meta(client_type=ClientType.PUBLIC))
    assert public.token_endpoint_auth_method is AuthMethod.NONE
    assert public.require_pkce is True


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"client_type": "spa"}, "client_type", "not one of"),
        (
            {"client_type": ClientType.PUBLIC, "token_endpoint_auth_method": AuthMethod.CLIENT_SECRET_BASIC},
            "token_endpoint_auth_method",
            "public clients use 'none'",
        ),
        (
            {"client_type": ClientType.PUBLIC, "token_endpoint_auth_method": AuthMethod.PRIVATE_KEY_JWT},
            "token_endpoint_auth_method",
            "public clients use 'none'",
        ),
        ({"token_endpoint_auth_method": AuthMethod.NONE}, "token_endpoint_auth_method", "confidential"),
        ({"token_endpoint_auth_method": "client_secret_jwt"}, "token_endpoint_auth_method", "not one of"),
        ({"client_type": ClientType.PUBLIC, "require_pkce": False}, "require_pkce", "always use PKCE"),
        (
            {"client_type": ClientType.PUBLIC, "grant_types": ("authorization_code", "client_credentials")},
            "grant_types",
            "only for confidential",
        ),
        ({"grant_types": ("implicit",)}, "grant_types", "implicit grant is not supported"),
        (
            {"grant_types": ("authorization_code", "password")},
            "grant_types",
            "password grant is not supported",
        ),
        ({"grant_types": ("urn:ietf:params:oauth:grant-type:device_code",)}, "grant_types", "is not one of"),
        ({"grant_types": ()}, "grant_types", "at least one"),
        ({"grant_types": ("refresh_token",)}, "grant_types", "needs authorization_code"),
        ({"grant_types": "authorization_code"}, "grant_types", "must be a list"),
        ({"scopes": ("openid", "Admin")}, "scopes", "custom scope"),
        ({"scopes": ("openid", "reports read")}, "scopes", "custom scope"),
        ({"scopes": ("openid", "报表")}, "scopes", "custom scope"),
        ({"scopes": ()}, "scopes", "at least one"),
        (
            {"scopes": ("openid", "offline_access"), "grant_types": ("authorization_code",)},
            "scopes",
            "needs the refresh_token grant",
        ),
        ({"name": "  "}, "name", "non-empty"),
        ({"name": "办" * 201}, "name", "longer than 200"),
        ({"name": "OA\x00"}, "name", "control characters"),
        ({"name_en": ""}, "name_en", "non-empty"),
        ({"access_token_lifetime": 30}, "access_token_lifetime", "between 60 and 86400"),
        ({"id_token_lifetime": 86401}, "id_token_lifetime", "between 60 and 86400"),
        ({"refresh_token_lifetime": 60}, "refresh_token_lifetime", "between 300 and 2592000"),
        ({"access_token_lifetime": True}, "access_token_lifetime", "whole seconds"),
        ({"access_token_lifetime": 600.5}, "access_token_lifetime", "whole seconds"),
    ],
)
def test_refused_metadata(changes: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidClientMetadata) as info:
        validate_metadata(meta(**changes))
    assert info.value.field == field
    assert reason in info.value.reason


def test_scopes_standard_and_custom_are_kept_in_order_without_duplicates() -> None:
    scopes = ("openid", "profile", "groups", "department", "phone", "oa:approve", "openid", "offline_access")
    assert validate_metadata(meta(scopes=scopes)).scopes == (*scopes[:-2], "offline_access")


def test_lifetimes_and_names() -> None:
    m = validate_metadata(
        meta(name=" 协同办公系统 ", name_en="Office automation", access_token_lifetime=300, description=" ")
    )
    assert m.name == "协同办公系统"
    assert m.name_en == "Office automation"
    assert m.access_token_lifetime == 300 and m.id_token_lifetime is None
    assert m.description is None


# -- keys for private_key_jwt ----------------------------------------------------------------------


def pkjwt(**changes: Any) -> ClientMetadata:
    return meta(token_endpoint_auth_method=AuthMethod.PRIVATE_KEY_JWT, **changes)


def test_private_key_jwt_with_ec_and_rsa_keys() -> None:
    jwks = {"keys": [ec_jwk(kid="ec-1", use="sig"), rsa_jwk(kid="rsa-1", alg="PS256")]}
    m = validate_metadata(pkjwt(jwks=jwks))
    assert m.jwks == jwks
    keys = parse_jwks(jwks)
    assert [(k.kid, sorted(k.algorithms)) for k in keys] == [("ec-1", ["ES256"]), ("rsa-1", ["PS256"])]
    assert sorted(parse_jwks({"keys": [rsa_jwk()]})[0].algorithms) == ["PS256", "RS256"]
    assert validate_metadata(pkjwt(jwks_uri="https://oa.example.gov.cn/jwks.json")).jwks is None


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi"])
def test_private_rsa_members_are_refused(member: str) -> None:
    jwk = rsa_jwk(**{member: b64url_encode(b"\x01" * 32)})
    with pytest.raises(InvalidClientMetadata) as info:
        validate_metadata(pkjwt(jwks={"keys": [jwk]}))
    assert info.value.field == "jwks.keys[0]"
    assert "private key members" in info.value.reason and repr(member) in info.value.reason


def test_a_real_private_ec_jwk_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {
        **ES256().jwk_members(key.public_key()),
        "d": b64url_encode(key.private_numbers().private_value.to_bytes(32, "big")),
    }
    with pytest.raises(InvalidClientMetadata, match="private key members"):
        parse_jwks({"keys": [jwk]})


@pytest.mark.parametrize(
    ("jwks", "field", "reason"),
    [
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "jwks.keys[0]", "private key members"),
        ({"keys": [{"kty": "oct"}]}, "jwks.keys[0]", "kty must be"),
        ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}, "jwks.keys[0]", "kty must be"),
        ({"keys": []}, "jwks", "between 1 and 10"),
        ({"key": []}, "jwks", "JWK Set"),
        ([], "jwks", "JWK Set"),
        ({"keys": ["x"]}, "jwks.keys[0]", "JSON object"),
        ({"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}, "jwks.keys[0]", "P-256"),
        (
            {
                "keys": [
                    {
                        "kty": "EC",
                        "crv": "P-256",
                        "x": b64url_encode(b"\x01" * 32),
                        "y": b64url_encode(b"\x02" * 32),
                    }
                ]
            },
            "jwks.keys[0]",
            "not on curve",
        ),
        ({"keys": [{"kty": "EC", "crv": "P-256", "x": "AQ", "y": "AQ"}]}, "jwks.keys[0]", "32 bytes"),
        (
            {"keys": [{"kty": "EC", "crv": "P-256", "x": "not base64!", "y": "AQ"}]},
            "jwks.keys[0]",
            "base64url",
        ),
    ],
)
def test_refused_jwks(jwks: Any, field: str, reason: str) -> None:
    with pytest.raises(InvalidClientMetadata) as info:
        validate_metadata(pkjwt(jwks=jwks))
    assert info.value.field == field
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"alg": "HS256"}, "does not fit"),
        ({"alg": "none"}, "does not fit"),
        ({"alg": "RS256"}, "does not fit"),  # an EC key cannot be an RSA key
        ({"use": "enc"}, "use must be 'sig'"),
        ({"key_ops": ["encrypt"]}, "key_ops"),
        ({"kid": 7}, "kid must be"),
    ],
)
def test_refused_ec_key_members(extra: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidClientMetadata) as info:
        parse_jwks({"keys": [ec_jwk(**extra)]})
    assert reason in info.value.reason


def test_small_rsa_keys_and_ambiguous_kids_are_refused() -> None:
    with pytest.raises(InvalidClientMetadata, match="at least 2048 bits"):
        parse_jwks({"keys": [rsa_jwk(bits=1024)]})
    with pytest.raises(InvalidClientMetadata, match="distinct kid"):
        parse_jwks({"keys": [ec_jwk(), ec_jwk()]})
    with pytest.raises(InvalidClientMetadata, match="distinct kid"):
        parse_jwks({"keys": [ec_jwk(kid="a"), ec_jwk(kid="a")]})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, "exactly one of jwks and jwks_uri"),
        ({"jwks_uri": "https://oa.example.gov.cn/jwks.json", "jwks": {"keys": []}}, "exactly one"),
    ],
)
def test_private_key_jwt_needs_exactly_one_key_source(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidClientMetadata, match=reason):
        validate_metadata(pkjwt(**changes))


def test_keys_only_for_private_key_jwt_and_jwks_uri_follows_url_rules() -> None:
    with pytest.raises(InvalidClientMetadata, match="only for private_key_jwt"):
        validate_metadata(meta(jwks={"keys": [ec_jwk()]}))
    with pytest.raises(InvalidClientMetadata) as info:
        validate_metadata(pkjwt(jwks_uri="http://oa.example.gov.cn/jwks.json"))
    assert info.value.field == "jwks_uri"
