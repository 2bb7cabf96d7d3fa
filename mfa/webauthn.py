"""WebAuthn (passkeys and security keys) as a second factor and for passwordless sign-in.

Registration follows WebAuthn Level 3 §7.1 "Registering a New Credential" and authentication §7.2
"Verifying an Authentication Assertion" (https://www.w3.org/TR/webauthn-3/). fido2's
:class:`~fido2.server.Fido2Server` parses the responses and checks the client data type, the
origin (through our own callable), the challenge, the ``rpIdHash``, the UP / UV flags and the
assertion signature. What it leaves to us, and this module does (docs/mfa.md explains it to
operators):

* **Single-use ceremonies.** The challenge lives in KV under ``mfa:webauthn:<ceremony id>`` with
  its kind, its user (or "discoverable"), the user-verification requirement and an expiry. Finishing
  takes it with ``get_and_delete``: a second finish of the same ceremony, a ceremony of another
  user or of the other kind, or an expired one is refused as ``challenge``.
* **An exact origin allow-list.** fido2 by default accepts any origin under the RP id (any
  subdomain); we accept only the configured origins, compared as strings, and never a cross-origin
  (iframe) ceremony.
* **Input before parsing.** The response is the browser's ``PublicKeyCredential.toJSON()``; its
  shape, base64url encodings and sizes are checked before fido2 sees it (a CBOR integer where
  bytes belong would otherwise make it allocate that many bytes). Bad input is a result, never
  an exception.
* **Credential binding.** A credential id is registered once across all users (``duplicate``,
  also under a race: the unique constraint decides); an assertion for a user must use one of
  that user's credentials, and a passwordless one must return the credential's own user handle
  (§7.2, identifying the user), compared in constant time.
* **The signature counter** (§6.1.1): when the stored or the new counter is non-zero, the new one
  must be greater; otherwise the key may have been cloned (``counter``, event
  ``mfa-clone-suspected``). It advances by a compare-and-set ``UPDATE``, so of two concurrent
  assertions with the same counter only one passes.
* **Backup flags** (§6.3.3): BE is fixed for the credential's life, BS may change; ``amr`` is
  ``swk`` for a backup-eligible (syncable) key, ``hwk`` for a device-bound one (mfa.levels).
* **Attestation policy.** ``none`` by default. With ``direct`` the statement's signature is checked
  for its format; an AAGUID allow-list refuses every other model — including the all-zero AAGUID a
  client puts there when it strips attestation.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hmac
import json
import re
import secrets
import time
import unicodedata
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import structlog
from cryptography.exceptions import InvalidSignature
from fido2 import cbor
from fido2.attestation.base import Attestation
from fido2.cose import CoseKey
from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestationConveyancePreference,
    AttestedCredentialData,
    AuthenticationResponse,
    AuthenticatorData,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialParameters,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialType,
    PublicKeyCredentialUserEntity,
    RegistrationResponse,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import EventEmitter
from core.kv import KV
from mfa.events import mfa_event
from mfa.levels import AMR_HWK, AMR_PIN, AMR_SWK, AMR_USER
from mfa.models import WebAuthnCredential

__all__ = [
    "AssertionResult",
    "Ceremony",
    "RegistrationResult",
    "WebAuthnCredentialInfo",
    "WebAuthnReason",
    "WebAuthnService",
]

log = structlog.get_logger("onegate.mfa")

DEFAULT_NAME = "通行密钥"
_METHOD = "webauthn"
_NAME_MAX = 64
_KEY_PREFIX = "mfa:webauthn:"
_REGISTRATION = "registration"
_AUTHENTICATION = "authentication"
_USER_VERIFICATION = ("required", "preferred", "discouraged")
_ATTESTATION = ("none", "direct")
_ZERO_AAGUID = "00000000-0000-0000-0000-000000000000"
_USER_HANDLE_BYTES = 32  # random, no personal data (§14.6.1); at most 64 bytes (§5.4.3)
_CHALLENGE_BYTES = 32  # at least 16 (§13.4.3)
_CEREMONY_ID_BYTES = 32
# The algorithms offered in pubKeyCredParams, in the order §5.4 recommends: EdDSA, ES256, RS256.
# A credential of any other algorithm is refused (§7.1: its "alg" must be one we asked for).
_ALGORITHMS = (-8, -7, -257)
_TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)

# Size limits on what a browser sends (bytes after base64url decoding). Real values are far below
# them; the limits keep a hostile request from costing memory or CPU.
_MAX_CREDENTIAL_ID = 1023  # §7.1: a credential id is at most 1023 bytes
_MAX_CLIENT_DATA = 8 * 1024
_MAX_ATTESTATION_OBJECT = 32 * 1024
_MAX_AUTHENTICATOR_DATA = 16 * 1024
_MAX_SIGNATURE = 2048
_MAX_USER_HANDLE = 64
_MAX_CHALLENGE_TEXT = 512
_MAX_ORIGIN = 2048
_MAX_TRANSPORTS = 16
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_CEREMONY_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")


class WebAuthnReason(StrEnum):
    """Why a ceremony was refused (closed vocabulary, in events as ``onegate.reason``)."""

    INVALID = "invalid"  # malformed response, bad signature, wrong type, ...
    CHALLENGE = "challenge"  # unknown, expired, reused or someone else's ceremony
    ORIGIN = "origin"  # origin not in the exact allow-list (or a cross-origin iframe)
    RP_ID = "rp_id"  # rpIdHash mismatch
    USER_VERIFICATION = "user_verification"  # UV required but not performed / UP missing
    UNKNOWN_CREDENTIAL = "unknown_credential"  # not registered, or not this user's
    COUNTER = "counter"  # signature counter did not increase (possible clone)
    DUPLICATE = "duplicate"  # credential id already registered (to anyone)
    AUTHENTICATOR_NOT_ALLOWED = "authenticator_not_allowed"  # AAGUID not in the allow-list


@dataclass(frozen=True, slots=True)
class Ceremony:
    """What the page sends to the browser: ``options`` is the ``publicKey`` member of
    ``navigator.credentials.create/get`` (JSON-ready, binary fields base64url without padding,
    as ``PublicKeyCredential.parseCreationOptionsFromJSON`` takes them); ``id`` is opaque, single
    use and bound to the user (or to a discoverable sign-in) — keep it out of the script's reach."""

    id: str
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RegistrationResult:
    """The outcome of :meth:`WebAuthnService.finish_registration`; ``credential_id`` is the new
    ``webauthn_credentials.id``, ``amr`` what the registering gesture proved."""

    ok: bool
    reason: WebAuthnReason | None = None
    credential_id: int | None = None
    amr: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AssertionResult:
    """The outcome of :meth:`WebAuthnService.finish_authentication`.

    On success ``user_id`` is the credential's owner and ``amr`` its methods (``hwk``/``swk``,
    ``user``, ``pin``). On a failure after the credential was identified, ``user_id`` and
    ``credential_id`` name it (the owner is then only *claimed*: nothing was proven).
    """

    ok: bool
    reason: WebAuthnReason | None = None
    user_id: int | None = None
    credential_id: int | None = None
    amr: tuple[str, ...] = ()
    user_verified: bool = False


