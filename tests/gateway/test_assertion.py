"""Identity assertions: issuing and reuse, verification and each refusal, key rotation, JWKS over HTTP."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.assertion import (
    ASSERTION_TYP,
    AssertionInvalid,
    AssertionIssuer,
    Identity,
    JwksCache,
    Reason,
    verify,
)
from keyvault.envelope import Envelope
from keyvault.masterkey import MasterKeyring
from keyvault.signing import SigningKeyring

ISSUER = "https://idp.example.gov.cn"
RETIRE_AFTER = 120.0  # longest assertion lifetime plus leeway


class Clock:
    """Seconds since the epoch, starting now (python-jose checks exp/nbf against the real time)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.now = float(int(time.time()) + offset)  # whole seconds: reuse boundaries are exact

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


ZHANGWEI = Identity(
    sub="3f1c9a",
    username="zhangwei",
    name="张伟",
    groups=("hr-staff",),
    department="hrss",
    departments=("hrss", "city"),
    acr="urn:onegate:acr:mfa",
    amr=("pwd", "otp"),
    auth_time=1_800_000_000,
    sid="gw-session-1",
)


@pytest.fixture
def envelope() -> Envelope:
    return Envelope(MasterKeyring.generate())


def make_ring(
    tmp_path: Path, envelope: Envelope, alg: str = "ES256", clock: Clock | None = None
) -> SigningKeyring:
    kwargs: dict[str, Any] = {"rsa_key_size": 2048} if alg == "RS256" else {}  # generation speed
    ring = SigningKeyring(
        tmp_path / "keys" / "signing",
        envelope,
        alg=alg,
        prepublish_seconds=300.0,
        retire_after_seconds=RETIRE_AFTER,
        clock=clock or time.time,
        **kwargs,
    )
    ring.ensure_key()
    return ring


@pytest.fixture(params=["ES256", "RS256"])
def any_ring(request: pytest.FixtureRequest, tmp_path: Path, envelope: Envelope) -> SigningKeyring:
    return make_ring(tmp_path, envelope, request.param)


@pytest.fixture
def ring(tmp_path: Path, envelope: Envelope) -> SigningKeyring:
    return make_ring(tmp_path, envelope)


# The header {"alg":"ES256","alg":"none"}: two parsers could disagree on which member counts.
DUPLICATE_ALG = base64.urlsafe_b64encode(b'{"alg":"ES256","alg":"none"}').rstrip(b"=").decode()


# -- token surgery (test helpers) ------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: object) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def decode_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def private_key_of(ring: SigningKeyring, envelope: Envelope, kid: str) -> Any:
    """Recover a private key from the store, as an insider holding the master key could."""
    store = Path(ring._dir) / "keys.json"
    [entry] = [e for e in json.loads(store.read_text())["keys"] if e["kid"] == kid]
    blob = base64.urlsafe_b64decode(entry["private_key"] + "==")
    der = envelope.decrypt(blob, f"keyvault/signing-key/kid:{kid}/alg:{entry['alg']}".encode())
    return serialization.load_der_private_key(der, password=None)


def forge(key: Any, header: dict[str, Any], payload: dict[str, Any] | str) -> str:
    """A compact JWS over exactly ``header`` and ``payload`` (an object or JSON text), signed by ``key``."""
    body = b64(payload.encode()) if isinstance(payload, str) else segment(payload)
    signing_input = f"{segment(header)}.{body}".encode()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64(signature)}"


def claims_now(lifetime: int = 60, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "hr",
        "sub": "3f1c9a",
        "preferred_username": "zhangwei",
        "sid": "gw-session-1",
        "jti": "j-" + str(now),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
    }
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


