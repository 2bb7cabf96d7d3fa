"""MFA security events (ECS), one constructor so that emitters cannot drift.

Actions (``event.action``): ``mfa-enrolled``, ``mfa-verified``, ``mfa-failed``
(``onegate.reason`` invalid / rate_limited, or a WebAuthn reason), ``mfa-replayed``,
``mfa-clone-suspected`` (a WebAuthn signature counter did not increase), ``recovery-code-used``
(success, with ``onegate.mfa.remaining``; failure), ``recovery-codes-generated``,
``recovery-codes-removed``, ``mfa-removed``, ``mfa-renamed`` and ``mfa-reset``. Dataset
``onegate.mfa``. Events never carry a code or a seed (and note that the event model refuses
field *names* containing "otp": the method is given as the *value* of ``onegate.mfa.method``).
"""

from __future__ import annotations

from typing import Any

from core.events import Category, Event, Outcome

__all__ = ["DATASET", "mfa_event"]

DATASET = "onegate.mfa"

_CATEGORY = {
    "mfa-enrolled": Category.IAM,
    "mfa-verified": Category.AUTHENTICATION,
    "mfa-failed": Category.AUTHENTICATION,
    "mfa-replayed": Category.INTRUSION_DETECTION,
    "mfa-clone-suspected": Category.INTRUSION_DETECTION,
    "recovery-code-used": Category.AUTHENTICATION,
    "recovery-codes-generated": Category.IAM,
    "mfa-removed": Category.IAM,
    "mfa-renamed": Category.IAM,
    "recovery-codes-removed": Category.IAM,
    "mfa-reset": Category.IAM,
}


def mfa_event(
    action: str,
    *,
    success: bool,
    user_id: int | None,
    method: str,
    reason: str | None = None,
    credential_id: int | None = None,
    **extra: Any,
) -> Event:
    """An MFA event; ``extra`` takes further ECS fields with ``__`` for dots (``onegate__mfa__remaining``).

    ``user_id`` is None only when no user is known (a passwordless sign-in with an unknown passkey).
    """
    fields: dict[str, Any] = {"onegate.mfa.method": method}
    if user_id is not None:
        fields["user.id"] = str(user_id)
    if credential_id is not None:
        fields["onegate.mfa.credential_id"] = str(credential_id)
    if reason is not None:
        fields["onegate.reason"] = reason
    fields.update({key.replace("__", "."): value for key, value in extra.items()})
    return Event(
        action=action,
        category=_CATEGORY[action],
        outcome=Outcome.SUCCESS if success else Outcome.FAILURE,
        dataset=DATASET,
        fields=fields,
    )
