"""gateway.oidc: the gateway's OpenID Connect relying party.

Two providers, both over real HTTP on 127.0.0.1:

* our IdP (``oidc_idp``: a real ``onegate serve --role idp`` process): sign-in through its real
  forms, step-up to a second factor, a refused consent, a replayed code, RP-initiated logout and
  the logout token it POSTs back;
* ``FakeProvider``, a tiny provider of the test's own (aiohttp): discovery, a JWK Set and a token
  endpoint answering whatever the test set, with ID and logout tokens signed by test keys — the
  tokens a real provider never sends (a weaker ``acr``, a forged header, a rotated key, ...).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import re
import ssl
import time
import warnings
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urljoin, urlsplit

import pyotp
import pytest
import requests
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from gateway import oidc
from gateway.oidc import LoginError, LoginState, OidcClient, SignIn
from tests.gateway.conftest import (
    POST_LOGOUT_URI,
    REDIRECT_URI,
    THIRD_PARTY_REDIRECT_URI,
    IdpBrowser,
    OidcIdp,
    callback_query,
)
from tests.tls import self_signed

ACR_PWD = "urn:onegate:acr:pwd"
ACR_MFA = "urn:onegate:acr:mfa"
ACR_PHR = "urn:onegate:acr:phr"
EVENT = "http://schemas.openid.net/event/backchannel-logout"
DROP = object()  # a claim or header member to leave out


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Mapping[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def decode_segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def at_hash(access_token: str) -> str:
    return b64(hashlib.sha256(access_token.encode()).digest()[:16])


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- a provider of the test's own ------------------------------------------------------------------


def alg_of(key: Key) -> str:
    explicit = key.get("alg")
    if isinstance(explicit, str):
        return explicit
    if isinstance(key, OKPKey):
        return "Ed25519"
    return "RS256" if isinstance(key, RSAKey) else "ES256"


def raw_sign(
    header: Mapping[str, Any], claims: Mapping[str, Any], key: Key | None, *, sign_alg: str | None = None
) -> str:
    """A compact JWS with exactly ``header`` (no checks: forged headers included), signed with
    ``sign_alg`` (default: the header's ``alg``); no signature without a key."""
    signing_input = f"{segment(header)}.{b64(json.dumps(claims).encode())}".encode()
    algorithm = jws.JWSRegistry.algorithms[sign_alg or header["alg"]]
    signature = b"" if key is None else algorithm.sign(signing_input, key)
    return f"{signing_input.decode()}.{b64(signature)}"


class FakeProvider:
    """An OpenID provider over real HTTP on 127.0.0.1 (aiohttp), reached as ``op.test``."""

    host = "op.test"

    def __init__(self) -> None:
        self.key: Key = ECKey.generate_key("P-256", parameters={"kid": "k1", "alg": "ES256"})
        self.jwks: dict[str, Any] = {"keys": [self.key.as_dict(private=False)]}
        self.metadata_overrides: dict[str, Any] = {}
        self.token_status = 200
        self.token_body: Any = {}
        self.delay = 0.0
        self.hits: dict[str, int] = {}
        self.hosts: set[str] = set()  # the Host headers received
        self.token_requests: list[tuple[dict[str, str], dict[str, str]]] = []
        self.issuer = ""
        self._runner: web.AppRunner | None = None

    # -- server -------------------------------------------------------------------------------

    async def start(self, tls: ssl.SSLContext | None = None) -> FakeProvider:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = self._runner.addresses[0][1]
        self.issuer = f"{'https' if tls else 'http'}://{self.host}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _hit(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        self.hosts.add(request.host)

    async def _discovery(self, request: web.Request) -> web.Response:
        self._hit(request)
        document = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize?tenant=city",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "end_session_endpoint": f"{self.issuer}/logout",
            "response_types_supported": ["code"],
            "id_token_signing_alg_values_supported": ["ES256", "RS256", "PS256", "EdDSA", "Ed25519"],
            "authorization_response_iss_parameter_supported": True,
            **self.metadata_overrides,
        }
        return web.json_response({k: v for k, v in document.items() if v is not DROP})

    async def _jwks(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.json_response(self.jwks)

    async def _token(self, request: web.Request) -> web.Response:
        self._hit(request)
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.token_requests.append((dict(request.headers), form))
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.token_body, bytes):
            return web.Response(
                status=self.token_status, body=self.token_body, content_type="application/json"
            )
        return web.json_response(self.token_body, status=self.token_status)

    # -- tokens -------------------------------------------------------------------------------

    def claims(self, login: LoginState, now: float, **changes: Any) -> dict[str, Any]:
        """Valid ID token claims for ``login``; ``changes`` replace them (``DROP`` removes)."""
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": "gateway",
            "sub": "u-1001",
            "iat": int(now),
            "exp": int(now) + 300,
            "auth_time": int(now) - 5,
            "nonce": login.nonce,
            "acr": ACR_PWD,
            "amr": ["pwd"],
            "sid": "sid-1",
            "preferred_username": "zhangwei",
            "name": "张伟",
            "groups": ["hr-staff"],
            "department_code": "hrss",
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not DROP}

    def sign(self, claims: Mapping[str, Any], *, key: Key | None = None, **header: Any) -> str:
        key = key or self.key
        protected = {"alg": alg_of(key), "kid": key.kid, "typ": "JWT", **header}
        return raw_sign({k: v for k, v in protected.items() if v is not DROP}, claims, key)

    def issue(self, id_token: str | None, *, access_token: str = "at-1", **extra: Any) -> None:  # noqa: S107
        """What the token endpoint answers next."""
        body = {"access_token": access_token, "token_type": "Bearer", "expires_in": 300, **extra}
        if id_token is not None:
            body["id_token"] = id_token
        self.token_status, self.token_body = 200, body

    def logout_claims(self, now: float, **changes: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": "gateway",
            "iat": int(now),
            "exp": int(now) + 120,
            "jti": "jti-1",
            "sub": "u-1001",
            "sid": "sid-1",
            "events": {EVENT: {}},
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not DROP}


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = await FakeProvider().start()
    yield fake
    await fake.stop()
    # Every request reached op.test by its name (the address map changes only the connection).
    assert fake.hosts <= {urlsplit(fake.issuer).netloc}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def rp(provider: FakeProvider, clock: Clock) -> AsyncIterator[OidcClient]:
    """The gateway's client of ``provider`` (its host name mapped to 127.0.0.1)."""
    client = OidcClient(
        issuer=provider.issuer,
        client_id="gateway",
        client_secret="s3cret/+:ü",
        address_map={provider.host: "127.0.0.1"},
        clock=clock,
        timeout=2.0,
    )
    yield client
    await client.close()


async def respond(rp: OidcClient, provider: FakeProvider, login: LoginState, **params: str) -> SignIn:
    """The callback of ``login`` with a code (``params`` replace the query's members)."""
    query = {"code": "code-1", "state": login.state, "iss": provider.issuer, **params}
    return await rp.finish(login, query)


async def sign_in_with(
    rp: OidcClient,
    provider: FakeProvider,
    clock: Clock,
    *,
    begin: Mapping[str, Any] | None = None,
    **changes: Any,
) -> SignIn:
    """A whole login against ``provider``, whose ID token has ``changes``."""
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/", **(begin or {}))
    provider.issue(provider.sign(provider.claims(login, clock.now, **changes)))
    return await respond(rp, provider, login)


# -- the real IdP ---------------------------------------------------------------------------------