def refused(token: object, jwks: Any, **kwargs: Any) -> Reason:
    kwargs.setdefault("audience", "hr")
    kwargs.setdefault("issuer", ISSUER)
    with pytest.raises(AssertionInvalid) as info:
        verify(token, jwks=jwks, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


# -- issuing ----------------------------------------------------------------------------------------


def test_round_trip_carries_the_identity_for_one_application(any_ring: SigningKeyring) -> None:
    issuer = AssertionIssuer(any_ring, issuer=ISSUER)
    token = issuer.issue(ZHANGWEI, "hr")

    header = decode_part(token, 0)
    assert header == {
        "alg": any_ring.list_keys()[0].alg,
        "kid": any_ring.list_keys()[0].kid,
        "typ": ASSERTION_TYP,
    }
    claims = verify(token, audience="hr", issuer=ISSUER, jwks=any_ring.jwks())
    assert claims == decode_part(token, 1)
    assert {k: v for k, v in claims.items() if k not in {"iat", "nbf", "exp", "jti"}} == {
        "iss": ISSUER,
        "aud": "hr",
        "sub": "3f1c9a",
        "preferred_username": "zhangwei",
        "name": "张伟",
        "groups": ["hr-staff"],
        "department": "hrss",
        "departments": ["hrss", "city"],
        "acr": "urn:onegate:acr:mfa",
        "amr": ["pwd", "otp"],
        "auth_time": 1_800_000_000,
        "sid": "gw-session-1",
    }
    assert claims["nbf"] == claims["iat"] and claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) <= 2
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) == 16  # 128 random bits
    # The keyring's own verifier agrees (typ enforced), so any JOSE library will.
    assert any_ring.verify(token, expected_typ=ASSERTION_TYP)["sid"] == "gw-session-1"


def test_a_user_without_a_department_gets_no_department_claim(ring: SigningKeyring) -> None:
    nobody = dataclasses.replace(ZHANGWEI, department=None, departments=())
    claims = verify(
        AssertionIssuer(ring, issuer=ISSUER).issue(nobody, "hr"),
        audience="hr",
        issuer=ISSUER,
        jwks=ring.jwks(),
    )
    assert "department" not in claims and claims["departments"] == []


def test_the_same_token_is_reused_until_reuse_for_then_signed_afresh(ring: SigningKeyring) -> None:
    clock = Clock()
    issuer = AssertionIssuer(ring, issuer=ISSUER, clock=clock)
    first = issuer.issue(ZHANGWEI, "hr")
    clock.advance(44.5)
    # The gateway builds an equal Identity on every request: equality, not identity, matters.
    assert issuer.issue(dataclasses.replace(ZHANGWEI), "hr") == first
    clock.advance(1)
    second = issuer.issue(ZHANGWEI, "hr")
    assert second != first
    assert decode_part(second, 1)["jti"] != decode_part(first, 1)["jti"]
    assert decode_part(second, 1)["iat"] >= decode_part(first, 1)["iat"] + 45
    assert issuer.issue(ZHANGWEI, "hr") == second


def test_a_clock_stepping_back_signs_afresh(ring: SigningKeyring) -> None:
    clock = Clock()
    issuer = AssertionIssuer(ring, issuer=ISSUER, clock=clock)
    first = issuer.issue(ZHANGWEI, "hr")
    clock.advance(-10)
    assert issuer.issue(ZHANGWEI, "hr") != first


def test_each_application_gets_its_own_token(ring: SigningKeyring) -> None:
    issuer = AssertionIssuer(ring, issuer=ISSUER)
    hr, grid = issuer.issue(ZHANGWEI, "hr"), issuer.issue(ZHANGWEI, "grid")
    assert hr != grid
    assert decode_part(hr, 1)["aud"] == "hr" and decode_part(grid, 1)["aud"] == "grid"
    assert issuer.issue(ZHANGWEI, "hr") == hr and issuer.issue(ZHANGWEI, "grid") == grid


def test_forget_drops_every_token_of_one_session_only(ring: SigningKeyring) -> None:
    issuer = AssertionIssuer(ring, issuer=ISSUER)
    other = dataclasses.replace(ZHANGWEI, sid="gw-session-2")
    hr, grid, others = issuer.issue(ZHANGWEI, "hr"), issuer.issue(ZHANGWEI, "grid"), issuer.issue(other, "hr")
    issuer.forget(ZHANGWEI.sid)
    assert len(issuer) == 1
    assert issuer.issue(ZHANGWEI, "hr") != hr
    assert issuer.issue(ZHANGWEI, "grid") != grid
    assert issuer.issue(other, "hr") == others
    issuer.forget("no-such-session")  # harmless


def test_a_changed_identity_is_signed_afresh(ring: SigningKeyring) -> None:
    issuer = AssertionIssuer(ring, issuer=ISSUER)
    before = issuer.issue(ZHANGWEI, "hr")
    stepped_up = dataclasses.replace(ZHANGWEI, acr="urn:onegate:acr:phr", amr=("pwd", "hwk"))
    after = issuer.issue(stepped_up, "hr")
    assert after != before
    assert decode_part(after, 1)["acr"] == "urn:onegate:acr:phr" and decode_part(after, 1)["amr"] == [
        "pwd",
        "hwk",
    ]
    regrouped = dataclasses.replace(stepped_up, groups=("hr-staff", "hr-admins"))
    assert decode_part(issuer.issue(regrouped, "hr"), 1)["groups"] == ["hr-staff", "hr-admins"]


