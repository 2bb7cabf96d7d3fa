"""The MFA services of one deployment, built once at assembly time from the settings.

:class:`MfaServices` bundles TOTP, recovery codes and WebAuthn with what they share (database,
KV store, keyvault envelope, clock, event emitter) and answers the questions the sign-in pages
ask of all three at once: which factors does this user have, and reset them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import EventEmitter
from core.kv import KV
from core.settings import MfaSettings
from keyvault import Envelope
from mfa.events import mfa_event
from mfa.recovery import CodeHasher, RecoveryCodes
from mfa.totp import TotpService
from mfa.webauthn import WebAuthnService

__all__ = ["Factors", "MfaServices", "webauthn_origins", "webauthn_rp_id"]


@dataclass(frozen=True, slots=True)
class Factors:
    """How many of each factor a user has (recovery codes: unused ones)."""

    totp: int = 0
    webauthn: int = 0
    recovery_left: int = 0

    @property
    def any(self) -> bool:
        """Whether the user has a second factor to sign in with (recovery codes alone are not one)."""
        return self.totp > 0 or self.webauthn > 0

    @property
    def count(self) -> int:
        return self.totp + self.webauthn


def webauthn_rp_id(settings: MfaSettings, issuer: str) -> str:
    """The configured RP id, else the issuer's host name (WebAuthn L3 §5.1.3: an RP id is a domain)."""
    return settings.webauthn_rp_id or (urlsplit(issuer).hostname or "localhost")


def webauthn_origins(settings: MfaSettings, issuer: str) -> tuple[str, ...]:
    """The configured origins, else the issuer's own origin (scheme, host and port, exactly)."""
    if settings.webauthn_origins:
        return tuple(o.rstrip("/") for o in settings.webauthn_origins)
    parts = urlsplit(issuer)
    return (f"{parts.scheme}://{parts.netloc}",)


@dataclass(frozen=True)
class MfaServices:
    totp: TotpService
    recovery: RecoveryCodes
    webauthn: WebAuthnService
    settings: MfaSettings
    events: EventEmitter | None = None

    @classmethod
    def build(
        cls,
        settings: MfaSettings,
        *,
        issuer: str,
        db: async_sessionmaker[Any],
        kv: KV,
        envelope: Envelope,
        hasher: CodeHasher,
        events: EventEmitter | None = None,
        clock: Callable[[], float] = time.time,
        rp_name: str = "OneGate",
    ) -> MfaServices:
        """The services as the settings describe them, for the IdP whose issuer URL is ``issuer``."""
        return cls(
            totp=TotpService(
                db,
                envelope,
                kv,
                clock=clock,
                issuer_name=settings.totp_issuer,
                max_failures=settings.totp_max_failures,
                failure_window=settings.totp_failure_window,
                events=events,
            ),
            recovery=RecoveryCodes(db, hasher, clock=clock, events=events),
            webauthn=WebAuthnService(
                db,
                kv,
                rp_id=webauthn_rp_id(settings, issuer),
                rp_name=rp_name,
                origins=webauthn_origins(settings, issuer),
                user_verification=settings.webauthn_user_verification,
                attestation=settings.webauthn_attestation,
                aaguid_allowlist=settings.webauthn_aaguids,
                challenge_ttl=settings.webauthn_challenge_ttl,
                clock=clock,
                events=events,
            ),
            settings=settings,
            events=events,
        )

    async def factors(self, user_id: int) -> Factors:
        return Factors(
            totp=len(await self.totp.list(user_id)),
            webauthn=len(await self.webauthn.list(user_id)),
            recovery_left=await self.recovery.remaining(user_id),
        )

    async def reset(self, user_id: int, *, actor: str | None = None) -> Factors:
        """An administrator's reset: every factor, pending enrolment and recovery code goes.

        Returns what was removed; emits one ``mfa-reset`` event naming the actor.
        """
        removed = Factors(
            totp=await self.totp.remove_all(user_id, emit=False),
            webauthn=await self.webauthn.remove_all(user_id, emit=False),
            recovery_left=await self.recovery.remove_all(user_id, emit=False),
        )
        if self.events is not None:
            extra: dict[str, Any] = {
                "onegate__mfa__removed": removed.totp + removed.webauthn,
                "onegate__mfa__recovery_removed": removed.recovery_left,
            }
            if actor:
                extra["labels__actor"] = actor
            self.events.emit(mfa_event("mfa-reset", success=True, user_id=user_id, method="all", **extra))
        return removed