@pytest.fixture
async def gateway_rp(oidc_idp: OidcIdp) -> AsyncIterator[OidcClient]:
    """The gateway's registration at the real IdP (``*.localhost`` -> 127.0.0.1 by default)."""
    client = OidcClient(
        issuer=oidc_idp.issuer, client_id=oidc_idp.client_id, client_secret=oidc_idp.client_secret
    )
    yield client
    await client.close()


async def real_sign_in(
    client: OidcClient, oidc_idp: OidcIdp, **begin: Any
) -> tuple[IdpBrowser, LoginState, dict[str, str]]:
    """Sign the module's user in at the real IdP: the browser (with its IdP session), the login
    state and the callback's query, not yet finished."""
    url, login = await client.begin(REDIRECT_URI, return_to="/payroll?month=5", **begin)
    browser = IdpBrowser()
    response = await asyncio.to_thread(browser.sign_in, url, oidc_idp.user, stop_at=REDIRECT_URI)
    return browser, login, callback_query(response, REDIRECT_URI)


async def test_discovery_of_the_real_idp(gateway_rp: OidcClient, oidc_idp: OidcIdp) -> None:
    metadata = await gateway_rp.metadata()
    issuer = oidc_idp.issuer
    assert metadata.issuer == issuer
    assert metadata.authorization_endpoint == f"{issuer}/authorize"
    assert metadata.token_endpoint == f"{issuer}/token"
    assert metadata.jwks_uri == f"{issuer}/jwks.json"
    assert metadata.end_session_endpoint == f"{issuer}/logout"
    assert metadata.authorization_response_iss_parameter_supported is True
    assert metadata.backchannel_logout_session_supported is True
    assert ACR_MFA in metadata.acr_values_supported
    assert await gateway_rp.metadata() is metadata  # cached


async def test_sign_in_through_the_real_idp(gateway_rp: OidcClient, oidc_idp: OidcIdp) -> None:
    url, login = await gateway_rp.begin(REDIRECT_URI, return_to="/payroll?month=5", ui_locales="zh-CN")
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{oidc_idp.issuer}/authorize?")
    assert query["response_type"] == ["code"] and query["client_id"] == [oidc_idp.client_id]
    assert query["redirect_uri"] == [REDIRECT_URI]
    assert query["scope"] == ["openid profile email groups department"]
    assert query["state"] == [login.state] and query["nonce"] == [login.nonce]
    assert query["code_challenge_method"] == ["S256"]
    assert query["code_challenge"] == [b64(hashlib.sha256(login.code_verifier.encode()).digest())]
    assert "code_verifier" not in query and "acr_values" not in query and "max_age" not in query
    for value in (login.state, login.nonce, login.code_verifier):  # 256 random bits each
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", value)
    assert len({login.state, login.nonce, login.code_verifier}) == 3

    browser = IdpBrowser()
    response = await asyncio.to_thread(browser.sign_in, url, oidc_idp.user, stop_at=REDIRECT_URI)
    params = callback_query(response, REDIRECT_URI)
    assert params["iss"] == oidc_idp.issuer and params["state"] == login.state
    signin = await gateway_rp.finish(LoginState.from_json(login.to_json()), params)

    user = oidc_idp.user
    assert signin.username == user.username and signin.name == "张伟"
    assert signin.groups == ("hr-staff",)
    assert signin.department == "hrss" and signin.departments == ("hrss", "city")
    assert signin.acr == ACR_PWD and signin.amr == ("pwd",)
    assert signin.sid and signin.sid == signin.claims["sid"]
    assert signin.sub == signin.claims["sub"] != user.username
    assert signin.auth_time is not None and abs(signin.auth_time - time.time()) < 30
    assert signin.claims["aud"] == oidc_idp.client_id and signin.claims["iss"] == oidc_idp.issuer
    assert decode_segment(signin.id_token, 1)["nonce"] == login.nonce
    assert login.return_to == "/payroll?month=5"
    assert signin.id_token not in repr(signin) and login.nonce not in repr(login)


async def test_a_replayed_code_is_refused(gateway_rp: OidcClient, oidc_idp: OidcIdp) -> None:
    _, login, params = await real_sign_in(gateway_rp, oidc_idp)
    first = await gateway_rp.finish(login, params)
    with pytest.raises(LoginError) as refused:
        await gateway_rp.finish(login, params)
    assert refused.value.code == oidc.TOKEN_REQUEST_FAILED
    assert "invalid_grant" in refused.value.description
    assert params["code"] not in str(refused.value)
    assert first.sid


async def test_a_response_for_another_state_is_refused_before_the_code_is_used(
    gateway_rp: OidcClient, oidc_idp: OidcIdp
) -> None:
    _, login, params = await real_sign_in(gateway_rp, oidc_idp)
    last = params["state"][-1]
    other_last = "A" if last != "A" else "B"  # one character off (the state is random)
    for state in (params["state"][:-1] + other_last, "", "状态"):
        with pytest.raises(LoginError) as refused:
            await gateway_rp.finish(login, {**params, "state": state})
        assert refused.value.code == oidc.INVALID_STATE
    without_state = {k: v for k, v in params.items() if k != "state"}
    with pytest.raises(LoginError, match=oidc.INVALID_STATE):
        await gateway_rp.finish(login, without_state)
    # The code was never sent: the right state still signs in with it.
    assert (await gateway_rp.finish(login, params)).username == oidc_idp.user.username


async def test_an_id_token_for_another_nonce_is_refused(gateway_rp: OidcClient, oidc_idp: OidcIdp) -> None:
    _, login, params = await real_sign_in(gateway_rp, oidc_idp)
    suffix = "xy" if not login.nonce.endswith("xy") else "yz"  # never the nonce itself
    other = dataclasses.replace(login, nonce=login.nonce[:-2] + suffix)
    with pytest.raises(LoginError) as refused:
        await gateway_rp.finish(other, params)
    assert refused.value.code == oidc.INVALID_ID_TOKEN and "nonce" in refused.value.description


async def test_a_tampered_id_token_from_the_real_idp_is_refused(
    gateway_rp: OidcClient, oidc_idp: OidcIdp
) -> None:
    _, login, params = await real_sign_in(gateway_rp, oidc_idp)
    signin = await gateway_rp.finish(login, params)
    header, payload, signature = signin.id_token.split(".")
    assert await gateway_rp.validate_id_token(signin.id_token, login) == signin.claims

    claims = decode_segment(signin.id_token, 1)
    other_user = segment({**claims, "preferred_username": "admin", "groups": ["sys-admins"]})
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    hs256 = raw_sign({"alg": "HS256", "kid": decode_segment(signin.id_token, 0)["kid"]}, claims, None)
    forged = {
        "payload changed": f"{header}.{other_user}.{signature}",
        "signature changed": f"{header}.{payload}.{flipped}",
        "no signature": f"{header}.{payload}.",
        "alg none": f"{segment({'alg': 'none'})}.{payload}.",
        "HS256 without a key": hs256,
        "two parts": f"{header}.{payload}",
    }
    for what, token in forged.items():
        with pytest.raises(LoginError) as refused:
            await gateway_rp.validate_id_token(token, login)
        assert refused.value.code == oidc.INVALID_ID_TOKEN, what


async def test_a_provider_naming_another_issuer_is_refused_at_discovery(oidc_idp: OidcIdp) -> None:
    # The IdP answers on 127.0.0.1 too, but its issuer is http://idp.localhost:<port>.
    direct = OidcClient(
        issuer=f"http://127.0.0.1:{oidc_idp.server.port}",
        client_id=oidc_idp.client_id,
        client_secret=oidc_idp.client_secret,
    )
    try:
        with pytest.raises(LoginError) as refused:
            await direct.metadata()
        assert refused.value.code == oidc.ISSUER_MISMATCH
        with pytest.raises(LoginError, match=oidc.ISSUER_MISMATCH):
            await direct.begin(REDIRECT_URI, return_to="/")
    finally:
        await direct.close()


