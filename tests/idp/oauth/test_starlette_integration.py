"""idp.integrations.starlette: every parameter value kept, bodies bounded, responses faithful."""

from __future__ import annotations

import httpx
import pytest
from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idp.integrations.starlette import (
    MAX_FORM_BYTES,
    OAuth2Response,
    StarletteOAuth2Request,
    read_oauth2_request,
    to_response,
)


def _app(source: str) -> Starlette:
    async def endpoint(request: Request) -> Response:
        try:
            oreq = await read_oauth2_request(request, source=source)  # type: ignore[arg-type]
        except InvalidRequestError as e:
            return JSONResponse({"error": e.error, "description": e.description}, status_code=400)
        return JSONResponse(
            {
                "data": oreq.payload.data,
                "datalist": dict(oreq.payload.datalist),
                "form": oreq.form,
                "args": oreq.args,
            }
        )

    return Starlette(routes=[Route("/", endpoint, methods=["GET", "POST"])])


async def _call(source: str, method: str, **kw: object) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(source)), base_url="http://t") as c:
        return await c.request(method, "/", **kw)  # type: ignore[arg-type]


async def test_repeated_parameters_are_all_kept() -> None:
    body = (
        await _call("query", "GET", params=[("scope", "openid"), ("scope", "email"), ("state", "")])
    ).json()
    assert body["datalist"]["scope"] == ["openid", "email"]
    assert body["data"]["scope"] == "openid"  # the first one, as authlib's `data` promises
    assert body["data"]["state"] == ""  # blank values are kept (a present-but-empty parameter)


async def test_form_source_ignores_the_query_and_reads_the_body() -> None:
    body = (
        await _call("form", "POST", params={"grant_type": "evil"}, data={"grant_type": "refresh_token"})
    ).json()
    assert body["datalist"] == {"grant_type": ["refresh_token"]}
    assert body["args"] == {}


async def test_any_source_reads_the_query_for_get_and_the_body_for_post() -> None:
    got = (await _call("any", "GET", params={"a": "1"})).json()
    posted = (await _call("any", "POST", params={"a": "1"}, data={"b": "2"})).json()
    assert got["datalist"] == {"a": ["1"]}
    assert posted["datalist"] == {"b": ["2"]}


@pytest.mark.parametrize(
    ("kw", "description"),
    [
        ({"json": {"grant_type": "x"}}, "The body must be application/x-www-form-urlencoded."),
        (
            {"content": b"a=%FF", "headers": {"content-type": "application/x-www-form-urlencoded"}},
            "not valid form",
        ),
        (
            {
                "content": b"a=" + b"x" * MAX_FORM_BYTES,
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            "too large",
        ),
        (
            {
                "content": "&".join(f"k{i}=v" for i in range(100)),
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            "not valid form",
        ),
    ],
)
async def test_bad_bodies_are_invalid_request(kw: dict[str, object], description: str) -> None:
    response = await _call("form", "POST", **kw)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert description in response.json()["description"]


def test_the_request_has_every_attribute_authlib_sets() -> None:
    # StarletteOAuth2Request skips OAuth2Request.__init__ (see its docstring): if authlib adds
    # an attribute there, this fails and the adapter must set it too.
    theirs = OAuth2Request("POST", "https://idp.example/token", headers={})
    ours = StarletteOAuth2Request("POST", "http://idp.localhost/token", {}, [], [])
    assert set(vars(theirs)) <= set(vars(ours))


def test_response_location_can_be_rewritten_like_authlibs_rfc9207_extension_does() -> None:
    result = OAuth2Response(302, "", [("Location", "https://rp/cb?code=x")])
    result.location = "https://rp/cb?code=x&iss=https%3A%2F%2Fidp"
    assert result.headers == [("Location", "https://rp/cb?code=x&iss=https%3A%2F%2Fidp")]


def test_json_bodies_are_utf8_and_challenges_stay_separate_headers() -> None:
    response = to_response(
        OAuth2Response(
            401,
            {"name": "张伟"},
            [
                ("Content-Type", "application/json"),
                ("WWW-Authenticate", "Basic"),
                ("WWW-Authenticate", "Bearer"),
            ],
        )
    )
    assert response.body == '{"name":"张伟"}'.encode()
    assert response.headers.getlist("www-authenticate") == ["Basic", "Bearer"]
