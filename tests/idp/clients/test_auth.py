"""authenticate_client: every method, with real keys and signed assertions, and the attacks on each."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwt as joserfc_jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.db import create_engine, migrate, session_factory
from core.kv import KV, MemoryKV, RedisKV
from idp.clients import (
    JWT_BEARER,
    AuthenticatedClient,
    AuthFailureReason,
    AuthMethod,
    ClientAuthFailure,
    ClientRegistry,
    RemoteJwks,
    authenticate_client,
)
from keyvault import Envelope, MasterKey, MasterKeyring, SecretStore
from keyvault.jws import ES256, RS256
from onegate.runtime import MIGRATIONS

ISSUER = "https://idp.example.gov.cn"
TOKEN_URL = f"{ISSUER}/token"
PAR_URL = f"{ISSUER}/par"
REDIRECT = "https://oa.example.gov.cn/cb"
NOW = 1_800_000_000.0

R = AuthFailureReason


# -- signing, written here independently of the code under test ------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: dict[str, Any], claims: dict[str, Any], key: Any = None, *, hmac_key: bytes = b"") -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    data = signing_input.encode()
    alg = header.get("alg")
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "RS256":
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "PS256":
        signature = key.sign(
            data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
        )
    elif alg == "HS256":
        signature = hmac.new(hmac_key, data, hashlib.sha256).digest()
    else:
        signature = b""
    return f"{signing_input}.{b64(signature)}"


def claims(client_id: str = "approvals", **changes: Any) -> dict[str, Any]:
    base = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": int(NOW) + 60,
        "iat": int(NOW),
        "jti": os.urandom(12).hex(),
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


class Keys:
    def __init__(self) -> None:
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pss_only = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.stranger = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {**ES256().jwk_members(self.ec.public_key()), "kid": "ec-1", "use": "sig"},
                {**RS256().jwk_members(self.rsa.public_key()), "kid": "rsa-1"},
                {**RS256().jwk_members(self.pss_only.public_key()), "kid": "pss-1", "alg": "PS256"},
            ]
        }


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
async def registry(tmp_path: Path, keys: Keys) -> AsyncIterator[ClientRegistry]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'onegate.db'}")
    await migrate(engine, MIGRATIONS)
    master = MasterKey(os.urandom(32))
    store = SecretStore(tmp_path / "secrets", Envelope(MasterKeyring([master], master.key_id)))
    yield ClientRegistry(session_factory(engine), store)
    await engine.dispose()


@pytest.fixture(params=["memory", "redis"])
async def kv(request: pytest.FixtureRequest) -> AsyncIterator[KV]:
    if request.param == "memory":
        store: KV = MemoryKV()
    else:
        store = RedisKV(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    yield store
    await store.close()


class Clients:
    basic_secret: str
    post_secret: str


@pytest.fixture
async def clients(registry: ClientRegistry, keys: Keys) -> Clients:
    out = Clients()
    _, basic = await registry.add(client_id="oa-app", name="协同办公系统", redirect_uris=[REDIRECT])
    _, post = await registry.add(
        client_id="hr-app",
        name="人事系统",
        redirect_uris=[REDIRECT],
        token_endpoint_auth_method="client_secret_post",
    )
    assert basic and post
    out.basic_secret, out.post_secret = basic, post
    await registry.add(
        client_id="approvals",
        name="审批系统",
        token_endpoint_auth_method="private_key_jwt",
        redirect_uris=[REDIRECT],
        jwks=keys.jwks(),
    )
    await registry.add(client_id="mobile", name="掌上办公", client_type="public", redirect_uris=[REDIRECT])
    return out


async def auth(
    registry: ClientRegistry,
    kv: KV,
    form: Any = (),
    headers: Any = None,
    **options: Any,
) -> AuthenticatedClient | ClientAuthFailure:
    return await authenticate_client(
        registry,
        headers=headers or {},
        form=form,
        token_endpoint_url=TOKEN_URL,
        kv=kv,
        clock=lambda: NOW,
        **options,
    )


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def assertion_form(token: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": token,
        **extra,
    }


def failed(result: object, reason: AuthFailureReason) -> ClientAuthFailure:
    assert isinstance(result, ClientAuthFailure), result
    assert result.reason is reason, result
    assert result.error == "invalid_client"
    assert result.description == "client authentication failed"  # the same for every reason
    return result


def passed(result: object, client_id: str, method: AuthMethod) -> AuthenticatedClient:
    assert isinstance(result, AuthenticatedClient), result
    assert result.client_id == client_id and result.method is method
    return result


# -- client_secret_basic ----------------------------------------------------------------------------


async def test_basic(registry: ClientRegistry, kv: KV, clients: Clients) -> None:
    ok = passed(
        await auth(registry, kv, headers=basic("oa-app", clients.basic_secret)),
        "oa-app",
        AuthMethod.CLIENT_SECRET_BASIC,
    )
    assert ok.client.name == "协同办公系统"
    # RFC 6749 Appendix B: id and secret are form-urlencoded inside the Basic credentials.
    passed(
        await auth(registry, kv, headers=basic("oa%2Dapp", clients.basic_secret)),
        "oa-app",
        AuthMethod.CLIENT_SECRET_BASIC,
    )
    # A client_id in the body as well is fine when it names the same client.
    form = {"grant_type": "client_credentials", "client_id": "oa-app"}
    passed(
        await auth(registry, kv, form, basic("oa-app", clients.basic_secret)),
        "oa-app",
        AuthMethod.CLIENT_SECRET_BASIC,
    )


async def test_basic_failures(registry: ClientRegistry, kv: KV, clients: Clients) -> None:
    wrong = failed(
        await auth(registry, kv, headers=basic("oa-app", clients.basic_secret + "x")), R.WRONG_SECRET
    )
    # RFC 6749 §5.2: the Authorization header was used, so 401 with a challenge.
    assert wrong.status_code == 401 and wrong.headers == {"WWW-Authenticate": 'Basic realm="onegate"'}
    assert wrong.client_id == "oa-app"
    failed(await auth(registry, kv, headers=basic("oa-app", clients.post_secret)), R.WRONG_SECRET)
    failed(await auth(registry, kv, headers=basic("oa-app", "")), R.WRONG_SECRET)
    unknown = failed(
        await auth(registry, kv, headers=basic("nobody", clients.basic_secret)), R.UNKNOWN_CLIENT
    )
    assert unknown.client_id == "nobody"
    failed(await auth(registry, kv, headers=basic("hr-app", clients.post_secret)), R.METHOD_MISMATCH)
    failed(await auth(registry, kv, headers={"authorization": "Basic !!!"}), R.MALFORMED_BASIC)
    failed(
        await auth(registry, kv, headers={"Authorization": "Basic " + base64.b64encode(b"oa-app").decode()}),
        R.MALFORMED_BASIC,
    )
    failed(
        await auth(registry, kv, headers={"Authorization": "Basic " + base64.b64encode(b"\xff:x").decode()}),
        R.MALFORMED_BASIC,
    )
    failed(await auth(registry, kv, headers={"Authorization": "Bearer abc"}), R.UNSUPPORTED_SCHEME)
    mismatch = failed(
        await auth(registry, kv, {"client_id": "hr-app"}, basic("oa-app", clients.basic_secret)),
        R.CLIENT_ID_MISMATCH,
    )
    assert mismatch.status_code == 401
    await registry.disable("oa-app")
    failed(await auth(registry, kv, headers=basic("oa-app", clients.basic_secret)), R.CLIENT_DISABLED)


async def test_two_authorization_headers_and_two_methods(
    registry: ClientRegistry, kv: KV, clients: Clients
) -> None:
    value = basic("oa-app", clients.basic_secret)["Authorization"].encode()
    twice = Headers(raw=[(b"authorization", value), (b"authorization", value)])
    failed(await auth(registry, kv, headers=twice), R.DUPLICATE_PARAMETER)
    # RFC 6749 §2.3: one method per request, even when both would be right.
    both = {"client_id": "oa-app", "client_secret": clients.basic_secret}
    failed(await auth(registry, kv, both, basic("oa-app", clients.basic_secret)), R.MULTIPLE_METHODS)


# -- client_secret_post -----------------------------------------------------------------------------


async def test_post(registry: ClientRegistry, kv: KV, clients: Clients) -> None:
    form = {"grant_type": "client_credentials", "client_id": "hr-app", "client_secret": clients.post_secret}
    passed(await auth(registry, kv, form), "hr-app", AuthMethod.CLIENT_SECRET_POST)
    wrong = failed(await auth(registry, kv, {**form, "client_secret": clients.basic_secret}), R.WRONG_SECRET)
    assert wrong.status_code == 400 and wrong.headers == {}  # no Authorization header was used
    failed(
        await auth(registry, kv, {"client_id": "oa-app", "client_secret": clients.basic_secret}),
        R.METHOD_MISMATCH,
    )
    failed(await auth(registry, kv, {"client_secret": clients.post_secret}), R.NO_CLIENT_ID)
    failed(await auth(registry, kv, [("client_id", b"hr-app")]), R.MALFORMED_REQUEST)  # e.g. a file upload
    failed(await auth(registry, kv, {"client_id": "nobody", "client_secret": "x"}), R.UNKNOWN_CLIENT)
    pairs = [("client_id", "hr-app"), ("client_secret", "wrong"), ("client_secret", clients.post_secret)]
    failed(await auth(registry, kv, pairs), R.DUPLICATE_PARAMETER)
    pairs = [("client_id", "hr-app"), ("client_id", "oa-app"), ("client_secret", clients.post_secret)]
    failed(await auth(registry, kv, pairs), R.DUPLICATE_PARAMETER)


# -- none (public clients) --------------------------------------------------------------------------


async def test_none_for_public_clients_only(registry: ClientRegistry, kv: KV, clients: Clients) -> None:
    ok = passed(await auth(registry, kv, {"client_id": "mobile", "code": "c"}), "mobile", AuthMethod.NONE)
    assert ok.requires_pkce
    failed(await auth(registry, kv, {"client_id": "oa-app"}), R.METHOD_MISMATCH)  # no credentials
    failed(await auth(registry, kv, {"client_id": "mobile", "client_secret": ""}), R.METHOD_MISMATCH)
    failed(await auth(registry, kv, {}), R.NO_CLIENT_ID)
    bad = failed(await auth(registry, kv, {"client_id": "x\n" * 100}), R.UNKNOWN_CLIENT)
    assert bad.client_id is None  # a malformed claimed id is not carried into events


# -- private_key_jwt --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kid", "alg", "key_name"),
    [
        ("ec-1", "ES256", "ec"),
        ("rsa-1", "RS256", "rsa"),
        ("rsa-1", "PS256", "rsa"),
        ("pss-1", "PS256", "pss_only"),
    ],
)
async def test_private_key_jwt(
    registry: ClientRegistry, kv: KV, *, clients: Clients, keys: Keys, kid: str, alg: str, key_name: str
) -> None:
    token = sign({"alg": alg, "kid": kid, "typ": "JWT"}, claims(), getattr(keys, key_name))
    ok = passed(await auth(registry, kv, assertion_form(token)), "approvals", AuthMethod.PRIVATE_KEY_JWT)
    assert not ok.client.has_secret


async def test_assertions_made_by_another_library(
    registry: ClientRegistry, kv: KV, clients: Clients, keys: Keys
) -> None:
    ec_pem = keys.ec.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    token = joserfc_jwt.encode({"alg": "ES256", "kid": "ec-1"}, claims(), ECKey.import_key(ec_pem))
    passed(await auth(registry, kv, assertion_form(token)), "approvals", AuthMethod.PRIVATE_KEY_JWT)
    rsa_pem = keys.pss_only.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    token = joserfc_jwt.encode(
        {"alg": "PS256", "kid": "pss-1"}, claims(), RSAKey.import_key(rsa_pem), algorithms=["PS256"]
    )
    passed(
        await auth(registry, kv, assertion_form(token, client_id="approvals")),
        "approvals",
        AuthMethod.PRIVATE_KEY_JWT,
    )


async def test_audiences(registry: ClientRegistry, kv: KV, clients: Clients, keys: Keys) -> None:
    def token(aud: Any) -> dict[str, str]:
        return assertion_form(sign({"alg": "ES256", "kid": "ec-1"}, claims(aud=aud), keys.ec))

    passed(await auth(registry, kv, token(ISSUER), issuer=ISSUER), "approvals", AuthMethod.PRIVATE_KEY_JWT)
    passed(
        await auth(registry, kv, token(["https://other.example", TOKEN_URL])),
        "approvals",
        AuthMethod.PRIVATE_KEY_JWT,
    )
    passed(
        await auth(registry, kv, token(PAR_URL), endpoint_url=PAR_URL),
        "approvals",
        AuthMethod.PRIVATE_KEY_JWT,
    )
    failed(await auth(registry, kv, token(PAR_URL)), R.WRONG_AUDIENCE)
    failed(
        await auth(registry, kv, token(ISSUER)), R.WRONG_AUDIENCE
    )  # the issuer only when the caller says so
    failed(await auth(registry, kv, token("https://rp.example.gov.cn/token")), R.WRONG_AUDIENCE)
    failed(await auth(registry, kv, token(TOKEN_URL + "/")), R.WRONG_AUDIENCE)
    failed(await auth(registry, kv, token([])), R.WRONG_AUDIENCE)
    failed(await auth(registry, kv, token(None)), R.WRONG_AUDIENCE)
    failed(await auth(registry, kv, token([7])), R.WRONG_AUDIENCE)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": int(NOW) - 31}, R.EXPIRED),
        ({"exp": None}, R.MISSING_EXP),
        ({"exp": "soon"}, R.MALFORMED_ASSERTION),
        ({"exp": True}, R.MALFORMED_ASSERTION),
        ({"exp": int(NOW) + 3600}, R.LIFETIME_TOO_LONG),
        ({"nbf": int(NOW) + 120}, R.NOT_YET_VALID),
        ({"iat": int(NOW) + 120}, R.NOT_YET_VALID),
        ({"jti": None}, R.MISSING_JTI),
        ({"jti": ""}, R.MISSING_JTI),
        ({"jti": 12345}, R.MISSING_JTI),
        ({"jti": "j" * 257}, R.MISSING_JTI),
        ({"sub": "oa-app"}, R.WRONG_ISSUER),
        ({"sub": None}, R.WRONG_ISSUER),
    ],
)
async def test_claims_are_checked(
    registry: ClientRegistry,
    kv: KV,
    *,
    clients: Clients,
    keys: Keys,
    changes: dict[str, Any],
    reason: AuthFailureReason,
) -> None:
    token = sign({"alg": "ES256", "kid": "ec-1"}, claims(**changes), keys.ec)
    failed(await auth(registry, kv, assertion_form(token)), reason)


async def test_small_clock_skew_is_tolerated(
    registry: ClientRegistry, kv: KV, clients: Clients, keys: Keys
) -> None:
    token = sign({"alg": "ES256", "kid": "ec-1"}, claims(exp=int(NOW) - 10, iat=int(NOW) - 70), keys.ec)
    passed(await auth(registry, kv, assertion_form(token)), "approvals", AuthMethod.PRIVATE_KEY_JWT)
    token = sign({"alg": "ES256", "kid": "ec-1"}, claims(exp=int(NOW) + 320, nbf=int(NOW) + 20), keys.ec)
    passed(await auth(registry, kv, assertion_form(token)), "approvals", AuthMethod.PRIVATE_KEY_JWT)


async def test_jti_is_single_use(registry: ClientRegistry, kv: KV, clients: Clients, keys: Keys) -> None:
    token = sign({"alg": "ES256", "kid": "ec-1"}, claims(jti="once"), keys.ec)
    passed(await auth(registry, kv, assertion_form(token)), "approvals", AuthMethod.PRIVATE_KEY_JWT)
    failed(await auth(registry, kv, assertion_form(token)), R.REPLAYED_JTI)
    again = sign({"alg": "RS256", "kid": "rsa-1"}, claims(jti="once"), keys.rsa)  # a new token, same jti
    failed(await auth(registry, kv, assertion_form(again)), R.REPLAYED_JTI)
    ttl = await kv.ttl("idp:client-assertion-jti:" + hashlib.sha256(b"approvals\x00once").hexdigest())
    assert ttl is not None and 60 < ttl <= 90  # until exp + leeway, not forever


async def test_forged_assertions_do_not_burn_a_jti(
    registry: ClientRegistry, kv: KV, clients: Clients, keys: Keys
) -> None:
    forged = sign({"alg": "ES256", "kid": "ec-1"}, claims(jti="j-1"), keys.stranger)
    failed(await auth(registry, kv, assertion_form(forged)), R.BAD_SIGNATURE)
    expired = sign({"alg": "ES256", "kid": "ec-1"}, claims(jti="j-1", exp=int(NOW) - 100), keys.ec)
    failed(await auth(registry, kv, assertion_form(expired)), R.EXPIRED)
    real = sign({"alg": "ES256", "kid": "ec-1"}, claims(jti="j-1"), keys.ec)
    passed(await auth(registry, kv, assertion_form(real)), "approvals", AuthMethod.PRIVATE_KEY_JWT)


async def test_signature_and_key_attacks(
    registry: ClientRegistry, kv: KV, clients: Clients, keys: Keys
) -> None:
    def form(header: dict[str, Any], key: Any = None, **kw: Any) -> dict[str, str]:
        return assertion_form(sign(header, claims(), key, **kw))

    # Signed with a key that is not registered, under a registered kid and without kid.
    failed(await auth(registry, kv, form({"alg": "ES256", "kid": "ec-1"}, keys.stranger)), R.BAD_SIGNATURE)
    failed(await auth(registry, kv, form({"alg": "ES256"}, keys.stranger)), R.BAD_SIGNATURE)
    failed(await auth(registry, kv, form({"alg": "ES256", "kid": "nope"}, keys.ec)), R.NO_MATCHING_KEY)
    # alg "none" and no signature.
    failed(await auth(registry, kv, form({"alg": "none", "kid": "ec-1"})), R.ALGORITHM_NOT_ALLOWED)
    failed(await auth(registry, kv, form({"alg": "None"})), R.ALGORITHM_NOT_ALLOWED)
    failed(await auth(registry, kv, form({"kid": "ec-1"})), R.ALGORITHM_NOT_ALLOWED)
    # HS256 "signed" with the public key, in every spelling an attacker might try.
    rsa_pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ec_pem = keys.ec.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk_json = json.dumps(keys.jwks()["keys"][1]).encode()
    for secret in (rsa_pem, ec_pem, jwk_json):
        for kid in ("rsa-1", "ec-1"):
            failed(
                await auth(registry, kv, form({"alg": "HS256", "kid": kid}, hmac_key=secret)),
                R.ALGORITHM_NOT_ALLOWED,
            )
    # The registered key decides the algorithm: ES256 on an RSA key, RS256 on a PS256-only key.
    failed(await auth(registry, kv, form({"alg": "ES256", "kid": "rsa-1"}, keys.ec)), R.ALGORITHM_NOT_ALLOWED)
    failed(
        await auth(registry, kv, form({"alg": "RS256", "kid": "pss-1"}, keys.pss_only)),
        R.ALGORITHM_NOT_ALLOWED,
    )
    # PKCS#1 v1.5 signature presented as PS256.
    pkcs1 = sign({"alg": "RS256", "kid": "rsa-1"}, claims(), keys.rsa)
    header = b64(json.dumps({"alg": "PS256", "kid": "rsa-1"}).encode())
    failed(await auth(registry, kv, assertion_form(header + pkcs1[pkcs1.index(".") :])), R.BAD_SIGNATURE)
    # Keys or extensions carried by the token itself.
    embedded = {**ES256().jwk_members(keys.stranger.public_key())}
    failed(
        await auth(registry, kv, form({"alg": "ES256", "jwk": embedded}, keys.stranger)), R.UNSUPPORTED_HEADER
    )
    failed(
        await auth(registry, kv, form({"alg": "ES256", "jku": "https://evil.example/jwks"}, keys.ec)),
        R.UNSUPPORTED_HEADER,
    )
    failed(
        await auth(registry, kv, form({"alg": "ES256", "kid": "ec-1", "crit": ["exp"]}, keys.ec)),
        R.UNSUPPORTED_HEADER,
    )
    failed(
        await auth(registry, kv, form({"alg": "ES256", "kid": "ec-1", "typ": "logout+jwt"}, keys.ec)),
        R.UNSUPPORTED_HEADER,
    )
    passed(
        await auth(
            registry, kv, form({"alg": "ES256", "kid": "ec-1", "typ": "client-authentication+jwt"}, keys.ec)
        ),
        "approvals",
        AuthMethod.PRIVATE_KEY_JWT,
    )


async def test_assertion_request_shape(
    registry: ClientRegistry, kv: KV, clients: Clients, keys: Keys
) -> None:
    token = sign({"alg": "ES256", "kid": "ec-1"}, claims(), keys.ec)
    failed(await auth(registry, kv, {"client_assertion": token}), R.BAD_ASSERTION_TYPE)
    failed(
        await auth(registry, kv, {"client_assertion": token, "client_assertion_type": "urn:x"}),
        R.BAD_ASSERTION_TYPE,
    )
    failed(
        await auth(registry, kv, {"client_id": "approvals", "client_assertion_type": JWT_BEARER}),
        R.MALFORMED_ASSERTION,
    )
    for garbage in ("a.b.c", "not-a-jwt", token + ".x", token.replace(".", "=.", 1), "é.é.é"):
        failed(await auth(registry, kv, assertion_form(garbage)), R.MALFORMED_ASSERTION)
    failed(await auth(registry, kv, assertion_form(token, client_id="oa-app")), R.CLIENT_ID_MISMATCH)
    failed(await auth(registry, kv, assertion_form(token, client_secret="x")), R.MULTIPLE_METHODS)
    failed(await auth(registry, kv, assertion_form(token), basic("approvals", "x")), R.MULTIPLE_METHODS)
    # A secret client cannot switch to assertions, even well-signed ones.
    other = sign({"alg": "ES256", "kid": "ec-1"}, claims("oa-app"), keys.ec)
    failed(await auth(registry, kv, assertion_form(other)), R.METHOD_MISMATCH)
    failed(
        await auth(registry, kv, assertion_form(sign({"alg": "ES256"}, claims(iss=None), keys.ec))),
        R.WRONG_ISSUER,
    )


# -- jwks_uri over real HTTP ------------------------------------------------------------------------


async def test_jwks_uri_is_fetched_cached_and_refetched_for_a_new_kid(
    registry: ClientRegistry, kv: KV
) -> None:
    first, second = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    published = {"keys": [{**ES256().jwk_members(first.public_key()), "kid": "k1"}]}
    fetches: list[str] = []

    async def jwks(request: web.Request) -> web.Response:
        fetches.append(request.path)
        return web.json_response(published)

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await registry.add(
            client_id="reports",
            name="报表系统",
            token_endpoint_auth_method="private_key_jwt",
            grant_types=["client_credentials"],
            scopes=["reports:read"],
            jwks_uri=f"http://127.0.0.1:{port}/jwks.json",
        )
        clock = {"now": 0.0}
        remote = RemoteJwks(ttl=300, min_refresh_interval=60, clock=lambda: clock["now"])

        def form(key: Any, kid: str) -> dict[str, str]:
            return assertion_form(sign({"alg": "ES256", "kid": kid}, claims("reports"), key))

        failed(await auth(registry, kv, form(first, "k1")), R.KEYS_UNAVAILABLE)  # no fetcher given
        passed(
            await auth(registry, kv, form(first, "k1"), remote_jwks=remote),
            "reports",
            AuthMethod.PRIVATE_KEY_JWT,
        )
        passed(
            await auth(registry, kv, form(first, "k1"), remote_jwks=remote),
            "reports",
            AuthMethod.PRIVATE_KEY_JWT,
        )
        assert len(fetches) == 1  # cached
        # The client rotates: a new kid makes us look again, but not more than once a minute.
        published["keys"].append({**ES256().jwk_members(second.public_key()), "kid": "k2"})
        failed(await auth(registry, kv, form(second, "k2"), remote_jwks=remote), R.NO_MATCHING_KEY)
        assert len(fetches) == 1
        clock["now"] = 61
        passed(
            await auth(registry, kv, form(second, "k2"), remote_jwks=remote),
            "reports",
            AuthMethod.PRIVATE_KEY_JWT,
        )
        assert len(fetches) == 2
        failed(await auth(registry, kv, form(second, "k3"), remote_jwks=remote), R.NO_MATCHING_KEY)
        assert len(fetches) == 2
        # Private keys published by mistake are refused like at registration.
        published["keys"] = [{**ES256().jwk_members(second.public_key()), "kid": "k9", "d": "AAAA"}]
        clock["now"] = 1000
        failed(await auth(registry, kv, form(second, "k9"), remote_jwks=remote), R.KEYS_UNAVAILABLE)
    finally:
        await runner.cleanup()
    clock["now"] = 5000  # stale cache and the server is gone
    failed(await auth(registry, kv, form(second, "k2"), remote_jwks=remote), R.KEYS_UNAVAILABLE)


# -- through a real Starlette request ---------------------------------------------------------------


async def test_starlette_request_values(registry: ClientRegistry, clients: Clients) -> None:
    kv = MemoryKV()

    async def token(request: Request) -> JSONResponse:
        result = await authenticate_client(
            registry,
            headers=request.headers,
            form=await request.form(),
            token_endpoint_url=TOKEN_URL,
            kv=kv,
        )
        if isinstance(result, ClientAuthFailure):
            return JSONResponse({"error": result.error}, result.status_code, result.headers)
        return JSONResponse({"client_id": result.client_id, "method": result.method.value})

    app = Starlette(routes=[Route("/token", token, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://idp") as http:
        ok = await http.post(
            "/token", data={"grant_type": "client_credentials"}, auth=("oa-app", clients.basic_secret)
        )
        assert ok.json() == {"client_id": "oa-app", "method": "client_secret_basic"}
        bad = await http.post("/token", data={"grant_type": "client_credentials"}, auth=("oa-app", "nope"))
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == 'Basic realm="onegate"'
        assert bad.json() == {"error": "invalid_client"}
        # A repeated parameter in a real urlencoded body is seen (FormData.multi_items()).
        body = f"client_id=hr-app&client_secret=x&client_secret={clients.post_secret}"
        dup = await http.post(
            "/token", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert dup.status_code == 400 and dup.json() == {"error": "invalid_client"}
        good = f"client_id=hr-app&client_secret={clients.post_secret}"
        ok = await http.post(
            "/token", content=good, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert ok.json() == {"client_id": "hr-app", "method": "client_secret_post"}
    await kv.close()