async def test_a_refused_consent_comes_back_as_access_denied(oidc_idp: OidcIdp) -> None:
    client = OidcClient(
        issuer=oidc_idp.issuer, client_id=oidc_idp.third_party_id, client_secret=oidc_idp.third_party_secret
    )
    try:
        url, login = await client.begin(THIRD_PARTY_REDIRECT_URI, return_to="/")
        browser = IdpBrowser()
        page = await asyncio.to_thread(browser.sign_in, url, oidc_idp.user, stop_at=THIRD_PARTY_REDIRECT_URI)
        assert urlsplit(page.url).path == "/consent"
        response = await asyncio.to_thread(
            browser.submit, "csrf_token", {}, button=("decision", "deny"), stop_at=THIRD_PARTY_REDIRECT_URI
        )
        params = callback_query(response, THIRD_PARTY_REDIRECT_URI)
        assert params["error"] == "access_denied" and params["iss"] == oidc_idp.issuer
        with pytest.raises(LoginError) as refused:
            await client.finish(login, params)
        assert refused.value.code == "access_denied"
        # RFC 9207: an error response from a mixed-up issuer is not believed.
        with pytest.raises(LoginError, match=oidc.ISSUER_MISMATCH):
            await client.finish(login, {**params, "iss": "https://evil.example"})
    finally:
        await client.close()


def _set_up_totp(browser: IdpBrowser, page: requests.Response) -> requests.Response:
    """At the IdP's "set up a second factor" page: add an authenticator app, enter its code and
    continue the sign-in; the redirect to the relying party."""
    assert urlsplit(page.url).path == "/mfa/setup", f"no second factor asked: {page.url}"
    link = re.search(r'href="(/mfa/setup/totp\?[^"]+)"', page.text)
    assert link is not None
    page = browser.open(urljoin(page.url, link.group(1).replace("&amp;", "&")), stop_at=REDIRECT_URI)
    secret = re.search(r'id="totp-secret"[^>]*>([^<]+)<', page.text)
    assert secret is not None
    code = pyotp.TOTP(secret.group(1).replace(" ", "")).now()
    page = browser.submit("code", {"code": code, "name": "手机"}, stop_at=REDIRECT_URI)
    resume = re.search(r'href="(/authorize/resume\?[^"]+)"', page.text)  # after the recovery codes
    assert resume is not None, page.text[:1500]
    return browser.open(urljoin(page.url, resume.group(1).replace("&amp;", "&")), stop_at=REDIRECT_URI)


async def test_step_up_to_a_second_factor_at_the_real_idp(gateway_rp: OidcClient, oidc_idp: OidcIdp) -> None:
    url, login = await gateway_rp.begin(REDIRECT_URI, return_to="/", acr_values=ACR_MFA, max_age=300)
    query = parse_qs(urlsplit(url).query)
    assert query["acr_values"] == [ACR_MFA] and query["max_age"] == ["300"]
    assert login.acr_values == ACR_MFA and login.max_age == 300

    browser = IdpBrowser()
    user = oidc_idp.stepped_up_user  # a password-only user: the IdP makes them add a factor
    page = await asyncio.to_thread(browser.sign_in, url, user, stop_at=REDIRECT_URI)
    response = await asyncio.to_thread(_set_up_totp, browser, page)
    signin = await gateway_rp.finish(login, callback_query(response, REDIRECT_URI))
    assert signin.acr == ACR_MFA and {"pwd", "otp", "mfa"} <= set(signin.amr)
    assert signin.username == user.username

    # The same ID token does not satisfy a request for a phishing-resistant sign-in.
    with pytest.raises(LoginError) as refused:
        await gateway_rp.validate_id_token(signin.id_token, dataclasses.replace(login, acr_values=ACR_PHR))
    assert refused.value.code == oidc.ACR_NOT_MET


async def test_an_old_sign_in_does_not_meet_max_age(oidc_idp: OidcIdp) -> None:
    # The gateway's clock runs two minutes ahead: the IdP's fresh sign-in is "120 s old".
    ahead = OidcClient(
        issuer=oidc_idp.issuer,
        client_id=oidc_idp.client_id,
        client_secret=oidc_idp.client_secret,
        clock=lambda: time.time() + 120,
        leeway=5,
    )
    try:
        _, login, params = await real_sign_in(ahead, oidc_idp, max_age=60)
        with pytest.raises(LoginError) as refused:
            await ahead.finish(login, params)
        assert refused.value.code == oidc.MAX_AGE_EXCEEDED
        _, login, params = await real_sign_in(ahead, oidc_idp, max_age=600)
        assert (await ahead.finish(login, params)).auth_time is not None
    finally:
        await ahead.close()


async def test_backchannel_logout_from_the_real_idp(gateway_rp: OidcClient, oidc_idp: OidcIdp) -> None:
    receiver = oidc_idp.receiver
    before = len(receiver.tokens())
    browser, login, params = await real_sign_in(gateway_rp, oidc_idp)
    signin = await gateway_rp.finish(login, params)

    url = await gateway_rp.end_session_url(
        id_token_hint=signin.id_token, post_logout_redirect_uri=POST_LOGOUT_URI, state="after-logout"
    )
    assert url is not None and url.startswith(f"{oidc_idp.issuer}/logout?")
    query = parse_qs(urlsplit(url).query)
    assert query["id_token_hint"] == [signin.id_token] and query["client_id"] == [oidc_idp.client_id]
    assert query["post_logout_redirect_uri"] == [POST_LOGOUT_URI] and query["state"] == ["after-logout"]
    response = await asyncio.to_thread(browser.open, url, stop_at=POST_LOGOUT_URI)
    assert callback_query(response, POST_LOGOUT_URI) == {"state": "after-logout"}

    tokens = await asyncio.to_thread(receiver.wait_for, before + 1)
    token = tokens[before]
    notice = await gateway_rp.validate_logout_token(token)
    assert notice.sid == signin.sid and notice.sub == signin.sub
    assert notice.iss == oidc_idp.issuer and notice.jti and abs(notice.iat - time.time()) < 30
    assert decode_segment(token, 0)["typ"] == "logout+jwt"

    # Forgeries made of the real tokens: the signature no longer holds, or the token is the
    # wrong kind (an ID token is no logout token, and a logout token no ID token).
    header, _, signature = token.split(".")
    claims = decode_segment(token, 1)
    for changed in ({**claims, "sid": "another-session"}, {k: v for k, v in claims.items() if k != "events"}):
        with pytest.raises(LoginError, match=oidc.INVALID_LOGOUT_TOKEN):
            await gateway_rp.validate_logout_token(f"{header}.{segment(changed)}.{signature}")
    with pytest.raises(LoginError, match=oidc.INVALID_LOGOUT_TOKEN):
        await gateway_rp.validate_logout_token(signin.id_token)
    with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
        await gateway_rp.validate_id_token(token, login)


# -- the authorization request --------------------------------------------------------------------


async def test_the_authorization_url_keeps_the_endpoint_query(rp: OidcClient, provider: FakeProvider) -> None:
    url, login = await rp.begin(
        "https://hr.city.gov.cn/.onegate/callback",
        return_to="/",
        acr_values=f"{ACR_MFA} {ACR_PHR}",
        max_age=0,
        prompt="login consent",
        ui_locales="en zh-CN",
    )
    assert url.startswith(f"{provider.issuer}/authorize?tenant=city&response_type=code&")
    query = parse_qs(urlsplit(url).query)
    assert query["acr_values"] == [f"{ACR_MFA} {ACR_PHR}"] and query["max_age"] == ["0"]
    assert query["prompt"] == ["login consent"] and query["ui_locales"] == ["en zh-CN"]
    assert login.max_age == 0 and login.acr_values == f"{ACR_MFA} {ACR_PHR}"
    second_url, second = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    assert {second.state, second.nonce, second.code_verifier}.isdisjoint(
        {login.state, login.nonce, login.code_verifier}
    )
    assert "acr_values" not in second_url


