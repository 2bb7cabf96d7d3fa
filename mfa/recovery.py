"""Recovery codes: ten single-use codes that stand in for a lost second factor.

Each code is 10 characters from a 32-letter alphabet without look-alikes (no 0/O, 1/I/l),
i.e. 50 random bits, shown once as ``ABCDE-FGHJK`` and stored only as an argon2id hash
(they live long and are written on paper, so a stolen table must not yield them cheaply).
Using one marks it used with a conditional ``UPDATE ... WHERE used_at IS NULL``: of two
concurrent uses of the same code exactly one succeeds. Generating a new set deletes the old one.
"""

from __future__ import annotations

import asyncio
import builtins
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import EventEmitter
from mfa.events import mfa_event
from mfa.models import RecoveryCode

__all__ = [
    "ALPHABET",
    "CODE_COUNT",
    "CODE_LENGTH",
    "CodeHasher",
    "RecoveryCodes",
    "RecoveryResult",
    "format_code",
    "normalise_recovery_code",
]

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # 32 symbols: 5 bits each, no 0 O 1 I l
CODE_LENGTH = 10
CODE_COUNT = 10
_GROUP = 5
_METHOD = "recovery_code"


class CodeHasher(Protocol):
    """A slow password hash (idp's argon2id ``PasswordHashing`` satisfies it)."""

    def hash(self, password: str) -> str: ...

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True on a match; with ``stored_hash`` None, the same work and False."""
        ...


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """The outcome of :meth:`RecoveryCodes.use`: whether it worked and how many unused codes are left."""

    ok: bool
    remaining: int
    code_id: int | None = None


def format_code(code: str) -> str:
    """``ABCDEFGHJK`` -> ``ABCDE-FGHJK`` (for display)."""
    return "-".join(code[i : i + _GROUP] for i in range(0, len(code), _GROUP))


def normalise_recovery_code(code: object) -> str | None:
    """Upper-case, without dashes and spaces; None unless 10 characters of the alphabet."""
    if not isinstance(code, str) or len(code) > 64:
        return None
    cleaned = "".join(ch for ch in code if ch not in " -\u3000\t").upper()
    if len(cleaned) != CODE_LENGTH or any(ch not in ALPHABET for ch in cleaned):
        return None
    return cleaned


class RecoveryCodes:
    """Generate, use and count a user's recovery codes (users identified by ``users.id``)."""

    def __init__(
        self,
        db_sessions: async_sessionmaker[Any],
        hasher: CodeHasher,
        *,
        clock: Callable[[], float] = time.time,
        events: EventEmitter | None = None,
        choice: Callable[[str], str] = secrets.choice,
    ) -> None:
        self._db = db_sessions
        self._hasher = hasher
        self._clock = clock
        self._events = events
        self._choice = choice

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _emit(self, action: str, *, success: bool, user_id: int, **fields: Any) -> None:
        if self._events is not None:
            self._events.emit(mfa_event(action, success=success, user_id=user_id, method=_METHOD, **fields))

    def _new_code(self) -> str:
        return "".join(self._choice(ALPHABET) for _ in range(CODE_LENGTH))

    async def generate(self, user_id: int) -> builtins.list[str]:
        """A new set of 10 codes (formatted ``ABCDE-FGHJK``), replacing any previous set.

        The plain codes exist only in the return value: show them once.
        """
        codes: set[str] = set()
        while len(codes) < CODE_COUNT:
            codes.add(self._new_code())
        plain = sorted(codes)
        hashes = await asyncio.to_thread(lambda: [self._hasher.hash(c) for c in plain])
        now = self._now()
        async with self._db() as s, s.begin():
            await s.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
            s.add_all(RecoveryCode(user_id=user_id, code_hash=h, created_at=now) for h in hashes)
        self._emit(
            "recovery-codes-generated", success=True, user_id=user_id, onegate__mfa__remaining=CODE_COUNT
        )
        return [format_code(c) for c in plain]

    async def remaining(self, user_id: int) -> int:
        """How many unused codes the user has."""
        async with self._db() as s:
            return int(
                (
                    await s.execute(
                        select(func.count())
                        .select_from(RecoveryCode)
                        .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
                    )
                ).scalar_one()
            )

    def _find(self, candidates: Sequence[tuple[int, str]], code: str) -> int | None:
        for code_id, code_hash in candidates:
            if self._hasher.verify(code_hash, code):
                return code_id
        if not candidates:
            self._hasher.verify(None, code)  # the same work for a user without codes
        return None

    async def use(self, user_id: int, code: str) -> RecoveryResult:
        """Spend one code. Never raises for bad input: a malformed or unknown code is ``ok=False``."""
        normal = normalise_recovery_code(code)
        if normal is None:
            self._emit("recovery-code-used", success=False, user_id=user_id, reason="invalid")
            return RecoveryResult(ok=False, remaining=await self.remaining(user_id))
        async with self._db() as s:
            candidates = [
                (row.id, row.code_hash)
                for row in (
                    await s.execute(
                        select(RecoveryCode.id, RecoveryCode.code_hash)
                        .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
                        .order_by(RecoveryCode.id)
                    )
                ).all()
            ]
        # argon2 takes tens of milliseconds per hash: keep it off the event loop.
        code_id = await asyncio.to_thread(self._find, candidates, normal)
        won = False
        if code_id is not None:
            async with self._db() as s, s.begin():
                marked = await s.execute(
                    update(RecoveryCode)
                    .where(
                        RecoveryCode.id == code_id,
                        RecoveryCode.user_id == user_id,
                        RecoveryCode.used_at.is_(None),
                    )
                    .values(used_at=self._now())
                    .execution_options(synchronize_session=False)
                )
                won = marked.rowcount == 1
        left = await self.remaining(user_id)
        if not won:
            self._emit("recovery-code-used", success=False, user_id=user_id, reason="invalid")
            return RecoveryResult(ok=False, remaining=left)
        self._emit(
            "recovery-code-used",
            success=True,
            user_id=user_id,
            credential_id=code_id,
            onegate__mfa__remaining=left,
        )
        return RecoveryResult(ok=True, remaining=left, code_id=code_id)

    async def remove_all(self, user_id: int, *, emit: bool = True) -> int:
        """Delete the user's codes; the number removed. Emits ``recovery-codes-removed`` when
        there were some (``emit=False`` when the caller reports it: ``MfaServices.reset``)."""
        async with self._db() as s, s.begin():
            done = await s.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        count = int(done.rowcount)
        if emit and count:
            self._emit("recovery-codes-removed", success=True, user_id=user_id, onegate__mfa__removed=count)
        return count
