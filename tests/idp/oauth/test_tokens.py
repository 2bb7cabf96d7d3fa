"""idp.tokens: what is accepted as an ID token hint or an access token, and nothing else."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.kv import MemoryKV
from core.settings import IdpSettings
from idp.errors import IdTokenHintInvalid, TokenRejected
from idp.tokens import TokenService, at_hash
from keyvault import ALGORITHMS, init_keyvault
from tests.idp.oauth.conftest import ISSUER, OP, b64_json


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value).encode())


def _id_token(op: OP, **overrides: Any) -> str:
    claims = {"sub": "u-1", "sid": "s-1", "auth_time": int(op.clock()), **overrides}
    return op.tokens.id_token(client_id="oa-app", lifetime=300, claims=claims)


def test_a_valid_hint_is_accepted(op: OP) -> None:
    claims = op.tokens.verify_id_token_hint(_id_token(op))
    assert claims["sub"] == "u-1" and claims["aud"] == "oa-app" and claims["iss"] == ISSUER


def test_an_expired_hint_is_accepted(op: OP) -> None:
    token = _id_token(op)
    op.clock.advance(6 * 3600)
    assert op.tokens.verify_id_token_hint(token)["sid"] == "s-1"


def _forged(op: OP, kind: str) -> str:
    genuine = _id_token(op)
    header_segment, payload_segment, signature = genuine.split(".")
    header, payload = b64_json(header_segment), b64_json(payload_segment)
    if kind == "tampered":
        return f"{header_segment}.{_segment({**payload, 'sub': 'someone-else'})}.{signature}"
    if kind == "alg-none":
        return f"{_segment({**header, 'alg': 'none'})}.{payload_segment}."
    if kind == "hs256-with-public-key":
        # The key-confusion attack: an HMAC keyed with our public key, which anyone can fetch.
        jwk = next(k for k in op.vault.signing.jwks()["keys"] if k["kid"] == header["kid"])
        x, y = (int.from_bytes(base64.urlsafe_b64decode(jwk[c] + "=="), "big") for c in ("x", "y"))
        public = (
            ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        signing_input = f"{_segment({**header, 'alg': 'HS256'})}.{payload_segment}"
        mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"
    if kind == "access-token":
        return op.tokens.access_token(client_id="oa-app", sub="u-1", scope="openid", lifetime=60)
    if kind == "logout-token":
        return op.tokens.logout_token(client_id="oa-app", sub="u-1", sid="s-1")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["tampered", "alg-none", "hs256-with-public-key", "access-token", "logout-token"]
)
def test_forged_or_foreign_hints_are_refused(op: OP, kind: str) -> None:
    with pytest.raises(IdTokenHintInvalid):
        op.tokens.verify_id_token_hint(_forged(op, kind))


def test_a_hint_signed_by_another_issuers_keys_is_refused(op: OP, tmp_path: Path) -> None:
    other = init_keyvault(tmp_path / "other", prepublish_seconds=0, retire_after_seconds=0, environ={})
    stranger = TokenService(
        issuer=ISSUER, kv=MemoryKV(), signing=other.signing, settings=IdpSettings(issuer=ISSUER)
    )
    with pytest.raises(IdTokenHintInvalid):
        op.tokens.verify_id_token_hint(
            stranger.id_token(client_id="oa-app", lifetime=60, claims={"sub": "u"})
        )


def test_a_hint_issued_in_the_future_is_refused(op: OP) -> None:
    op.clock.advance(3600)
    token = _id_token(op)
    op.clock.advance(-3600)
    with pytest.raises(IdTokenHintInvalid):
        op.tokens.verify_id_token_hint(token)


def test_an_id_token_is_not_an_access_token(op: OP) -> None:
    with pytest.raises(TokenRejected):
        op.tokens.verify_access_token(_id_token(op))
    access = op.tokens.access_token(client_id="oa-app", sub="u-1", scope="openid", lifetime=60)
    assert op.tokens.verify_access_token(access)["client_id"] == "oa-app"
    op.clock.advance(61)
    with pytest.raises(TokenRejected):
        op.tokens.verify_access_token(access)


def test_at_hash_is_the_left_half_of_sha256() -> None:
    # OIDC Core §3.1.3.6; every algorithm the keyring signs with uses SHA-256.
    assert set(ALGORITHMS) <= {"ES256", "RS256"}
    digest = hashlib.sha256(b"token").digest()[:16]
    assert at_hash("token") == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_logout_tokens_follow_the_backchannel_profile(op: OP) -> None:
    token = op.tokens.logout_token(client_id="oa-app", sub="u-1", sid="s-1")
    header, claims = b64_json(token.split(".")[0]), b64_json(token.split(".")[1])
    assert header["typ"] == "logout+jwt"
    assert "nonce" not in claims
    assert claims["events"] == {"http://schemas.openid.net/event/backchannel-logout": {}}
    assert claims["exp"] - claims["iat"] <= 120
    assert {"iss", "aud", "iat", "jti", "sid", "sub"} <= set(claims)