@dataclass(frozen=True, slots=True)
class WebAuthnCredentialInfo:
    """A credential as listed to its owner or an admin (never the key or the user handle)."""

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    discoverable: bool
    backup_eligible: bool
    aaguid: str


@dataclass(frozen=True, slots=True)
class _State:
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
    def decode(cls, raw: bytes) -> _State | None:
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


class _Refused(Exception):
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


def _fido2_reason(error: Exception) -> WebAuthnReason:
    message = str(error)
    for prefix, reason in _FIDO2_MESSAGES:
        if message.startswith(prefix):
            return reason
    return WebAuthnReason.INVALID


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(value: object, limit: int) -> bytes | None:
    """Strict base64url (RFC 4648 §5; correct padding tolerated, nothing else): the bytes, or None.

    Non-canonical encodings (stray bits in the last character) are refused too, so one value
    has one spelling — a credential id cannot be presented in two forms.
    """
    if not isinstance(value, str) or len(value) > (limit * 4 + 2) // 3 + 2:
        return None
    if not _B64URL.fullmatch(value) or ("=" in value and len(value) % 4):
        return None
    text = value.rstrip("=")
    if len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(data) > limit or _b64encode(data) != text:
        return None
    return data


def _client_data(value: object) -> tuple[str, bool] | None:
    """``clientDataJSON`` (§5.8.1) checked enough for fido2 to parse it safely — fido2 would
    decode a non-string challenge with ``bytes(value)`` — as (canonical base64url text, whether
    it comes from a cross-origin iframe), or None."""
    raw = _b64decode(value, _MAX_CLIENT_DATA)
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    challenge, origin, cross_origin = (
        data.get("challenge"),
        data.get("origin"),
        data.get("crossOrigin", False),
    )
    if not isinstance(data.get("type"), str) or not isinstance(origin, str) or len(origin) > _MAX_ORIGIN:
        return None
    if _b64decode(challenge, _MAX_CHALLENGE_TEXT) is None or not isinstance(cross_origin, bool):
        return None
    return _b64encode(raw), cross_origin or "topOrigin" in data


