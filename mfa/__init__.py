"""Multi-factor authentication services: TOTP (RFC 6238), WebAuthn (passkeys) and recovery codes.

Sits between ``policy`` and ``idp`` in the dependency order: users are referred to by their
``users.id``; the IdP owns sign-in, pages and lockout. See docs/mfa.md.

The names below are imported from their modules when first used (core.lazy), so a process that
needs only ``mfa.levels`` (the gateway) does not load TOTP, WebAuthn and fido2.
"""

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

if TYPE_CHECKING:
    from mfa.errors import MfaError, UnreadableSecret
    from mfa.events import DATASET, mfa_event
    from mfa.models import RecoveryCode, TotpCredential, WebAuthnCredential
    from mfa.recovery import (
        ALPHABET,
        CODE_COUNT,
        CODE_LENGTH,
        CodeHasher,
        RecoveryCodes,
        RecoveryResult,
        format_code,
        normalise_recovery_code,
    )
    from mfa.totp import (
        DEFAULT_ISSUER,
        Enrolment,
        TotpCredentialInfo,
        TotpReason,
        TotpResult,
        TotpService,
        normalise_code,
        provisioning_uri,
    )
    from mfa.webauthn import (
        AssertionResult,
        Ceremony,
        RegistrationResult,
        WebAuthnCredentialInfo,
        WebAuthnReason,
        WebAuthnService,
    )

__getattr__ = lazy_exports(
    __name__,
    {
        "mfa.errors": ("MfaError", "UnreadableSecret"),
        "mfa.events": ("DATASET", "mfa_event"),
        "mfa.models": ("RecoveryCode", "TotpCredential", "WebAuthnCredential"),
        "mfa.recovery": (
            "ALPHABET",
            "CODE_COUNT",
            "CODE_LENGTH",
            "CodeHasher",
            "RecoveryCodes",
            "RecoveryResult",
            "format_code",
            "normalise_recovery_code",
        ),
        "mfa.totp": (
            "DEFAULT_ISSUER",
            "Enrolment",
            "TotpCredentialInfo",
            "TotpReason",
            "TotpResult",
            "TotpService",
            "normalise_code",
            "provisioning_uri",
        ),
        "mfa.webauthn": (
            "AssertionResult",
            "Ceremony",
            "RegistrationResult",
            "WebAuthnCredentialInfo",
            "WebAuthnReason",
            "WebAuthnService",
        ),
    },
)

__all__ = [
    "ALPHABET",
    "CODE_COUNT",
    "CODE_LENGTH",
    "DATASET",
    "DEFAULT_ISSUER",
    "AssertionResult",
    "Ceremony",
    "CodeHasher",
    "Enrolment",
    "MfaError",
    "RecoveryCode",
    "RecoveryCodes",
    "RecoveryResult",
    "RegistrationResult",
    "TotpCredential",
    "TotpCredentialInfo",
    "TotpReason",
    "TotpResult",
    "TotpService",
    "UnreadableSecret",
    "WebAuthnCredential",
    "WebAuthnCredentialInfo",
    "WebAuthnReason",
    "WebAuthnService",
    "format_code",
    "mfa_event",
    "normalise_code",
    "normalise_recovery_code",
    "provisioning_uri",
]
