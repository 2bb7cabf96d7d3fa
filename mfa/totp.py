"""Time-based one-time passwords (RFC 6238) as a second factor: enrolment, verification, removal.

Security properties (docs/mfa.md explains them to operators):

* Seeds are 160 random bits (RFC 4226 §4 R6 recommends 160) and never stored in clear: the
  pending enrolment sits in KV and the confirmed credential in the database, both
  envelope-encrypted by keyvault with an ``aad`` naming the user (and credential), so a blob
  moved to another user or row does not decrypt.
* A code is accepted for the time steps t-1, t and t+1 only (RFC 6238 §5.2 allows one step of
  network delay / clock drift each way); candidates are compared in constant time.
* A time step is accepted at most once per user (RFC 6238 §5.2: "the verifier MUST NOT accept
  the second attempt of the OTP after the successful validation has been issued"): the highest
  accepted step is kept in ``totp_credentials.last_used_step`` and advanced by a conditional
  ``UPDATE ... WHERE last_used_step < :step``, so of two concurrent uses of one code exactly one
  wins, and a code older than the last accepted one is refused too.
* Failed attempts per user are counted in KV; at ``max_failures`` within ``failure_window``
  seconds every attempt is refused as ``rate_limited`` before the code is even looked at
  (RFC 4226 §7.3 throttling). The count is exposed for the IdP's account lockout.
"""

from __future__ import annotations

import base64
import builtins
import hmac
import secrets
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode

import pyotp
import structlog
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import EventEmitter
from core.kv import KV
from keyvault import DecryptionError, Envelope
from mfa.errors import UnreadableSecret
from mfa.events import mfa_event
from mfa.models import TotpCredential

__all__ = [
    "DEFAULT_ISSUER",
    "Enrolment",
    "TotpCredentialInfo",
    "TotpReason",
    "TotpResult",
    "TotpService",
    "normalise_code",
    "provisioning_uri",
]

log = structlog.get_logger("onegate.mfa")

DEFAULT_ISSUER = "OneGate 统一身份门户"
DEFAULT_NAME = "身份验证器"
_SEED_BYTES = 20  # 160 bits, RFC 4226 §4 R6
_NAME_MAX = 64
_METHOD = "totp"


class TotpReason(StrEnum):
    """Why a code was refused (closed vocabulary, logged and put in events)."""

    INVALID = "invalid"
    REPLAYED = "replayed"
    RATE_LIMITED = "rate_limited"
    NOT_ENROLLED = "not_enrolled"


