"""A relying party built on pyoidc (``oic``), a library the IdP does not use, against the real
IdP over real HTTP: discovery, code + PKCE sign-in through the real forms (login, forced
password change, consent), ID-token validation against the JWKS, userinfo, refresh,
revocation, RP-initiated logout and a verified back-channel logout token.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import uvicorn
from oic import rndstr
from oic.oic import Client
from oic.oic.message import AuthorizationResponse, BackChannelLogoutRequest, RegistrationResponse
from oic.utils.authn.client import CLIENT_AUTHN_METHOD
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.e2e.browser import Browser
from tests.onegate.conftest import ONEGATE, clean_env

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RelyingPartyServer:
    """The relying party's own endpoints: it only needs to receive back-channel logout tokens."""

    def __init__(self) -> None:
        self.port = free_port()
        self.logout_tokens: list[str] = []
        app = Starlette(routes=[Route("/backchannel", self._backchannel, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def _backchannel(self, request: Request) -> PlainTextResponse:
        form = await request.form()
        self.logout_tokens.append(str(form["logout_token"]))
        return PlainTextResponse("", status_code=200)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> RelyingPartyServer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def onegate(*args: str, env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run([*ONEGATE, *args, "--json"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, object]]:
    """A real IdP process with one user and one (third-party) client, and the RP's receiver."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    data = str(tmp_path / "data")
    env = clean_env({"ONEGATE_IDP__ISSUER": issuer, "ONEGATE_DATA_DIR": data})
    onegate("init", env=env)
    # Not an administrator group: those require a second factor, which this RP test is not about.
    added = subprocess.run(
        [*ONEGATE, "user", "groups", "add", "hr-staff"], env=env, capture_output=True, check=False
    )
    assert added.returncode == 0, added.stderr
    user = onegate(
        "user",
        "add",
        "zhangwei",
        "--name",
        "张伟",
        "--email",
        "zhangwei@hrss.city.gov.cn",
        "--group",
        "hr-staff",
        env=env,
    )
    with RelyingPartyServer() as rp:
        client = onegate(
            "client",
            "add",
            "--name",
            "协同办公系统",
            "--name-en",
            "Office automation",
            "--redirect-uri",
            rp.url("/callback"),
            "--post-logout-redirect-uri",
            rp.url("/signed-out"),
            "--backchannel-logout-uri",
            rp.url("/backchannel"),
            "--grant-type",
            "authorization_code",
            "--grant-type",
            "refresh_token",
            "--scope",
            "openid",
            "--scope",
            "profile",
            "--scope",
            "email",
            "--scope",
            "groups",
            env=env,
        )
        server = subprocess.Popen(
            [*ONEGATE, "serve", "--role", "idp", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"{issuer}/readyz", timeout=5).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, "the IdP did not start"
                time.sleep(0.1)
            yield {"issuer": issuer, "user": user, "client": client, "rp": rp}
        finally:
            server.terminate()
            server.communicate(timeout=30)


def test_pyoidc_relying_party_end_to_end(stack: dict[str, object]) -> None:
    issuer, user, registered, rp = stack["issuer"], stack["user"], stack["client"], stack["rp"]
    assert isinstance(issuer, str) and isinstance(user, dict) and isinstance(registered, dict)
    assert isinstance(rp, RelyingPartyServer)

    # Discovery and registration data, as any relying party configures itself.
    client = Client(client_authn_method=CLIENT_AUTHN_METHOD)
    provider = client.provider_config(issuer)
    assert provider["issuer"] == issuer
    assert "S256" in provider["code_challenge_methods_supported"]
    assert provider["authorization_response_iss_parameter_supported"] is True
    client.store_registration_info(
        RegistrationResponse(
            client_id=registered["client_id"],
            client_secret=registered["client_secret"],
            redirect_uris=[rp.url("/callback")],
            token_endpoint_auth_method="client_secret_basic",
        )
    )

    # Authorization request with PKCE S256, through the real sign-in pages.
    state, nonce = rndstr(), rndstr()
    challenge, verifier = client.add_code_challenge()
    auth_url = client.construct_AuthorizationRequest(
        request_args={
            "client_id": registered["client_id"],
            "response_type": "code",
            "scope": ["openid", "profile", "email", "groups"],
            "state": state,
            "nonce": nonce,
            "redirect_uri": rp.url("/callback"),
            **challenge,
        }
    ).request(client.authorization_endpoint)
    browser = Browser()
    page = browser.get(auth_url, stop_at=rp.url("/callback"))
    assert urlsplit(page.url).path == "/login"
    page = browser.submit(
        browser.form("password"),
        {"username": "zhangwei", "password": user["password"]},
        stop_at=rp.url("/callback"),
    )
    # The one-time password must be changed first, then the third-party client asks for consent.
    assert urlsplit(page.url).path == "/password"
    new_password = "Zw-" + secrets.token_urlsafe(12)
    page = browser.submit(
        browser.form("new_password"),
        {
            "current_password": user["password"],
            "new_password": new_password,
            "confirm_password": new_password,
        },
        stop_at=rp.url("/callback"),
    )
    assert urlsplit(page.url).path == "/consent"
    assert "协同办公系统" in page.text
    page = browser.submit(
        browser.form("decision"), {}, button=("decision", "allow"), stop_at=rp.url("/callback")
    )
    callback = page.headers["location"]
    assert callback.startswith(rp.url("/callback"))

    # The authorization response: code, state and (RFC 9207) iss.
    query = urlsplit(callback).query
    assert parse_qs(query)["iss"] == [issuer]
    response = client.parse_response(AuthorizationResponse, info=query, sformat="urlencoded")
    assert response["state"] == state

    # Token request: pyoidc verifies the ID token (signature against the JWKS, iss, aud, nonce, exp).
    tokens = client.do_access_token_request(
        state=state,
        request_args={
            "code": response["code"],
            "code_verifier": verifier,
            "redirect_uri": rp.url("/callback"),
        },
        authn_method="client_secret_basic",
    )
    id_token = tokens["id_token"]
    assert id_token["iss"] == issuer
    assert id_token["aud"] == [registered["client_id"]]
    assert id_token["nonce"] == nonce
    assert id_token["name"] == "张伟"
    assert id_token["preferred_username"] == "zhangwei"
    sid = id_token["sid"]
    assert sid and id_token["sub"] != "zhangwei"  # opaque subject

    info = client.do_user_info_request(state=state)
    assert info["sub"] == id_token["sub"]
    assert info["email"] == "zhangwei@hrss.city.gov.cn"
    assert "hr-staff" in info["groups"]

    # Refresh: rotated tokens, and the new ID token is for the same subject.
    first_refresh = tokens["refresh_token"]
    refreshed = client.do_access_token_refresh(state=state, authn_method="client_secret_basic")
    assert refreshed["refresh_token"] != first_refresh
    assert refreshed["access_token"] != tokens["access_token"]

    # Revocation (RFC 7009) of the current access token: userinfo refuses it afterwards.
    auth = (registered["client_id"], registered["client_secret"])
    revoked = requests.post(
        provider["revocation_endpoint"],
        auth=auth,
        timeout=5,
        data={"token": refreshed["access_token"], "token_type_hint": "access_token"},
    )
    assert revoked.status_code == 200
    userinfo = requests.get(
        provider["userinfo_endpoint"],
        timeout=5,
        headers={"Authorization": f"Bearer {refreshed['access_token']}"},
    )
    assert userinfo.status_code == 401

    # RP-initiated logout with id_token_hint, exact post_logout_redirect_uri and state.
    logout_state = rndstr()
    logout_url = client.construct_EndSessionRequest(
        state=state,
        request_args={
            "post_logout_redirect_uri": rp.url("/signed-out"),
            "state": logout_state,
        },
    ).request(client.end_session_endpoint)
    page = browser.get(logout_url, stop_at=rp.url("/signed-out"))
    if "location" not in page.headers:  # the IdP asks the user to confirm
        page = browser.submit(browser.form("req"), {}, stop_at=rp.url("/signed-out"))
    back = urlsplit(page.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == rp.url("/signed-out")
    assert parse_qs(back.query)["state"] == [logout_state]

    # Back-channel logout: the RP receives a logout token it can verify with the JWKS.
    deadline = time.monotonic() + 10
    while not rp.logout_tokens and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(rp.logout_tokens) == 1
    message = BackChannelLogoutRequest(logout_token=rp.logout_tokens[0])
    assert message.verify(keyjar=client.keyjar, iss=issuer, aud=registered["client_id"])
    logout_token = message["logout_token"]
    assert logout_token["sid"] == sid
    assert logout_token["sub"] == id_token["sub"]
    assert "nonce" not in logout_token

    # The session is over: the refresh token family of that session no longer works.
    after = requests.post(
        provider["token_endpoint"],
        auth=auth,
        timeout=5,
        data={"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]},
    )
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
