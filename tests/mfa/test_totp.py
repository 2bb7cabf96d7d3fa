"""TotpService on SQLite and PostgreSQL, with MemoryKV and Redis, under a fake clock."""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import urlparse

import pyotp
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import Category, Outcome, RecordingEmitter
from core.kv import KV
from keyvault import Envelope
from mfa import DEFAULT_ISSUER, TotpReason, TotpService, normalise_code
from mfa.models import TotpCredential
from tests.mfa.conftest import FakeClock

INTERVAL = 30


@pytest.fixture
def service(
    db: async_sessionmaker[Any], envelope: Envelope, kv: KV, clock: FakeClock, events: RecordingEmitter
) -> TotpService:
    return TotpService(db, envelope, kv, clock=clock, events=events)


def step_of(clock: FakeClock) -> int:
    return int(clock.now) // INTERVAL


async def enrol(
    service: TotpService, user_id: int, clock: FakeClock, account: str = "zhangwei"
) -> pyotp.TOTP:
    """Enrol as a user with an authenticator app would: scan the URI, type the current code."""
    enrolment = await service.begin_enrolment(user_id, account)
    app = pyotp.parse_uri(enrolment.provisioning_uri)
    assert isinstance(app, pyotp.TOTP)
    assert await service.confirm_enrolment(user_id, app.at(clock.now), name="手机") is True
    return app


async def test_enrolment_from_the_provisioning_uri(
    service: TotpService, users: dict[str, int], clock: FakeClock, events: RecordingEmitter
) -> None:
    uid = users["zhangwei"]
    enrolment = await service.begin_enrolment(uid, "zhangwei")
    assert len(enrolment.secret_base32) == 32  # 160 bits, no padding
    assert len(base64.b32decode(enrolment.secret_base32)) == 20
    assert enrolment.expires_in == 600
    uri = urlparse(enrolment.provisioning_uri)
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    # The Chinese issuer is percent-encoded UTF-8 in the label; nothing raw but ASCII in the URI.
    assert enrolment.provisioning_uri.isascii()
    assert uri.path == "/OneGate%20%E7%BB%9F%E4%B8%80%E8%BA%AB%E4%BB%BD%E9%97%A8%E6%88%B7:zhangwei"
    app = pyotp.parse_uri(enrolment.provisioning_uri)
    assert isinstance(app, pyotp.TOTP)
    assert app.issuer == DEFAULT_ISSUER and app.name == "zhangwei"
    assert app.secret == enrolment.secret_base32 and app.digits == 6 and app.interval == 30
    assert not await service.is_enrolled(uid)

    assert await service.confirm_enrolment(uid, app.at(clock.now), name="手机") is True
    assert await service.is_enrolled(uid)
    assert not await service.has_pending_enrolment(uid)
    [credential] = await service.list(uid)
    assert credential.name == "手机" and credential.last_used_at is None
    [event] = events.events
    assert event.action == "mfa-enrolled" and event.category is Category.IAM
    assert event.dataset == "onegate.mfa" and event.outcome is Outcome.SUCCESS
    assert event.get("user.id") == str(uid)
    assert event.get("onegate.mfa.credential_id") == str(credential.id)
    # The code typed during enrolment cannot then be used to sign in.
    replay = await service.verify(uid, app.at(clock.now))
    assert replay.reason is TotpReason.REPLAYED


async def test_awkward_account_names_survive_the_uri(service: TotpService, users: dict[str, int]) -> None:
    enrolment = await service.begin_enrolment(users["zhangwei"], "张伟:hr/1 x@y")
    app = pyotp.parse_uri(enrolment.provisioning_uri)
    assert app.name == "张伟:hr/1 x@y" and app.issuer == DEFAULT_ISSUER


async def test_wrong_code_keeps_the_enrolment_pending(
    service: TotpService, users: dict[str, int], clock: FakeClock, kv: KV
) -> None:
    uid = users["zhangwei"]
    enrolment = await service.begin_enrolment(uid, "zhangwei")
    app = pyotp.parse_uri(enrolment.provisioning_uri)
    right = app.at(clock.now)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    assert await service.confirm_enrolment(uid, wrong) is False
    assert await service.confirm_enrolment(uid, "not a code") is False
    assert await service.confirm_enrolment(uid, app.at(clock.now + 2 * INTERVAL)) is False  # t+2
    assert not await service.is_enrolled(uid)
    assert await service.has_pending_enrolment(uid)
    ttl = await kv.ttl(f"mfa:totp-pending:{uid}")
    assert ttl is not None and 590 < ttl <= 600
    assert await service.confirm_enrolment(uid, right) is True
    # Consumed: the same pending enrolment cannot make a second credential.
    assert await service.confirm_enrolment(uid, right) is False
    assert len(await service.list(uid)) == 1


