"""The :class:`WebAuthnService` facade: one object for the IdP, wiring the relying party, the
ceremony store, the credential table and the two ceremonies (WebAuthn L3 §7.1 / §7.2)."""

from __future__ import annotations

import builtins
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from fido2.webauthn import AuthenticatorData
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import EventEmitter
from core.kv import KV
from mfa.models import WebAuthnCredential
from mfa.webauthn.authentication import Authentication
from mfa.webauthn.ceremonies import Ceremonies
from mfa.webauthn.credentials import Credentials
from mfa.webauthn.registration import Registration
from mfa.webauthn.relying_party import RelyingParty
from mfa.webauthn.results import AssertionResult, Ceremony, RegistrationResult, WebAuthnCredentialInfo

__all__ = ["WebAuthnService"]


class WebAuthnService:
    """WebAuthn registration and authentication for users identified by ``users.id``.

    ``db_sessions`` is an ``async_sessionmaker``; ``kv`` holds the ceremonies. ``rp_id`` is the
    relying party id (a registrable domain, §4 "RP ID" — changing it orphans every credential),
    ``origins`` the exact origins the browser may report. ``user_verification`` is asked of
    authenticators used as a second factor (``required`` / ``preferred`` / ``discouraged``); a
    passwordless sign-in always requires it. ``attestation`` is ``none`` or ``direct``;
    ``aaguid_allowlist``, when not empty, names the only authenticator models allowed to
    register. ``events``, when given, receives the MFA events (:mod:`mfa.events`, method
    ``webauthn``).
    """

    def __init__(
        self,
        db_sessions: async_sessionmaker[Any],
        kv: KV,
        *,
        rp_id: str,
        rp_name: str,
        origins: Sequence[str],
        user_verification: str = "preferred",
        attestation: str = "none",
        aaguid_allowlist: Collection[str] = (),
        challenge_ttl: int = 300,
        clock: Callable[[], float] = time.time,
        events: EventEmitter | None = None,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        # Every setting is checked first, naming the setting in the ValueError.
        self._relying_party = RelyingParty.checked(
            rp_id=rp_id,
            rp_name=rp_name,
            origins=origins,
            user_verification=user_verification,
            attestation=attestation,
            aaguid_allowlist=aaguid_allowlist,
            challenge_ttl=challenge_ttl,
        )
        server = self._relying_party.server()
        self._credentials = Credentials(db_sessions, clock=clock, events=events)
        ceremonies = Ceremonies(kv, ttl=challenge_ttl, clock=clock, token_bytes=token_bytes)
        self._registration = Registration(
            self._relying_party, server, self._credentials, ceremonies, events=events, token_bytes=token_bytes
        )
        self._authentication = Authentication(
            self._relying_party, server, self._credentials, ceremonies, events=events, token_bytes=token_bytes
        )

    # -- registration (§7.1) ----------------------------------------------------------------

    async def begin_registration(
        self, user_id: int, *, username: str, display_name: str, discoverable: bool = True
    ) -> Ceremony:
        """Start registering a credential: the ``publicKey`` creation options (§5.4).

        ``discoverable`` True asks for a passkey (``residentKey: "required"``, usable without a
        user name); False for a security key used as a second factor only. The user's existing
        credentials are listed in ``excludeCredentials`` so an authenticator does not register twice.
        """
        return await self._registration.begin(
            user_id, username=username, display_name=display_name, discoverable=discoverable
        )

    async def finish_registration(
        self, user_id: int, ceremony_id: str, response: Mapping[str, Any], *, name: str
    ) -> RegistrationResult:
        """Check the browser's ``PublicKeyCredential`` JSON and store the credential.

        Never raises for bad input: every refusal is a result with its reason.
        """
        return await self._registration.finish(user_id, ceremony_id, response, name=name)

    # -- authentication (§7.2) --------------------------------------------------------------

    async def begin_authentication(
        self, user_id: int | None, *, user_verification: str | None = None
    ) -> Ceremony:
        """Start an assertion: the ``publicKey`` request options (§5.5).

        With ``user_id`` the user's credentials are in ``allowCredentials`` (a second factor or a
        step-up); ``user_verification`` overrides the configured requirement. With None it is a
        passwordless sign-in with a discoverable credential: no list, and user verification is
        ``required`` whatever was asked (the key is then both factors).
        """
        return await self._authentication.begin(user_id, user_verification=user_verification)

    async def finish_authentication(
        self, ceremony_id: str, response: Mapping[str, Any], *, user_id: int | None = None
    ) -> AssertionResult:
        """Check an assertion (§7.2). ``user_id`` must be the ceremony's user (None for a
        passwordless ceremony: the owner is the credential's, and the returned ``userHandle``
        must be that credential's). Never raises for bad input."""
        return await self._authentication.finish(ceremony_id, response, user_id=user_id)

    # -- management -------------------------------------------------------------------------

    async def is_enrolled(self, user_id: int) -> bool:
        return await self._credentials.is_enrolled(user_id)

    async def list(self, user_id: int) -> builtins.list[WebAuthnCredentialInfo]:
        """The user's credentials, oldest first."""
        return await self._credentials.list(user_id)

    async def rename(self, user_id: int, credential_id: int, name: str) -> bool:
        """Relabel one of the user's credentials; False when it is not theirs."""
        return await self._credentials.rename(user_id, credential_id, name)

    async def remove(self, user_id: int, credential_id: int) -> bool:
        """Remove one of the user's credentials; False when there is no such credential of theirs.

        Whether the user may remove their last factor is the caller's policy decision. The
        authenticator keeps its copy; it simply no longer works here.
        """
        return await self._credentials.remove(user_id, credential_id)

    async def remove_all(self, user_id: int, *, emit: bool = True) -> int:
        """Admin reset: remove every credential of the user; how many there were.

        ``emit=False`` when the caller reports the reset itself (``MfaServices.reset``)."""
        return await self._credentials.remove_all(user_id, emit=emit)

    # -- internals the tests reach (private API on purpose) -------------------------------

    def _origin_allowed(self, origin: object) -> bool:
        return self._relying_party.origin_allowed(origin)

    async def _advance_counter(self, row: WebAuthnCredential, auth_data: AuthenticatorData) -> None:
        await self._credentials.advance_counter(row, auth_data)