@pytest.mark.parametrize(
    "arguments",
    [
        {"redirect_uri": "/relative/callback"},
        {"redirect_uri": "https://hr.city.gov.cn/cb#fragment"},
        {"redirect_uri": "javascript:alert(1)"},
        {"max_age": -1},
        {"prompt": "none login"},
        {"prompt": "sometimes"},
        {"acr_values": "  "},
        {"acr_values": "urn:x\nurn:y"},
        {"ui_locales": "zh-CN\r\nSet-Cookie: x"},
    ],
)
async def test_begin_refuses_what_it_cannot_send(rp: OidcClient, arguments: dict[str, Any]) -> None:
    redirect_uri = arguments.pop("redirect_uri", "https://hr.city.gov.cn/.onegate/callback")
    with pytest.raises(LoginError) as refused:
        await rp.begin(redirect_uri, return_to="/", **arguments)
    assert refused.value.code == oidc.INVALID_REQUEST


def test_login_state_survives_json_and_refuses_garbage() -> None:
    login = LoginState(
        state="s",
        nonce="n",
        code_verifier="v",
        redirect_uri="https://hr.city.gov.cn/.onegate/callback",
        return_to="/审批?x=1",
        created_at=1_700_000_000.5,
        acr_values=ACR_MFA,
        max_age=300,
    )
    assert LoginState.from_json(login.to_json()) == login
    for raw in (
        b"",
        b"not json",
        b"[]",
        b'{"state": "s"}',
        login.to_json().replace(b'"max_age":300', b'"max_age":"x"'),
    ):
        with pytest.raises(LoginError) as refused:
            LoginState.from_json(raw)
        assert refused.value.code == oidc.INVALID_STATE


# -- the authorization response and the token request -------------------------------------------


async def test_a_login_older_than_ten_minutes_is_refused(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    clock.advance(oidc.LOGIN_TTL + 1)
    provider.issue(provider.sign(provider.claims(login, clock.now)))
    with pytest.raises(LoginError) as refused:
        await respond(rp, provider, login)
    assert refused.value.code == oidc.EXPIRED_LOGIN
    assert "/token" not in provider.hits


async def test_rfc9207_iss_is_required_when_announced(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    provider.issue(provider.sign(provider.claims(login, clock.now)))
    missing = {"code": "code-1", "state": login.state}
    with pytest.raises(LoginError, match=oidc.ISSUER_MISMATCH):
        await rp.finish(login, missing)
    with pytest.raises(LoginError, match=oidc.ISSUER_MISMATCH):
        await respond(rp, provider, login, iss=provider.issuer + "/")
    assert "/token" not in provider.hits
    assert (await respond(rp, provider, login)).username == "zhangwei"


async def test_without_rfc9207_support_a_response_may_lack_iss(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    provider.metadata_overrides["authorization_response_iss_parameter_supported"] = DROP
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    provider.issue(provider.sign(provider.claims(login, clock.now)))
    assert (await rp.finish(login, {"code": "code-1", "state": login.state})).sub == "u-1001"


async def test_an_error_response_becomes_a_login_error(rp: OidcClient, provider: FakeProvider) -> None:
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    long_text = "The user said no.\n<script>" + "x" * 500
    with pytest.raises(LoginError) as refused:
        await rp.finish(
            login,
            {
                "error": "access_denied",
                "error_description": long_text,
                "state": login.state,
                "iss": provider.issuer,
            },
        )
    assert refused.value.code == "access_denied"
    assert refused.value.description.startswith("The user said no.<script>")
    assert len(refused.value.description) <= 200 and "\n" not in refused.value.description
    with pytest.raises(LoginError) as malformed:
        await respond(rp, provider, login, error="<b>bad</b>")
    assert malformed.value.code == oidc.INVALID_AUTHORIZATION_RESPONSE
    with pytest.raises(LoginError, match=oidc.INVALID_AUTHORIZATION_RESPONSE):
        await rp.finish(login, {"state": login.state, "iss": provider.issuer})  # no code


async def test_the_token_request_of_a_confidential_client(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    url, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    provider.issue(provider.sign(provider.claims(login, clock.now)))
    await respond(rp, provider, login)
    [(headers, form)] = provider.token_requests
    scheme, _, credentials = headers["Authorization"].partition(" ")
    client_id, _, secret = base64.b64decode(credentials).decode().partition(":")
    assert scheme == "Basic" and unquote(client_id) == "gateway" and unquote(secret) == "s3cret/+:ü"
    assert secret != "s3cret/+:ü"  # RFC 6749 §2.3.1: form-urlencoded first
    assert form == {
        "grant_type": "authorization_code",
        "code": "code-1",
        "redirect_uri": "https://hr.city.gov.cn/.onegate/callback",
        "code_verifier": login.code_verifier,
    }
    challenge = parse_qs(urlsplit(url).query)["code_challenge"][0]
    assert challenge == b64(hashlib.sha256(form["code_verifier"].encode()).digest())  # RFC 7636 §4.6


async def test_the_token_request_of_a_public_client_and_of_client_secret_post(
    provider: FakeProvider, clock: Clock
) -> None:
    public = OidcClient(
        issuer=provider.issuer,
        client_id="spa",
        client_secret=None,
        address_map={provider.host: "127.0.0.1"},
        clock=clock,
    )
    provider.metadata_overrides["token_endpoint_auth_methods_supported"] = ["client_secret_post", "none"]
    posting = OidcClient(
        issuer=provider.issuer,
        client_id="gateway",
        client_secret="pw",
        address_map={provider.host: "127.0.0.1"},
        clock=clock,
    )
    try:
        for client in (public, posting):
            _, login = await client.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
            aud = "spa" if client is public else "gateway"
            provider.issue(provider.sign(provider.claims(login, clock.now, aud=aud)))
            await respond(client, provider, login)
    finally:
        await public.close()
        await posting.close()
    (public_headers, public_form), (post_headers, post_form) = provider.token_requests
    assert "Authorization" not in public_headers and public_form["client_id"] == "spa"
    assert "client_secret" not in public_form and public_form["code_verifier"]
    assert "Authorization" not in post_headers
    assert post_form["client_id"] == "gateway" and post_form["client_secret"] == "pw"


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (400, {"error": "invalid_grant"}, oidc.TOKEN_REQUEST_FAILED),
        (401, {"error": "invalid_client"}, oidc.TOKEN_REQUEST_FAILED),
        (400, b"<html>bad</html>", oidc.INVALID_TOKEN_RESPONSE),
        (302, {}, oidc.INVALID_TOKEN_RESPONSE),
        (500, {"error": "server_error"}, oidc.PROVIDER_UNAVAILABLE),
        (503, b"", oidc.PROVIDER_UNAVAILABLE),
        (200, b"not json", oidc.INVALID_TOKEN_RESPONSE),
        (200, b"[]", oidc.INVALID_TOKEN_RESPONSE),
        (200, {"access_token": "at", "token_type": "Bearer"}, oidc.INVALID_TOKEN_RESPONSE),
        (200, {"access_token": "at", "token_type": "mac", "id_token": "x.y.z"}, oidc.INVALID_TOKEN_RESPONSE),
        (200, {"token_type": "Bearer", "id_token": "x.y.z"}, oidc.INVALID_TOKEN_RESPONSE),
        (200, b'{"padding": "' + b"x" * 70_000 + b'"}', oidc.INVALID_TOKEN_RESPONSE),
        (200, {"access_token": "at", "token_type": "bearer", "id_token": "x.y.z"}, oidc.INVALID_ID_TOKEN),
    ],
)
async def test_bad_token_responses(
    rp: OidcClient, provider: FakeProvider, status: int, body: Any, code: str
) -> None:
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    provider.token_status, provider.token_body = status, body
    with pytest.raises(LoginError) as refused:
        await respond(rp, provider, login)
    assert refused.value.code == code
    assert "s3cret" not in str(refused.value) and "code-1" not in str(refused.value)


async def test_a_slow_or_absent_provider_is_unavailable(provider: FakeProvider, clock: Clock) -> None:
    client = OidcClient(
        issuer=provider.issuer,
        client_id="gateway",
        client_secret="pw",
        address_map={provider.host: "127.0.0.1"},
        clock=clock,
        timeout=0.3,
    )
    try:
        _, login = await client.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
        provider.issue(provider.sign(provider.claims(login, clock.now)))
        provider.delay = 1.0
        started = time.monotonic()
        with pytest.raises(LoginError, match=oidc.PROVIDER_UNAVAILABLE):
            await respond(client, provider, login)
        assert time.monotonic() - started < 0.9
    finally:
        await client.close()
    await provider.stop()
    gone = OidcClient(
        issuer=provider.issuer,
        client_id="gateway",
        client_secret="pw",
        address_map={provider.host: "127.0.0.1"},
    )
    try:
        with pytest.raises(LoginError, match=oidc.PROVIDER_UNAVAILABLE):
            await gone.metadata()
    finally:
        await gone.close()


# -- discovery ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"issuer": "http://op.test"}, oidc.ISSUER_MISMATCH),
        ({"issuer": DROP}, oidc.ISSUER_MISMATCH),
        ({"jwks_uri": DROP}, oidc.INVALID_PROVIDER_METADATA),
        ({"token_endpoint": "javascript:alert(1)"}, oidc.INVALID_PROVIDER_METADATA),
        ({"authorization_endpoint": "/authorize"}, oidc.INVALID_PROVIDER_METADATA),
        ({"token_endpoint": "https://user:pw@op.test/token"}, oidc.INVALID_PROVIDER_METADATA),
        ({"response_types_supported": ["id_token"]}, oidc.INVALID_PROVIDER_METADATA),
    ],
)
async def test_unacceptable_discovery_documents(
    rp: OidcClient, provider: FakeProvider, changes: dict[str, Any], code: str
) -> None:
    provider.metadata_overrides.update(changes)
    with pytest.raises(LoginError) as refused:
        await rp.metadata()
    assert refused.value.code == code


