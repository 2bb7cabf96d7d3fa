"""RecoveryCodes on SQLite and PostgreSQL with real argon2id (low test parameters, and once idp's own)."""

from __future__ import annotations

import asyncio
import re
import threading
from datetime import UTC
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import Category, Outcome, RecordingEmitter
from idp.directory.passwords import PasswordHashing
from mfa import ALPHABET, RecoveryCodes, format_code, normalise_recovery_code
from mfa.models import RecoveryCode
from tests.mfa.conftest import FakeClock, LowCostArgon2

DISPLAY = re.compile(r"^[A-HJ-NP-Z2-9]{5}-[A-HJ-NP-Z2-9]{5}$")


@pytest.fixture
def codes(
    db: async_sessionmaker[Any], hasher: LowCostArgon2, clock: FakeClock, events: RecordingEmitter
) -> RecoveryCodes:
    return RecoveryCodes(db, hasher, clock=clock, events=events)


def test_alphabet_has_no_look_alikes() -> None:
    assert len(ALPHABET) == len(set(ALPHABET)) == 32
    assert not set(ALPHABET) & set("0O1lI")


async def test_ten_unique_codes_shown_once_and_stored_hashed(
    codes: RecoveryCodes, users: dict[str, int], db: async_sessionmaker[Any], events: RecordingEmitter
) -> None:
    uid = users["zhangwei"]
    plain = await codes.generate(uid)
    assert len(plain) == len(set(plain)) == 10
    assert all(DISPLAY.match(c) for c in plain), plain
    assert await codes.remaining(uid) == 10
    async with db() as s:
        rows = (await s.execute(text("SELECT * FROM recovery_codes"))).all()
        hashes = (await s.execute(select(RecoveryCode.code_hash))).scalars().all()
    assert len(rows) == 10
    assert all(h.startswith("$argon2id$") for h in hashes)
    dump = repr(rows)
    for code in plain:
        assert code not in dump and code.replace("-", "") not in dump
    [event] = events.events
    assert event.action == "recovery-codes-generated" and event.category is Category.IAM
    assert event.get("onegate.mfa.remaining") == 10
    assert not any(c in repr(event.flat()) for c in plain)


async def test_a_code_works_once(
    codes: RecoveryCodes, users: dict[str, int], events: RecordingEmitter
) -> None:
    uid = users["zhangwei"]
    plain = await codes.generate(uid)
    first = await codes.use(uid, plain[3])
    assert (first.ok, first.remaining) == (True, 9) and first.code_id is not None
    used = events.events[-1]
    assert used.action == "recovery-code-used" and used.outcome is Outcome.SUCCESS
    assert used.category is Category.AUTHENTICATION and used.dataset == "onegate.mfa"
    assert used.get("onegate.mfa.remaining") == 9 and used.get("user.id") == str(uid)
    assert plain[3] not in repr(used.flat())
    again = await codes.use(uid, plain[3])
    assert (again.ok, again.remaining) == (False, 9)
    failed = events.events[-1]
    assert failed.action == "recovery-code-used" and failed.outcome is Outcome.FAILURE
    assert failed.get("onegate.reason") == "invalid"


async def test_remaining_counts_down(codes: RecoveryCodes, users: dict[str, int]) -> None:
    uid = users["zhangwei"]
    plain = await codes.generate(uid)
    for left, code in zip(range(9, -1, -1), plain, strict=True):
        result = await codes.use(uid, code)
        assert (result.ok, result.remaining) == (True, left)
    assert await codes.remaining(uid) == 0
    assert (await codes.use(uid, plain[0])).ok is False


async def test_regenerating_invalidates_the_old_set(codes: RecoveryCodes, users: dict[str, int]) -> None:
    uid = users["zhangwei"]
    old = await codes.generate(uid)
    await codes.use(uid, old[0])
    new = await codes.generate(uid)
    assert not set(old) & set(new)
    assert await codes.remaining(uid) == 10
    assert (await codes.use(uid, old[1])).ok is False
    assert (await codes.use(uid, new[1])).ok is True