def test_the_cache_is_bounded_least_recently_used_first(ring: SigningKeyring) -> None:
    issuer = AssertionIssuer(ring, issuer=ISSUER, max_cached=3)
    sessions = [dataclasses.replace(ZHANGWEI, sid=f"s{i}") for i in range(4)]
    tokens = [issuer.issue(s, "hr") for s in sessions[:3]]
    assert issuer.issue(sessions[0], "hr") == tokens[0]  # s0 is now the most recently used
    issuer.issue(sessions[3], "hr")  # evicts s1
    assert len(issuer) == 3
    assert issuer.issue(sessions[0], "hr") == tokens[0]
    assert issuer.issue(sessions[2], "hr") == tokens[2]
    assert issuer.issue(sessions[1], "hr") != tokens[1]


def test_tokens_past_reuse_are_evicted_as_new_ones_are_signed(ring: SigningKeyring) -> None:
    clock = Clock()
    issuer = AssertionIssuer(ring, issuer=ISSUER, clock=clock)
    for i in range(5):
        issuer.issue(dataclasses.replace(ZHANGWEI, sid=f"s{i}"), "hr")
    clock.advance(46)
    issuer.issue(dataclasses.replace(ZHANGWEI, sid="late"), "hr")
    assert len(issuer) == 1
    issuer.forget("s0")  # the index was pruned with the cache: nothing left to find


def test_issuer_settings_are_checked(ring: SigningKeyring) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        AssertionIssuer(ring, issuer=ISSUER, lifetime=61)
    with pytest.raises(ValueError, match="lifetime"):
        AssertionIssuer(ring, issuer=ISSUER, lifetime=0)
    with pytest.raises(ValueError, match="issuer"):
        AssertionIssuer(ring, issuer="")
    with pytest.raises(ValueError, match="reuse_for"):
        AssertionIssuer(ring, issuer=ISSUER, reuse_for=-1)
    # A short lifetime caps reuse so a handed-out token always has a quarter of it left.
    short = AssertionIssuer(ring, issuer=ISSUER, lifetime=20)
    assert short.reuse_for == 15
    claims = decode_part(short.issue(ZHANGWEI, "hr"), 1)
    assert claims["exp"] - claims["iat"] == 20


# -- verify: what passes ------------------------------------------------------------------------------


def test_leeway_allows_small_clock_skew(ring: SigningKeyring) -> None:
    jwks = ring.jwks()
    late = AssertionIssuer(ring, issuer=ISSUER, clock=Clock(-62)).issue(ZHANGWEI, "hr")  # exp 2 s ago
    assert verify(late, audience="hr", issuer=ISSUER, jwks=jwks)["sid"] == ZHANGWEI.sid
    assert refused(late, jwks, leeway=0) is Reason.EXPIRED
    early = AssertionIssuer(ring, issuer=ISSUER, clock=Clock(3)).issue(ZHANGWEI, "hr")  # iat 3 s ahead
    assert verify(early, audience="hr", issuer=ISSUER, jwks=jwks)["sid"] == ZHANGWEI.sid
    assert refused(early, jwks, leeway=0) is Reason.NOT_YET_VALID


def test_typ_is_compared_case_insensitively_with_or_without_application_prefix(
    ring: SigningKeyring, envelope: Envelope
) -> None:
    key = private_key_of(ring, envelope, ring.list_keys()[0].kid)
    kid = ring.list_keys()[0].kid
    for typ in ("ONEGATE-Assertion+JWT", "application/onegate-assertion+jwt"):
        token = forge(key, {"alg": "ES256", "kid": kid, "typ": typ}, claims_now())
        assert verify(token, audience="hr", issuer=ISSUER, jwks=ring.jwks())["sub"] == "3f1c9a"


# -- verify: refusals, each with its reason -----------------------------------------------------------


def test_expired_beyond_leeway(ring: SigningKeyring) -> None:
    token = AssertionIssuer(ring, issuer=ISSUER, clock=Clock(-100)).issue(ZHANGWEI, "hr")
    assert refused(token, ring.jwks()) is Reason.EXPIRED


def test_not_yet_valid(ring: SigningKeyring) -> None:
    token = AssertionIssuer(ring, issuer=ISSUER, clock=Clock(100)).issue(ZHANGWEI, "hr")
    assert refused(token, ring.jwks()) is Reason.NOT_YET_VALID


