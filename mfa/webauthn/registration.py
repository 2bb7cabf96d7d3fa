"""Registration: WebAuthn Level 3 §7.1 "Registering a New Credential"
(https://www.w3.org/TR/webauthn-3/#sctn-registering-a-new-credential).

fido2 checks the client data type, the origin (exact, through the relying party's allow-list),
the challenge, the ``rpIdHash`` and the UP / UV flags. What it leaves to us, and this module does:

* the public key's algorithm is one we offered, and the key loads;
* the backup flags are a valid combination (§6.3.3: BS without BE is not);
* **attestation policy**: with ``direct`` the statement's signature is checked for its format;
  an AAGUID allow-list refuses every other model — including the all-zero AAGUID a client puts
  there when it strips attestation;
* the credential id is not registered yet, to anyone (:meth:`Credentials.add`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from fido2 import cbor
from fido2.attestation.base import Attestation
from fido2.cose import CoseKey
from fido2.server import Fido2Server
from fido2.webauthn import (
    AuthenticatorData,
    PublicKeyCredentialType,
    PublicKeyCredentialUserEntity,
    RegistrationResponse,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from core.events import EventEmitter
from mfa.models import WebAuthnCredential
from mfa.webauthn import encoding
from mfa.webauthn.ceremonies import CHALLENGE_BYTES, REGISTRATION, Ceremonies, CeremonyState
from mfa.webauthn.credentials import Credentials, clean_name, descriptor
from mfa.webauthn.events import emit_event
from mfa.webauthn.refusals import Refused, fido2_reason
from mfa.webauthn.relying_party import ALGORITHMS, RelyingParty
from mfa.webauthn.results import Ceremony, RegistrationResult, WebAuthnReason, amr_of

__all__ = ["Registration"]

_USER_HANDLE_BYTES = 32  # random, no personal data (§14.6.1); at most 64 bytes (§5.4.3)


class Registration:
    """The registration ceremony, begin and finish (behind :class:`WebAuthnService`)."""

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

    async def begin(
        self, user_id: int, *, username: str, display_name: str, discoverable: bool = True
    ) -> Ceremony:
        """The ``publicKey`` creation options (§5.4); see :meth:`WebAuthnService.begin_registration`."""
        rows = await self._credentials.rows(user_id)
        # One random handle per user (§14.6.1: no personal data in it), kept across their credentials.
        handle = rows[0].user_handle if rows else self._token_bytes(_USER_HANDLE_BYTES)
        challenge = self._token_bytes(CHALLENGE_BYTES)
        user_verification = self._relying_party.user_verification
        options, _ = self._server.register_begin(
            PublicKeyCredentialUserEntity(id=handle, name=username, display_name=display_name or username),
            credentials=[descriptor(r) for r in rows],
            resident_key_requirement=(
                ResidentKeyRequirement.REQUIRED if discoverable else ResidentKeyRequirement.DISCOURAGED
            ),
            user_verification=UserVerificationRequirement(user_verification),
            challenge=challenge,
            # credProps (§10.1.3) tells whether a discoverable credential was actually created.
            extensions={"credProps": True},
        )
        state = CeremonyState(
            kind=REGISTRATION,
            user_id=user_id,
            challenge=encoding.b64encode(challenge),
            user_verification=user_verification,
            expires_at=self._ceremonies.expiry(),
            user_handle=encoding.b64encode(handle),
            discoverable=discoverable,
        )
        return Ceremony(
            id=await self._ceremonies.store(state), options=encoding.json_ready(options.public_key)
        )

    async def finish(
        self, user_id: int, ceremony_id: str, response: Mapping[str, Any], *, name: str
    ) -> RegistrationResult:
        """Check and store the credential; see :meth:`WebAuthnService.finish_registration`."""
        try:
            state = await self._ceremonies.take(ceremony_id, REGISTRATION, user_id)
            row, amr = await self._register(user_id, state, response, name)
        except Refused as refused:
            emit_event(
                self._events,
                "mfa-failed",
                success=False,
                user_id=user_id,
                reason=refused.reason.value,
                onegate__mfa__ceremony=REGISTRATION,
            )
            return RegistrationResult(ok=False, reason=refused.reason)
        emit_event(
            self._events,
            "mfa-enrolled",
            success=True,
            user_id=user_id,
            credential_id=row.id,
            onegate__mfa__ceremony=REGISTRATION,
            onegate__mfa__aaguid=row.aaguid,
            onegate__mfa__discoverable=row.discoverable,
            onegate__mfa__backup_eligible=row.backup_eligible,
        )
        return RegistrationResult(ok=True, credential_id=row.id, amr=amr)

    async def _register(
        self, user_id: int, state: CeremonyState, response: object, name: str
    ) -> tuple[WebAuthnCredential, tuple[str, ...]]:
        fields = encoding.credential_fields(response)
        if fields is None:
            raise Refused(WebAuthnReason.INVALID)
        outer, inner, raw_id = fields
        client_data = encoding.client_data(inner.get("clientDataJSON"))
        attestation = encoding.attestation_object(inner.get("attestationObject"))
        transports = encoding.transports(inner.get("transports"))
        if client_data is None or attestation is None or transports is None:
            raise Refused(WebAuthnReason.INVALID)
        client_data_text, cross_origin = client_data
        try:
            parsed = RegistrationResponse.from_dict(
                {
                    "rawId": raw_id,
                    "type": PublicKeyCredentialType.PUBLIC_KEY.value,
                    "response": {"clientDataJSON": client_data_text, "attestationObject": attestation},
                }
            )
        except Exception as e:  # fido2's parsers raise many types for hostile bytes; all are "invalid"
            raise Refused(WebAuthnReason.INVALID) from e
        if cross_origin:
            # We never run a ceremony in a cross-origin iframe (§5.8.1 crossOrigin / topOrigin).
            raise Refused(WebAuthnReason.ORIGIN)
        try:
            # Type, origin (exact), challenge (constant time), rpIdHash, UP, UV when required.
            auth_data = self._server.register_complete(state.for_fido2(), parsed)
        except ValueError as e:
            raise Refused(fido2_reason(e)) from e
        except Exception as e:  # e.g. no attested credential data (fido2 asserts it)
            raise Refused(WebAuthnReason.INVALID) from e
        credential = auth_data.credential_data
        if credential is None or credential.credential_id != parsed.raw_id:
            raise Refused(WebAuthnReason.INVALID)
        self._check_public_key(credential.public_key)
        self._check_backup_flags(auth_data)
        aaguid = str(credential.aaguid)
        if self._relying_party.attestation == "direct":
            self._verify_attestation(parsed)
        aaguids = self._relying_party.aaguids
        if aaguids and aaguid not in aaguids:
            raise Refused(WebAuthnReason.AUTHENTICATOR_NOT_ALLOWED)
        discoverable = self._created_discoverable(outer.get("clientExtensionResults"), state.discoverable)
        handle = encoding.b64decode(state.user_handle, encoding.MAX_USER_HANDLE)
        if handle is None:
            raise Refused(WebAuthnReason.CHALLENGE)
        row = WebAuthnCredential(
            user_id=user_id,
            credential_id=credential.credential_id,
            user_handle=handle,
            public_key=cbor.encode(credential.public_key),
            sign_count=auth_data.counter,
            aaguid=aaguid,
            name=clean_name(name),
            transports=" ".join(transports),
            discoverable=discoverable,
            backup_eligible=auth_data.is_backup_eligible(),
            backed_up=auth_data.is_backed_up(),
            created_at=self._credentials.now(),
        )
        await self._credentials.add(row)
        return row, amr_of(auth_data.flags, row.backup_eligible)

    @staticmethod
    def _created_discoverable(extensions: object, requested: bool) -> bool:
        # credProps.rk (§10.1.3) when the client reports it, else what was asked for.
        if isinstance(extensions, Mapping):
            props = extensions.get("credProps")
            if isinstance(props, Mapping) and isinstance(props.get("rk"), bool):
                return bool(props["rk"])
        return requested

    @staticmethod
    def _check_public_key(key: CoseKey) -> None:
        # §7.1: only an algorithm we offered; and a key that loads (a point on the curve).
        if key.ALGORITHM not in ALGORITHMS:
            raise Refused(WebAuthnReason.INVALID)
        try:
            key.verify(b"onegate", b"")
        except InvalidSignature:
            return  # the key loaded and rejected a bad signature: as it should
        except Exception as e:
            raise Refused(WebAuthnReason.INVALID) from e
        raise Refused(WebAuthnReason.INVALID)  # an empty signature verified: not a real key

    @staticmethod
    def _check_backup_flags(auth_data: AuthenticatorData) -> None:
        # §6.3.3: BS without BE is an invalid combination.
        if auth_data.is_backed_up() and not auth_data.is_backup_eligible():
            raise Refused(WebAuthnReason.INVALID)

    @staticmethod
    def _verify_attestation(parsed: RegistrationResponse) -> None:
        """§7.1 (attestation statement): the statement must verify for its format (§8).

        Without a trust store (FIDO Metadata Service roots) this proves that the statement is
        consistent, not which model made it: an AAGUID allow-list keeps out honest authenticators
        of other models, not a forged one. ``none`` passes (clients may strip attestation).
        """
        attestation_object = parsed.response.attestation_object
        verifier = Attestation.for_type(attestation_object.fmt)()
        try:
            verifier.verify(
                attestation_object.att_stmt,
                attestation_object.auth_data,
                parsed.response.client_data.hash,
            )
        except Exception as e:  # InvalidData, InvalidSignature, UnsupportedType, builtins on bad data
            raise Refused(WebAuthnReason.INVALID) from e