async def test_confirm_without_pending_enrolment_fails(service: TotpService, users: dict[str, int]) -> None:
    assert await service.confirm_enrolment(users["zhangwei"], "123456") is False
    assert not await service.is_enrolled(users["zhangwei"])


async def test_a_new_enrolment_replaces_the_pending_one(
    service: TotpService, users: dict[str, int], clock: FakeClock
) -> None:
    uid = users["zhangwei"]
    first = pyotp.parse_uri((await service.begin_enrolment(uid, "zhangwei")).provisioning_uri)
    second = pyotp.parse_uri((await service.begin_enrolment(uid, "zhangwei")).provisioning_uri)
    assert first.secret != second.secret
    assert await service.confirm_enrolment(uid, first.at(clock.now)) is False
    assert await service.confirm_enrolment(uid, second.at(clock.now)) is True


async def test_one_step_of_tolerance_each_way_and_no_more(
    service: TotpService, users: dict[str, int], clock: FakeClock
) -> None:
    uid = users["zhangwei"]
    app = await enrol(service, uid, clock)
    clock.advance(10 * INTERVAL)
    now = step_of(clock)
    for offset in (-2, 2, -3, 3):
        result = await service.verify(uid, app.generate_otp(now + offset))
        assert (result.ok, result.reason) == (False, TotpReason.INVALID), offset
    await service.reset_failures(uid)
    for offset in (-1, 0, 1):  # increasing steps: each is new
        result = await service.verify(uid, app.generate_otp(now + offset))
        assert result.ok and result.reason is None and result.step == now + offset, offset


async def test_the_same_code_twice_is_a_replay(
    service: TotpService, users: dict[str, int], clock: FakeClock, events: RecordingEmitter
) -> None:
    uid = users["zhangwei"]
    app = await enrol(service, uid, clock)
    clock.advance(INTERVAL)
    code = app.at(clock.now)
    first = await service.verify(uid, code)
    assert first.ok and first.step == step_of(clock) and first.failures == 0
    [credential] = await service.list(uid)
    assert first.credential_id == credential.id and credential.last_used_at is not None
    clock.advance(5)  # same step, a few seconds later
    second = await service.verify(uid, code)
    assert (second.ok, second.reason, second.step) == (False, TotpReason.REPLAYED, first.step)
    assert second.failures == 1
    actions = [e.action for e in events.events]
    assert actions == ["mfa-enrolled", "mfa-verified", "mfa-replayed"]
    replayed = events.events[-1]
    assert replayed.category is Category.INTRUSION_DETECTION and replayed.outcome is Outcome.FAILURE
    assert replayed.get("onegate.reason") == "replayed"
    assert replayed.get("onegate.mfa.time_step") == first.step
    # Events never carry the code.
    for event in events.events:
        assert code not in repr(event.flat())


async def test_an_older_step_after_a_newer_one_is_a_replay(
    service: TotpService, users: dict[str, int], clock: FakeClock
) -> None:
    uid = users["zhangwei"]
    app = await enrol(service, uid, clock)
    clock.advance(10 * INTERVAL)
    now = step_of(clock)
    assert (await service.verify(uid, app.generate_otp(now + 1))).ok
    older = await service.verify(uid, app.generate_otp(now))
    assert older.reason is TotpReason.REPLAYED and older.step == now
    assert (await service.verify(uid, app.generate_otp(now - 1))).reason is TotpReason.REPLAYED
    clock.advance(2 * INTERVAL)
    assert (await service.verify(uid, app.at(clock.now))).ok


async def test_concurrent_verification_of_one_code_succeeds_once(
    service: TotpService, users: dict[str, int], clock: FakeClock
) -> None:
    uid = users["zhangwei"]
    app = await enrol(service, uid, clock)
    clock.advance(INTERVAL)
    code = app.at(clock.now)
    results = await asyncio.gather(*(service.verify(uid, code) for _ in range(4)))
    assert sum(r.ok for r in results) == 1
    assert sorted(str(r.reason) for r in results if not r.ok) == ["replayed"] * 3