def test_issued_in_the_future_without_nbf(ring: SigningKeyring, envelope: Envelope) -> None:
    kid = ring.list_keys()[0].kid
    now = int(time.time())
    claims = claims_now(iat=now + 100, nbf=None, exp=now + 150)
    token = forge(
        private_key_of(ring, envelope, kid), {"alg": "ES256", "kid": kid, "typ": ASSERTION_TYP}, claims
    )
    assert refused(token, ring.jwks()) is Reason.NOT_YET_VALID


def test_an_assertion_for_another_application(ring: SigningKeyring) -> None:
    token = AssertionIssuer(ring, issuer=ISSUER).issue(ZHANGWEI, "grid")
    assert refused(token, ring.jwks(), audience="hr") is Reason.AUDIENCE
    assert refused(token, ring.jwks(), audience="gri") is Reason.AUDIENCE


def test_an_audience_list_is_refused_even_when_it_names_the_application(
    ring: SigningKeyring, envelope: Envelope
) -> None:
    kid = ring.list_keys()[0].kid
    token = forge(
        private_key_of(ring, envelope, kid),
        {"alg": "ES256", "kid": kid, "typ": ASSERTION_TYP},
        claims_now(aud=["hr", "grid"]),
    )
    assert refused(token, ring.jwks()) is Reason.AUDIENCE


def test_an_assertion_from_another_issuer(ring: SigningKeyring) -> None:
    token = AssertionIssuer(ring, issuer="https://idp.elsewhere.example").issue(ZHANGWEI, "hr")
    assert refused(token, ring.jwks()) is Reason.ISSUER
    assert refused(token, ring.jwks(), issuer=ISSUER + "/") is Reason.ISSUER


def test_a_tampered_payload(ring: SigningKeyring) -> None:
    token = AssertionIssuer(ring, issuer=ISSUER).issue(ZHANGWEI, "hr")
    header, _, signature = token.split(".")
    claims = decode_part(token, 1)
    claims["groups"] = ["hr-staff", "hr-admins"]
    assert refused(f"{header}.{segment(claims)}.{signature}", ring.jwks()) is Reason.SIGNATURE
    # Equally when the tampering targets the audience: the signature is checked first.
    claims["aud"] = "grid"
    assert (
        refused(f"{header}.{segment(claims)}.{signature}", ring.jwks(), audience="grid") is Reason.SIGNATURE
    )


def test_a_signature_by_another_key_under_the_same_kid(any_ring: SigningKeyring) -> None:
    info = any_ring.list_keys()[0]
    impostor = (
        ec.generate_private_key(ec.SECP256R1())
        if info.alg == "ES256"
        else rsa.generate_private_key(65537, 2048)
    )
    token = forge(impostor, {"alg": info.alg, "kid": info.kid, "typ": ASSERTION_TYP}, claims_now())
    assert refused(token, any_ring.jwks()) is Reason.SIGNATURE


def test_alg_none(ring: SigningKeyring) -> None:
    kid = ring.list_keys()[0].kid
    for alg in ("none", "None", "NONE"):
        token = f"{segment({'alg': alg, 'kid': kid, 'typ': ASSERTION_TYP})}.{segment(claims_now())}."
        assert refused(token, ring.jwks()) is Reason.ALG


def test_hs256_with_the_public_key_as_the_secret(any_ring: SigningKeyring) -> None:
    """Key confusion (RFC 8725 §2.1): HMAC keyed with the public key, in every form a verifier holds."""
    info = any_ring.list_keys()[0]
    [jwk] = any_ring.jwks()["keys"]
    public = any_ring._snapshot.loaded[info.kid].public_key
    secrets_tried = [
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(jwk).encode(),
    ]
    for secret in secrets_tried:
        for alg in ("HS256", "hs256"):
            signing_input = (
                f"{segment({'alg': alg, 'kid': info.kid, 'typ': ASSERTION_TYP})}.{segment(claims_now())}"
            )
            mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
            assert refused(f"{signing_input}.{b64(mac)}", any_ring.jwks()) is Reason.ALG


def test_an_alg_other_than_the_keys(ring: SigningKeyring, envelope: Envelope) -> None:
    kid = ring.list_keys()[0].kid
    key = private_key_of(ring, envelope, kid)
    for alg in ("RS256", "ES384", "PS256", "es256"):
        token = forge(key, {"alg": alg, "kid": kid, "typ": ASSERTION_TYP}, claims_now())
        assert refused(token, ring.jwks()) is Reason.ALG


