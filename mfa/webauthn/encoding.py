"""Strict checks of what the browser sends, before fido2 parses it.

The response is the browser's ``PublicKeyCredential.toJSON()`` (WebAuthn L3 §5.1,
https://www.w3.org/TR/webauthn-3/); its shape, base64url encodings (RFC 4648 §5) and sizes are
checked here (a CBOR integer where bytes belong would otherwise make fido2 allocate that many
bytes). Every check answers a value or None, never an exception: bad input becomes a refusal.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from fido2 import cbor
from fido2.webauthn import AuthenticatorTransport, PublicKeyCredentialType

__all__ = [
    "MAX_ATTESTATION_OBJECT",
    "MAX_AUTHENTICATOR_DATA",
    "MAX_CHALLENGE_TEXT",
    "MAX_CLIENT_DATA",
    "MAX_CREDENTIAL_ID",
    "MAX_ORIGIN",
    "MAX_SIGNATURE",
    "MAX_TRANSPORTS",
    "MAX_USER_HANDLE",
    "TRANSPORTS",
    "attestation_object",
    "b64decode",
    "b64encode",
    "client_data",
    "credential_fields",
    "json_ready",
    "transports",
]

TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)

# Size limits on what a browser sends (bytes after base64url decoding). Real values are far below
# them; the limits keep a hostile request from costing memory or CPU.
MAX_CREDENTIAL_ID = 1023  # §7.1: a credential id is at most 1023 bytes
MAX_CLIENT_DATA = 8 * 1024
MAX_ATTESTATION_OBJECT = 32 * 1024
MAX_AUTHENTICATOR_DATA = 16 * 1024
MAX_SIGNATURE = 2048
MAX_USER_HANDLE = 64
MAX_CHALLENGE_TEXT = 512
MAX_ORIGIN = 2048
MAX_TRANSPORTS = 16
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def b64encode(data: bytes) -> str:
    """Base64url without padding (RFC 4648 §5), the spelling WebAuthn's JSON forms use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(value: object, limit: int) -> bytes | None:
    """Strict base64url (RFC 4648 §5; correct padding tolerated, nothing else): the bytes, or None.

    Non-canonical encodings (stray bits in the last character) are refused too, so one value
    has one spelling — a credential id cannot be presented in two forms.
    """
    if not isinstance(value, str) or len(value) > (limit * 4 + 2) // 3 + 2:
        return None
    if not _B64URL.fullmatch(value) or ("=" in value and len(value) % 4):
        return None
    text = value.rstrip("=")
    if len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(data) > limit or b64encode(data) != text:
        return None
    return data


def client_data(value: object) -> tuple[str, bool] | None:
    """``clientDataJSON`` (§5.8.1) checked enough for fido2 to parse it safely — fido2 would
    decode a non-string challenge with ``bytes(value)`` — as (canonical base64url text, whether
    it comes from a cross-origin iframe), or None."""
    raw = b64decode(value, MAX_CLIENT_DATA)
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    challenge, origin, cross_origin = (
        data.get("challenge"),
        data.get("origin"),
        data.get("crossOrigin", False),
    )
    if not isinstance(data.get("type"), str) or not isinstance(origin, str) or len(origin) > MAX_ORIGIN:
        return None
    if b64decode(challenge, MAX_CHALLENGE_TEXT) is None or not isinstance(cross_origin, bool):
        return None
    return b64encode(raw), cross_origin or "topOrigin" in data


def attestation_object(value: object) -> str | None:
    """The attestation object (§6.5) checked for its outer CBOR shape; canonical text or None."""
    raw = b64decode(value, MAX_ATTESTATION_OBJECT)
    if raw is None or not raw:
        return None
    try:
        data = cbor.decode(raw)
    except Exception:  # fido2's CBOR decoder raises whatever the bytes provoke; all mean "invalid"
        return None
    if not isinstance(data, dict):
        return None
    fmt, auth_data, statement = data.get("fmt"), data.get("authData"), data.get("attStmt")
    if not isinstance(fmt, str) or len(fmt) > 32 or not isinstance(statement, dict):
        return None
    if not isinstance(auth_data, bytes) or not 37 <= len(auth_data) <= MAX_ATTESTATION_OBJECT:
        return None
    return b64encode(raw)


def credential_fields(response: object) -> tuple[Mapping[str, Any], Mapping[str, Any], str] | None:
    """The outer ``PublicKeyCredential`` JSON (§5.1): (credential, its response, canonical rawId)."""
    if not isinstance(response, Mapping):
        return None
    if response.get("type") != PublicKeyCredentialType.PUBLIC_KEY.value:
        return None
    raw_id = b64decode(response.get("rawId"), MAX_CREDENTIAL_ID)
    if raw_id is None or not raw_id:
        return None
    # ``id`` is the base64url of ``rawId``; both are sent, and they must agree.
    if "id" in response and b64decode(response.get("id"), MAX_CREDENTIAL_ID) != raw_id:
        return None
    inner = response.get("response")
    if not isinstance(inner, Mapping):
        return None
    attachment = response.get("authenticatorAttachment")
    if attachment is not None and not isinstance(attachment, str):
        return None
    extensions = response.get("clientExtensionResults")
    if extensions is not None and not isinstance(extensions, Mapping):
        return None
    return response, inner, b64encode(raw_id)


def transports(value: object) -> list[str] | None:
    """``getTransports()`` (§5.2.1): hints, kept when known; None when malformed."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TRANSPORTS:
        return None
    if not all(isinstance(t, str) and len(t) <= 32 for t in value):
        return None
    return sorted({t for t in value if t in TRANSPORTS})


def json_ready(options: Mapping[str, Any]) -> dict[str, Any]:
    # fido2's option objects serialise binary members as base64url when turned into dicts; one
    # round trip leaves plain JSON values (no enums, no fido2 types) for the page to send as is.
    plain: dict[str, Any] = json.loads(json.dumps(dict(options)))
    return plain
