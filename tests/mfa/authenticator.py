"""A software WebAuthn authenticator for tests: what a browser plus a security key would answer.

It plays both the client (it writes ``clientDataJSON`` and the ``PublicKeyCredential`` JSON of
WebAuthn L3 §5.1 ``toJSON()``) and the authenticator (an EC P-256 key per credential, ES256
signatures, the authenticator data of §6.1 with a signature counter, attestation ``none`` or
``packed`` self attestation). It takes the ``publicKey`` options exactly as the service (or the
pages' ``/options`` endpoints) hand them out::

    from tests.mfa.authenticator import SoftAuthenticator

    key = SoftAuthenticator(origin="https://idp.example.test")
    ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    result = await service.finish_registration(uid, ceremony.id, key.create(ceremony.options), name="钥匙")
    ceremony = await service.begin_authentication(uid)
    result = await service.finish_authentication(ceremony.id, key.get(ceremony.options), user_id=uid)

Constructor arguments set how the authenticator behaves every time (its AAGUID, whether it
verifies the user, whether its keys are backup eligible / synced, how far the counter moves per
use — 0 for an authenticator without a counter). Keyword arguments of :meth:`create` and
:meth:`get` tamper with one answer: another ``origin`` in the client data, another ``rp_id``
hashed into the authenticator data, another ``challenge``, flags, an explicit ``counter`` (a
reset), ``tamper_signature``, another ``user_handle`` (or none), ``credential_id``.
:meth:`clone` copies the keys and counters (a cloned authenticator). Options may be given as
the ``publicKey`` dict or wrapped as ``{"publicKey": ...}`` (the pages' JSON body).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor
from fido2.cose import ES256

__all__ = ["NoCredential", "SoftAuthenticator", "StoredCredential", "b64url", "b64url_decode"]

_UP, _UV, _BE, _BS, _AT = 0x01, 0x04, 0x08, 0x10, 0x40
_KEEP: Any = object()  # "not given": use the authenticator's own value


def b64url(data: bytes) -> str:
    """base64url without padding, as WebAuthn's JSON forms use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class NoCredential(Exception):
    """No credential of this authenticator fits the request (or one is excluded: InvalidStateError)."""


@dataclass
class StoredCredential:
    """One credential held by the authenticator."""

    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    resident: bool
    backup_eligible: bool
    backed_up: bool
    counter: int = 0