@pytest.mark.parametrize(
    "extra",
    [
        {"jwk": "PUBLIC"},
        {"jku": "https://attacker.example/jwks.json"},
        {"x5u": "https://attacker.example/cert.pem"},
        {"x5c": ["MIIB"]},
        {"crit": ["exp"]},
        {"crit": ["urn:example:unknown"], "urn:example:unknown": True},
        {"b64": False},
    ],
    ids=["jwk", "jku", "x5u", "x5c", "crit-registered", "crit-extension", "b64"],
)
def test_refused_header_parameters(ring: SigningKeyring, envelope: Envelope, extra: dict[str, Any]) -> None:
    info = ring.list_keys()[0]
    if extra.get("jwk") == "PUBLIC":
        extra = {"jwk": ring.jwks()["keys"][0]}  # even our own public key, embedded in the token
    token = forge(
        private_key_of(ring, envelope, info.kid),
        {"alg": "ES256", "kid": info.kid, "typ": ASSERTION_TYP, **extra},
        claims_now(),
    )
    assert refused(token, ring.jwks()) is Reason.HEADER


def test_an_id_token_or_an_untyped_token_is_not_an_assertion(
    ring: SigningKeyring, envelope: Envelope
) -> None:
    # Signed by the very same keys (one data dir: the IdP's ID tokens and the assertions share them).
    id_token = ring.sign(claims_now())  # typ: JWT, the IdP's default
    assert decode_part(id_token, 0)["typ"] == "JWT"
    assert refused(id_token, ring.jwks()) is Reason.TYP
    logout = ring.sign(claims_now(), headers={"typ": "logout+jwt"})
    assert refused(logout, ring.jwks()) is Reason.TYP
    kid = ring.list_keys()[0].kid
    untyped = forge(private_key_of(ring, envelope, kid), {"alg": "ES256", "kid": kid}, claims_now())
    assert refused(untyped, ring.jwks()) is Reason.TYP
    odd = forge(private_key_of(ring, envelope, kid), {"alg": "ES256", "kid": kid, "typ": 1}, claims_now())
    assert refused(odd, ring.jwks()) is Reason.TYP


def test_an_unknown_or_missing_kid(ring: SigningKeyring, envelope: Envelope) -> None:
    kid = ring.list_keys()[0].kid
    key = private_key_of(ring, envelope, kid)
    for header in ({"alg": "ES256", "kid": "not-" + kid}, {"alg": "ES256"}, {"alg": "ES256", "kid": ""}):
        token = forge(key, {**header, "typ": ASSERTION_TYP}, claims_now())
        assert refused(token, ring.jwks()) is Reason.KEY
    # A JWK Set that lists the kid twice is ambiguous: refused rather than guessed.
    [jwk] = ring.jwks()["keys"]
    token = forge(key, {"alg": "ES256", "kid": kid, "typ": ASSERTION_TYP}, claims_now())
    assert refused(token, {"keys": [jwk, jwk]}) is Reason.KEY


@pytest.mark.parametrize(
    "change",
    [
        {"alg": "RS256"},
        {"use": "enc"},
        {"key_ops": ["sign"]},
        {"kty": "oct", "k": "c2VjcmV0"},
        {"crv": "P-384"},
        {"x": "not+base64url"},
        {"x": "AAAA"},  # not a point on the curve
    ],
)
def test_an_unusable_published_key(ring: SigningKeyring, change: dict[str, Any]) -> None:
    token = AssertionIssuer(ring, issuer=ISSUER).issue(ZHANGWEI, "hr")
    [jwk] = ring.jwks()["keys"]
    assert refused(token, {"keys": [{**jwk, **change}]}) is Reason.KEY


def test_a_short_rsa_key_is_refused(tmp_path: Path, envelope: Envelope) -> None:
    weak = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the point of the test
    nums = weak.public_key().public_numbers()
    jwk = {"kty": "RSA", "kid": "weak", "n": b64(nums.n.to_bytes(128, "big")), "e": b64(b"\x01\x00\x01")}
    token = forge(weak, {"alg": "RS256", "kid": "weak", "typ": ASSERTION_TYP}, claims_now())
    assert refused(token, {"keys": [jwk]}) is Reason.KEY


