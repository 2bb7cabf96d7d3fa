"""Ceremony state between begin and finish (WebAuthn L3 §7.1 / §7.2: the challenge must be the one
the RP sent), kept in KV under ``mfa:webauthn:<ceremony id>`` with its kind, its user (or
"discoverable"), the user-verification requirement and an expiry.

A ceremony is single use: finishing takes it with ``get_and_delete``, so a second finish of the
same ceremony, a ceremony of another user or of the other kind, or an expired one is refused as
``challenge``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fido2.webauthn import UserVerificationRequirement

from core.kv import KV
from mfa.webauthn.encoding import b64encode
from mfa.webauthn.refusals import Refused
from mfa.webauthn.results import WebAuthnReason

__all__ = ["AUTHENTICATION", "CHALLENGE_BYTES", "REGISTRATION", "Ceremonies", "CeremonyState"]

REGISTRATION = "registration"
AUTHENTICATION = "authentication"
CHALLENGE_BYTES = 32  # at least 16 (§13.4.3)
_KEY_PREFIX = "mfa:webauthn:"
_CEREMONY_ID_BYTES = 32
_CEREMONY_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")


@dataclass(frozen=True, slots=True)
class CeremonyState:
    """A ceremony as kept in KV between begin and finish."""

    kind: str
    user_id: int | None  # None: a discoverable (passwordless) authentication
    challenge: str  # base64url
    user_verification: str
    expires_at: float
    user_handle: str | None = None  # registration: the handle given to the authenticator
    discoverable: bool = False  # registration: residentKey "required" was asked

    def encode(self) -> bytes:
        return json.dumps(
            {
                "kind": self.kind,
                "user": self.user_id,
                "challenge": self.challenge,
                "uv": self.user_verification,
                "exp": self.expires_at,
                "handle": self.user_handle,
                "rk": self.discoverable,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CeremonyState | None:
        try:
            data = json.loads(raw)
            user = data["user"]
            state = cls(
                kind=str(data["kind"]),
                user_id=None if user is None else int(user),
                challenge=str(data["challenge"]),
                user_verification=str(data["uv"]),
                expires_at=float(data["exp"]),
                user_handle=None if data.get("handle") is None else str(data["handle"]),
                discoverable=bool(data.get("rk", False)),
            )
        except (ValueError, TypeError, KeyError):
            return None
        return state

    def for_fido2(self) -> dict[str, Any]:
        # The state shape Fido2Server.register_complete / authenticate_complete expect.
        return {
            "challenge": self.challenge,
            "user_verification": UserVerificationRequirement(self.user_verification),
        }


class Ceremonies:
    """The open ceremonies in ``kv``: each lives ``ttl`` seconds by the KV's TTL and by ``clock``."""

    def __init__(
        self, kv: KV, *, ttl: int, clock: Callable[[], float], token_bytes: Callable[[int], bytes]
    ) -> None:
        self._kv = kv
        self._ttl = ttl
        self._clock = clock
        self._token_bytes = token_bytes

    def expiry(self) -> float:
        """When a ceremony begun now expires (``expires_at``)."""
        return self._clock() + self._ttl

    async def store(self, state: CeremonyState) -> str:
        """Keep ``state`` under a new random ceremony id; the id."""
        ceremony_id = b64encode(self._token_bytes(_CEREMONY_ID_BYTES))
        await self._kv.set(_KEY_PREFIX + ceremony_id, state.encode(), ttl=self._ttl)
        return ceremony_id

    async def take(self, ceremony_id: object, kind: str, user_id: int | None) -> CeremonyState:
        """The ceremony, consumed; refused (``challenge``) when it is not this user's of this kind."""
        if not isinstance(ceremony_id, str) or not _CEREMONY_ID.fullmatch(ceremony_id):
            raise Refused(WebAuthnReason.CHALLENGE)
        # get_and_delete: whatever follows, this ceremony cannot be finished again.
        raw = await self._kv.get_and_delete(_KEY_PREFIX + ceremony_id)
        state = CeremonyState.decode(raw) if raw is not None else None
        if (
            state is None
            or state.kind != kind
            or state.user_id != user_id
            or self._clock() >= state.expires_at  # our clock, not only the KV's TTL
        ):
            raise Refused(WebAuthnReason.CHALLENGE)
        return state