def _attestation_object(value: object) -> str | None:
    """The attestation object (§6.5) checked for its outer CBOR shape; canonical text or None."""
    raw = _b64decode(value, _MAX_ATTESTATION_OBJECT)
    if raw is None or not raw:
        return None
    try:
        data = cbor.decode(raw)
    except Exception:  # fido2's CBOR decoder raises whatever the bytes provoke; all mean "invalid"
        return None
    if not isinstance(data, dict):
        return None
    fmt, auth_data, statement = data.get("fmt"), data.get("authData"), data.get("attStmt")
    if not isinstance(fmt, str) or len(fmt) > 32 or not isinstance(statement, dict):
        return None
    if not isinstance(auth_data, bytes) or not 37 <= len(auth_data) <= _MAX_ATTESTATION_OBJECT:
        return None
    return _b64encode(raw)


def _credential_fields(response: object) -> tuple[Mapping[str, Any], Mapping[str, Any], str] | None:
    """The outer ``PublicKeyCredential`` JSON (§5.1): (credential, its response, canonical rawId)."""
    if not isinstance(response, Mapping):
        return None
    if response.get("type") != PublicKeyCredentialType.PUBLIC_KEY.value:
        return None
    raw_id = _b64decode(response.get("rawId"), _MAX_CREDENTIAL_ID)
    if raw_id is None or not raw_id:
        return None
    # ``id`` is the base64url of ``rawId``; both are sent, and they must agree.
    if "id" in response and _b64decode(response.get("id"), _MAX_CREDENTIAL_ID) != raw_id:
        return None
    inner = response.get("response")
    if not isinstance(inner, Mapping):
        return None
    attachment = response.get("authenticatorAttachment")
    if attachment is not None and not isinstance(attachment, str):
        return None
    extensions = response.get("clientExtensionResults")
    if extensions is not None and not isinstance(extensions, Mapping):
        return None
    return response, inner, _b64encode(raw_id)


def _clean_name(name: object) -> str:
    # A label only; drop control / format characters (right-to-left overrides) rather than fail.
    if not isinstance(name, str):
        return DEFAULT_NAME
    cleaned = "".join(ch for ch in name[: _NAME_MAX * 4] if unicodedata.category(ch)[0] != "C").strip()
    return cleaned[:_NAME_MAX] or DEFAULT_NAME


def _amr(flags: AuthenticatorData.FLAG, backup_eligible: bool) -> tuple[str, ...]:
    """RFC 8176 methods of one WebAuthn gesture (mfa.levels): the key, then what it tested."""
    methods = [AMR_SWK if backup_eligible else AMR_HWK]
    if flags & AuthenticatorData.FLAG.UP:
        methods.append(AMR_USER)
    if flags & AuthenticatorData.FLAG.UV:
        methods.append(AMR_PIN)
    return tuple(methods)


def _json_ready(options: Mapping[str, Any]) -> dict[str, Any]:
    # fido2's option objects serialise binary members as base64url when turned into dicts; one
    # round trip leaves plain JSON values (no enums, no fido2 types) for the page to send as is.
    plain: dict[str, Any] = json.loads(json.dumps(dict(options)))
    return plain


def _stored_key(row: WebAuthnCredential) -> CoseKey:
    data = cbor.decode(row.public_key)
    if not isinstance(data, Mapping):
        raise ValueError("not a COSE key")
    return CoseKey.parse(data)


