"""What the WebAuthn service answers: why a ceremony was refused, the options a ceremony sends to
the browser, the outcome of a registration (WebAuthn L3 §7.1) or an assertion (§7.2), and a
credential as its owner sees it (https://www.w3.org/TR/webauthn-3/).

``amr`` values are RFC 8176 methods (:mod:`mfa.levels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from fido2.webauthn import AuthenticatorData

from mfa.levels import AMR_HWK, AMR_PIN, AMR_SWK, AMR_USER

__all__ = [
    "AssertionResult",
    "Ceremony",
    "RegistrationResult",
    "WebAuthnCredentialInfo",
    "WebAuthnReason",
    "amr_of",
]


class WebAuthnReason(StrEnum):
    """Why a ceremony was refused (closed vocabulary, in events as ``onegate.reason``)."""

    INVALID = "invalid"  # malformed response, bad signature, wrong type, ...
    CHALLENGE = "challenge"  # unknown, expired, reused or someone else's ceremony
    ORIGIN = "origin"  # origin not in the exact allow-list (or a cross-origin iframe)
    RP_ID = "rp_id"  # rpIdHash mismatch
    USER_VERIFICATION = "user_verification"  # UV required but not performed / UP missing
    UNKNOWN_CREDENTIAL = "unknown_credential"  # not registered, or not this user's
    COUNTER = "counter"  # signature counter did not increase (possible clone)
    DUPLICATE = "duplicate"  # credential id already registered (to anyone)
    AUTHENTICATOR_NOT_ALLOWED = "authenticator_not_allowed"  # AAGUID not in the allow-list


@dataclass(frozen=True, slots=True)
class Ceremony:
    """What the page sends to the browser: ``options`` is the ``publicKey`` member of
    ``navigator.credentials.create/get`` (JSON-ready, binary fields base64url without padding,
    as ``PublicKeyCredential.parseCreationOptionsFromJSON`` takes them); ``id`` is opaque, single
    use and bound to the user (or to a discoverable sign-in) — keep it out of the script's reach."""

    id: str
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RegistrationResult:
    """The outcome of :meth:`WebAuthnService.finish_registration`; ``credential_id`` is the new
    ``webauthn_credentials.id``, ``amr`` what the registering gesture proved."""

    ok: bool
    reason: WebAuthnReason | None = None
    credential_id: int | None = None
    amr: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AssertionResult:
    """The outcome of :meth:`WebAuthnService.finish_authentication`.

    On success ``user_id`` is the credential's owner and ``amr`` its methods (``hwk``/``swk``,
    ``user``, ``pin``). On a failure after the credential was identified, ``user_id`` and
    ``credential_id`` name it (the owner is then only *claimed*: nothing was proven).
    """

    ok: bool
    reason: WebAuthnReason | None = None
    user_id: int | None = None
    credential_id: int | None = None
    amr: tuple[str, ...] = ()
    user_verified: bool = False


@dataclass(frozen=True, slots=True)
class WebAuthnCredentialInfo:
    """A credential as listed to its owner or an admin (never the key or the user handle)."""

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    discoverable: bool
    backup_eligible: bool
    aaguid: str


def amr_of(flags: AuthenticatorData.FLAG, backup_eligible: bool) -> tuple[str, ...]:
    """RFC 8176 methods of one WebAuthn gesture (mfa.levels): the key, then what it tested."""
    methods = [AMR_SWK if backup_eligible else AMR_HWK]
    if flags & AuthenticatorData.FLAG.UP:
        methods.append(AMR_USER)
    if flags & AuthenticatorData.FLAG.UV:
        methods.append(AMR_PIN)
    return tuple(methods)