def test_a_lifetime_longer_than_allowed(ring: SigningKeyring) -> None:
    long_lived = ring.sign(claims_now(lifetime=3600), headers={"typ": ASSERTION_TYP})
    assert refused(long_lived, ring.jwks()) is Reason.LIFETIME
    sixty_one = ring.sign(claims_now(lifetime=61), headers={"typ": ASSERTION_TYP})
    assert verify(sixty_one, audience="hr", issuer=ISSUER, jwks=ring.jwks())["sub"] == "3f1c9a"
    assert refused(sixty_one, ring.jwks(), max_lifetime=60) is Reason.LIFETIME


@pytest.mark.parametrize("missing", ["sid", "jti", "sub", "iat", "exp", "iss", "aud"])
def test_a_missing_required_claim(ring: SigningKeyring, missing: str) -> None:
    token = ring.sign(claims_now(**{missing: None}), headers={"typ": ASSERTION_TYP})
    assert missing not in decode_part(token, 1)
    assert refused(token, ring.jwks()) is Reason.CLAIMS


@pytest.mark.parametrize(
    "bad",
    [{"sid": ""}, {"sid": 7}, {"jti": ["x"]}, {"sub": None}],
    ids=["empty-sid", "int-sid", "list-jti", "no-sub"],
)
def test_ill_typed_identifiers(ring: SigningKeyring, bad: dict[str, Any]) -> None:
    token = ring.sign(claims_now(**bad), headers={"typ": ASSERTION_TYP})
    assert refused(token, ring.jwks()) is Reason.CLAIMS


@pytest.mark.parametrize(
    "make",
    [
        lambda t: "",
        lambda t: "garbage",
        lambda t: "a.b",
        lambda t: t + ".x.y",  # five parts: JWE-shaped
        lambda t: t.replace(".", "..", 1),
        lambda t: t + "=",  # padding: not canonical base64url
        lambda t: "x" * 20_000,  # oversized
        lambda t: "e" * 2000 + "." + t.split(".", 1)[1],  # oversized header
        lambda t: f"{segment([1, 2])}.{t.split('.', 1)[1]}",  # header not an object
        lambda t: f"{DUPLICATE_ALG}.{t.split('.', 1)[1]}",  # duplicate member
        lambda t: 12345,
        lambda t: None,
        lambda t: t.encode(),
    ],
)
def test_garbage_and_oversized_input(ring: SigningKeyring, make: Callable[[str], object]) -> None:
    token = AssertionIssuer(ring, issuer=ISSUER).issue(ZHANGWEI, "hr")
    assert refused(make(token), ring.jwks()) is Reason.MALFORMED


@pytest.mark.parametrize(
    "value",
    ['"1800000000"', "true", "1e400", "[1]", "NaN", "1e13"],
    ids=["string", "bool", "inf", "list", "nan", "huge"],
)
def test_ill_typed_times_are_malformed(ring: SigningKeyring, envelope: Envelope, value: str) -> None:
    kid = ring.list_keys()[0].kid
    claims = claims_now()
    del claims["exp"]
    payload = json.dumps(claims, separators=(",", ":"))[:-1] + f',"exp":{value}}}'
    token = forge(
        private_key_of(ring, envelope, kid), {"alg": "ES256", "kid": kid, "typ": ASSERTION_TYP}, payload
    )
    assert refused(token, ring.jwks()) is Reason.MALFORMED


def test_an_oversized_token_is_refused_before_any_work_even_when_validly_signed(ring: SigningKeyring) -> None:
    bloated = ring.sign(claims_now(pad="x" * 16_000), headers={"typ": ASSERTION_TYP})
    assert len(bloated) > 16 * 1024
    assert refused(bloated, ring.jwks()) is Reason.MALFORMED
    assert verify(
        ring.sign(claims_now(pad="x" * 8_000), headers={"typ": ASSERTION_TYP}),
        audience="hr",
        issuer=ISSUER,
        jwks=ring.jwks(),
    )


def test_errors_name_the_reason_and_no_key_material(ring: SigningKeyring) -> None:
    token = AssertionIssuer(ring, issuer=ISSUER).issue(ZHANGWEI, "grid")
    with pytest.raises(AssertionInvalid) as info:
        verify(token, audience="hr", issuer=ISSUER, jwks=ring.jwks())
    message = str(info.value)
    assert message == "the assertion is for another application"
    [jwk] = ring.jwks()["keys"]
    assert jwk["x"] not in message and token not in message and info.value.__cause__ is None