def _check_origin(origin: str) -> str:
    parts = urlsplit(origin)
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"mfa.webauthn_origins: {origin!r} is not an origin (scheme://host[:port])")
    # The browser serialises an origin in lower case without a default port; compare that form.
    return f"{parts.scheme}://{parts.netloc.lower()}"


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
        if not rp_id or any(ch in rp_id for ch in "/:@ ") or rp_id != rp_id.lower():
            raise ValueError(f"mfa.webauthn_rp_id: {rp_id!r} is not a domain name")
        if not origins:
            raise ValueError("mfa.webauthn_origins: at least one origin is needed")
        allowed = frozenset(_check_origin(o.rstrip("/")) for o in origins)
        for origin in allowed:
            host = urlsplit(origin).hostname or ""
            # §4 "RP ID": the RP id must be the origin's host or a registrable suffix of it; a browser
            # refuses any other combination, so say so at start-up rather than at every sign-in.
            if host != rp_id and not host.endswith("." + rp_id):
                raise ValueError(f"mfa.webauthn_origins: {origin} is not within the RP id {rp_id!r}")
        if user_verification not in _USER_VERIFICATION:
            raise ValueError(f"mfa.webauthn_user_verification must be one of {', '.join(_USER_VERIFICATION)}")
        if attestation not in _ATTESTATION:
            raise ValueError(f"mfa.webauthn_attestation must be one of {', '.join(_ATTESTATION)}")
        aaguids: set[str] = set()
        for value in aaguid_allowlist:
            try:
                aaguids.add(str(uuid.UUID(value)))
            except ValueError as e:
                raise ValueError(f"mfa.webauthn_aaguids: {value!r} is not an AAGUID (a UUID)") from e
        if _ZERO_AAGUID in aaguids:
            # The all-zero AAGUID is what a client sends when it hides the model: allowing it
            # would make the allow-list allow everything.
            raise ValueError("mfa.webauthn_aaguids: the all-zero AAGUID cannot be allowed")
        if challenge_ttl <= 0:
            raise ValueError("mfa.webauthn_challenge_ttl must be positive")
        self._db = db_sessions
        self._kv = kv
        self._rp_id = rp_id
        self._origins = allowed
        self._user_verification = user_verification
        self._attestation = attestation
        self._aaguids = frozenset(aaguids)
        self._ttl = challenge_ttl
        self._clock = clock
        self._events = events
        self._token_bytes = token_bytes
        self._server = Fido2Server(
            PublicKeyCredentialRpEntity(id=rp_id, name=rp_name),
            attestation=AttestationConveyancePreference(attestation),
            # Exact match: fido2's default accepts any https origin under the RP id.
            verify_origin=self._origin_allowed,
        )
        self._server.allowed_algorithms = [
            PublicKeyCredentialParameters(type=PublicKeyCredentialType.PUBLIC_KEY, alg=alg)
            for alg in _ALGORITHMS
        ]
        # A hint to the browser, in milliseconds (fido2 declares the attribute as None only).
        self._server.timeout = challenge_ttl * 1000  # type: ignore[assignment]

    # -- helpers ----------------------------------------------------------------------------

    def _origin_allowed(self, origin: object) -> bool:
        return isinstance(origin, str) and origin in self._origins

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _emit(self, action: str, *, success: bool, user_id: int | None, **fields: Any) -> None:
        if self._events is not None:
            self._events.emit(mfa_event(action, success=success, user_id=user_id, method=_METHOD, **fields))

    async def _rows(self, user_id: int) -> Sequence[WebAuthnCredential]:
        async with self._db() as s:
            result = await s.execute(
                select(WebAuthnCredential)
                .where(WebAuthnCredential.user_id == user_id)
                .order_by(WebAuthnCredential.id)
            )
            rows: Sequence[WebAuthnCredential] = result.scalars().all()
        return rows

    @staticmethod
    def _descriptor(row: WebAuthnCredential) -> PublicKeyCredentialDescriptor:
        transports = [AuthenticatorTransport(t) for t in row.transports.split() if t in _TRANSPORTS]
        return PublicKeyCredentialDescriptor(
            type=PublicKeyCredentialType.PUBLIC_KEY, id=row.credential_id, transports=transports or None
        )

    async def _store(self, state: _State) -> str:
        ceremony_id = _b64encode(self._token_bytes(_CEREMONY_ID_BYTES))
        await self._kv.set(_KEY_PREFIX + ceremony_id, state.encode(), ttl=self._ttl)
        return ceremony_id

    async def _take(self, ceremony_id: object, kind: str, user_id: int | None) -> _State:
        """The ceremony, consumed; refused (``challenge``) when it is not this user's of this kind."""
        if not isinstance(ceremony_id, str) or not _CEREMONY_ID.fullmatch(ceremony_id):
            raise _Refused(WebAuthnReason.CHALLENGE)
        # get_and_delete: whatever follows, this ceremony cannot be finished again.
        raw = await self._kv.get_and_delete(_KEY_PREFIX + ceremony_id)
        state = _State.decode(raw) if raw is not None else None
        if (
            state is None
            or state.kind != kind
            or state.user_id != user_id
            or self._clock() >= state.expires_at  # our clock, not only the KV's TTL
        ):
            raise _Refused(WebAuthnReason.CHALLENGE)
        return state

    # -- registration (§7.1) ----------------------------------------------------------------

    async def begin_registration(
        self, user_id: int, *, username: str, display_name: str, discoverable: bool = True
    ) -> Ceremony:
        """Start registering a credential: the ``publicKey`` creation options (§5.4).

        ``discoverable`` True asks for a passkey (``residentKey: "required"``, usable without a
        user name); False for a security key used as a second factor only. The user's existing
        credentials are listed in ``excludeCredentials`` so an authenticator does not register twice.
        """
        rows = await self._rows(user_id)
        # One random handle per user (§14.6.1: no personal data in it), kept across their credentials.
        handle = rows[0].user_handle if rows else self._token_bytes(_USER_HANDLE_BYTES)
        challenge = self._token_bytes(_CHALLENGE_BYTES)
        options, _ = self._server.register_begin(
            PublicKeyCredentialUserEntity(id=handle, name=username, display_name=display_name or username),
            credentials=[self._descriptor(r) for r in rows],
            resident_key_requirement=(
                ResidentKeyRequirement.REQUIRED if discoverable else ResidentKeyRequirement.DISCOURAGED
            ),
            user_verification=UserVerificationRequirement(self._user_verification),
            challenge=challenge,
            # credProps (§10.1.3) tells whether a discoverable credential was actually created.
            extensions={"credProps": True},
        )
        state = _State(
            kind=_REGISTRATION,
            user_id=user_id,
            challenge=_b64encode(challenge),
            user_verification=self._user_verification,
            expires_at=self._clock() + self._ttl,
            user_handle=_b64encode(handle),
            discoverable=discoverable,
        )
        return Ceremony(id=await self._store(state), options=_json_ready(options.public_key))

    async def finish_registration(
        self, user_id: int, ceremony_id: str, response: Mapping[str, Any], *, name: str
    ) -> RegistrationResult:
        """Check the browser's ``PublicKeyCredential`` JSON and store the credential.

        Never raises for bad input: every refusal is a result with its reason.
        """
        try:
            state = await self._take(ceremony_id, _REGISTRATION, user_id)
            row, amr = await self._register(user_id, state, response, name)
        except _Refused as refused:
            self._emit(
                "mfa-failed",
                success=False,
                user_id=user_id,
                reason=refused.reason.value,
                onegate__mfa__ceremony=_REGISTRATION,
            )
            return RegistrationResult(ok=False, reason=refused.reason)
        self._emit(
            "mfa-enrolled",
            success=True,
            user_id=user_id,
            credential_id=row.id,
            onegate__mfa__ceremony=_REGISTRATION,
            onegate__mfa__aaguid=row.aaguid,
            onegate__mfa__discoverable=row.discoverable,
            onegate__mfa__backup_eligible=row.backup_eligible,
        )
        return RegistrationResult(ok=True, credential_id=row.id, amr=amr)

    async def _register(
        self, user_id: int, state: _State, response: object, name: str
    ) -> tuple[WebAuthnCredential, tuple[str, ...]]:
        fields = _credential_fields(response)
        if fields is None:
            raise _Refused(WebAuthnReason.INVALID)
        outer, inner, raw_id = fields
        client_data = _client_data(inner.get("clientDataJSON"))
        attestation = _attestation_object(inner.get("attestationObject"))
        transports = self._transports(inner.get("transports"))
        if client_data is None or attestation is None or transports is None:
            raise _Refused(WebAuthnReason.INVALID)
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
            raise _Refused(WebAuthnReason.INVALID) from e
        if cross_origin:
            # We never run a ceremony in a cross-origin iframe (§5.8.1 crossOrigin / topOrigin).
            raise _Refused(WebAuthnReason.ORIGIN)
        try:
            # Type, origin (exact), challenge (constant time), rpIdHash, UP, UV when required.
            auth_data = self._server.register_complete(state.for_fido2(), parsed)
        except ValueError as e:
            raise _Refused(_fido2_reason(e)) from e
        except Exception as e:  # e.g. no attested credential data (fido2 asserts it)
            raise _Refused(WebAuthnReason.INVALID) from e
        credential = auth_data.credential_data
        if credential is None or credential.credential_id != parsed.raw_id:
            raise _Refused(WebAuthnReason.INVALID)
        self._check_public_key(credential.public_key)
        self._check_backup_flags(auth_data)
        aaguid = str(credential.aaguid)
        if self._attestation == "direct":
            self._verify_attestation(parsed)
        if self._aaguids and aaguid not in self._aaguids:
            raise _Refused(WebAuthnReason.AUTHENTICATOR_NOT_ALLOWED)
        discoverable = self._created_discoverable(outer.get("clientExtensionResults"), state.discoverable)
        handle = _b64decode(state.user_handle, _MAX_USER_HANDLE)
        if handle is None:
            raise _Refused(WebAuthnReason.CHALLENGE)
        row = WebAuthnCredential(
            user_id=user_id,
            credential_id=credential.credential_id,
            user_handle=handle,
            public_key=cbor.encode(credential.public_key),
            sign_count=auth_data.counter,
            aaguid=aaguid,
            name=_clean_name(name),
            transports=" ".join(transports),
            discoverable=discoverable,
            backup_eligible=auth_data.is_backup_eligible(),
            backed_up=auth_data.is_backed_up(),
            created_at=self._now(),
        )
        await self._insert(row)
        return row, _amr(auth_data.flags, row.backup_eligible)

    async def _insert(self, row: WebAuthnCredential) -> None:
        async with self._db() as s:
            taken = await s.execute(
                select(WebAuthnCredential.id).where(WebAuthnCredential.credential_id == row.credential_id)
            )
            if taken.first() is not None:
                raise _Refused(WebAuthnReason.DUPLICATE)
        try:
            async with self._db() as s, s.begin():
                s.add(row)
        except IntegrityError:
            # A concurrent registration of the same credential id won the unique constraint. Any
            # other integrity error (no such user) is the caller's bug and is raised as it is.
            async with self._db() as s:
                taken = await s.execute(
                    select(WebAuthnCredential.id).where(WebAuthnCredential.credential_id == row.credential_id)
                )
                if taken.first() is not None:
                    raise _Refused(WebAuthnReason.DUPLICATE) from None
            raise

    @staticmethod
    def _transports(value: object) -> builtins.list[str] | None:
        """``getTransports()`` (§5.2.1): hints, kept when known; None when malformed."""
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > _MAX_TRANSPORTS:
            return None
        if not all(isinstance(t, str) and len(t) <= 32 for t in value):
            return None
        return sorted({t for t in value if t in _TRANSPORTS})

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
        if key.ALGORITHM not in _ALGORITHMS:
            raise _Refused(WebAuthnReason.INVALID)
        try:
            key.verify(b"onegate", b"")
        except InvalidSignature:
            return  # the key loaded and rejected a bad signature: as it should
        except Exception as e:
            raise _Refused(WebAuthnReason.INVALID) from e
        raise _Refused(WebAuthnReason.INVALID)  # an empty signature verified: not a real key

    @staticmethod
    def _check_backup_flags(auth_data: AuthenticatorData) -> None:
        # §6.3.3: BS without BE is an invalid combination.
        if auth_data.is_backed_up() and not auth_data.is_backup_eligible():
            raise _Refused(WebAuthnReason.INVALID)

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
            raise _Refused(WebAuthnReason.INVALID) from e

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
        if user_verification is not None and user_verification not in _USER_VERIFICATION:
            raise ValueError(f"user_verification must be one of {', '.join(_USER_VERIFICATION)}")
        if user_id is None:
            requirement = "required"
            credentials: builtins.list[PublicKeyCredentialDescriptor] | None = None
        else:
            requirement = user_verification or self._user_verification
            credentials = [self._descriptor(r) for r in await self._rows(user_id)]
        challenge = self._token_bytes(_CHALLENGE_BYTES)
        options, _ = self._server.authenticate_begin(
            credentials=credentials,
            user_verification=UserVerificationRequirement(requirement),
            challenge=challenge,
        )
        state = _State(
            kind=_AUTHENTICATION,
            user_id=user_id,
            challenge=_b64encode(challenge),
            user_verification=requirement,
            expires_at=self._clock() + self._ttl,
        )
        return Ceremony(id=await self._store(state), options=_json_ready(options.public_key))

    async def finish_authentication(
        self, ceremony_id: str, response: Mapping[str, Any], *, user_id: int | None = None
    ) -> AssertionResult:
        """Check an assertion (§7.2). ``user_id`` must be the ceremony's user (None for a
        passwordless ceremony: the owner is the credential's, and the returned ``userHandle``
        must be that credential's). Never raises for bad input."""
        ceremony = "passwordless" if user_id is None else "second_factor"
        try:
            state = await self._take(ceremony_id, _AUTHENTICATION, user_id)
            row, auth_data = await self._assert(state, response)
        except _Refused as refused:
            known = refused.row
            owner = known.user_id if known is not None else user_id
            credential_id = known.id if known is not None else None
            if refused.reason is WebAuthnReason.COUNTER:
                self._emit(
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
            self._emit(
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
        self._emit(
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
            amr=_amr(auth_data.flags, row.backup_eligible),
            user_verified=verified,
        )

    async def _assert(self, state: _State, response: object) -> tuple[WebAuthnCredential, AuthenticatorData]:
        fields = _credential_fields(response)
        if fields is None:
            raise _Refused(WebAuthnReason.INVALID)
        _, inner, raw_id = fields
        client_data = _client_data(inner.get("clientDataJSON"))
        authenticator_data = _b64decode(inner.get("authenticatorData"), _MAX_AUTHENTICATOR_DATA)
        signature = _b64decode(inner.get("signature"), _MAX_SIGNATURE)
        handle_value = inner.get("userHandle")
        # A null (or, from some clients, empty) userHandle means "not returned" (§5.2.2).
        user_handle = None if handle_value in (None, "") else _b64decode(handle_value, _MAX_USER_HANDLE)
        if (
            client_data is None
            or authenticator_data is None
            or len(authenticator_data) < 37  # rpIdHash, flags, counter (§6.1)
            or not signature
            or (handle_value not in (None, "") and not user_handle)
        ):
            raise _Refused(WebAuthnReason.INVALID)
        client_data_text, cross_origin = client_data
        body = {
            "clientDataJSON": client_data_text,
            "authenticatorData": _b64encode(authenticator_data),
            "signature": _b64encode(signature),
        }
        try:
            parsed = AuthenticationResponse.from_dict(
                {"rawId": raw_id, "type": PublicKeyCredentialType.PUBLIC_KEY.value, "response": body}
            )
        except Exception as e:  # fido2's parsers raise many types for hostile bytes; all are "invalid"
            raise _Refused(WebAuthnReason.INVALID) from e
        if cross_origin:
            # We never run a ceremony in a cross-origin iframe (§5.8.1 crossOrigin / topOrigin).
            raise _Refused(WebAuthnReason.ORIGIN)

        # §7.2: identify the credential and its owner before trusting anything in it.
        async with self._db() as s:
            row = (
                await s.execute(
                    select(WebAuthnCredential).where(WebAuthnCredential.credential_id == parsed.raw_id)
                )
            ).scalar_one_or_none()
        if row is None or (state.user_id is not None and row.user_id != state.user_id):
            # Not registered, or another user's: the same answer, naming no one.
            raise _Refused(WebAuthnReason.UNKNOWN_CREDENTIAL)
        if state.user_id is None and user_handle is None:
            raise _Refused(WebAuthnReason.INVALID, row)  # a passwordless assertion must return it
        if user_handle is not None and not hmac.compare_digest(user_handle, row.user_handle):
            raise _Refused(WebAuthnReason.UNKNOWN_CREDENTIAL, row)

        try:
            stored = AttestedCredentialData.create(bytes(16), row.credential_id, _stored_key(row))
        except Exception as e:  # a stored key that does not parse: fail closed, say so in the log
            log.error("stored WebAuthn public key does not parse", credential_id=row.id)
            raise _Refused(WebAuthnReason.INVALID, row) from e
        try:
            # Type, origin (exact), challenge (constant time), rpIdHash, UP, UV when required, signature.
            self._server.authenticate_complete(state.for_fido2(), [stored], parsed)
        except ValueError as e:
            raise _Refused(_fido2_reason(e), row) from e
        except Exception as e:
            raise _Refused(WebAuthnReason.INVALID, row) from e
        auth_data = parsed.response.authenticator_data
        if state.user_verification == "required" and not auth_data.is_user_verified():
            raise _Refused(WebAuthnReason.USER_VERIFICATION, row)  # fido2 checks it too; be sure
        # §7.2 and §6.3.3: BE is fixed when the credential is made (a change means another
        # key or a broken client), and BS without BE is an invalid combination.
        if auth_data.is_backup_eligible() != row.backup_eligible or (
            auth_data.is_backed_up() and not auth_data.is_backup_eligible()
        ):
            raise _Refused(WebAuthnReason.INVALID, row)
        await self._advance_counter(row, auth_data)
        return row, auth_data

    async def _advance_counter(self, row: WebAuthnCredential, auth_data: AuthenticatorData) -> None:
        """§7.2 / §6.1.1: move the stored counter to the new one, or refuse a clone.

        A compare-and-set on the value read: if another assertion moved it meanwhile, read again
        and decide again, so two concurrent assertions with the same counter cannot both pass.
        """
        received = auth_data.counter
        stored = row.sign_count
        for _ in range(8):
            if (stored != 0 or received != 0) and received <= stored:
                raise _Refused(WebAuthnReason.COUNTER, row, received=received, stored=stored)
            async with self._db() as s, s.begin():
                moved = await s.execute(
                    update(WebAuthnCredential)
                    .where(WebAuthnCredential.id == row.id, WebAuthnCredential.sign_count == stored)
                    .values(sign_count=received, backed_up=auth_data.is_backed_up(), last_used_at=self._now())
                    .execution_options(synchronize_session=False)
                )
                if moved.rowcount:
                    return
                current = (
                    await s.execute(
                        select(WebAuthnCredential.sign_count).where(WebAuthnCredential.id == row.id)
                    )
                ).scalar_one_or_none()
            if current is None:  # removed meanwhile
                raise _Refused(WebAuthnReason.UNKNOWN_CREDENTIAL, row)
            stored = current
        raise _Refused(WebAuthnReason.COUNTER, row, received=received, stored=stored)

    # -- management -------------------------------------------------------------------------

    async def is_enrolled(self, user_id: int) -> bool:
        async with self._db() as s:
            found = await s.execute(
                select(WebAuthnCredential.id).where(WebAuthnCredential.user_id == user_id).limit(1)
            )
            return found.first() is not None

    async def list(self, user_id: int) -> builtins.list[WebAuthnCredentialInfo]:
        """The user's credentials, oldest first."""
        return [
            WebAuthnCredentialInfo(
                id=r.id,
                name=r.name,
                created_at=r.created_at,
                last_used_at=r.last_used_at,
                discoverable=r.discoverable,
                backup_eligible=r.backup_eligible,
                aaguid=r.aaguid,
            )
            for r in await self._rows(user_id)
        ]

    async def rename(self, user_id: int, credential_id: int, name: str) -> bool:
        """Relabel one of the user's credentials; False when it is not theirs."""
        async with self._db() as s, s.begin():
            done = await s.execute(
                update(WebAuthnCredential)
                .where(WebAuthnCredential.id == credential_id, WebAuthnCredential.user_id == user_id)
                .values(name=_clean_name(name))
                .execution_options(synchronize_session=False)
            )
        return bool(done.rowcount)

    async def remove(self, user_id: int, credential_id: int) -> bool:
        """Remove one of the user's credentials; False when there is no such credential of theirs.

        Whether the user may remove their last factor is the caller's policy decision. The
        authenticator keeps its copy; it simply no longer works here.
        """
        async with self._db() as s, s.begin():
            done = await s.execute(
                delete(WebAuthnCredential).where(
                    WebAuthnCredential.id == credential_id, WebAuthnCredential.user_id == user_id
                )
            )
        removed = bool(done.rowcount)
        if removed:
            self._emit("mfa-removed", success=True, user_id=user_id, credential_id=credential_id)
        return removed

    async def remove_all(self, user_id: int, *, emit: bool = True) -> int:
        """Admin reset: remove every credential of the user; how many there were.

        ``emit=False`` when the caller reports the reset itself (``MfaServices.reset``)."""
        async with self._db() as s, s.begin():
            done = await s.execute(delete(WebAuthnCredential).where(WebAuthnCredential.user_id == user_id))
        count = int(done.rowcount)
        if emit:
            self._emit("mfa-reset", success=True, user_id=user_id, onegate__mfa__removed=count)
        return count