async def test_attempt_limit_refuses_even_the_right_code(
    service: TotpService, users: dict[str, int], clock: FakeClock, events: RecordingEmitter
) -> None:
    uid = users["zhangwei"]
    app = await enrol(service, uid, clock)
    clock.advance(INTERVAL)
    right = app.at(clock.now)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for attempt in range(1, 6):
        result = await service.verify(uid, wrong)
        assert (result.reason, result.failures) == (TotpReason.INVALID, attempt)
    assert await service.failures(uid) == 5
    limited = await service.verify(uid, right)
    assert (limited.ok, limited.reason, limited.failures) == (False, TotpReason.RATE_LIMITED, 5)
    assert events.events[-1].get("onegate.reason") == "rate_limited"
    # The right code was not consumed by the refused attempt: after an admin clears the
    # counter it still works.
    await service.reset_failures(uid)
    assert (await service.verify(uid, right)).ok


async def test_a_success_clears_the_failure_count(
    service: TotpService, users: dict[str, int], clock: FakeClock
) -> None:
    uid = users["zhangwei"]
    app = await enrol(service, uid, clock)
    clock.advance(INTERVAL)
    assert (await service.verify(uid, "000000" if app.at(clock.now) != "000000" else "111111")).failures == 1
    assert await service.failures(uid) == 1
    assert (await service.verify(uid, app.at(clock.now))).ok
    assert await service.failures(uid) == 0


async def test_failures_are_counted_per_user(
    service: TotpService, users: dict[str, int], clock: FakeClock
) -> None:
    zhang, wang = users["zhangwei"], users["wangfang"]
    await enrol(service, zhang, clock)
    wang_app = await enrol(service, wang, clock, "wangfang")
    for _ in range(5):
        await service.verify(zhang, "abc")
    clock.advance(INTERVAL)
    assert (await service.verify(zhang, "123456")).reason is TotpReason.RATE_LIMITED
    assert (await service.verify(wang, wang_app.at(clock.now))).ok


@pytest.mark.parametrize(
    "code",
    [
        "",
        "12345",
        "1234567",
        "abcdef",
        "１２３４５６",
        "12345\n",
        "-12345",
        "1e5000",
        None,
        123456,
        "9" * 10_000,
    ],
)
async def test_malformed_codes_are_invalid_never_an_exception(
    service: TotpService, users: dict[str, int], clock: FakeClock, code: Any
) -> None:
    uid = users["zhangwei"]
    await enrol(service, uid, clock)
    result = await service.verify(uid, code)
    assert (result.ok, result.reason, result.failures) == (False, TotpReason.INVALID, 1)


def test_normalise_code() -> None:
    assert normalise_code(" 123 456 ", 6) == "123456"
    assert normalise_code("123\u3000456", 6) == "123456"
    assert normalise_code("12345678", 8) == "12345678"
    assert normalise_code("٣٤٥٦٧٨", 6) is None  # Arabic-Indic digits are digits, but not ASCII


async def test_spaces_in_a_code_are_ignored(
    service: TotpService, users: dict[str, int], clock: FakeClock
) -> None:
    uid = users["zhangwei"]
    app = await enrol(service, uid, clock)
    clock.advance(INTERVAL)
    code = app.at(clock.now)
    assert (await service.verify(uid, f" {code[:3]} {code[3:]} ")).ok


async def test_not_enrolled(service: TotpService, users: dict[str, int]) -> None:
    result = await service.verify(users["zhangwei"], "123456")
    assert (result.ok, result.reason, result.failures) == (False, TotpReason.NOT_ENROLLED, 0)
    assert await service.failures(users["zhangwei"]) == 0


async def test_seed_is_not_stored_in_clear(
    service: TotpService, users: dict[str, int], clock: FakeClock, kv: KV, db: async_sessionmaker[Any]
) -> None:
    uid = users["zhangwei"]
    enrolment = await service.begin_enrolment(uid, "zhangwei")
    seed = base64.b32decode(enrolment.secret_base32)
    pending = await kv.get(f"mfa:totp-pending:{uid}")
    assert pending is not None
    assert seed not in pending and enrolment.secret_base32.encode() not in pending
    app = pyotp.parse_uri(enrolment.provisioning_uri)
    assert await service.confirm_enrolment(uid, app.at(clock.now))
    async with db() as s:
        rows = (await s.execute(text("SELECT * FROM totp_credentials"))).all()
    assert len(rows) == 1
    stored = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in rows[0])
    assert seed not in stored
    assert enrolment.secret_base32.encode() not in stored
    assert enrolment.secret_base32.lower().encode() not in stored
    # The stored blob is a keyvault envelope bound to the user and credential.
    [credential] = await service.list(uid)
    async with db() as s:
        blob = (await s.execute(select(TotpCredential.secret_enc))).scalar_one()
    aad = f"mfa/totp/user:{uid}/credential:{credential.id}".encode()
    assert service._envelope.decrypt(blob, aad) == seed