def test_verify_arguments_are_checked(ring: SigningKeyring) -> None:
    token = AssertionIssuer(ring, issuer=ISSUER).issue(ZHANGWEI, "hr")
    with pytest.raises(ValueError, match="exactly one"):
        verify(token, audience="hr", issuer=ISSUER)
    with pytest.raises(ValueError, match="exactly one"):
        verify(token, audience="hr", issuer=ISSUER, jwks=ring.jwks(), jwks_url="http://127.0.0.1:1/")
    with pytest.raises(ValueError, match="audience"):
        verify(token, audience="", issuer=ISSUER, jwks=ring.jwks())
    with pytest.raises(ValueError, match="issuer"):
        verify(token, audience="hr", issuer="", jwks=ring.jwks())


# -- key rotation ------------------------------------------------------------------------------------


def test_a_token_signed_before_rotation_verifies_while_its_key_is_published(
    tmp_path: Path, envelope: Envelope
) -> None:
    clock = Clock()
    ring = make_ring(tmp_path, envelope, clock=clock)
    old_kid = ring.list_keys()[0].kid
    issuer = AssertionIssuer(ring, issuer=ISSUER)
    before = issuer.issue(ZHANGWEI, "hr")

    # Pre-published: the new key is in the JWKS, the old one still signs.
    new_kid = ring.rotate()
    assert [k["kid"] for k in ring.jwks()["keys"]] == [old_kid, new_kid]
    assert decode_part(issuer.issue(dataclasses.replace(ZHANGWEI, sid="s2"), "hr"), 0)["kid"] == old_kid

    clock.advance(301)  # the new key activates; the old one retires but stays published
    after = issuer.issue(dataclasses.replace(ZHANGWEI, sid="s3"), "hr")
    assert decode_part(after, 0)["kid"] == new_kid
    jwks = ring.jwks()
    assert verify(before, audience="hr", issuer=ISSUER, jwks=jwks)["sid"] == ZHANGWEI.sid
    assert verify(after, audience="hr", issuer=ISSUER, jwks=jwks)["sid"] == "s3"

    clock.advance(RETIRE_AFTER + 1)  # retired for good: no longer published
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new_kid]
    assert refused(before, ring.jwks()) is Reason.KEY


def test_rsa_and_ec_keys_in_one_set(tmp_path: Path, envelope: Envelope) -> None:
    ec_ring = make_ring(tmp_path / "ec", envelope)
    rsa_ring = make_ring(tmp_path / "rsa", envelope, "RS256")
    jwks = {"keys": ec_ring.jwks()["keys"] + rsa_ring.jwks()["keys"]}
    for one in (ec_ring, rsa_ring):
        token = AssertionIssuer(one, issuer=ISSUER).issue(ZHANGWEI, "hr")
        assert verify(token, audience="hr", issuer=ISSUER, jwks=jwks)["sub"] == ZHANGWEI.sub
    # An RS256 header on the EC key's kid is refused even though an RSA key is in the set.
    rsa_token = AssertionIssuer(rsa_ring, issuer=ISSUER).issue(ZHANGWEI, "hr")
    rest = rsa_token.split(".", 1)[1]
    swapped = {**decode_part(rsa_token, 0), "kid": ec_ring.list_keys()[0].kid}
    assert refused(f"{segment(swapped)}.{rest}", jwks) is Reason.ALG