class SoftAuthenticator:
    """A software authenticator (see the module docstring for an example).

    ``origin`` is the page origin written into ``clientDataJSON``; ``aaguid`` the model (UUID
    text or 16 bytes; all zeros by default); ``user_verification`` whether it verifies the user
    (PIN / biometric: the UV flag); ``backup_eligible`` / ``backed_up`` the BE / BS flags of new
    credentials (a synced passkey has both); ``counter_step`` how much the counter grows per use
    (0: no counter, as many passkey providers); ``attachment`` ``cross-platform`` (a security
    key) or ``platform``; ``transports`` what ``getTransports()`` reports.
    """

    def __init__(
        self,
        *,
        origin: str = "https://idp.example.test",
        aaguid: str | bytes = bytes(16),
        user_verification: bool = True,
        backup_eligible: bool = False,
        backed_up: bool = False,
        counter_step: int = 1,
        attachment: str = "cross-platform",
        transports: tuple[str, ...] = ("usb", "nfc"),
        token_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.origin = origin
        self.aaguid = aaguid if isinstance(aaguid, bytes) else uuid.UUID(aaguid).bytes
        self.user_verification = user_verification
        self.backup_eligible = backup_eligible
        self.backed_up = backed_up
        self.counter_step = counter_step
        self.attachment = attachment
        self.transports = transports
        self.token_bytes = token_bytes
        self.credentials: dict[bytes, StoredCredential] = {}

    def clone(self) -> SoftAuthenticator:
        """A copy with the same keys and counters, from now on used independently."""
        twin = SoftAuthenticator(
            origin=self.origin,
            aaguid=self.aaguid,
            user_verification=self.user_verification,
            backup_eligible=self.backup_eligible,
            backed_up=self.backed_up,
            counter_step=self.counter_step,
            attachment=self.attachment,
            transports=self.transports,
            token_bytes=self.token_bytes,
        )
        twin.credentials = {cid: replace(c) for cid, c in self.credentials.items()}
        return twin

    # -- registration: navigator.credentials.create() ----------------------------------------

    def create(
        self,
        options: Mapping[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: str | None = None,
        client_data_type: str = "webauthn.create",
        cross_origin: bool = False,
        user_present: bool = True,
        user_verified: bool | None = None,
        backup_eligible: bool | None = None,
        backed_up: bool | None = None,
        aaguid: str | bytes | None = None,
        credential_id: bytes | None = None,
        counter: int = 0,
        attestation: str = "none",
        tamper_attestation: bool = False,
        cred_props: bool | None = True,
        ignore_exclude: bool = False,
    ) -> dict[str, Any]:
        """A new credential for the options' RP and user: the ``PublicKeyCredential`` JSON.

        Refuses (:class:`NoCredential`) when one of its credentials is in ``excludeCredentials``
        unless ``ignore_exclude``. ``attestation`` ``none`` or ``packed`` (self attestation signed
        with the new key; ``tamper_attestation`` flips a bit of its signature); ``cred_props`` the
        ``credProps.rk`` to report (None: no extension output).
        """
        public = options.get("publicKey", options)
        rp = public["rp"]["id"]
        if not ignore_exclude:
            for excluded in public.get("excludeCredentials") or []:
                if b64url_decode(excluded["id"]) in self.credentials:
                    raise NoCredential("an excluded credential is on this authenticator")
        selection = public.get("authenticatorSelection") or {}
        resident = selection.get("residentKey", "discouraged") in ("required", "preferred")
        key = ec.generate_private_key(ec.SECP256R1())
        stored = StoredCredential(
            credential_id=credential_id if credential_id is not None else self.token_bytes(32),
            private_key=key,
            rp_id=rp,
            user_handle=b64url_decode(public["user"]["id"]),
            resident=resident,
            backup_eligible=self.backup_eligible if backup_eligible is None else backup_eligible,
            backed_up=self.backed_up if backed_up is None else backed_up,
            counter=counter,
        )
        self.credentials[stored.credential_id] = stored
        cose = ES256.from_cryptography_key(key.public_key())
        model = (
            self.aaguid
            if aaguid is None
            else (aaguid if isinstance(aaguid, bytes) else uuid.UUID(aaguid).bytes)
        )
        attested = (
            model + struct.pack(">H", len(stored.credential_id)) + stored.credential_id + cbor.encode(cose)
        )
        flags = self._flags(user_present, user_verified, stored.backup_eligible, stored.backed_up) | _AT
        auth_data = self._auth_data(rp_id or rp, flags, counter) + attested
        client_data = self._client_data(
            client_data_type, challenge or public["challenge"], origin, cross_origin
        )
        statement: dict[str, Any] = {}
        if attestation == "packed":
            signed = key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
            statement = {
                "alg": -7,
                "sig": signed[:-1] + bytes([signed[-1] ^ 1]) if tamper_attestation else signed,
            }
        elif attestation != "none":
            raise ValueError("attestation must be 'none' or 'packed'")
        attestation_object = cbor.encode({"fmt": attestation, "attStmt": statement, "authData": auth_data})
        extensions: dict[str, Any] = {}
        if cred_props is not None and (public.get("extensions") or {}).get("credProps"):
            extensions["credProps"] = {"rk": cred_props}
        return {
            "id": b64url(stored.credential_id),
            "rawId": b64url(stored.credential_id),
            "type": "public-key",
            "authenticatorAttachment": self.attachment,
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation_object),
                "authenticatorData": b64url(auth_data),
                "transports": list(self.transports),
                "publicKeyAlgorithm": -7,
            },
            "clientExtensionResults": extensions,
        }

    # -- authentication: navigator.credentials.get() ------------------------------------------

    def get(
        self,
        options: Mapping[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: str | None = None,
        client_data_type: str = "webauthn.get",
        cross_origin: bool = False,
        credential_id: bytes | None = None,
        user_present: bool = True,
        user_verified: bool | None = None,
        backup_eligible: bool | None = None,
        backed_up: bool | None = None,
        counter: int | None = None,
        tamper_signature: bool = False,
        user_handle: bytes | None = _KEEP,
    ) -> dict[str, Any]:
        """An assertion: the ``PublicKeyCredential`` JSON.

        Uses ``credential_id``, else the first of its credentials in ``allowCredentials``, else (an
        empty list: a discoverable request) its first resident credential for the RP id. The
        counter grows by ``counter_step`` unless ``counter`` gives the value to send (a reset).
        ``user_handle`` replaces the returned handle (None: none returned); by default a resident
        credential returns its own and a non-resident one none (CTAP2 §6.2).
        """
        public = options.get("publicKey", options)
        rp = public.get("rpId") or rp_id
        stored = self._pick(public, rp, credential_id)
        if counter is None:
            stored.counter += self.counter_step
            counter = stored.counter
        else:
            stored.counter = counter
        be = stored.backup_eligible if backup_eligible is None else backup_eligible
        bs = stored.backed_up if backed_up is None else backed_up
        flags = self._flags(user_present, user_verified, be, bs)
        auth_data = self._auth_data(rp_id or stored.rp_id, flags, counter)
        client_data = self._client_data(
            client_data_type, challenge or public["challenge"], origin, cross_origin
        )
        signature = bytearray(
            stored.private_key.sign(
                auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
            )
        )
        if tamper_signature:
            signature[-1] ^= 0x01
        handle = (stored.user_handle if stored.resident else None) if user_handle is _KEEP else user_handle
        return {
            "id": b64url(stored.credential_id),
            "rawId": b64url(stored.credential_id),
            "type": "public-key",
            "authenticatorAttachment": self.attachment,
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(bytes(signature)),
                "userHandle": b64url(handle) if handle is not None else None,
            },
            "clientExtensionResults": {},
        }

    # -- internals ----------------------------------------------------------------------------

    def _pick(
        self, public: Mapping[str, Any], rp: str | None, credential_id: bytes | None
    ) -> StoredCredential:
        if credential_id is not None:
            if credential_id not in self.credentials:
                raise NoCredential("no such credential on this authenticator")
            return self.credentials[credential_id]
        allowed = [b64url_decode(d["id"]) for d in public.get("allowCredentials") or []]
        if allowed:
            for cid in allowed:
                if cid in self.credentials:
                    return self.credentials[cid]
            raise NoCredential("none of the allowed credentials is on this authenticator")
        for stored in self.credentials.values():
            if stored.resident and stored.rp_id == rp:
                return stored
        raise NoCredential("no discoverable credential for this RP on this authenticator")

    def _flags(self, up: bool, uv: bool | None, be: bool, bs: bool) -> int:
        verified = self.user_verification if uv is None else uv
        return (_UP if up else 0) | (_UV if verified else 0) | (_BE if be else 0) | (_BS if bs else 0)

    @staticmethod
    def _auth_data(rp_id: str, flags: int, counter: int) -> bytes:
        return hashlib.sha256(rp_id.encode()).digest() + struct.pack(">BI", flags, counter)

    def _client_data(self, kind: str, challenge: str, origin: str | None, cross_origin: bool) -> bytes:
        # The browser's serialisation (§5.8.1.1): type, challenge, origin, crossOrigin, in this order.
        data = {
            "type": kind,
            "challenge": challenge,
            "origin": origin or self.origin,
            "crossOrigin": cross_origin,
        }
        return json.dumps(data, separators=(",", ":")).encode()