def test_https_issuers_need_https_endpoints() -> None:
    # An https issuer behind a TLS-less test server: the document is refused before any TLS.
    from gateway.oidc import _parse_metadata

    document = {
        "issuer": "https://idp.city.gov.cn",
        "authorization_endpoint": "https://idp.city.gov.cn/authorize",
        "token_endpoint": "http://idp.city.gov.cn/token",
        "jwks_uri": "https://idp.city.gov.cn/jwks",
    }
    with pytest.raises(LoginError, match=oidc.INVALID_PROVIDER_METADATA):
        _parse_metadata(document, "https://idp.city.gov.cn")
    document["token_endpoint"] = "https://idp.city.gov.cn/token"
    assert _parse_metadata(document, "https://idp.city.gov.cn").token_endpoint == document["token_endpoint"]


async def test_metadata_is_cached_for_an_hour_and_kept_through_an_outage(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    first = await rp.metadata()
    await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    assert provider.hits["/.well-known/openid-configuration"] == 1
    clock.advance(oidc.METADATA_TTL + 1)
    provider.metadata_overrides["end_session_endpoint"] = DROP
    second = await rp.metadata()
    assert provider.hits["/.well-known/openid-configuration"] == 2
    assert first.end_session_endpoint is not None and second.end_session_endpoint is None
    assert await rp.end_session_url(id_token_hint="x", post_logout_redirect_uri=None) is None
    clock.advance(oidc.METADATA_TTL + 1)
    await provider.stop()
    assert await rp.metadata() is second  # the provider is down: the last good metadata stays


# -- ID token validation --------------------------------------------------------------------------


async def test_the_sign_in_from_a_provider_of_another_kind(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    signin = await sign_in_with(
        rp,
        provider,
        clock,
        department_code=DROP,
        departments=["approval", "city"],
        name=DROP,
        groups=DROP,
        amr=["pwd", "otp"],
    )
    assert signin.username == "zhangwei" and signin.name == "zhangwei"
    assert signin.groups == () and signin.department is None and signin.departments == ("approval", "city")
    assert signin.amr == ("pwd", "otp") and signin.sid == "sid-1"
    bare = await sign_in_with(
        rp, provider, clock, preferred_username=DROP, name=DROP, sid=DROP, acr=DROP, amr=DROP, auth_time=DROP
    )
    assert bare.username == bare.sub == bare.name == "u-1001"
    assert bare.sid is None and bare.acr is None and bare.amr == () and bare.auth_time is None
    assert bare.departments == ("hrss",)


@pytest.mark.parametrize(
    ("asked", "got", "accepted"),
    [
        (ACR_MFA, ACR_PWD, False),
        (ACR_MFA, DROP, False),
        (ACR_MFA, ACR_MFA, True),
        (ACR_MFA, ACR_PHR, True),
        (ACR_PHR, ACR_MFA, False),
        (f"{ACR_PHR} {ACR_MFA}", ACR_MFA, True),
        ("urn:example:gold", "urn:example:silver", False),
        ("urn:example:gold", "urn:example:gold", True),
        (f"urn:example:gold {ACR_MFA}", "urn:example:gold", True),
        (ACR_MFA, "urn:example:gold", False),
        (ACR_PWD, "urn:example:gold", False),
    ],
)
async def test_acr_must_meet_acr_values(
    rp: OidcClient, provider: FakeProvider, clock: Clock, *, asked: str, got: Any, accepted: bool
) -> None:
    if accepted:
        signin = await sign_in_with(rp, provider, clock, begin={"acr_values": asked}, acr=got)
        assert signin.acr == got
    else:
        with pytest.raises(LoginError) as refused:
            await sign_in_with(rp, provider, clock, begin={"acr_values": asked}, acr=got)
        assert refused.value.code == oidc.ACR_NOT_MET


@pytest.mark.parametrize(
    ("max_age", "auth_age", "accepted"),
    [(300, 200, True), (300, 400, False), (0, 30, True), (0, 90, False), (300, None, False)],
)
async def test_auth_time_must_meet_max_age(
    rp: OidcClient,
    provider: FakeProvider,
    clock: Clock,
    *,
    max_age: int,
    auth_age: int | None,
    accepted: bool,
) -> None:
    auth_time = DROP if auth_age is None else int(clock.now) - auth_age
    if accepted:
        signin = await sign_in_with(rp, provider, clock, begin={"max_age": max_age}, auth_time=auth_time)
        assert signin.auth_time == auth_time
    else:
        with pytest.raises(LoginError) as refused:
            await sign_in_with(rp, provider, clock, begin={"max_age": max_age}, auth_time=auth_time)
        assert refused.value.code == oidc.MAX_AGE_EXCEEDED


def _claim_cases(now: int) -> dict[str, dict[str, Any]]:
    return {
        "another issuer": {"iss": "http://op.test"},
        "no issuer": {"iss": DROP},
        "another audience": {"aud": "other-app"},
        "audiences without azp": {"aud": ["gateway", "other-app"]},
        "another azp": {"aud": ["gateway", "other-app"], "azp": "other-app"},
        "azp of a single audience": {"azp": "other-app"},
        "aud a number": {"aud": 7},
        "expired": {"exp": now - 120},
        "no exp": {"exp": DROP},
        "exp a string": {"exp": str(now + 300)},
        "exp a boolean": {"exp": True},
        "issued in the future": {"iat": now + 600},
        "issued long ago": {"iat": now - 3600, "exp": now + 300},
        "no iat": {"iat": DROP},
        "not yet valid": {"nbf": now + 600},
        "no nonce": {"nonce": DROP},
        "no sub": {"sub": DROP},
        "empty sub": {"sub": ""},
        "auth_time in the future": {"auth_time": now + 600},
        "a logout token": {"events": {EVENT: {}}},
        "groups not a list": {"groups": "hr-staff"},
        "a group not a string": {"groups": ["hr-staff", 7]},
        "a header in the username": {"preferred_username": "zhangwei\r\nX-OneGate-User: admin"},
        "a control character in the name": {"name": "张伟\x00"},
        "wrong at_hash": {"at_hash": at_hash("another-access-token")},
    }


@pytest.mark.parametrize("case", list(_claim_cases(0)))
async def test_id_token_claims_that_are_refused(
    rp: OidcClient, provider: FakeProvider, clock: Clock, case: str
) -> None:
    changes = _claim_cases(int(clock.now))[case]
    with pytest.raises(LoginError) as refused:
        await sign_in_with(rp, provider, clock, **changes)
    assert refused.value.code == oidc.INVALID_ID_TOKEN, refused.value.description


async def test_id_token_claims_within_the_rules(rp: OidcClient, provider: FakeProvider, clock: Clock) -> None:
    now = int(clock.now)
    accepted = [
        {"aud": ["gateway", "other-app"], "azp": "gateway"},
        {"aud": ["gateway"]},
        {"exp": now - 30, "iat": now - 300},  # within the leeway
        {"iat": now + 30},
        {"at_hash": at_hash("at-1")},
        {"nbf": now},
    ]
    for changes in accepted:
        assert (await sign_in_with(rp, provider, clock, **changes)).sub == "u-1001", changes


def _header_cases(provider: FakeProvider, attacker: Key) -> dict[str, tuple[dict[str, Any], Key | None, str]]:
    """Headers that must not pass: (header, the key that signs, why it is refused)."""
    public = attacker.as_dict(private=False)
    ours = provider.key
    return {
        "alg none": ({"alg": "none", "kid": "k1"}, None, "algorithm is not accepted"),
        "alg missing": ({"kid": "k1"}, ours, "algorithm is not accepted"),
        "alg HS256": ({"alg": "HS256", "kid": "k1"}, None, "algorithm is not accepted"),
        "key confusion ES384 on the ES256 key": (
            {"alg": "ES384", "kid": "k1"},
            ours,
            "ES384 is not its key's",
        ),
        "crit": ({"alg": "ES256", "kid": "k1", "crit": ["exp"]}, ours, "header has crit"),
        "embedded jwk": ({"alg": "ES256", "jwk": public}, attacker, "header has jwk"),
        "jwk with the right kid": ({"alg": "ES256", "kid": "k1", "jwk": public}, attacker, "header has jwk"),
        "jku": ({"alg": "ES256", "kid": "k1", "jku": "https://evil.example/jwks"}, ours, "header has jku"),
        "x5u": ({"alg": "ES256", "kid": "k1", "x5u": "https://evil.example/cert"}, ours, "header has x5u"),
        "unencoded payload": ({"alg": "ES256", "kid": "k1", "b64": False}, ours, "header has b64"),
        "another key with our kid": ({"alg": "ES256", "kid": "k1"}, attacker, "signature does not verify"),
        "an unknown kid": ({"alg": "ES256", "kid": "k-unknown"}, attacker, "no key of the provider"),
        "a logout token type": ({"alg": "ES256", "kid": "k1", "typ": "logout+jwt"}, ours, "wrong type"),
        "an access token type": ({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}, ours, "wrong type"),
        "a kid that is no string": ({"alg": "ES256", "kid": 1}, ours, "kid is malformed"),
    }


@pytest.mark.parametrize("case", list(_header_cases(FakeProvider(), ECKey.generate_key("P-256"))))
async def test_forged_id_token_headers_are_refused(
    rp: OidcClient, provider: FakeProvider, clock: Clock, case: str
) -> None:
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = ["ES256", "ES384", "HS256"]
    attacker = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    header, key, reason = _header_cases(provider, attacker)[case]
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    # Signed over exactly this header with ES256 (so a verifier that took the key's algorithm
    # and ignored the header would accept the relabelled ES384 one).
    provider.issue(raw_sign(header, provider.claims(login, clock.now), key, sign_alg="ES256"))
    with pytest.raises(LoginError) as refused:
        await respond(rp, provider, login)
    assert refused.value.code == oidc.INVALID_ID_TOKEN
    assert reason in refused.value.description


async def test_hs256_signed_with_the_public_key_is_refused(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    # The classic key confusion: HMAC keyed with the provider's public key, which anyone has.
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    claims = provider.claims(login, clock.now)
    for secret in (json.dumps(provider.jwks["keys"][0]).encode(), provider.key.as_pem(private=False)):
        header = segment({"alg": "HS256", "kid": "k1", "typ": "JWT"})
        signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        provider.issue(f"{signing_input}.{b64(mac)}")
        with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
            await respond(rp, provider, login)
    # Even a symmetric key in the JWK Set is never trusted.
    provider.jwks["keys"].append({"kty": "oct", "kid": "shared", "k": b64(b"0" * 32)})
    signing_input = f"{segment({'alg': 'HS256', 'kid': 'shared'})}.{b64(json.dumps(claims).encode())}"
    provider.issue(
        f"{signing_input}.{b64(hmac.new(b'0' * 32, signing_input.encode(), hashlib.sha256).digest())}"
    )
    with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
        await respond(rp, provider, login)


def _weak_rsa_jwk(kid: str) -> tuple[dict[str, Any], Key]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    numbers = private.private_numbers()
    public = numbers.public_numbers

    def encode(value: int) -> str:
        return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    jwk = {"kty": "RSA", "kid": kid, "n": encode(public.n), "e": encode(public.e)}
    private_jwk = {
        **jwk,
        "d": encode(numbers.d),
        "p": encode(numbers.p),
        "q": encode(numbers.q),
        "dp": encode(numbers.dmp1),
        "dq": encode(numbers.dmq1),
        "qi": encode(numbers.iqmp),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # joserfc warns: the key is weak on purpose
        return jwk, RSAKey.import_key(private_jwk)


async def test_key_types_and_their_algorithms(rp: OidcClient, provider: FakeProvider, clock: Clock) -> None:
    rsa_key = RSAKey.generate_key(2048, parameters={"kid": "rsa"})  # no alg: RS* and PS* allowed
    pss_only = RSAKey.generate_key(2048, parameters={"kid": "pss", "alg": "PS256"})
    ed25519 = OKPKey.generate_key("Ed25519", parameters={"kid": "ed"})
    weak_jwk, weak = _weak_rsa_jwk("weak")
    private_jwk = ECKey.generate_key("P-256", parameters={"kid": "leaked"})
    provider.jwks["keys"] += [
        rsa_key.as_dict(private=False),
        pss_only.as_dict(private=False),
        ed25519.as_dict(private=False),
        weak_jwk,
        private_jwk.as_dict(private=True),  # a set that leaks a private key: that key is not used
        {**ECKey.generate_key("P-256").as_dict(private=False), "kid": "enc", "use": "enc"},
    ]
    accepted = [
        ("RS256", rsa_key),
        ("PS256", rsa_key),
        ("PS256", pss_only),
        ("EdDSA", ed25519),
        ("Ed25519", ed25519),
    ]
    for alg, key in accepted:
        _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
        provider.issue(provider.sign(provider.claims(login, clock.now), key=key, alg=alg))
        assert (await respond(rp, provider, login)).sub == "u-1001", alg
    refused = [("RS256", pss_only), ("RS256", weak), ("ES256", private_jwk)]
    for alg, key in refused:
        _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
        provider.issue(provider.sign(provider.claims(login, clock.now), key=key, alg=alg))
        with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
            await respond(rp, provider, login)
    assert provider.hits["/jwks"] == 1  # all from one fetch: unknown kids within a minute wait


async def test_every_algorithm_of_every_key_type(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    every = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = [
        *every,
        "EdDSA",
        "Ed25519",
        "Ed448",
    ]
    rsa_key = RSAKey.generate_key(2048, parameters={"kid": "rsa"})
    ec_keys = {crv: ECKey.generate_key(crv, parameters={"kid": crv}) for crv in ("P-256", "P-384", "P-521")}
    ed448 = OKPKey.generate_key("Ed448", parameters={"kid": "ed448"})
    provider.jwks["keys"] += [k.as_dict(private=False) for k in (rsa_key, *ec_keys.values(), ed448)]
    signers: list[tuple[str, Key]] = [(alg, rsa_key) for alg in every[:6]]
    signers += [("ES256", ec_keys["P-256"]), ("ES384", ec_keys["P-384"]), ("ES512", ec_keys["P-521"])]
    signers += [("EdDSA", ed448), ("Ed448", ed448)]
    for alg, key in signers:
        _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
        token = provider.sign(provider.claims(login, clock.now), key=key, alg=alg)
        provider.issue(token)
        assert (await respond(rp, provider, login)).sub == "u-1001", alg
        # A token of the same key with its signature changed in one bit is refused.
        _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
        token = provider.sign(provider.claims(login, clock.now), key=key, alg=alg)
        head, _, signature = token.rpartition(".")
        raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
        raw[len(raw) // 2] ^= 1
        provider.issue(f"{head}.{b64(bytes(raw))}")
        with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
            await respond(rp, provider, login)
    # A P-384 key does not sign ES512; an ECDSA signature in DER form (not R || S) is refused.
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    provider.issue(provider.sign(provider.claims(login, clock.now), key=ec_keys["P-384"], alg="ES512"))
    with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
        await respond(rp, provider, login)
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    head, _, signature = provider.sign(provider.claims(login, clock.now), key=ec_keys["P-256"]).rpartition(
        "."
    )
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    provider.issue(f"{head}.{b64(der)}")
    with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
        await respond(rp, provider, login)


@pytest.mark.parametrize(
    "change",
    [
        {"x": "AAAA"},  # a coordinate of the wrong length
        {"y": b64(b"\x00" * 31 + b"\x01")},  # a point that is not on the curve
        {"x": 12},  # not a string
        {"crv": "P-192"},  # a curve that is not accepted
        {"x": "not base64url!"},
    ],
)
async def test_a_malformed_ec_key_is_never_trusted(
    rp: OidcClient, provider: FakeProvider, clock: Clock, change: dict[str, Any]
) -> None:
    provider.jwks["keys"] = [{**provider.key.as_dict(private=False), **change}]
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    provider.issue(provider.sign(provider.claims(login, clock.now)))
    with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
        await respond(rp, provider, login)


async def test_an_algorithm_the_provider_did_not_announce_is_refused(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = ["RS256"]
    with pytest.raises(LoginError) as refused:
        await sign_in_with(rp, provider, clock)
    assert refused.value.code == oidc.INVALID_ID_TOKEN and "announced" in refused.value.description


async def test_a_token_without_kid_needs_an_unambiguous_key(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    provider.issue(provider.sign(provider.claims(login, clock.now), kid=DROP))
    assert (await respond(rp, provider, login)).sub == "u-1001"  # one key: that one
    provider.jwks["keys"].append(ECKey.generate_key("P-256", parameters={"kid": "k2"}).as_dict(private=False))
    clock.advance(oidc.METADATA_TTL + 1)  # the JWK Set is read again
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    provider.issue(provider.sign(provider.claims(login, clock.now), kid=DROP))
    with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
        await respond(rp, provider, login)  # two ES256 keys: which one is not ours to guess
    assert provider.hits["/jwks"] == 2
    assert (await sign_in_with(rp, provider, clock)).sub == "u-1001"  # with its kid it is fine


async def test_a_rotated_key_is_fetched_at_most_once_a_minute(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    assert (await sign_in_with(rp, provider, clock)).sub == "u-1001"
    assert provider.hits["/jwks"] == 1
    rotated = ECKey.generate_key("P-256", parameters={"kid": "k2", "alg": "ES256"})
    provider.jwks = {"keys": [rotated.as_dict(private=False)]}
    for _ in range(3):  # the new kid within the minute: no refetch, refused
        _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
        provider.issue(provider.sign(provider.claims(login, clock.now), key=rotated))
        with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
            await respond(rp, provider, login)
    assert provider.hits["/jwks"] == 1
    clock.advance(oidc.JWKS_REFETCH_INTERVAL + 1)
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    provider.issue(provider.sign(provider.claims(login, clock.now), key=rotated))
    assert (await respond(rp, provider, login)).sub == "u-1001"
    assert provider.hits["/jwks"] == 2
    # The retired key is gone with the refetch.
    _, login = await rp.begin("https://hr.city.gov.cn/.onegate/callback", return_to="/")
    provider.issue(provider.sign(provider.claims(login, clock.now)))
    with pytest.raises(LoginError, match=oidc.INVALID_ID_TOKEN):
        await respond(rp, provider, login)
    assert provider.hits["/jwks"] == 2


# -- back-channel logout tokens -------------------------------------------------------------------


async def test_a_valid_logout_token(rp: OidcClient, provider: FakeProvider, clock: Clock) -> None:
    header = {"typ": "logout+jwt"}
    notice = await rp.validate_logout_token(provider.sign(provider.logout_claims(clock.now), **header))
    assert (notice.sub, notice.sid, notice.jti, notice.iss) == ("u-1001", "sid-1", "jti-1", provider.issuer)
    assert notice.iat == int(clock.now)
    only_sub = provider.logout_claims(clock.now, sid=DROP, exp=DROP, events={EVENT: {"reason": "x"}})
    notice = await rp.validate_logout_token(provider.sign(only_sub, typ=DROP))
    assert notice.sub == "u-1001" and notice.sid is None
    only_sid = provider.logout_claims(clock.now, sub=DROP)
    assert (
        await rp.validate_logout_token(provider.sign(only_sid, typ="application/logout+jwt"))
    ).sid == "sid-1"


def _logout_cases(now: int) -> dict[str, dict[str, Any]]:
    return {
        "no events": {"events": DROP},
        "another event": {"events": {"http://schemas.openid.net/event/other": {}}},
        "event value not an object": {"events": {EVENT: "yes"}},
        "events a list": {"events": [EVENT]},
        "a nonce": {"nonce": "n-1"},
        "another audience": {"aud": "other-app"},
        "another issuer": {"iss": "http://op.test"},
        "neither sub nor sid": {"sub": DROP, "sid": DROP},
        "no jti": {"jti": DROP},
        "jti a number": {"jti": 7},
        "no iat": {"iat": DROP},
        "issued in the future": {"iat": now + 600},
        "issued long ago": {"iat": now - 3600, "exp": DROP},
        "expired": {"exp": now - 120},
    }


@pytest.mark.parametrize("case", list(_logout_cases(0)))
async def test_forged_logout_tokens_are_refused(
    rp: OidcClient, provider: FakeProvider, clock: Clock, case: str
) -> None:
    claims = provider.logout_claims(clock.now, **_logout_cases(int(clock.now))[case])
    with pytest.raises(LoginError) as refused:
        await rp.validate_logout_token(provider.sign(claims, typ="logout+jwt"))
    assert refused.value.code == oidc.INVALID_LOGOUT_TOKEN, refused.value.description


async def test_logout_tokens_with_a_bad_signature_or_header_are_refused(
    rp: OidcClient, provider: FakeProvider, clock: Clock
) -> None:
    claims = provider.logout_claims(clock.now)
    attacker = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    good = provider.sign(claims, typ="logout+jwt")
    header, _, signature = good.split(".")
    forged = {
        "signed by another key": provider.sign(claims, key=attacker, typ="logout+jwt"),
        "payload changed": f"{header}.{segment({**claims, 'sid': 'sid-2'})}.{signature}",
        "typ of an ID token": provider.sign(claims, typ="JWT"),
        "alg none": raw_sign({"alg": "none", "typ": "logout+jwt"}, claims, None),
        "embedded jwk": raw_sign(
            {"alg": "ES256", "typ": "logout+jwt", "jwk": attacker.as_dict(private=False)}, claims, attacker
        ),
        "not a JWT": "logout",
        "too large": provider.sign({**claims, "padding": "x" * 20_000}, typ="logout+jwt"),
    }
    for what, token in forged.items():
        with pytest.raises(LoginError) as refused:
            await rp.validate_logout_token(token)
        assert refused.value.code == oidc.INVALID_LOGOUT_TOKEN, what
    assert (await rp.validate_logout_token(good)).sid == "sid-1"


# -- logout URL and connections ----------------------------------------------------------------


async def test_the_end_session_url(rp: OidcClient, provider: FakeProvider) -> None:
    url = await rp.end_session_url(
        id_token_hint="a.b.c", post_logout_redirect_uri="https://hr.city.gov.cn/bye"
    )
    assert url is not None and url.startswith(f"{provider.issuer}/logout?")
    assert dict(parse_qsl(urlsplit(url).query)) == {
        "id_token_hint": "a.b.c",
        "client_id": "gateway",
        "post_logout_redirect_uri": "https://hr.city.gov.cn/bye",
    }
    bare = await rp.end_session_url(id_token_hint=None, post_logout_redirect_uri=None, state="s 1")
    assert bare is not None and dict(parse_qsl(urlsplit(bare).query)) == {
        "client_id": "gateway",
        "state": "s 1",
    }


async def test_the_address_map_keeps_the_host_name(provider: FakeProvider) -> None:
    # The provider fixture checks that every request's Host header is op.test:<port>.
    unmapped = OidcClient(issuer=provider.issuer, client_id="gateway", client_secret="pw", address_map={})
    try:
        with pytest.raises(LoginError, match=oidc.PROVIDER_UNAVAILABLE):  # op.test is not in DNS
            await unmapped.metadata()
    finally:
        await unmapped.close()
    mapped = OidcClient(
        issuer=provider.issuer, client_id="gateway", client_secret="pw", address_map={"OP.TEST": "127.0.0.1"}
    )
    try:
        assert (await mapped.metadata()).issuer == provider.issuer
    finally:
        await mapped.close()
    assert provider.hits["/.well-known/openid-configuration"] == 1
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        OidcClient(
            issuer=provider.issuer, client_id="gateway", client_secret="pw", address_map={"op.test": "x"}
        )
    with pytest.raises(ValueError, match="issuer"):
        OidcClient(issuer="idp.city.gov.cn", client_id="gateway", client_secret="pw")


# -- the provider's transport -------------------------------------------------------------------


async def test_a_tls_provider_is_trusted_by_its_certificate_and_name(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, names=("op.test",))
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    provider = await FakeProvider().start(tls=served)
    trusted = ssl.create_default_context(cafile=str(cert))

    async def discover(**options: Any) -> str:
        client = OidcClient(
            issuer=provider.issuer, client_id="gateway", client_secret="pw", timeout=2, **options
        )
        try:
            return (await client.metadata()).issuer
        finally:
            await client.close()

    try:
        assert provider.issuer.startswith("https://op.test:")
        assert await discover(address_map={"op.test": "127.0.0.1"}, ssl_context=trusted) == provider.issuer
        assert provider.hosts == {urlsplit(provider.issuer).netloc}  # the name, not the address
        # The system's authorities do not know the certificate; a certificate for another name
        # is refused even when its authority is trusted.
        with pytest.raises(LoginError, match=oidc.PROVIDER_UNAVAILABLE):
            await discover(address_map={"op.test": "127.0.0.1"})
        other = provider.issuer.replace("op.test", "other.test")
        with pytest.raises(LoginError, match=oidc.PROVIDER_UNAVAILABLE):
            await OidcClient(
                issuer=other,
                client_id="gateway",
                client_secret="pw",
                address_map={"other.test": "127.0.0.1"},
                ssl_context=trusted,
            ).metadata()
        assert provider.hits["/.well-known/openid-configuration"] == 1
    finally:
        await provider.stop()


class RawProvider:
    """Answers every connection with one discovery document in a framing of the test's choice."""

    def __init__(self, framing: str) -> None:
        self.framing = framing
        self.issuer = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> RawProvider:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.issuer = f"http://op.test:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        document = json.dumps(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
            }
        ).encode()
        ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if self.framing == "chunked":
            half = len(document) // 2
            parts = [document[:half], document[half:]]
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
            writer.write(ok + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        elif self.framing == "until-close":
            writer.write(ok + b"Connection: close\r\n\r\n" + document)
        elif self.framing == "cut":
            writer.write(ok + b"Content-Length: %d\r\n\r\n" % (len(document) + 10) + document)
        elif self.framing == "huge-chunked":
            block = b" " * 65536
            writer.write(ok + b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(64):  # 4 MiB of white space, more than a discovery document may be
                writer.write(b"%x\r\n%s\r\n" % (len(block), block))
                await writer.drain()
        elif self.framing == "huge-announced":
            writer.write(ok + b"Content-Length: 99999999\r\n\r\n{")
        else:
            writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.mark.parametrize(
    ("framing", "code"),
    [
        ("chunked", None),
        ("until-close", None),
        ("cut", oidc.PROVIDER_UNAVAILABLE),
        ("huge-chunked", oidc.INVALID_PROVIDER_METADATA),
        ("huge-announced", oidc.INVALID_PROVIDER_METADATA),
        ("not-http", oidc.PROVIDER_UNAVAILABLE),
    ],
)
async def test_every_response_framing_is_read_within_bounds(framing: str, code: str | None) -> None:
    provider = await RawProvider(framing).start()
    client = OidcClient(
        issuer=provider.issuer, client_id="gateway", client_secret="pw", address_map={"op.test": "127.0.0.1"}
    )
    try:
        if code is None:
            assert (await client.metadata()).issuer == provider.issuer
        else:
            with pytest.raises(LoginError, match=code):
                await client.metadata()
    finally:
        await client.close()
        await provider.stop()
