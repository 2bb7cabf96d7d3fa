"""Authentication: WebAuthn Level 3 §7.2 "Verifying an Authentication Assertion"
(https://www.w3.org/TR/webauthn-3/#sctn-verifying-assertion), as a second factor (the user's
credentials listed) or passwordless (a discoverable credential, user verification required).

fido2 checks the client data type, the origin (exact), the challenge, the ``rpIdHash``, the UP /
UV flags and the signature. What it leaves to us, and this module does:

* **Credential binding.** An assertion for a user must use one of that user's credentials, and a
  passwordless one must return the credential's own user handle (§7.2, identifying the user),
  compared in constant time.
* **The signature counter** (§6.1.1) must increase (:meth:`Credentials.advance_counter`); when it
  does not, the event ``mfa-clone-suspected`` is emitted besides ``mfa-failed``.
* **Backup flags** (§6.3.3): BE is fixed for the credential's life, BS may change; ``amr`` is
  ``swk`` for a backup-eligible (syncable) key, ``hwk`` for a device-bound one (mfa.levels).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestedCredentialData,
    AuthenticationResponse,
    AuthenticatorData,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialType,
    UserVerificationRequirement,
)

from core.events import EventEmitter
from mfa.models import WebAuthnCredential
from mfa.webauthn import encoding
from mfa.webauthn.ceremonies import AUTHENTICATION, CHALLENGE_BYTES, Ceremonies, CeremonyState
from mfa.webauthn.credentials import Credentials, descriptor, stored_key
from mfa.webauthn.events import emit_event
from mfa.webauthn.refusals import Refused, fido2_reason
from mfa.webauthn.relying_party import USER_VERIFICATION, RelyingParty
from mfa.webauthn.results import AssertionResult, Ceremony, WebAuthnReason, amr_of

__all__ = ["Authentication"]

log = structlog.get_logger("onegate.mfa")


class Authentication:
    """The authentication ceremony, begin and finish (behind :class:`WebAuthnService`)."""

    def __init__(
        self,
        relying_party: RelyingParty,
        server: Fido2Server,
        credentials: Credentials,
        ceremonies: Ceremonies,
        *,
        events: EventEmitter | None,
        token_bytes: Callable[[int], bytes],
    ) -> None:
        self._relying_party = relying_party
        self._server = server
        self._credentials = credentials
        self._ceremonies = ceremonies
        self._events = events
        self._token_bytes = token_bytes

    async def begin(self, user_id: int | None, *, user_verification: str | None = None) -> Ceremony:
        """The ``publicKey`` request options (§5.5); see :meth:`WebAuthnService.begin_authentication`."""
        if user_verification is not None and user_verification not in USER_VERIFICATION:
            raise ValueError(f"user_verification must be one of {', '.join(USER_VERIFICATION)}")
        if user_id is None:
            requirement = "required"
            credentials: list[PublicKeyCredentialDescriptor] | None = None
        else:
            requirement = user_verification or self._relying_party.user_verification
            credentials = [descriptor(r) for r in await self._credentials.rows(user_id)]
        challenge = self._token_bytes(CHALLENGE_BYTES)
        options, _ = self._server.authenticate_begin(
            credentials=credentials,
            user_verification=UserVerificationRequirement(requirement),
            challenge=challenge,
        )
        state = CeremonyState(
            kind=AUTHENTICATION,
            user_id=user_id,
            challenge=encoding.b64encode(challenge),
            user_verification=requirement,
            expires_at=self._ceremonies.expiry(),
        )
        return Ceremony(
            id=await self._ceremonies.store(state), options=encoding.json_ready(options.public_key)
        )

    async def finish(
        self, ceremony_id: str, response: Mapping[str, Any], *, user_id: int | None = None
    ) -> AssertionResult:
        """Check an assertion; see :meth:`WebAuthnService.finish_authentication`."""
        ceremony = "passwordless" if user_id is None else "second_factor"
        try:
            state = await self._ceremonies.take(ceremony_id, AUTHENTICATION, user_id)
            row, auth_data = await self._assert(state, response)
        except Refused as refused:
            known = refused.row
            owner = known.user_id if known is not None else user_id
            credential_id = known.id if known is not None else None
            if refused.reason is WebAuthnReason.COUNTER:
                emit_event(
                    self._events,
                    "mfa-clone-suspected",
                    success=False,
                    user_id=owner,
                    reason=refused.reason.value,
                    credential_id=credential_id,
                    onegate__mfa__sign_count=refused.received,
                    onegate__mfa__stored_sign_count=refused.stored,
                )
                log.warning(
                    "WebAuthn signature counter did not increase: possible cloned authenticator",
                    user_id=owner,
                    credential_id=credential_id,
                    received=refused.received,
                    stored=refused.stored,
                )
            emit_event(
                self._events,
                "mfa-failed",
                success=False,
                user_id=owner,
                reason=refused.reason.value,
                credential_id=credential_id,
                onegate__mfa__ceremony=ceremony,
            )
            return AssertionResult(
                ok=False, reason=refused.reason, user_id=owner, credential_id=credential_id
            )
        verified = auth_data.is_user_verified()
        emit_event(
            self._events,
            "mfa-verified",
            success=True,
            user_id=row.user_id,
            credential_id=row.id,
            onegate__mfa__ceremony=ceremony,
            onegate__mfa__user_verified=verified,
            onegate__mfa__sign_count=auth_data.counter,
        )
        return AssertionResult(
            ok=True,
            user_id=row.user_id,
            credential_id=row.id,
            amr=amr_of(auth_data.flags, row.backup_eligible),
            user_verified=verified,
        )

    async def _assert(
        self, state: CeremonyState, response: object
    ) -> tuple[WebAuthnCredential, AuthenticatorData]:
        fields = encoding.credential_fields(response)
        if fields is None:
            raise Refused(WebAuthnReason.INVALID)
        _, inner, raw_id = fields
        client_data = encoding.client_data(inner.get("clientDataJSON"))
        authenticator_data = encoding.b64decode(
            inner.get("authenticatorData"), encoding.MAX_AUTHENTICATOR_DATA
        )
        signature = encoding.b64decode(inner.get("signature"), encoding.MAX_SIGNATURE)
        handle_value = inner.get("userHandle")
        # A null (or, from some clients, empty) userHandle means "not returned" (§5.2.2).
        user_handle = (
            None if handle_value in (None, "") else encoding.b64decode(handle_value, encoding.MAX_USER_HANDLE)
        )
        if (
            client_data is None
            or authenticator_data is None
            or len(authenticator_data) < 37  # rpIdHash, flags, counter (§6.1)
            or not signature
            or (handle_value not in (None, "") and not user_handle)
        ):
            raise Refused(WebAuthnReason.INVALID)
        client_data_text, cross_origin = client_data
        body = {
            "clientDataJSON": client_data_text,
            "authenticatorData": encoding.b64encode(authenticator_data),
            "signature": encoding.b64encode(signature),
        }
        try:
            parsed = AuthenticationResponse.from_dict(
                {"rawId": raw_id, "type": PublicKeyCredentialType.PUBLIC_KEY.value, "response": body}
            )
        except Exception as e:  # fido2's parsers raise many types for hostile bytes; all are "invalid"
            raise Refused(WebAuthnReason.INVALID) from e
        if cross_origin:
            # We never run a ceremony in a cross-origin iframe (§5.8.1 crossOrigin / topOrigin).
            raise Refused(WebAuthnReason.ORIGIN)

        # §7.2: identify the credential and its owner before trusting anything in it.
        row = await self._credentials.find(parsed.raw_id)
        if row is None or (state.user_id is not None and row.user_id != state.user_id):
            # Not registered, or another user's: the same answer, naming no one.
            raise Refused(WebAuthnReason.UNKNOWN_CREDENTIAL)
        if state.user_id is None and user_handle is None:
            raise Refused(WebAuthnReason.INVALID, row)  # a passwordless assertion must return it
        if user_handle is not None and not hmac.compare_digest(user_handle, row.user_handle):
            raise Refused(WebAuthnReason.UNKNOWN_CREDENTIAL, row)

        try:
            stored = AttestedCredentialData.create(bytes(16), row.credential_id, stored_key(row))
        except Exception as e:  # a stored key that does not parse: fail closed, say so in the log
            log.error("stored WebAuthn public key does not parse", credential_id=row.id)
            raise Refused(WebAuthnReason.INVALID, row) from e
        try:
            # Type, origin (exact), challenge (constant time), rpIdHash, UP, UV when required, signature.
            self._server.authenticate_complete(state.for_fido2(), [stored], parsed)
        except ValueError as e:
            raise Refused(fido2_reason(e), row) from e
        except Exception as e:
            raise Refused(WebAuthnReason.INVALID, row) from e
        auth_data = parsed.response.authenticator_data
        if state.user_verification == "required" and not auth_data.is_user_verified():
            raise Refused(WebAuthnReason.USER_VERIFICATION, row)  # fido2 checks it too; be sure
        # §7.2 and §6.3.3: BE is fixed when the credential is made (a change means another
        # key or a broken client), and BS without BE is an invalid combination.
        if auth_data.is_backup_eligible() != row.backup_eligible or (
            auth_data.is_backed_up() and not auth_data.is_backup_eligible()
        ):
            raise Refused(WebAuthnReason.INVALID, row)
        await self._credentials.advance_counter(row, auth_data)
        return row, auth_data
