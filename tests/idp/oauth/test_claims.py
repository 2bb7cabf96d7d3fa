"""idp.claims: scopes to claims, and the claims request parameter (OIDC Core §5.4, §5.5)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from authlib.oauth2.rfc6749 import InvalidRequestError

from idp.claims import claim_scopes, parse_claims_request, releasable, user_claims


@dataclass(frozen=True)
class Profile:
    sub: str = "8f3a"
    username: str = "liuyang"
    display_name: str = "刘洋"
    email: str | None = "liuyang@example.gov.cn"
    phone: str | None = None
    department: str | None = "市政务服务管理局"
    department_code: str | None = "zwfw"
    groups: tuple[str, ...] = ("approvers", "staff")
    status: str = "active"
    departments: tuple[str, ...] = ("zwfw", "city")


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        (["openid"], {"sub"}),
        (["openid", "profile"], {"sub", "name", "preferred_username"}),
        (["openid", "email", "phone"], {"sub", "email"}),  # no phone number on file: left out
        (
            ["openid", "groups", "department"],
            {"sub", "groups", "department", "department_code", "departments"},
        ),
        (["openid", "offline_access"], {"sub"}),
    ],
)
def test_scopes_release_their_claims(scopes: list[str], expected: set[str]) -> None:
    assert set(user_claims(Profile(), scopes)) == expected


def test_values_come_from_the_profile() -> None:
    claims = user_claims(Profile(), ["openid", "profile", "groups"])
    assert claims == {
        "sub": "8f3a",
        "name": "刘洋",
        "preferred_username": "liuyang",
        "groups": ["approvers", "staff"],
    }


def test_claims_requests_parse_and_map_to_scopes() -> None:
    request = parse_claims_request(
        '{"id_token": {"acr": {"essential": true, "values": ["urn:onegate:acr:pwd"]}, "email": null},'
        ' "userinfo": {"phone_number": {"essential": true}, "x-unknown": null}}'
    )
    assert request.essential_values("acr") == ("urn:onegate:acr:pwd",)
    assert request.essential_values("email") is None
    assert claim_scopes(request) == {"email", "phone"}
    assert releasable(request, {"openid", "email"}) == (["email"], [])
    assert releasable(request, {"openid", "email", "phone"}) == (["email"], ["phone_number"])


@pytest.mark.parametrize(
    "raw",
    [
        "[]",
        "{",
        '{"id_token": []}',
        '{"userinfo": {"email": 1}}',
        '{"id_token": {"acr": {"values": "x"}}}',
        "{" * 5000,
    ],
)
def test_malformed_claims_requests_are_invalid_request(raw: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_claims_request(raw)