class LockstepArgon2(LowCostArgon2):
    """Holds each verifying thread until all of them have read the unused codes (a real race)."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self._barrier = threading.Barrier(parties, timeout=10)
        self._seen = threading.local()

    def verify(self, stored_hash: str | None, password: str) -> bool:
        if not getattr(self._seen, "waited", False):
            self._seen.waited = True
            self._barrier.wait()
        return super().verify(stored_hash, password)


async def test_concurrent_double_use_succeeds_once(
    db: async_sessionmaker[Any], users: dict[str, int], clock: FakeClock
) -> None:
    uid = users["zhangwei"]
    plain = await RecoveryCodes(db, LowCostArgon2(), clock=clock).generate(uid)
    codes = RecoveryCodes(db, LockstepArgon2(3), clock=clock)
    results = await asyncio.gather(*(codes.use(uid, plain[5]) for _ in range(3)))
    assert sorted(r.ok for r in results) == [False, False, True]
    assert await codes.remaining(uid) == 9


@pytest.mark.parametrize(
    "spell",
    [
        str.lower,
        lambda c: c.replace("-", ""),
        lambda c: f"  {c[:3]} {c[3:]}  ",
        lambda c: c.lower().replace("-", " - "),
    ],
)
async def test_input_is_normalised(codes: RecoveryCodes, users: dict[str, int], spell: Any) -> None:
    uid = users["zhangwei"]
    plain = await codes.generate(uid)
    assert (await codes.use(uid, spell(plain[0]))).ok


def test_normalise_and_format() -> None:
    assert normalise_recovery_code("abcde-fghjk") == "ABCDEFGHJK"
    assert normalise_recovery_code("ABCDE\u3000FGHJK") == "ABCDEFGHJK"
    assert normalise_recovery_code("ABCDE-FGHJ0") is None  # 0 is not in the alphabet
    assert normalise_recovery_code("ABCDE-FGHJ") is None
    assert normalise_recovery_code(None) is None
    assert format_code("ABCDEFGHJK") == "ABCDE-FGHJK"


@pytest.mark.parametrize(
    "code", ["", "ABC", "OOOOO-00000", "ABCDE-FGHJK-LMNPQ", None, 42, "Ａ" * 10, "x" * 100_000]
)
async def test_malformed_input_fails_without_exception(
    codes: RecoveryCodes, users: dict[str, int], code: Any, hasher: LowCostArgon2
) -> None:
    uid = users["zhangwei"]
    await codes.generate(uid)
    before = hasher.verifications
    result = await codes.use(uid, code)
    assert (result.ok, result.remaining) == (False, 10)
    assert hasher.verifications == before  # refused before any hashing work


async def test_codes_belong_to_their_user(
    codes: RecoveryCodes, users: dict[str, int], events: RecordingEmitter
) -> None:
    zhang, wang = users["zhangwei"], users["wangfang"]
    zhang_codes = await codes.generate(zhang)
    await codes.generate(wang)
    result = await codes.use(wang, zhang_codes[0])
    assert (result.ok, result.remaining) == (False, 10)
    assert await codes.remaining(zhang) == 10
    assert await codes.remove_all(zhang) == 10
    assert await codes.remaining(zhang) == 0 and await codes.remaining(wang) == 10
    removed = events.events[-1]
    assert removed.action == "recovery-codes-removed" and removed.get("onegate.mfa.removed") == 10
    assert await codes.remove_all(zhang) == 0
    assert events.events[-1] is removed  # nothing to remove, nothing to report


async def test_a_user_without_codes_does_the_same_work(
    codes: RecoveryCodes, users: dict[str, int], hasher: LowCostArgon2
) -> None:
    result = await codes.use(users["zhangwei"], "ABCDE-FGHJK")
    assert (result.ok, result.remaining) == (False, 0)
    assert hasher.verifications == 1  # against the dummy hash


async def test_used_at_comes_from_the_clock(
    codes: RecoveryCodes, users: dict[str, int], clock: FakeClock, db: async_sessionmaker[Any]
) -> None:
    uid = users["zhangwei"]
    plain = await codes.generate(uid)
    clock.advance(3600)
    result = await codes.use(uid, plain[0])
    async with db() as s:
        row = await s.get(RecoveryCode, result.code_id)
    assert row is not None and row.used_at is not None
    used_at = row.used_at if row.used_at.tzinfo else row.used_at.replace(tzinfo=UTC)  # SQLite: naive UTC
    assert int(used_at.timestamp()) == int(clock.now)


async def test_with_idp_password_hashing(
    db: async_sessionmaker[Any], users: dict[str, int], clock: FakeClock
) -> None:
    """The production hasher (argon2id, OWASP parameters) satisfies the contract."""
    codes = RecoveryCodes(db, PasswordHashing(), clock=clock)
    uid = users["zhangwei"]
    plain = await codes.generate(uid)
    assert (await codes.use(uid, plain[9].lower())).ok
    assert (await codes.use(uid, plain[9])).ok is False
    assert await codes.remaining(uid) == 9
