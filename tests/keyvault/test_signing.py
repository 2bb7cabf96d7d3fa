"""Signing keyring: life cycle on a fake clock, JWKS, verification refusals, persistence."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwt
from joserfc.jwk import KeySet

import keyvault.signing as signing_module
from keyvault.envelope import Envelope
from keyvault.errors import SigningKeyError, TokenExpired, TokenInvalid, TokenNotYetValid
from keyvault.masterkey import MasterKeyring
from keyvault.signing import KeyState, SigningKeyring

T0 = 1_700_000_000.0
PREPUBLISH = 3600.0  # an hour for relying parties to refetch the JWKS
RETIRE_AFTER = 7200.0  # longest token lifetime (1 h) + leeway
LIFETIME = 3600


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def envelope() -> Envelope:
    return Envelope(MasterKeyring.generate())


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "signing"


def make_ring(store: Path, envelope: Envelope, clock: FakeClock, **kwargs: Any) -> SigningKeyring:
    kwargs.setdefault("prepublish_seconds", PREPUBLISH)
    kwargs.setdefault("retire_after_seconds", RETIRE_AFTER)
    if kwargs.get("alg") == "RS256":
        kwargs.setdefault("rsa_key_size", 2048)  # generation speed; production default is 3072
    return SigningKeyring(store, envelope, clock=clock, **kwargs)


@pytest.fixture
def ring(store: Path, envelope: Envelope, clock: FakeClock) -> SigningKeyring:
    ring = make_ring(store, envelope, clock)
    ring.ensure_key()
    return ring


def claims(clock: FakeClock, lifetime: float = LIFETIME, **extra: Any) -> dict[str, Any]:
    return {
        "iss": "https://idp.example",
        "sub": "u1",
        "iat": int(clock()),
        "exp": int(clock() + lifetime),
        **extra,
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: object) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def header_of(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".", maxsplit=1)[0] + "=="))


def kid_of(token: str) -> str:
    return str(header_of(token)["kid"])


def private_key_from_store(store: Path, envelope: Envelope, kid: str) -> Any:
    """Recover a private key the way an attacker holding the master key could (test helper)."""
    doc = json.loads((store / "keys.json").read_text())
    [entry] = [e for e in doc["keys"] if e["kid"] == kid]
    blob = base64.urlsafe_b64decode(entry["private_key"] + "==")
    der = envelope.decrypt(blob, f"keyvault/signing-key/kid:{kid}/alg:{entry['alg']}".encode())
    return serialization.load_der_private_key(der, password=None)


def es256_forge(key: ec.EllipticCurvePrivateKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def states(ring: SigningKeyring) -> dict[str, str]:
    return {k.kid: k.state for k in ring.list_keys()}


# -- basics --------------------------------------------------------------------------------------


def test_ensure_key_creates_one_active_key_once(ring: SigningKeyring, clock: FakeClock) -> None:
    [info] = ring.list_keys()
    assert info.state == "active"
    assert info.alg == "ES256"
    assert info.created_at == info.activates_at == T0
    assert info.retire_until is None
    assert ring.ensure_key() == info.kid
    assert len(ring.list_keys()) == 1


def test_sign_and_verify(ring: SigningKeyring, clock: FakeClock) -> None:
    token = ring.sign(claims(clock, nonce="n-1"))
    header = header_of(token)
    [info] = ring.list_keys()
    assert header == {"alg": "ES256", "kid": info.kid, "typ": "JWT"}
    assert ring.verify(token)["nonce"] == "n-1"


def test_sign_does_not_mutate_claims(ring: SigningKeyring, clock: FakeClock) -> None:
    c = claims(clock)
    before = dict(c)
    ring.sign(c)
    assert c == before


def test_headers_may_set_typ_but_not_security_parameters(ring: SigningKeyring, clock: FakeClock) -> None:
    token = ring.sign(claims(clock), headers={"typ": "at+jwt"})
    assert header_of(token)["typ"] == "at+jwt"
    assert ring.verify(token, expected_typ="at+JWT")["sub"] == "u1"
    with pytest.raises(TokenInvalid, match="typ must be 'JWT'"):
        ring.verify(token, expected_typ="JWT")
    for name in ("alg", "kid", "crit", "jwk", "jku", "x5u", "x5c", "b64"):
        with pytest.raises(ValueError, match=name):
            ring.sign(claims(clock), headers={name: "x"})


def test_sign_without_any_key(store: Path, envelope: Envelope, clock: FakeClock) -> None:
    ring = make_ring(store, envelope, clock)
    with pytest.raises(SigningKeyError, match="no active signing key"):
        ring.sign(claims(clock))
    assert ring.jwks() == {"keys": []}
    assert not store.exists()  # reading creates nothing


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alg": "HS256"}, "unknown signing algorithm 'HS256'"),
        ({"alg": "none"}, "unknown signing algorithm"),
        ({"prepublish_seconds": -1}, "prepublish_seconds"),
        ({"retire_after_seconds": float("inf")}, "retire_after_seconds"),
        ({"rsa_key_size": 1024}, "at least 2048"),
    ],
)
def test_constructor_validation(
    store: Path, envelope: Envelope, clock: FakeClock, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        make_ring(store, envelope, clock, **kwargs)


# -- life cycle ----------------------------------------------------------------------------------


def test_rotated_key_is_published_before_it_signs(ring: SigningKeyring, clock: FakeClock) -> None:
    old = ring.ensure_key()
    new = ring.rotate()
    assert new != old
    assert states(ring) == {old: "active", new: "pending"}
    assert [k["kid"] for k in ring.jwks()["keys"]] == [old, new]  # in the JWKS right away
    assert kid_of(ring.sign(claims(clock))) == old  # ... but not signing yet

    clock.advance(PREPUBLISH - 1)
    assert kid_of(ring.sign(claims(clock))) == old

    clock.advance(1)  # the pre-publication delay has passed
    assert kid_of(ring.sign(claims(clock))) == new
    assert states(ring) == {old: "retired", new: "active"}
    info = {k.kid: k for k in ring.list_keys()}
    assert info[new].activates_at == T0 + PREPUBLISH
    assert info[old].retire_until == T0 + PREPUBLISH + RETIRE_AFTER
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new, old]


def test_retired_key_verifies_until_expiry_and_not_after_purge(
    ring: SigningKeyring, clock: FakeClock
) -> None:
    old = ring.ensure_key()
    ring.rotate()
    clock.advance(PREPUBLISH - 10)
    short = ring.sign(claims(clock, lifetime=LIFETIME))  # last tokens signed by the old key
    outliving = ring.sign(claims(clock, lifetime=10 * RETIRE_AFTER))  # misconfigured lifetime
    assert kid_of(short) == old

    clock.advance(20)  # the new key signs now; the old one is retired
    assert states(ring)[old] == "retired"
    assert ring.verify(short, leeway=0)["sub"] == "u1"
    assert ring.purge() == []  # too early to purge

    clock.advance(LIFETIME - 10)  # the short token reached its exp
    with pytest.raises(TokenExpired):
        ring.verify(short, leeway=0)
    assert ring.verify(outliving, leeway=0)["sub"] == "u1"

    clock.now = T0 + PREPUBLISH + RETIRE_AFTER  # retire_until reached
    assert old not in {k["kid"] for k in ring.jwks()["keys"]}
    with pytest.raises(TokenInvalid, match="unknown kid"):
        ring.verify(outliving)
    assert ring.purge() == [old]
    assert old not in states(ring)
    with pytest.raises(TokenInvalid, match="unknown kid"):
        ring.verify(outliving)
    assert ring.purge() == []


def test_immediate_rotation(ring: SigningKeyring, clock: FakeClock) -> None:
    old = ring.ensure_key()
    token = ring.sign(claims(clock))
    new = ring.rotate(immediate=True)
    assert kid_of(ring.sign(claims(clock))) == new
    assert states(ring) == {old: "retired", new: "active"}
    assert ring.verify(token)["sub"] == "u1"


def test_rotate_on_an_empty_ring_activates_at_once(store: Path, envelope: Envelope, clock: FakeClock) -> None:
    ring = make_ring(store, envelope, clock)
    kid = ring.rotate()
    assert states(ring) == {kid: "active"}
    assert ring.ensure_key() == kid


def test_two_rotations_in_a_row(ring: SigningKeyring, clock: FakeClock) -> None:
    first = ring.ensure_key()
    second = ring.rotate()
    clock.advance(60)
    third = ring.rotate()
    assert states(ring) == {first: "active", second: "pending", third: "pending"}
    clock.advance(PREPUBLISH - 60)
    assert kid_of(ring.sign(claims(clock))) == second
    clock.advance(60)
    assert kid_of(ring.sign(claims(clock))) == third
    assert states(ring) == {first: "retired", second: "retired", third: "active"}


def test_transitions_skipped_while_idle_are_computed_from_timestamps(
    ring: SigningKeyring, clock: FakeClock
) -> None:
    first = ring.ensure_key()
    second = ring.rotate()
    clock.advance(1)
    third = ring.rotate()
    clock.advance(10 * PREPUBLISH)  # nobody called in between
    info = {k.kid: k for k in ring.list_keys()}
    assert info[third].state == "active"
    assert info[second].state == "retired"
    assert info[first].retire_until == T0 + PREPUBLISH + RETIRE_AFTER
    assert info[second].retire_until == T0 + 1 + PREPUBLISH + RETIRE_AFTER


# -- verification refusals -----------------------------------------------------------------------


def test_expired_and_not_yet_valid(ring: SigningKeyring, clock: FakeClock) -> None:
    token = ring.sign(claims(clock, lifetime=60))
    clock.advance(60 + 29)
    assert ring.verify(token)["sub"] == "u1"  # default leeway 30 s
    clock.advance(1)
    with pytest.raises(TokenExpired) as info:
        ring.verify(token)
    assert isinstance(info.value, TokenInvalid)
    future = ring.sign(claims(clock, nbf=int(clock() + 300)))
    with pytest.raises(TokenNotYetValid):
        ring.verify(future)
    clock.advance(300 - 30)
    assert ring.verify(future)["sub"] == "u1"


def test_exp_required_and_typed(ring: SigningKeyring, clock: FakeClock) -> None:
    no_exp = ring.sign({"sub": "u1"})
    with pytest.raises(TokenInvalid, match="exp is required"):
        ring.verify(no_exp)
    assert ring.verify(no_exp, require_exp=False) == {"sub": "u1"}
    for bad in ("tomorrow", True, None, [1]):
        token = ring.sign({"sub": "u1", "exp": int(clock() + 60), "nbf": bad})
        if bad is None:
            ring.verify(token)
            continue
        with pytest.raises(TokenInvalid, match="NumericDate"):
            ring.verify(token)
    with pytest.raises(TokenInvalid, match="out of range"):
        ring.verify(ring.sign({"sub": "u1", "exp": 10**400}))


def test_tampered_payload_is_refused(ring: SigningKeyring, clock: FakeClock) -> None:
    token = ring.sign(claims(clock))
    h, _, s = token.split(".")
    forged = f"{h}.{segment(claims(clock, sub='admin'))}.{s}"
    with pytest.raises(TokenInvalid, match="signature verification failed") as info:
        ring.verify(forged)
    assert info.value.__cause__ is not None


def test_tampered_signature_and_header_are_refused(ring: SigningKeyring, clock: FakeClock) -> None:
    token = ring.sign(claims(clock))
    h, p, s = token.split(".")
    sig = bytearray(base64.urlsafe_b64decode(s + "=="))
    sig[5] ^= 1
    with pytest.raises(TokenInvalid):
        ring.verify(f"{h}.{p}.{b64(bytes(sig))}")
    with pytest.raises(TokenInvalid):
        ring.verify(f"{h}.{p}.{b64(bytes(sig[:-1]))}")  # wrong length
    header = header_of(token)
    with pytest.raises(TokenInvalid, match="signature"):
        ring.verify(f"{segment({**header, 'typ': 'JOSE'})}.{p}.{s}")


def test_alg_none_is_refused(ring: SigningKeyring, clock: FakeClock) -> None:
    kid = ring.ensure_key()
    for alg in ("none", "None", "NONE"):
        token = f"{segment({'alg': alg, 'kid': kid, 'typ': 'JWT'})}.{segment(claims(clock))}."
        with pytest.raises(TokenInvalid, match="'none' is refused"):
            ring.verify(token)


def test_alg_mismatch_is_refused_even_with_a_valid_signature(
    ring: SigningKeyring, store: Path, envelope: Envelope, clock: FakeClock
) -> None:
    kid = ring.ensure_key()
    key = private_key_from_store(store, envelope, kid)
    # A real ES256 signature, but the header claims ES384 / RS256: the key's alg wins.
    for alg in ("ES384", "RS256", "PS256"):
        token = es256_forge(key, {"alg": alg, "kid": kid}, claims(clock))
        with pytest.raises(TokenInvalid, match=f"alg '{alg}' does not match key"):
            ring.verify(token)


def test_hmac_key_confusion_is_refused(ring: SigningKeyring, clock: FakeClock) -> None:
    # The classic attack: HS256 "signed" with the public key as the HMAC secret.
    kid = ring.ensure_key()
    public = json.dumps(ring.jwks()["keys"][0]).encode()
    signing_input = f"{segment({'alg': 'HS256', 'kid': kid})}.{segment(claims(clock))}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(TokenInvalid, match="does not match"):
        ring.verify(f"{signing_input}.{b64(mac)}")


def test_unknown_or_missing_kid_is_refused(
    ring: SigningKeyring, store: Path, envelope: Envelope, clock: FakeClock
) -> None:
    key = private_key_from_store(store, envelope, ring.ensure_key())
    with pytest.raises(TokenInvalid, match="unknown kid 'other'"):
        ring.verify(es256_forge(key, {"alg": "ES256", "kid": "other"}, claims(clock)))
    with pytest.raises(TokenInvalid, match="no kid"):
        ring.verify(es256_forge(key, {"alg": "ES256"}, claims(clock)))
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TokenInvalid, match="unknown kid"):
        ring.verify(es256_forge(stranger, {"alg": "ES256", "kid": "attacker"}, claims(clock)))


def test_crit_header_is_refused(
    ring: SigningKeyring, store: Path, envelope: Envelope, clock: FakeClock
) -> None:
    kid = ring.ensure_key()
    key = private_key_from_store(store, envelope, kid)
    good = es256_forge(key, {"alg": "ES256", "kid": kid}, claims(clock))
    assert ring.verify(good)["sub"] == "u1"  # the forging helper itself is sound
    for crit in (["exp"], ["b64"], [], "x"):
        token = es256_forge(
            key, {"alg": "ES256", "kid": kid, "crit": crit, "exp": 1, "b64": True}, claims(clock)
        )
        with pytest.raises(TokenInvalid, match="crit"):
            ring.verify(token)


def test_keys_embedded_in_the_token_are_ignored(ring: SigningKeyring, clock: FakeClock) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    kid = ring.ensure_key()
    nums = stranger.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(nums.x.to_bytes(32, "big")),
        "y": b64(nums.y.to_bytes(32, "big")),
    }
    token = es256_forge(
        stranger, {"alg": "ES256", "kid": kid, "jwk": jwk, "jku": "https://evil"}, claims(clock)
    )
    with pytest.raises(TokenInvalid, match="signature"):
        ring.verify(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d.e",  # JWE compact
        "!!!.e30.AA",
        "e30.e30.AA",  # header without alg
        f"{segment([1])}.e30.AA",
        b64(b"{not json") + ".e30.AA",
        b64(b'{"alg":"ES256","alg":"none"}') + ".e30.AA",  # duplicate member
        b64(b'{"alg":NaN}') + ".e30.AA",
        f"{segment({'alg': 'ES256', 'kid': 7})}.e30.AA",
        "x" * 20_000,
        "eyJhbGciOiJFUzI1NiJ9=.e30.AA",  # padding is not base64url per RFC 7515 §2
        "eyJhbGciOiJFUzI1NiJ9.e30.A",  # impossible length
        "eyJhbGciOiJFUzI1NiJ9.e30.AB",  # non-canonical trailing bits
    ],
)
def test_malformed_tokens(ring: SigningKeyring, token: str) -> None:
    with pytest.raises(TokenInvalid):
        ring.verify(token)


def test_non_ascii_payload_segment(ring: SigningKeyring, clock: FakeClock) -> None:
    h, _, s = ring.sign(claims(clock)).split(".")
    with pytest.raises(TokenInvalid, match="base64url"):
        ring.verify(f"{h}.é.{s}")


def test_non_string_token(ring: SigningKeyring) -> None:
    with pytest.raises(TokenInvalid, match="string"):
        ring.verify(b"a.b.c")  # type: ignore[arg-type]


def test_non_canonical_signature_encoding_is_refused(ring: SigningKeyring, clock: FakeClock) -> None:
    h, p, s = ring.sign(claims(clock)).split(".")
    # 64 bytes -> 86 chars; the last one carries 4 padding bits that must be zero.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(s[-1])
    twin = s[:-1] + alphabet[last | 1]
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(s + "==")
    with pytest.raises(TokenInvalid, match="canonical"):
        ring.verify(f"{h}.{p}.{twin}")


# -- JWKS and interoperability -------------------------------------------------------------------


def test_jwks_has_public_parts_only(ring: SigningKeyring) -> None:
    [key] = ring.jwks()["keys"]
    assert set(key) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    ring.jwks()["keys"].clear()  # callers get copies
    assert len(ring.jwks()["keys"]) == 1


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_tokens_verify_with_joserfc_and_kid_is_the_rfc7638_thumbprint(
    store: Path, envelope: Envelope, clock: FakeClock, alg: str
) -> None:
    ring = make_ring(store, envelope, clock, alg=alg)
    kid = ring.ensure_key()
    key_set = KeySet.import_key_set(ring.jwks())
    [jwk] = key_set.keys
    assert jwk.thumbprint() == kid
    decoded = jwt.decode(ring.sign({"sub": "u1"}), key_set, algorithms=[alg])
    assert decoded.header["kid"] == kid
    assert decoded.claims == {"sub": "u1"}


def test_rs256(store: Path, envelope: Envelope, clock: FakeClock) -> None:
    ring = make_ring(store, envelope, clock, alg="RS256")
    kid = ring.ensure_key()
    [key] = ring.jwks()["keys"]
    assert set(key) == {"kty", "n", "e", "kid", "alg", "use"}
    assert (key["kty"], key["alg"], key["e"]) == ("RSA", "RS256", "AQAB")
    assert len(base64.urlsafe_b64decode(key["n"] + "==")) == 256
    token = ring.sign(claims(clock))
    assert header_of(token)["alg"] == "RS256"
    assert ring.verify(token)["sub"] == "u1"

    rsa_key = private_key_from_store(store, envelope, kid)
    signing_input = f"{segment({'alg': 'ES256', 'kid': kid})}.{segment(claims(clock))}"
    forged = rsa_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(TokenInvalid, match="does not match"):
        ring.verify(f"{signing_input}.{b64(forged)}")


def test_changing_alg_takes_effect_through_rotation(
    store: Path, envelope: Envelope, clock: FakeClock
) -> None:
    es = make_ring(store, envelope, clock)
    old = es.ensure_key()
    old_token = es.sign(claims(clock))
    rs = make_ring(store, envelope, clock, alg="RS256")
    new = rs.rotate(immediate=True)
    token = rs.sign(claims(clock))
    assert header_of(token)["alg"] == "RS256"
    assert {k["kid"]: k["alg"] for k in rs.jwks()["keys"]} == {new: "RS256", old: "ES256"}
    assert rs.verify(old_token)["sub"] == rs.verify(token)["sub"] == "u1"


# -- persistence ---------------------------------------------------------------------------------


def test_reopen_gives_same_kids_and_states(
    ring: SigningKeyring, store: Path, envelope: Envelope, clock: FakeClock
) -> None:
    old = ring.ensure_key()
    ring.rotate()
    clock.advance(PREPUBLISH)
    third = ring.rotate()
    token = ring.sign(claims(clock))
    before = ring.list_keys()
    assert [k.state for k in before] == ["retired", "active", "pending"]

    reopened = make_ring(store, envelope, clock)
    assert reopened.list_keys() == before
    assert reopened.jwks() == ring.jwks()
    assert reopened.verify(token)["sub"] == "u1"
    assert kid_of(reopened.sign(claims(clock))) == kid_of(token)
    assert {old, third} <= {k.kid for k in before}


def test_store_files_are_private_and_keys_encrypted(ring: SigningKeyring, store: Path) -> None:
    ring.rotate()
    path = store / "keys.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
    text = path.read_text()
    assert "PRIVATE KEY" not in text
    doc = json.loads(text)
    assert doc["format"] == 1
    assert [e["state"] for e in doc["keys"]] == ["active", "pending"]
    assert sorted(p.name for p in store.iterdir()) == [".keys.json.lock", "keys.json"]


def test_lazy_transitions_are_persisted(ring: SigningKeyring, store: Path, clock: FakeClock) -> None:
    ring.rotate()
    clock.advance(PREPUBLISH)
    ring.sign(claims(clock))  # any call applies the due transition ...
    doc = json.loads((store / "keys.json").read_text())
    assert [e["state"] for e in doc["keys"]] == ["retired", "active"]  # ... and writes it
    assert doc["keys"][0]["retire_until"] == T0 + PREPUBLISH + RETIRE_AFTER


def test_loose_store_permissions_are_refused(ring: SigningKeyring, store: Path, envelope: Envelope) -> None:
    (store / "keys.json").chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        make_ring(store, envelope, FakeClock())


def test_store_under_another_master_key_is_refused(
    ring: SigningKeyring, store: Path, clock: FakeClock
) -> None:
    with pytest.raises(SigningKeyError, match="cannot decrypt"):
        make_ring(store, Envelope(MasterKeyring.generate()), clock)


def test_swapped_kid_in_store_is_refused(ring: SigningKeyring, store: Path, envelope: Envelope) -> None:
    ring.rotate()
    path = store / "keys.json"
    doc = json.loads(path.read_text())
    a, b = doc["keys"]
    a["private_key"], b["private_key"] = b["private_key"], a["private_key"]
    path.write_text(json.dumps(doc))
    with pytest.raises(SigningKeyError, match="cannot decrypt"):
        make_ring(store, envelope, FakeClock())


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"format": 2, "keys": []}', '{"format": 1, "keys": [{}]}']
)
def test_malformed_store(store: Path, envelope: Envelope, clock: FakeClock, content: str) -> None:
    store.mkdir(parents=True)
    path = store / "keys.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(SigningKeyError, match="malformed"):
        make_ring(store, envelope, clock)


def test_changes_by_another_process_are_picked_up(
    ring: SigningKeyring, store: Path, envelope: Envelope, clock: FakeClock
) -> None:
    server = ring
    old = server.ensure_key()
    cli = make_ring(store, envelope, clock)  # e.g. `onegate keys rotate`
    new = cli.rotate()
    assert new not in {k["kid"] for k in server.jwks()["keys"]}  # not re-read yet
    clock.advance(1)  # refresh_seconds
    assert [k["kid"] for k in server.jwks()["keys"]] == [old, new]
    clock.advance(PREPUBLISH)
    assert kid_of(server.sign(claims(clock))) == new
    assert kid_of(cli.sign(claims(clock))) == new


def test_rotation_by_two_writers_loses_nothing(
    ring: SigningKeyring, store: Path, envelope: Envelope, clock: FakeClock
) -> None:
    other = make_ring(store, envelope, clock)
    a = ring.rotate()
    b = other.rotate()  # other's snapshot predates a: the write must re-read under the lock
    kids = {k.kid for k in make_ring(store, envelope, clock).list_keys()}
    assert {a, b} <= kids
    assert len(kids) == 3


def test_parsed_keys_are_cached(
    ring: SigningKeyring, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = serialization.load_der_private_key

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(signing_module.serialization, "load_der_private_key", counting)
    for _ in range(20):
        ring.verify(ring.sign(claims(clock)))
    assert calls == []
    ring.rotate()  # a new key is generated, not parsed; existing ones stay cached
    clock.advance(PREPUBLISH)
    for _ in range(5):
        ring.verify(ring.sign(claims(clock)))
    assert calls == []


def test_repr_has_no_secrets(ring: SigningKeyring) -> None:
    text = repr(ring)
    assert "active" in text
    assert "PRIVATE" not in text


async def test_usable_from_async_code(ring: SigningKeyring, clock: FakeClock) -> None:
    kid = await asyncio.to_thread(ring.rotate, immediate=True)  # key generation off the loop
    token = ring.sign(claims(clock))
    assert kid_of(token) == kid
    assert ring.verify(token)["sub"] == "u1"


def test_state_enum_values() -> None:
    assert [s.value for s in KeyState] == ["pending", "active", "retired"]


def test_revoke_removes_a_compromised_key_at_once(ring: SigningKeyring, clock: FakeClock) -> None:
    old = ring.ensure_key()
    token = ring.sign(claims(clock))
    with pytest.raises(SigningKeyError, match="rotate\\(immediate=True\\) first"):
        ring.revoke(old)
    new = ring.rotate(immediate=True)
    ring.revoke(old)
    assert states(ring) == {new: "active"}
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new]
    with pytest.raises(TokenInvalid, match="unknown kid"):
        ring.verify(token)
    with pytest.raises(SigningKeyError, match="no signing key"):
        ring.revoke(old)