async def test_ciphertext_moved_to_another_user_does_not_decrypt(
    service: TotpService, users: dict[str, int], clock: FakeClock, db: async_sessionmaker[Any]
) -> None:
    zhang, wang = users["zhangwei"], users["wangfang"]
    zhang_app = await enrol(service, zhang, clock)
    await enrol(service, wang, clock, "wangfang")
    async with db() as s, s.begin():
        blob = (
            await s.execute(select(TotpCredential.secret_enc).where(TotpCredential.user_id == zhang))
        ).scalar_one()
        await s.execute(update(TotpCredential).where(TotpCredential.user_id == wang).values(secret_enc=blob))
    clock.advance(INTERVAL)
    # 王芳's row now holds 张伟's ciphertext: it does not decrypt there, so 张伟's code fails closed.
    result = await service.verify(wang, zhang_app.at(clock.now))
    assert (result.ok, result.reason) == (False, TotpReason.INVALID)
    assert (await service.verify(zhang, zhang_app.at(clock.now))).ok


async def test_replay_is_refused_per_user_across_authenticators(
    service: TotpService, users: dict[str, int], clock: FakeClock
) -> None:
    uid = users["zhangwei"]
    phone = await enrol(service, uid, clock)
    clock.advance(INTERVAL)
    tablet = await enrol(service, uid, clock)
    assert phone.secret != tablet.secret
    assert [c.name for c in await service.list(uid)] == ["手机", "手机"]
    clock.advance(INTERVAL)
    assert (await service.verify(uid, phone.at(clock.now))).ok
    # Another app's code for the same time step is refused: one step, once, per user.
    assert (await service.verify(uid, tablet.at(clock.now))).reason is TotpReason.REPLAYED
    clock.advance(INTERVAL)
    ok = await service.verify(uid, tablet.at(clock.now))
    assert ok.ok and ok.credential_id == (await service.list(uid))[1].id


async def test_list_rename_remove_and_reset(
    service: TotpService, users: dict[str, int], clock: FakeClock, events: RecordingEmitter
) -> None:
    zhang, wang = users["zhangwei"], users["wangfang"]
    await enrol(service, zhang, clock)
    await enrol(service, zhang, clock)
    wang_app = await enrol(service, wang, clock, "wangfang")
    first, second = await service.list(zhang)
    [wang_cred] = await service.list(wang)

    assert await service.rename(zhang, first.id, "  工作手机\u202e ") is True
    assert (await service.list(zhang))[0].name == "工作手机"
    renamed = events.events[-1]
    assert renamed.action == "mfa-renamed" and renamed.get("onegate.mfa.credential_id") == str(first.id)
    assert "工作手机" not in str(renamed.flat())  # the label is the user's own text: not in events
    assert await service.rename(zhang, wang_cred.id, "mine now") is False  # not theirs
    assert events.events[-1] is renamed  # nothing emitted for a refused rename

    assert await service.remove(zhang, wang_cred.id) is False
    assert await service.remove(zhang, first.id) is True
    assert await service.remove(zhang, first.id) is False
    assert [c.id for c in await service.list(zhang)] == [second.id]
    removed = events.events[-1]
    assert removed.action == "mfa-removed" and removed.get("onegate.mfa.credential_id") == str(first.id)

    await service.begin_enrolment(zhang, "zhangwei")
    await service.verify(zhang, "bad")
    assert await service.remove_all(zhang) == 1
    assert not await service.is_enrolled(zhang)
    assert not await service.has_pending_enrolment(zhang)
    assert await service.failures(zhang) == 0
    reset = events.events[-1]
    assert reset.action == "mfa-reset" and reset.get("onegate.mfa.removed") == 1
    assert reset.get("user.id") == str(zhang)
    # 王芳 is untouched.
    clock.advance(INTERVAL)
    assert (await service.verify(wang, wang_app.at(clock.now))).ok


async def test_deleting_the_user_deletes_their_credentials(
    service: TotpService, users: dict[str, int], clock: FakeClock, db: async_sessionmaker[Any]
) -> None:
    uid = users["zhangwei"]
    await enrol(service, uid, clock)
    async with db() as s, s.begin():
        await s.execute(text("DELETE FROM users WHERE id = :id"), {"id": uid})
    async with db() as s:
        assert (await s.execute(text("SELECT count(*) FROM totp_credentials"))).scalar_one() == 0


def test_settings_are_checked(envelope: Envelope) -> None:
    from core.kv import MemoryKV

    db: async_sessionmaker[Any] = async_sessionmaker()
    with pytest.raises(ValueError, match="digits"):
        TotpService(db, envelope, MemoryKV(), digits=4)
    with pytest.raises(ValueError, match="positive"):
        TotpService(db, envelope, MemoryKV(), max_failures=0)
