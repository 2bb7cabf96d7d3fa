"""A refusal on its way to a result, and the reasons fido2's errors stand for.

Inside a ceremony a failed check raises :class:`Refused`; the ceremony's public method turns it
into a :class:`~mfa.webauthn.results.RegistrationResult` or
:class:`~mfa.webauthn.results.AssertionResult` with its reason, so bad input is a result, never
an exception, for the caller.
"""

from __future__ import annotations

from mfa.models import WebAuthnCredential
from mfa.webauthn.results import WebAuthnReason

__all__ = ["Refused", "fido2_reason"]


class Refused(Exception):
    """A refusal; ``row`` is the credential when it was identified (the event then names it)."""

    def __init__(
        self,
        reason: WebAuthnReason,
        row: WebAuthnCredential | None = None,
        *,
        received: int = 0,
        stored: int = 0,
    ) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.row = row
        self.received = received
        self.stored = stored


# fido2 says what failed only in its messages; they are mapped here, in one place, and the tests
# cover each mapping (a fido2 upgrade that rewords one makes a test fail, not a check vanish:
# anything unrecognised is ``invalid``, still a refusal).
_FIDO2_MESSAGES: tuple[tuple[str, WebAuthnReason], ...] = (
    ("Incorrect type", WebAuthnReason.INVALID),
    ("Invalid origin", WebAuthnReason.ORIGIN),
    ("Wrong challenge", WebAuthnReason.CHALLENGE),
    ("Wrong RP ID hash", WebAuthnReason.RP_ID),
    ("User Present flag not set", WebAuthnReason.USER_VERIFICATION),
    ("User verification required", WebAuthnReason.USER_VERIFICATION),
    ("Invalid signature", WebAuthnReason.INVALID),
    ("Unknown credential ID", WebAuthnReason.UNKNOWN_CREDENTIAL),
)


def fido2_reason(error: Exception) -> WebAuthnReason:
    """The reason a fido2 ``ValueError`` stands for (``invalid`` when its message is unknown)."""
    message = str(error)
    for prefix, reason in _FIDO2_MESSAGES:
        if message.startswith(prefix):
            return reason
    return WebAuthnReason.INVALID