@dataclass(frozen=True, slots=True)
class TotpResult:
    """The outcome of :meth:`TotpService.verify`.

    ``step`` is the matched time step (also set for ``replayed``), ``credential_id`` the
    credential whose seed matched, ``failures`` the user's failed attempts in the current
    window after this one (0 after a success: the counter is cleared).
    """

    ok: bool
    reason: TotpReason | None = None
    step: int | None = None
    credential_id: int | None = None
    failures: int = 0


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A pending enrolment: show ``provisioning_uri`` as a QR code and ``secret_base32`` as the manual key."""

    secret_base32: str
    provisioning_uri: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class TotpCredentialInfo:
    """A credential as listed to its owner or an admin (never the seed)."""

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


def normalise_code(code: object, digits: int) -> str | None:
    """The code without spaces when it is exactly ``digits`` ASCII digits, else None."""
    if not isinstance(code, str) or len(code) > 64:
        return None
    code = code.replace(" ", "").replace("\u3000", "")  # ASCII and ideographic (full-width) spaces
    if len(code) != digits or not (code.isascii() and code.isdigit()):
        return None
    return code


def _clean_name(name: str) -> str:
    # A label only; drop control / format characters (right-to-left overrides) rather than fail.
    cleaned = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return cleaned[:_NAME_MAX] or DEFAULT_NAME


def provisioning_uri(
    secret_base32: str, account_name: str, issuer: str, *, digits: int, interval: int
) -> str:
    """The ``otpauth://totp/`` Key URI (Google Authenticator "Key Uri Format").

    Label and parameters are percent-encoded as UTF-8 with nothing left safe, so a Chinese
    issuer or a ``:`` / ``/`` in the account name cannot break the label's ``issuer:account``
    split; the issuer is repeated as a parameter as the format recommends.
    """
    label = f"{quote(issuer, safe='')}:{quote(account_name, safe='')}"
    query = urlencode(
        {
            "secret": secret_base32,
            "issuer": issuer,
            "algorithm": "SHA1",  # the only algorithm every authenticator app implements
            "digits": str(digits),
            "period": str(interval),
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


class TotpService:
    """TOTP enrolment and verification for users identified by ``users.id``.

    ``db_sessions`` is an ``async_sessionmaker``; ``envelope`` encrypts seeds; ``kv`` holds the
    pending enrolments and the failure counters. ``events``, when given, receives the MFA
    events (:mod:`mfa.events`) with the user id; the results carry the same information for
    callers that emit their own.
    """

    def __init__(
        self,
        db_sessions: async_sessionmaker[Any],
        envelope: Envelope,
        kv: KV,
        *,
        clock: Callable[[], float] = time.time,
        issuer_name: str = DEFAULT_ISSUER,
        digits: int = 6,
        interval: int = 30,
        max_failures: int = 5,
        failure_window: float = 300.0,
        enrolment_ttl: int = 600,
        events: EventEmitter | None = None,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if digits not in (6, 7, 8):  # RFC 4226 §5.3: at least 6 digits; apps show 6 or 8
            raise ValueError("digits must be 6, 7 or 8")
        if interval <= 0 or max_failures <= 0 or failure_window <= 0 or enrolment_ttl <= 0:
            raise ValueError("interval, max_failures, failure_window and enrolment_ttl must be positive")
        self._db = db_sessions
        self._envelope = envelope
        self._kv = kv
        self._clock = clock
        self._issuer = issuer_name
        self._digits = digits
        self._interval = interval
        self._max_failures = max_failures
        self._failure_window = failure_window
        self._enrolment_ttl = enrolment_ttl
        self._events = events
        self._token_bytes = token_bytes

    # -- keys and bindings ------------------------------------------------------------------

    @staticmethod
    def _pending_key(user_id: int) -> str:
        return f"mfa:totp-pending:{user_id}"

    @staticmethod
    def _failures_key(user_id: int) -> str:
        return f"mfa:totp-failures:{user_id}"

    @staticmethod
    def _pending_aad(user_id: int) -> bytes:
        return f"mfa/totp-pending/user:{user_id}".encode()

    @staticmethod
    def _credential_aad(user_id: int, credential_id: int) -> bytes:
        return f"mfa/totp/user:{user_id}/credential:{credential_id}".encode()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _current_step(self) -> int:
        return int(self._clock()) // self._interval

    def _emit(self, action: str, *, success: bool, user_id: int, **fields: Any) -> None:
        if self._events is not None:
            self._events.emit(mfa_event(action, success=success, user_id=user_id, method=_METHOD, **fields))

    def _match(self, seed: bytes, code: str) -> int | None:
        """The step among t-1, t, t+1 whose code equals ``code`` (constant-time compare), or None."""
        generator = pyotp.TOTP(base64.b32encode(seed).decode("ascii"), digits=self._digits)
        now = self._current_step()
        matched: int | None = None
        # RFC 6238 §5.2: one step of tolerance each way, no more. Every candidate is compared
        # (no early exit) so the time taken does not tell which step matched.
        for step in (now - 1, now, now + 1):
            if step >= 0 and hmac.compare_digest(generator.generate_otp(step).encode(), code.encode()):
                matched = step
        return matched

    def _decrypt_credential(self, row: TotpCredential) -> bytes:
        try:
            return self._envelope.decrypt(row.secret_enc, self._credential_aad(row.user_id, row.id))
        except DecryptionError as e:
            raise UnreadableSecret(f"TOTP credential {row.id} does not decrypt") from e

    # -- enrolment --------------------------------------------------------------------------

    async def begin_enrolment(self, user_id: int, account_name: str) -> Enrolment:
        """Start (or restart) an enrolment: a fresh seed, pending in KV for ``enrolment_ttl`` seconds.

        ``account_name`` is the label the authenticator app shows under the issuer (the user
        name). A new call replaces an unconfirmed earlier one.
        """
        seed = self._token_bytes(_SEED_BYTES)
        blob = self._envelope.encrypt(seed, aad=self._pending_aad(user_id))
        await self._kv.set(self._pending_key(user_id), blob, ttl=self._enrolment_ttl)
        secret = base64.b32encode(seed).decode("ascii")  # 20 bytes -> 32 characters, no padding
        return Enrolment(
            secret_base32=secret,
            provisioning_uri=provisioning_uri(
                secret, account_name, self._issuer, digits=self._digits, interval=self._interval
            ),
            expires_in=self._enrolment_ttl,
        )

    async def has_pending_enrolment(self, user_id: int) -> bool:
        return await self._kv.get(self._pending_key(user_id)) is not None

    async def cancel_enrolment(self, user_id: int) -> None:
        await self._kv.delete(self._pending_key(user_id))

    async def confirm_enrolment(self, user_id: int, code: str, *, name: str = DEFAULT_NAME) -> bool:
        """Complete the pending enrolment when ``code`` is right for its seed; False otherwise.

        A wrong code leaves the enrolment pending (the user may try again until it expires).
        On success the seed is stored encrypted and the accepted step recorded, so the same
        code cannot then be used to sign in.
        """
        normal = normalise_code(code, self._digits)
        key = self._pending_key(user_id)
        blob = await self._kv.get(key)
        if normal is None or blob is None:
            return False
        try:
            seed = self._envelope.decrypt(blob, self._pending_aad(user_id))
        except DecryptionError:
            log.error("pending TOTP enrolment does not decrypt; discarded", user_id=user_id)
            await self._kv.delete(key)
            return False
        step = self._match(seed, normal)
        if step is None:
            return False
        # Consume the pending enrolment atomically: two concurrent confirmations make one credential.
        if not await self._kv.compare_and_set(key, blob, None):
            return False
        async with self._db() as s, s.begin():
            # Keep every credential of the user at the same (highest) accepted step: replay is
            # refused per user, whichever of their authenticators produced the code.
            await s.execute(
                update(TotpCredential)
                .where(
                    TotpCredential.user_id == user_id,
                    or_(TotpCredential.last_used_step.is_(None), TotpCredential.last_used_step < step),
                )
                .values(last_used_step=step)
            )
            highest = (
                await s.execute(
                    select(func.max(TotpCredential.last_used_step)).where(TotpCredential.user_id == user_id)
                )
            ).scalar_one()
            row = TotpCredential(
                user_id=user_id,
                name=_clean_name(name),
                secret_enc=b"",
                last_used_step=step if highest is None else max(step, highest),
                created_at=self._now(),
            )
            s.add(row)
            await s.flush()  # the id is part of the aad
            row.secret_enc = self._envelope.encrypt(seed, aad=self._credential_aad(user_id, row.id))
        self._emit("mfa-enrolled", success=True, user_id=user_id, credential_id=row.id)
        return True

    # -- verification -----------------------------------------------------------------------

    async def failures(self, user_id: int) -> int:
        """Failed attempts of the user in the current window (for the IdP's lockout)."""
        raw = await self._kv.get(self._failures_key(user_id))
        return int(raw) if raw else 0

    async def reset_failures(self, user_id: int) -> None:
        await self._kv.delete(self._failures_key(user_id))

    async def _fail(self, user_id: int, reason: TotpReason, **extra: Any) -> TotpResult:
        count = await self._kv.incr(self._failures_key(user_id), ttl=self._failure_window)
        action = "mfa-replayed" if reason is TotpReason.REPLAYED else "mfa-failed"
        event_fields = {k: v for k, v in extra.items() if v is not None}
        step = event_fields.pop("step", None)
        if step is not None:
            event_fields["onegate__mfa__time_step"] = step
        self._emit(action, success=False, user_id=user_id, reason=reason.value, **event_fields)
        return TotpResult(ok=False, reason=reason, failures=count, **extra)

    async def verify(self, user_id: int, code: str) -> TotpResult:
        """Check a sign-in code. Never raises for bad input: a malformed code is ``invalid``."""
        count = await self.failures(user_id)
        if count >= self._max_failures:
            # Checked before the code: at the limit even the right code is refused (RFC 4226 §7.3).
            self._emit("mfa-failed", success=False, user_id=user_id, reason=TotpReason.RATE_LIMITED.value)
            return TotpResult(ok=False, reason=TotpReason.RATE_LIMITED, failures=count)
        async with self._db() as s:
            rows = (
                (await s.execute(select(TotpCredential).where(TotpCredential.user_id == user_id)))
                .scalars()
                .all()
            )
        if not rows:
            return TotpResult(ok=False, reason=TotpReason.NOT_ENROLLED, failures=count)
        normal = normalise_code(code, self._digits)
        if normal is None:
            return await self._fail(user_id, TotpReason.INVALID)
        best: tuple[int, TotpCredential] | None = None
        for row in rows:
            try:
                seed = self._decrypt_credential(row)
            except UnreadableSecret:
                # Fail closed: an unreadable credential cannot match (a moved or tampered row).
                log.error("TOTP credential does not decrypt", user_id=user_id, credential_id=row.id)
                continue
            step = self._match(seed, normal)
            if step is not None and (best is None or step > best[0]):
                best = (step, row)
        if best is None:
            return await self._fail(user_id, TotpReason.INVALID)
        step, row = best
        highest = max((r.last_used_step for r in rows if r.last_used_step is not None), default=None)
        if highest is not None and step <= highest:
            return await self._fail(user_id, TotpReason.REPLAYED, step=step, credential_id=row.id)
        # Compare-and-set: only one concurrent verification can move the user's step forward.
        async with self._db() as s, s.begin():
            moved = await s.execute(
                update(TotpCredential)
                .where(
                    TotpCredential.user_id == user_id,
                    or_(TotpCredential.last_used_step.is_(None), TotpCredential.last_used_step < step),
                )
                .values(last_used_step=step)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount == 0:
                won = False
            else:
                won = True
                await s.execute(
                    update(TotpCredential)
                    .where(TotpCredential.id == row.id)
                    .values(last_used_at=self._now())
                    .execution_options(synchronize_session=False)
                )
        if not won:
            return await self._fail(user_id, TotpReason.REPLAYED, step=step, credential_id=row.id)
        await self.reset_failures(user_id)
        self._emit(
            "mfa-verified", success=True, user_id=user_id, credential_id=row.id, onegate__mfa__time_step=step
        )
        return TotpResult(ok=True, step=step, credential_id=row.id, failures=0)

    # -- management -------------------------------------------------------------------------

    async def rewrap(self) -> int:
        """Re-wrap every stored seed under the active master key (after a master-key rotation).

        Only the wrapped data key changes; the seed and its binding to user and credential stay.
        Returns how many rows changed (rows already under the active key are left alone).
        """
        changed = 0
        async with self._db() as s, s.begin():
            for row in (await s.execute(select(TotpCredential))).scalars():
                blob = self._envelope.rewrap(row.secret_enc)
                if blob != row.secret_enc:
                    row.secret_enc = blob
                    changed += 1
        return changed

    async def is_enrolled(self, user_id: int) -> bool:
        async with self._db() as s:
            found = await s.execute(
                select(TotpCredential.id).where(TotpCredential.user_id == user_id).limit(1)
            )
            return found.first() is not None

    async def list(self, user_id: int) -> builtins.list[TotpCredentialInfo]:
        """The user's credentials, oldest first."""
        async with self._db() as s:
            rows = (
                (
                    await s.execute(
                        select(TotpCredential)
                        .where(TotpCredential.user_id == user_id)
                        .order_by(TotpCredential.id)
                    )
                )
                .scalars()
                .all()
            )
        return [TotpCredentialInfo(r.id, r.name, r.created_at, r.last_used_at) for r in rows]

    async def rename(self, user_id: int, credential_id: int, name: str) -> bool:
        """Relabel one of the user's credentials; False when it is not theirs."""
        async with self._db() as s, s.begin():
            done = await s.execute(
                update(TotpCredential)
                .where(TotpCredential.id == credential_id, TotpCredential.user_id == user_id)
                .values(name=_clean_name(name))
                .execution_options(synchronize_session=False)
            )
        renamed = bool(done.rowcount)
        if renamed:
            self._emit("mfa-renamed", success=True, user_id=user_id, credential_id=credential_id)
        return renamed

    async def remove(self, user_id: int, credential_id: int) -> bool:
        """Remove one of the user's credentials; False when there is no such credential of theirs.

        Whether the user may remove their last factor is the caller's policy decision.
        """
        async with self._db() as s, s.begin():
            done = await s.execute(
                delete(TotpCredential).where(
                    TotpCredential.id == credential_id, TotpCredential.user_id == user_id
                )
            )
        removed = bool(done.rowcount)
        if removed:
            self._emit("mfa-removed", success=True, user_id=user_id, credential_id=credential_id)
        return removed

    async def remove_all(self, user_id: int, *, emit: bool = True) -> int:
        """Admin reset: remove every credential, any pending enrolment and the failure count.

        ``emit=False`` when the caller reports the reset itself (``MfaServices.reset``)."""
        async with self._db() as s, s.begin():
            done = await s.execute(delete(TotpCredential).where(TotpCredential.user_id == user_id))
        await self._kv.delete(self._pending_key(user_id), self._failures_key(user_id))
        count = int(done.rowcount)
        if emit:
            self._emit("mfa-reset", success=True, user_id=user_id, onegate__mfa__removed=count)
        return count
