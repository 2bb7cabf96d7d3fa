"""JWS primitives for :mod:`keyvault.signing`: encodings, algorithms, thumbprints, time checks.

Specs: JWS RFC 7515 (https://www.rfc-editor.org/rfc/rfc7515): base64url (§2), compact
serialization (§3.1, §7.1); JWK RFC 7517; JWA RFC 7518: ES256 (§3.4), RS256 (§3.3) and their
JWK members (§6.2.1, §6.3.1); JWK thumbprint RFC 7638 (§3); JWT RFC 7519: duplicate members
(§7.2), ``exp`` (§4.1.4) and ``nbf`` (§4.1.5).

Parsing is strict, so one token has exactly one accepted spelling: base64url without padding
and with zero trailing bits, JSON objects without duplicate member names or the non-JSON
constants ``NaN``/``Infinity``. Malformed input raises :class:`~keyvault.errors.TokenInvalid`
(:func:`check_times` also its subclasses ``TokenExpired`` and ``TokenNotYetValid``); the
algorithm classes raise :class:`~keyvault.errors.SigningKeyError` for a key of the wrong type
and ``cryptography``'s ``InvalidSignature`` when a signature does not verify.

These are building blocks, not a JWS library: which keys to trust, which algorithm a key
uses and which header parameters are acceptable is decided by
:class:`~keyvault.signing.SigningKeyring` (RFC 8725 §3.1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from keyvault.errors import SigningKeyError, TokenExpired, TokenInvalid, TokenNotYetValid

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_BY_NAME",
    "ES256",
    "MAX_TOKEN_LENGTH",
    "MIN_RSA_KEY_SIZE",
    "RS256",
    "Algorithm",
    "PrivateKey",
    "PublicKey",
    "b64url_decode",
    "b64url_encode",
    "check_times",
    "decode_json_segment",
    "encode_json_segment",
    "parse_json_object",
    "split_compact",
    "thumbprint",
]

ALGORITHMS: Final = ("ES256", "RS256")
MIN_RSA_KEY_SIZE: Final = 2048  # RFC 7518 §3.3: "a key of size 2048 bits or larger MUST be used"
MAX_TOKEN_LENGTH: Final = 16 * 1024  # refuse oversized tokens before any parsing work

_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


# -- base64url and JSON, strictly ----------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str, what: str) -> bytes:
    """Decode canonical unpadded base64url; ``what`` names the segment in the error."""
    # RFC 7515 §2: base64url without padding. Refuse anything else, including non-canonical
    # trailing bits, so one token has exactly one spelling (replay caches key on it).
    if not _B64URL_RE.fullmatch(segment) or len(segment) % 4 == 1:
        raise TokenInvalid(f"{what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as e:
        raise TokenInvalid(f"{what} is not base64url") from e
    if b64url_encode(raw) != segment:
        raise TokenInvalid(f"{what} is not canonical base64url")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §5.2 step 3 / RFC 7519 §7.2 step 4: reject duplicate member names rather than
    # let two parsers disagree about which one counts.
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise TokenInvalid(f"duplicate JSON member {name[:40]!r}")
        out[name] = value
    return out


def _reject_constant(name: str) -> Any:
    raise TokenInvalid(f"non-JSON number {name}")


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse a UTF-8 JSON object, refusing duplicate members and ``NaN``/``Infinity``."""
    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise TokenInvalid(f"{what} is not JSON") from e
    if not isinstance(value, dict):
        raise TokenInvalid(f"{what} is not a JSON object")
    return value


# -- compact serialization (RFC 7515 §3.1, §7.1) --------------------------------------------------


