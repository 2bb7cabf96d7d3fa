"""The MFA events of the WebAuthn ceremonies and credential management (:mod:`mfa.events`,
method ``webauthn``): mfa-enrolled, mfa-verified, mfa-failed (reason), mfa-clone-suspected,
mfa-removed, mfa-reset. An event never carries a challenge, a key or a user handle."""

from __future__ import annotations

from typing import Any

from core.events import EventEmitter
from mfa.events import mfa_event

__all__ = ["METHOD", "emit_event"]

METHOD = "webauthn"


def emit_event(
    events: EventEmitter | None, action: str, *, success: bool, user_id: int | None, **fields: Any
) -> None:
    """Emit one MFA event to ``events``, when there is an emitter."""
    if events is not None:
        events.emit(mfa_event(action, success=success, user_id=user_id, method=METHOD, **fields))