# -- the JWK Set over HTTP ------------------------------------------------------------------------


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a JWK Set (or whatever ``respond`` says)."""

    def __init__(self, ring: SigningKeyring) -> None:
        self.ring = ring
        self.hits = 0
        self.respond: Callable[[str], tuple[int, dict[str, str], bytes]] = self.jwks
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                status, headers, body = server.respond(self.path)
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.onegate/jwks"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def jwks(self, path: str = "") -> tuple[int, dict[str, str], bytes]:
        return 200, {}, json.dumps(self.ring.jwks()).encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def served(ring: SigningKeyring) -> Iterator[JwksServer]:
    server = JwksServer(ring)
    yield server
    server.close()


def test_verify_with_jwks_url_fetches_once_and_caches(ring: SigningKeyring, served: JwksServer) -> None:
    issuer = AssertionIssuer(ring, issuer=ISSUER)
    for sid in ("s1", "s2", "s3"):
        token = issuer.issue(dataclasses.replace(ZHANGWEI, sid=sid), "hr")
        assert verify(token, audience="hr", issuer=ISSUER, jwks_url=served.url)["sid"] == sid
    assert served.hits == 1


def test_an_unknown_kid_refetches_at_most_once_a_minute(ring: SigningKeyring, served: JwksServer) -> None:
    clock = Clock()
    cache = JwksCache(served.url, clock=clock)
    issuer = AssertionIssuer(ring, issuer=ISSUER)
    assert verify(issuer.issue(ZHANGWEI, "hr"), audience="hr", issuer=ISSUER, jwks_cache=cache)
    assert served.hits == 1

    ring.rotate(immediate=True)  # e.g. a compromised key: the new one signs at once
    fresh = issuer.issue(dataclasses.replace(ZHANGWEI, sid="s2"), "hr")
    clock.advance(10)
    with pytest.raises(AssertionInvalid) as info:
        verify(fresh, audience="hr", issuer=ISSUER, jwks_cache=cache)
    assert info.value.reason is Reason.KEY and served.hits == 1  # within the minute: no fetch

    clock.advance(51)
    assert verify(fresh, audience="hr", issuer=ISSUER, jwks_cache=cache)["sid"] == "s2"
    assert served.hits == 2

    # A flood of forged kids costs the JWKS endpoint one request a minute, not one per token.
    forged_header = segment({"alg": "ES256", "kid": "forged", "typ": ASSERTION_TYP})
    forged = f"{forged_header}.{segment(claims_now())}.{b64(bytes(64))}"
    for _ in range(20):
        with pytest.raises(AssertionInvalid):
            verify(forged, audience="hr", issuer=ISSUER, jwks_cache=cache)
    assert served.hits == 2
    clock.advance(60)
    with pytest.raises(AssertionInvalid):
        verify(forged, audience="hr", issuer=ISSUER, jwks_cache=cache)
    assert served.hits == 3


def test_a_known_key_is_refreshed_after_max_age(ring: SigningKeyring, served: JwksServer) -> None:
    clock = Clock()
    cache = JwksCache(served.url, clock=clock, max_age=300)
    kid = ring.list_keys()[0].kid
    assert cache.key(kid) is not None and served.hits == 1
    clock.advance(299)
    assert cache.key(kid) is not None and served.hits == 1
    clock.advance(2)
    assert cache.key(kid) is not None and served.hits == 2


def test_an_unreachable_jwks_fails_closed_after_max_stale(ring: SigningKeyring, served: JwksServer) -> None:
    clock = Clock()
    cache = JwksCache(served.url, clock=clock, max_age=300, max_stale=3600)
    kid = ring.list_keys()[0].kid
    assert cache.key(kid) is not None
    served.respond = lambda path: (500, {}, b"{}")
    clock.advance(400)  # refresh fails: the keys held still serve
    assert cache.key(kid) is not None and served.hits == 2
    clock.advance(3300)
    with pytest.raises(AssertionInvalid) as info:
        cache.key(kid)
    assert info.value.reason is Reason.JWKS_UNAVAILABLE


@pytest.mark.parametrize(
    "response",
    [
        (500, {}, b"oops"),
        (200, {}, b"not json"),
        (200, {}, b'{"keys": "nope"}'),
        (200, {}, b'{"keys": []}' + b" " * 300_000),  # oversized
        (302, {"Location": "/moved"}, b""),  # redirects are not followed, even to the same server
    ],
    ids=["500", "not-json", "no-list", "oversized", "redirect"],
)
def test_a_bad_jwks_response_fails_closed(
    ring: SigningKeyring, served: JwksServer, response: tuple[int, dict[str, str], bytes]
) -> None:
    served.respond = lambda path: served.jwks() if path == "/moved" else response
    token = AssertionIssuer(ring, issuer=ISSUER).issue(ZHANGWEI, "hr")
    cache = JwksCache(served.url, clock=Clock())
    with pytest.raises(AssertionInvalid) as info:
        verify(token, audience="hr", issuer=ISSUER, jwks_cache=cache)
    assert info.value.reason is Reason.JWKS_UNAVAILABLE and served.hits == 1


def test_a_jwks_server_that_does_not_answer_times_out(ring: SigningKeyring) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    try:
        cache = JwksCache(f"http://127.0.0.1:{listener.getsockname()[1]}/jwks", timeout=0.3, clock=Clock())
        started = time.monotonic()
        with pytest.raises(AssertionInvalid) as info:
            cache.key(ring.list_keys()[0].kid)
        assert info.value.reason is Reason.JWKS_UNAVAILABLE
        assert time.monotonic() - started < 3
    finally:
        listener.close()


def test_only_http_urls_are_fetched() -> None:
    for url in ("file:///etc/passwd", "ftp://example.org/jwks", "jwks.json"):
        with pytest.raises(ValueError, match="http"):
            JwksCache(url)