def split_compact(token: str) -> tuple[str, str, str]:
    """The three segments (header, payload, signature) of a compact JWS, before any decoding."""
    if not isinstance(token, str):
        raise TokenInvalid("token must be a string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid(f"token longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:  # also refuses JWE (5 parts) and JWS JSON serialization
        raise TokenInvalid("not a compact JWS (expected three dot-separated parts)")
    return parts[0], parts[1], parts[2]


def decode_json_segment(segment: str, what: str) -> dict[str, Any]:
    """A base64url segment holding a JSON object (the protected header or the payload)."""
    return parse_json_object(b64url_decode(segment, what), what)


def encode_json_segment(value: Mapping[str, Any]) -> str:
    """The base64url segment of a JSON object, compact and without non-JSON numbers."""
    return b64url_encode(json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8"))


# -- algorithms (RFC 7518 §3) -------------------------------------------------------------------


class ES256:
    """ECDSA P-256 + SHA-256, RFC 7518 §3.4; JWK members RFC 7518 §6.2.1."""

    name = "ES256"

    def generate(self, rsa_key_size: int) -> PrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def check_key(self, key: object) -> PrivateKey:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise SigningKeyError("ES256 needs a P-256 EC key")
        return key

    def sign(self, key: PrivateKey, data: bytes) -> bytes:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SigningKeyError("ES256 needs an EC key")
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        # JWS wants the fixed-width R || S form (§3.4), not the DER that cryptography returns.
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify(self, key: PublicKey, data: bytes, signature: bytes) -> None:
        if not isinstance(key, ec.EllipticCurvePublicKey) or len(signature) != 64:
            raise InvalidSignature
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))

    def jwk_members(self, key: PublicKey) -> dict[str, str]:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SigningKeyError("ES256 needs an EC key")
        nums = key.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url_encode(nums.x.to_bytes(32, "big")),
            "y": b64url_encode(nums.y.to_bytes(32, "big")),
        }


class RS256:
    """RSASSA-PKCS1-v1_5 + SHA-256, RFC 7518 §3.3; JWK members RFC 7518 §6.3.1."""

    name = "RS256"

    def generate(self, rsa_key_size: int) -> PrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_key_size)

    def check_key(self, key: object) -> PrivateKey:
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < MIN_RSA_KEY_SIZE:
            raise SigningKeyError(f"RS256 needs an RSA key of at least {MIN_RSA_KEY_SIZE} bits")
        return key

    def sign(self, key: PrivateKey, data: bytes) -> bytes:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SigningKeyError("RS256 needs an RSA key")
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def verify(self, key: PublicKey, data: bytes, signature: bytes) -> None:
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidSignature
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())

    def jwk_members(self, key: PublicKey) -> dict[str, str]:
        if not isinstance(key, rsa.RSAPublicKey):
            raise SigningKeyError("RS256 needs an RSA key")
        nums = key.public_numbers()
        # RFC 7518 §6.3.1.1: n is unsigned big-endian with no leading zero octets.
        return {
            "kty": "RSA",
            "n": b64url_encode(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
            "e": b64url_encode(nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")),
        }


Algorithm = ES256 | RS256

ALGORITHM_BY_NAME: Final[Mapping[str, Algorithm]] = {"ES256": ES256(), "RS256": RS256()}


def thumbprint(members: Mapping[str, str]) -> str:
    """RFC 7638 §3: SHA-256 over the required members, sorted, no whitespace."""
    required = ("crv", "kty", "x", "y") if members["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({k: members[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


# -- claims (RFC 7519 §4.1) ----------------------------------------------------------------------


def check_times(claims: Mapping[str, Any], now: float, leeway: float, require_exp: bool) -> None:
    """RFC 7519 §4.1.4 (exp: now must be before it) and §4.1.5 (nbf: now must not be before it)."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TokenInvalid(f"claim {name} must be a NumericDate")
    try:
        exp = _optional_float(claims.get("exp"))
        nbf = _optional_float(claims.get("nbf"))
    except OverflowError as e:  # an integer too large for a float
        raise TokenInvalid("NumericDate out of range") from e
    if exp is None:
        if require_exp:
            raise TokenInvalid("claim exp is required")
    elif now >= exp + leeway:
        raise TokenExpired("token has expired")
    if nbf is not None and now + leeway < nbf:
        raise TokenNotYetValid("token is not valid yet")


def _optional_float(value: Any) -> float | None:
    # Only called on values check_times has type-checked: None or a non-bool int/float.
    return None if value is None else float(value)
