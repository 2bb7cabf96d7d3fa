"""WebAuthnService (WebAuthn L3 §7.1 / §7.2) on SQLite and PostgreSQL, with MemoryKV and Redis,
driven by the software authenticator of tests/mfa/authenticator.py."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fido2 import cbor
from fido2.webauthn import AuthenticatorData
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import Category, Outcome, RecordingEmitter
from core.kv import KV, MemoryKV
from mfa import AssertionResult, RegistrationResult, WebAuthnReason, WebAuthnService
from mfa.models import WebAuthnCredential
from tests.mfa.authenticator import NoCredential, SoftAuthenticator, b64url, b64url_decode
from tests.mfa.conftest import FakeClock

RP_ID = "idp.example.test"
ORIGIN = "https://idp.example.test"
YUBIKEY = "cb69481e-8ff7-4039-93ec-0a2729a154a8"  # a model to allow
OTHER_MODEL = "ee882879-721c-4913-9775-3dfcce97072a"


def make_service(
    db: async_sessionmaker[Any], kv: KV, clock: FakeClock, events: RecordingEmitter, **settings: Any
) -> WebAuthnService:
    return WebAuthnService(
        db, kv, rp_id=RP_ID, rp_name="OneGate", origins=[ORIGIN], clock=clock, events=events, **settings
    )


@pytest.fixture
def service(
    db: async_sessionmaker[Any], kv: KV, clock: FakeClock, events: RecordingEmitter
) -> WebAuthnService:
    return make_service(db, kv, clock, events)


async def register(
    service: WebAuthnService,
    uid: int,
    key: SoftAuthenticator,
    *,
    discoverable: bool = True,
    name: str = "钥匙",
    **tamper: Any,
) -> RegistrationResult:
    ceremony = await service.begin_registration(
        uid, username=f"user{uid}", display_name="张伟", discoverable=discoverable
    )
    return await service.finish_registration(
        uid, ceremony.id, key.create(ceremony.options, **tamper), name=name
    )


async def second_factor(
    service: WebAuthnService, uid: int, key: SoftAuthenticator, **tamper: Any
) -> AssertionResult:
    ceremony = await service.begin_authentication(uid)
    return await service.finish_authentication(ceremony.id, key.get(ceremony.options, **tamper), user_id=uid)


async def passwordless(service: WebAuthnService, key: SoftAuthenticator, **tamper: Any) -> AssertionResult:
    ceremony = await service.begin_authentication(None)
    return await service.finish_authentication(ceremony.id, key.get(ceremony.options, **tamper))


async def row_of(db: async_sessionmaker[Any], credential_id: int) -> WebAuthnCredential:
    async with db() as s:
        return (
            await s.execute(select(WebAuthnCredential).where(WebAuthnCredential.id == credential_id))
        ).scalar_one()


def as_utc(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes (in UTC); PostgreSQL aware ones.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def refused(result: RegistrationResult | AssertionResult) -> WebAuthnReason | None:
    assert not result.ok
    return result.reason


# -- registration ------------------------------------------------------------------------------


async def test_registration_of_a_passkey(
    service: WebAuthnService,
    users: dict[str, int],
    *,
    kv: KV,
    db: async_sessionmaker[Any],
    clock: FakeClock,
    events: RecordingEmitter,
) -> None:
    uid = users["zhangwei"]
    ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    options = ceremony.options
    json.dumps(options)  # JSON-ready as it is
    assert options["rp"] == {"id": RP_ID, "name": "OneGate"}
    assert options["user"]["name"] == "zhangwei" and options["user"]["displayName"] == "张伟"
    handle = b64url_decode(options["user"]["id"])
    assert len(handle) == 32  # random, no personal data
    assert len(b64url_decode(options["challenge"])) == 32
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-8, -7, -257]
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    assert options["attestation"] == "none"
    assert options["extensions"] == {"credProps": True}
    assert options["timeout"] == 300_000
    assert not options.get("excludeCredentials")
    # The ceremony is in KV under its id, with its user, kind and expiry; not in the options.
    raw = await kv.get(f"mfa:webauthn:{ceremony.id}")
    assert raw is not None
    state = json.loads(raw)
    assert state["kind"] == "registration" and state["user"] == uid and state["uv"] == "preferred"
    assert state["exp"] == clock.now + 300 and state["challenge"] == options["challenge"]
    ttl = await kv.ttl(f"mfa:webauthn:{ceremony.id}")
    assert ttl is not None and 290 < ttl <= 300

    key = SoftAuthenticator()
    result = await service.finish_registration(uid, ceremony.id, key.create(options), name="办公室钥匙")
    assert result.ok and result.reason is None and result.credential_id is not None
    assert result.amr == ("hwk", "user", "pin")
    assert await kv.get(f"mfa:webauthn:{ceremony.id}") is None  # consumed
    assert await service.is_enrolled(uid) and not await service.is_enrolled(users["wangfang"])
    [info] = await service.list(uid)
    assert (info.id, info.name, info.discoverable, info.backup_eligible) == (
        result.credential_id,
        "办公室钥匙",
        True,
        False,
    )
    assert info.aaguid == "00000000-0000-0000-0000-000000000000" and info.last_used_at is None
    assert as_utc(info.created_at) == datetime.fromtimestamp(clock.now, UTC)
    row = await row_of(db, result.credential_id)
    [stored] = key.credentials.values()
    assert row.credential_id == stored.credential_id and row.user_handle == handle == stored.user_handle
    assert row.sign_count == 0 and row.transports == "nfc usb" and not row.backed_up
    assert cbor.decode(row.public_key)[3] == -7  # the COSE key as the authenticator sent it
    [event] = events.events
    assert (
        event.action == "mfa-enrolled" and event.category is Category.IAM and event.outcome is Outcome.SUCCESS
    )
    assert event.get("user.id") == str(uid) and event.get("onegate.mfa.method") == "webauthn"
    assert event.get("onegate.mfa.credential_id") == str(result.credential_id)
    assert event.get("onegate.mfa.discoverable") is True


async def test_more_keys_share_the_user_handle_and_are_excluded(
    service: WebAuthnService, users: dict[str, int], db: async_sessionmaker[Any]
) -> None:
    uid = users["zhangwei"]
    first = SoftAuthenticator()
    one = await register(service, uid, first)
    assert one.ok and one.credential_id is not None
    handle = (await row_of(db, one.credential_id)).user_handle

    ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    assert b64url_decode(ceremony.options["user"]["id"]) == handle
    [excluded] = ceremony.options["excludeCredentials"]
    assert b64url_decode(excluded["id"]) == next(iter(first.credentials))
    assert excluded["type"] == "public-key" and excluded["transports"] == ["nfc", "usb"]
    with pytest.raises(NoCredential):  # the browser refuses: this authenticator is registered already
        first.create(ceremony.options)
    two = await service.finish_registration(
        uid, ceremony.id, SoftAuthenticator().create(ceremony.options), name="备用"
    )
    assert two.ok and two.credential_id is not None
    assert (await row_of(db, two.credential_id)).user_handle == handle
    assert [c.name for c in await service.list(uid)] == ["钥匙", "备用"]

    # Another user gets a handle of their own.
    other = await service.begin_registration(users["wangfang"], username="wangfang", display_name="王芳")
    assert b64url_decode(other.options["user"]["id"]) != handle
    assert not other.options.get("excludeCredentials")


async def test_security_key_for_second_factor_only(
    service: WebAuthnService, users: dict[str, int], db: async_sessionmaker[Any]
) -> None:
    uid = users["zhangwei"]
    ceremony = await service.begin_registration(
        uid, username="zhangwei", display_name="张伟", discoverable=False
    )
    assert ceremony.options["authenticatorSelection"]["residentKey"] == "discouraged"
    key = SoftAuthenticator()
    result = await service.finish_registration(
        uid, ceremony.id, key.create(ceremony.options, cred_props=None), name="k"
    )
    assert result.ok and result.credential_id is not None
    assert not (await row_of(db, result.credential_id)).discoverable  # what was asked, without credProps
    # Asked for a passkey, but the client reports none was made (credProps.rk false): recorded as such.
    result = await register(service, uid, SoftAuthenticator(), cred_props=False)
    assert result.ok and result.credential_id is not None
    assert not (await row_of(db, result.credential_id)).discoverable


async def test_duplicate_credential_id_is_refused(
    service: WebAuthnService, users: dict[str, int], events: RecordingEmitter
) -> None:
    key = SoftAuthenticator()
    first = await register(service, users["zhangwei"], key, credential_id=b"\x07" * 32)
    assert first.ok
    # The same credential id for someone else (an authenticator that ignores exclusion, or a forgery).
    again = await register(service, users["wangfang"], key, credential_id=b"\x07" * 32)
    assert refused(again) is WebAuthnReason.DUPLICATE
    # And for the same user, bypassing excludeCredentials.
    again = await register(service, users["zhangwei"], key, credential_id=b"\x07" * 32, ignore_exclude=True)
    assert refused(again) is WebAuthnReason.DUPLICATE
    assert not await service.is_enrolled(users["wangfang"])
    assert len(await service.list(users["zhangwei"])) == 1
    failed = [e for e in events.events if e.action == "mfa-failed"]
    assert [(e.get("user.id"), e.get("onegate.reason")) for e in failed] == [
        (str(users["wangfang"]), "duplicate"),
        (str(users["zhangwei"]), "duplicate"),
    ]
    assert failed[0].get("onegate.mfa.ceremony") == "registration"


async def test_duplicate_under_a_race_registers_once(service: WebAuthnService, users: dict[str, int]) -> None:
    key = SoftAuthenticator()
    ceremonies = [
        (uid, await service.begin_registration(uid, username=name, display_name=name))
        for name, uid in users.items()
    ]
    responses = [(uid, c.id, key.create(c.options, credential_id=b"\x09" * 40)) for uid, c in ceremonies]
    results = await asyncio.gather(*(service.finish_registration(u, c, r, name="k") for u, c, r in responses))
    assert sorted((r.ok, r.reason) for r in results) == [(False, WebAuthnReason.DUPLICATE), (True, None)]


# -- authentication ----------------------------------------------------------------------------


async def test_second_factor(
    service: WebAuthnService,
    users: dict[str, int],
    db: async_sessionmaker[Any],
    clock: FakeClock,
    events: RecordingEmitter,
) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    registered = await register(service, uid, key, discoverable=False)
    assert registered.credential_id is not None
    await register(service, users["wangfang"], SoftAuthenticator())  # not offered to 张伟
    ceremony = await service.begin_authentication(uid)
    options = ceremony.options
    json.dumps(options)
    assert options["rpId"] == RP_ID and options["userVerification"] == "preferred"
    assert len(b64url_decode(options["challenge"])) == 32
    [allowed] = options["allowCredentials"]
    assert b64url_decode(allowed["id"]) == next(iter(key.credentials))
    events.events.clear()
    clock.advance(60)
    result = await service.finish_authentication(ceremony.id, key.get(options), user_id=uid)
    assert result == AssertionResult(
        ok=True,
        user_id=uid,
        credential_id=registered.credential_id,
        amr=("hwk", "user", "pin"),
        user_verified=True,
    )
    row = await row_of(db, registered.credential_id)
    assert row.sign_count == 1
    assert row.last_used_at is not None
    assert as_utc(row.last_used_at) == datetime.fromtimestamp(clock.now, UTC)
    [event] = events.events
    assert event.action == "mfa-verified" and event.category is Category.AUTHENTICATION
    assert event.get("user.id") == str(uid) and event.get("onegate.mfa.credential_id") == str(row.id)
    assert (
        event.get("onegate.mfa.ceremony") == "second_factor"
        and event.get("onegate.mfa.user_verified") is True
    )

    # A key that does not verify the user still proves possession and presence when UV is only preferred.
    result = await second_factor(service, uid, key, user_verified=False)
    assert result.ok and result.amr == ("hwk", "user") and not result.user_verified
    assert (await row_of(db, registered.credential_id)).sign_count == 2
    # The caller may ask for user verification for this one ceremony.
    ceremony = await service.begin_authentication(uid, user_verification="required")
    assert ceremony.options["userVerification"] == "required"
    result = await service.finish_authentication(
        ceremony.id, key.get(ceremony.options, user_verified=False), user_id=uid
    )
    assert refused(result) is WebAuthnReason.USER_VERIFICATION
    with pytest.raises(ValueError, match="user_verification"):
        await service.begin_authentication(uid, user_verification="sometimes")


async def test_synced_passkey_is_swk_and_backup_state_is_kept(
    service: WebAuthnService, users: dict[str, int], db: async_sessionmaker[Any]
) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator(
        backup_eligible=True, counter_step=0, attachment="platform", transports=("internal",)
    )
    registered = await register(service, uid, key)
    assert registered.ok and registered.amr == ("swk", "user", "pin") and registered.credential_id is not None
    row = await row_of(db, registered.credential_id)
    assert row.backup_eligible and not row.backed_up and row.transports == "internal"
    [info] = await service.list(uid)
    assert info.backup_eligible
    # The provider syncs it (BS set); an authenticator without a counter sends 0 every time.
    for _ in range(2):
        result = await second_factor(service, uid, key, backed_up=True)
        assert result.ok and result.amr == ("swk", "user", "pin")
    row = await row_of(db, registered.credential_id)
    assert row.backed_up and row.sign_count == 0
    # BE is fixed for the credential's life (§6.3.3): an assertion without it is not this key's.
    assert refused(await second_factor(service, uid, key, backup_eligible=False, backed_up=False)) is (
        WebAuthnReason.INVALID
    )
    # BS without BE is an invalid combination, also at registration.
    result = await register(service, uid, SoftAuthenticator(), backed_up=True)
    assert refused(result) is WebAuthnReason.INVALID


async def test_passwordless_sign_in_with_a_passkey(
    service: WebAuthnService, users: dict[str, int], events: RecordingEmitter
) -> None:
    uid = users["wangfang"]
    key = SoftAuthenticator()
    registered = await register(service, uid, key)
    ceremony = await service.begin_authentication(None, user_verification="discouraged")
    assert not ceremony.options.get("allowCredentials")  # no user name: the authenticator offers its passkeys
    assert ceremony.options["userVerification"] == "required"  # whatever was asked: the key is both factors
    events.events.clear()
    result = await service.finish_authentication(ceremony.id, key.get(ceremony.options))
    assert result.ok and result.user_id == uid and result.credential_id == registered.credential_id
    assert result.amr == ("hwk", "user", "pin") and result.user_verified
    [event] = events.events
    assert event.action == "mfa-verified" and event.get("onegate.mfa.ceremony") == "passwordless"
    assert event.get("user.id") == str(uid)


async def test_passwordless_requires_user_verification(
    service: WebAuthnService, users: dict[str, int]
) -> None:
    key = SoftAuthenticator()
    await register(service, users["wangfang"], key)
    result = await passwordless(service, key, user_verified=False)
    assert refused(result) is WebAuthnReason.USER_VERIFICATION
    assert result.user_id == users["wangfang"]  # the claimed owner, for the record


async def test_passwordless_user_handle_must_be_the_credentials(
    service: WebAuthnService, users: dict[str, int], events: RecordingEmitter
) -> None:
    key = SoftAuthenticator()
    await register(service, users["wangfang"], key)
    await register(service, users["zhangwei"], SoftAuthenticator())
    zhang_handle = b64url_decode(
        (await service.begin_registration(users["zhangwei"], username="z", display_name="z")).options["user"][
            "id"
        ]
    )
    # 王芳's key returning 张伟's handle does not sign 张伟 in (nor 王芳).
    result = await passwordless(service, key, user_handle=zhang_handle)
    assert refused(result) is WebAuthnReason.UNKNOWN_CREDENTIAL
    assert (
        refused(await passwordless(service, key, user_handle=b"\x00" * 32))
        is WebAuthnReason.UNKNOWN_CREDENTIAL
    )
    assert refused(await passwordless(service, key, user_handle=None)) is WebAuthnReason.INVALID
    # In a second-factor ceremony a returned handle must match too (§7.2 step 6).
    result = await second_factor(service, users["wangfang"], key, user_handle=zhang_handle)
    assert refused(result) is WebAuthnReason.UNKNOWN_CREDENTIAL
    assert (await passwordless(service, key)).ok


async def test_an_unknown_passkey_is_refused_without_a_user(
    service: WebAuthnService, users: dict[str, int], events: RecordingEmitter
) -> None:
    stranger = SoftAuthenticator()  # holds a passkey for this RP that was never registered here
    stranger.create(
        (await service.begin_registration(users["zhangwei"], username="z", display_name="z")).options
    )
    result = await passwordless(service, stranger)
    assert result == AssertionResult(ok=False, reason=WebAuthnReason.UNKNOWN_CREDENTIAL)
    [event] = events.events
    assert event.action == "mfa-failed" and event.get("user.id") is None
    assert event.get("onegate.reason") == "unknown_credential"


# -- acceptance 3 of issue 4: what must be refused, and why ----------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.idp.example.test",  # a subdomain of the RP id: fido2's default would accept it
        "http://idp.example.test",
        "https://idp.example.test:8443",
        "https://idp.example.test.evil.cn",
        "https://IDP.example.test",
        "null",
    ],
)
async def test_wrong_origin(
    service: WebAuthnService, users: dict[str, int], events: RecordingEmitter, origin: str
) -> None:
    uid = users["zhangwei"]
    assert refused(await register(service, uid, SoftAuthenticator(), origin=origin)) is WebAuthnReason.ORIGIN
    assert not await service.is_enrolled(uid)
    key = SoftAuthenticator()
    assert (await register(service, uid, key)).ok
    assert refused(await second_factor(service, uid, key, origin=origin)) is WebAuthnReason.ORIGIN
    assert refused(await passwordless(service, key, origin=origin)) is WebAuthnReason.ORIGIN
    reasons = [e.get("onegate.reason") for e in events.events if e.action == "mfa-failed"]
    assert reasons == ["origin", "origin", "origin"]


async def test_cross_origin_iframe_is_refused(service: WebAuthnService, users: dict[str, int]) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    assert refused(await register(service, uid, key, cross_origin=True)) is WebAuthnReason.ORIGIN
    assert (await register(service, uid, key)).ok
    assert refused(await second_factor(service, uid, key, cross_origin=True)) is WebAuthnReason.ORIGIN


async def test_more_than_one_exact_origin(
    db: async_sessionmaker[Any], kv: KV, clock: FakeClock, events: RecordingEmitter, users: dict[str, int]
) -> None:
    service = WebAuthnService(
        db,
        kv,
        rp_id="example.test",
        rp_name="OneGate",
        origins=["https://idp.example.test/", "https://login.example.test"],
        clock=clock,
    )
    uid = users["zhangwei"]
    key = SoftAuthenticator(origin="https://login.example.test")
    assert (await register(service, uid, key)).ok
    assert (await second_factor(service, uid, key, origin="https://idp.example.test")).ok
    assert (
        refused(await second_factor(service, uid, key, origin="https://www.example.test"))
        is WebAuthnReason.ORIGIN
    )


async def test_wrong_rp_id(service: WebAuthnService, users: dict[str, int]) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    assert refused(await register(service, uid, key, rp_id="example.test")) is WebAuthnReason.RP_ID
    assert (await register(service, uid, key)).ok
    assert refused(await second_factor(service, uid, key, rp_id="evil.example.test")) is WebAuthnReason.RP_ID
    assert refused(await second_factor(service, uid, key, rp_id="example.test")) is WebAuthnReason.RP_ID


async def test_reused_challenge(service: WebAuthnService, users: dict[str, int], kv: KV) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    response = key.create(ceremony.options)
    assert (await service.finish_registration(uid, ceremony.id, response, name="k")).ok
    again = await service.finish_registration(uid, ceremony.id, response, name="k")
    assert refused(again) is WebAuthnReason.CHALLENGE

    ceremony = await service.begin_authentication(uid)
    assertion = key.get(ceremony.options)
    assert (await service.finish_authentication(ceremony.id, assertion, user_id=uid)).ok
    # The same ceremony again, even with a fresh signature over its challenge.
    fresh = key.get(ceremony.options)
    assert (
        refused(await service.finish_authentication(ceremony.id, fresh, user_id=uid))
        is WebAuthnReason.CHALLENGE
    )
    # An old assertion presented in a new ceremony: its challenge is not the new one.
    newer = await service.begin_authentication(uid)
    replay = key.get(ceremony.options)  # signed over the old challenge
    assert (
        refused(await service.finish_authentication(newer.id, replay, user_id=uid))
        is WebAuthnReason.CHALLENGE
    )
    # A refused attempt consumes the ceremony too.
    assert await kv.get(f"mfa:webauthn:{newer.id}") is None
    assert (
        refused(await service.finish_authentication(newer.id, key.get(newer.options), user_id=uid))
        is WebAuthnReason.CHALLENGE
    )
    # Unknown and malformed ceremony ids.
    for ceremony_id in ("A" * 43, "", "mfa:webauthn:x", "../" * 20, "x" * 10_000):
        result = await service.finish_authentication(ceremony_id, key.get(ceremony.options), user_id=uid)
        assert refused(result) is WebAuthnReason.CHALLENGE


async def test_tampered_signature(
    service: WebAuthnService, users: dict[str, int], db: async_sessionmaker[Any], events: RecordingEmitter
) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    registered = await register(service, uid, key)
    assert registered.credential_id is not None
    events.events.clear()
    result = await second_factor(service, uid, key, tamper_signature=True)
    assert result == AssertionResult(
        ok=False, reason=WebAuthnReason.INVALID, user_id=uid, credential_id=registered.credential_id
    )
    assert refused(await passwordless(service, key, tamper_signature=True)) is WebAuthnReason.INVALID
    row = await row_of(db, registered.credential_id)
    assert row.sign_count == 0 and row.last_used_at is None  # nothing moved
    assert [(e.action, e.get("onegate.reason")) for e in events.events] == [
        ("mfa-failed", "invalid"),
        ("mfa-failed", "invalid"),
    ]
    assert events.events[0].get("onegate.mfa.credential_id") == str(registered.credential_id)


async def test_wrong_client_data_type(service: WebAuthnService, users: dict[str, int]) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    assert (
        refused(await register(service, uid, key, client_data_type="webauthn.get")) is WebAuthnReason.INVALID
    )
    assert (await register(service, uid, key)).ok
    assert refused(await second_factor(service, uid, key, client_data_type="webauthn.create")) is (
        WebAuthnReason.INVALID
    )


async def test_counter_going_backwards_is_a_suspected_clone(
    service: WebAuthnService, users: dict[str, int], db: async_sessionmaker[Any], events: RecordingEmitter
) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    registered = await register(service, uid, key)
    assert registered.credential_id is not None
    for _ in range(3):
        assert (await second_factor(service, uid, key)).ok
    assert (await row_of(db, registered.credential_id)).sign_count == 3
    events.events.clear()

    result = await second_factor(service, uid, key, counter=2)  # backwards
    assert refused(result) is WebAuthnReason.COUNTER
    assert result.user_id == uid and result.credential_id == registered.credential_id
    clone, failed = events.events
    assert clone.action == "mfa-clone-suspected" and clone.category is Category.INTRUSION_DETECTION
    assert clone.outcome is Outcome.FAILURE and clone.get("user.id") == str(uid)
    assert clone.get("onegate.mfa.credential_id") == str(registered.credential_id)
    assert clone.get("onegate.mfa.sign_count") == 2 and clone.get("onegate.mfa.stored_sign_count") == 3
    assert clone.get("onegate.mfa.method") == "webauthn" and clone.get("onegate.reason") == "counter"
    assert failed.action == "mfa-failed" and failed.get("onegate.reason") == "counter"
    # Equal is not greater; a reset to 0 is refused too.
    assert refused(await second_factor(service, uid, key, counter=3)) is WebAuthnReason.COUNTER
    assert refused(await passwordless(service, key, counter=0)) is WebAuthnReason.COUNTER
    assert events.actions().count("mfa-clone-suspected") == 3
    assert (await row_of(db, registered.credential_id)).sign_count == 3  # unchanged by the refusals
    assert (await second_factor(service, uid, key, counter=10)).ok  # jumps forward are fine


async def test_a_cloned_authenticator_is_caught(service: WebAuthnService, users: dict[str, int]) -> None:
    uid = users["zhangwei"]
    original = SoftAuthenticator()
    await register(service, uid, original)
    assert (await second_factor(service, uid, original)).ok  # counter 1
    clone = original.clone()
    assert (await second_factor(service, uid, clone)).ok  # the clone goes first: counter 2
    # The original's next use sends 2 again: one of the two is a copy.
    assert refused(await second_factor(service, uid, original)) is WebAuthnReason.COUNTER


async def test_concurrent_assertions_with_the_same_counter_pass_once(
    service: WebAuthnService, users: dict[str, int]
) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    await register(service, uid, key)
    twin = key.clone()
    first, second = await service.begin_authentication(uid), await service.begin_authentication(uid)
    answers = [(first.id, key.get(first.options)), (second.id, twin.get(second.options))]  # both counter 1
    results = await asyncio.gather(*(service.finish_authentication(c, r, user_id=uid) for c, r in answers))
    assert sorted((r.ok, r.reason) for r in results) == [(False, WebAuthnReason.COUNTER), (True, None)]


async def test_the_counter_moves_by_compare_and_set(
    service: WebAuthnService, users: dict[str, int], db: async_sessionmaker[Any]
) -> None:
    # The interleaving the test above cannot force: an assertion that read the row before a
    # concurrent one moved the counter. The stale value must not let it pass (private API on purpose).
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    registered = await register(service, uid, key)
    assert registered.credential_id is not None
    stale = await row_of(db, registered.credential_id)
    twin = key.clone()
    assert (await second_factor(service, uid, key)).ok  # stored counter 1
    ceremony = await service.begin_authentication(uid)
    same = AuthenticatorData(b64url_decode(twin.get(ceremony.options)["response"]["authenticatorData"]))
    assert (stale.sign_count, same.counter) == (0, 1)
    with pytest.raises(Exception) as caught:
        await service._advance_counter(stale, same)
    assert getattr(caught.value, "reason", None) is WebAuthnReason.COUNTER
    # A stale read with a newer counter reads again and moves it.
    newer = AuthenticatorData(b64url_decode(key.get(ceremony.options)["response"]["authenticatorData"]))
    await service._advance_counter(stale, newer)
    assert (await row_of(db, registered.credential_id)).sign_count == 2


async def test_expired_challenge(service: WebAuthnService, users: dict[str, int], clock: FakeClock) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    clock.advance(300)
    result = await service.finish_registration(uid, ceremony.id, key.create(ceremony.options), name="k")
    assert refused(result) is WebAuthnReason.CHALLENGE
    assert (await register(service, uid, key, ignore_exclude=True)).ok
    ceremony = await service.begin_authentication(uid)
    clock.advance(299)
    assert (await service.finish_authentication(ceremony.id, key.get(ceremony.options), user_id=uid)).ok
    ceremony = await service.begin_authentication(None)
    clock.advance(301)
    assert refused(await service.finish_authentication(ceremony.id, key.get(ceremony.options))) is (
        WebAuthnReason.CHALLENGE
    )


async def test_someone_elses_credential(service: WebAuthnService, users: dict[str, int]) -> None:
    zhang, wang = users["zhangwei"], users["wangfang"]
    zhang_key, wang_key = SoftAuthenticator(), SoftAuthenticator()
    await register(service, zhang, zhang_key)
    await register(service, wang, wang_key)
    # 王芳's ceremony answered with 张伟's key (a stolen key, or a swapped response).
    ceremony = await service.begin_authentication(wang)
    stolen = zhang_key.get(ceremony.options, credential_id=next(iter(zhang_key.credentials)))
    result = await service.finish_authentication(ceremony.id, stolen, user_id=wang)
    assert result == AssertionResult(ok=False, reason=WebAuthnReason.UNKNOWN_CREDENTIAL, user_id=wang)
    # A key that was never registered.
    stranger = SoftAuthenticator()
    stranger.create((await service.begin_registration(wang, username="w", display_name="w")).options)
    ceremony = await service.begin_authentication(wang)
    answer = stranger.get(ceremony.options, credential_id=next(iter(stranger.credentials)))
    assert refused(await service.finish_authentication(ceremony.id, answer, user_id=wang)) is (
        WebAuthnReason.UNKNOWN_CREDENTIAL
    )
    # A removed key.
    [mine] = await service.list(wang)
    assert await service.remove(wang, mine.id)
    assert refused(
        await second_factor(service, wang, wang_key, credential_id=next(iter(wang_key.credentials)))
    ) is (WebAuthnReason.UNKNOWN_CREDENTIAL)


async def test_someone_elses_ceremony(service: WebAuthnService, users: dict[str, int]) -> None:
    zhang, wang = users["zhangwei"], users["wangfang"]
    zhang_key = SoftAuthenticator()
    await register(service, zhang, zhang_key)
    await register(service, wang, SoftAuthenticator())

    ceremony = await service.begin_authentication(zhang)
    answer = zhang_key.get(ceremony.options)
    assert (
        refused(await service.finish_authentication(ceremony.id, answer, user_id=wang))
        is WebAuthnReason.CHALLENGE
    )
    # ... and it is gone for 张伟 too (single use, whoever tried).
    assert (
        refused(await service.finish_authentication(ceremony.id, answer, user_id=zhang))
        is WebAuthnReason.CHALLENGE
    )
    # A user's ceremony is not a passwordless one, nor the other way round.
    ceremony = await service.begin_authentication(zhang)
    assert refused(await service.finish_authentication(ceremony.id, zhang_key.get(ceremony.options))) is (
        WebAuthnReason.CHALLENGE
    )
    ceremony = await service.begin_authentication(None)
    result = await service.finish_authentication(ceremony.id, zhang_key.get(ceremony.options), user_id=zhang)
    assert refused(result) is WebAuthnReason.CHALLENGE
    # A registration ceremony is not an authentication one, nor the other way round.
    registration = await service.begin_registration(zhang, username="zhangwei", display_name="张伟")
    result = await service.finish_authentication(
        registration.id, zhang_key.get(ceremony.options), user_id=zhang
    )
    assert refused(result) is WebAuthnReason.CHALLENGE
    authentication = await service.begin_authentication(zhang)
    result = await service.finish_registration(
        zhang, authentication.id, SoftAuthenticator().create(registration.options), name="k"
    )
    assert refused(result) is WebAuthnReason.CHALLENGE
    # 王芳 finishing 张伟's registration.
    registration = await service.begin_registration(zhang, username="zhangwei", display_name="张伟")
    result = await service.finish_registration(
        wang, registration.id, SoftAuthenticator().create(registration.options), name="k"
    )
    assert refused(result) is WebAuthnReason.CHALLENGE
    assert len(await service.list(wang)) == 1


async def test_user_verification_and_presence_required(
    db: async_sessionmaker[Any], kv: KV, clock: FakeClock, events: RecordingEmitter, users: dict[str, int]
) -> None:
    service = make_service(db, kv, clock, events, user_verification="required")
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    assert ceremony.options["authenticatorSelection"]["userVerification"] == "required"
    result = await service.finish_registration(
        uid, ceremony.id, key.create(ceremony.options, user_verified=False), name="k"
    )
    assert refused(result) is WebAuthnReason.USER_VERIFICATION
    assert refused(await register(service, uid, key, user_present=False, ignore_exclude=True)) is (
        WebAuthnReason.USER_VERIFICATION
    )
    registered = await register(service, uid, key, ignore_exclude=True)
    assert registered.ok
    assert (await service.begin_authentication(uid)).options["userVerification"] == "required"
    assert (
        refused(await second_factor(service, uid, key, user_verified=False))
        is WebAuthnReason.USER_VERIFICATION
    )
    assert (
        refused(await second_factor(service, uid, key, user_present=False))
        is WebAuthnReason.USER_VERIFICATION
    )
    assert (await second_factor(service, uid, key)).amr == ("hwk", "user", "pin")


# -- attestation policy ------------------------------------------------------------------------


async def test_aaguid_allow_list(
    db: async_sessionmaker[Any], kv: KV, clock: FakeClock, events: RecordingEmitter, users: dict[str, int]
) -> None:
    service = make_service(db, kv, clock, events, attestation="direct", aaguid_allowlist=[YUBIKEY.upper()])
    uid = users["zhangwei"]
    ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    assert ceremony.options["attestation"] == "direct"
    allowed = SoftAuthenticator(aaguid=YUBIKEY)
    result = await service.finish_registration(
        uid, ceremony.id, allowed.create(ceremony.options, attestation="packed"), name="k"
    )
    assert result.ok
    assert (await service.list(uid))[0].aaguid == YUBIKEY
    # Attestation "none" is accepted (clients may strip it) but the model must still be allowed.
    assert (await register(service, uid, SoftAuthenticator(aaguid=YUBIKEY))).ok
    other = await register(service, uid, SoftAuthenticator(aaguid=OTHER_MODEL), attestation="packed")
    assert refused(other) is WebAuthnReason.AUTHENTICATOR_NOT_ALLOWED
    # A client that hides the model (all-zero AAGUID) is refused by an allow-list.
    hidden = await register(service, uid, SoftAuthenticator())
    assert refused(hidden) is WebAuthnReason.AUTHENTICATOR_NOT_ALLOWED
    # With "direct" the statement must verify.
    forged = await register(
        service, uid, SoftAuthenticator(aaguid=YUBIKEY), attestation="packed", tamper_attestation=True
    )
    assert refused(forged) is WebAuthnReason.INVALID
    assert len(await service.list(uid)) == 2
    failed = [e.get("onegate.reason") for e in events.events if e.action == "mfa-failed"]
    assert failed == ["authenticator_not_allowed", "authenticator_not_allowed", "invalid"]


async def test_allow_list_with_attestation_none(
    db: async_sessionmaker[Any], kv: KV, clock: FakeClock, events: RecordingEmitter, users: dict[str, int]
) -> None:
    service = make_service(db, kv, clock, events, aaguid_allowlist=[YUBIKEY])
    uid = users["zhangwei"]
    assert (await register(service, uid, SoftAuthenticator(aaguid=YUBIKEY))).ok
    assert (
        refused(await register(service, uid, SoftAuthenticator())) is WebAuthnReason.AUTHENTICATOR_NOT_ALLOWED
    )
    # Without "direct" the statement is not looked at (fido2 ignores it, as we ask for none).
    assert (
        await register(
            service, uid, SoftAuthenticator(aaguid=YUBIKEY), attestation="packed", tamper_attestation=True
        )
    ).ok


# -- malformed input ---------------------------------------------------------------------------


def _mangle(response: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``response`` with the member at ``path`` set to ``value`` (or removed: ``...``)."""
    copy = json.loads(json.dumps(response))
    node = copy
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return copy


def _client_data_with(response: dict[str, Any], **members: Any) -> str:
    data = json.loads(b64url_decode(response["response"]["clientDataJSON"]))
    data.update(members)
    return b64url(json.dumps(data).encode())


def _b64(value: Any) -> str:
    return b64url(cbor.encode(value) if not isinstance(value, bytes) else value)


def _non_canonical(text: str) -> str:
    """The same bytes with a stray bit set in the last character's unused low bits."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(text) % 4 in (2, 3)  # there are unused bits to set
    return text[:-1] + alphabet[alphabet.index(text[-1]) ^ 1]


def _common_cases(good: dict[str, Any]) -> list[Any]:
    huge = "A" * 5_000_000
    return [
        None,
        [],
        "credential",
        42,
        {},
        _mangle(good, ("type",), "private-key"),
        _mangle(good, ("type",), ...),
        _mangle(good, ("type",), ["public-key"]),
        _mangle(good, ("rawId",), ...),
        _mangle(good, ("rawId",), ""),
        _mangle(good, ("rawId",), 12345),
        _mangle(good, ("rawId",), "not base64!"),
        _mangle(good, ("rawId",), good["rawId"] + "=="),  # wrong padding
        _mangle(good, ("rawId",), _non_canonical(good["rawId"])),
        _mangle(good, ("rawId",), b64url(b"\x01" * 2000)),  # longer than 1023 bytes
        _mangle(good, ("rawId",), huge),
        _mangle(good, ("id",), b64url(b"another id")),
        _mangle(good, ("id",), None),
        _mangle(good, ("response",), ...),
        _mangle(good, ("response",), "response"),
        _mangle(good, ("response",), [good["response"]]),
        _mangle(good, ("response", "clientDataJSON"), ...),
        _mangle(good, ("response", "clientDataJSON"), None),
        _mangle(good, ("response", "clientDataJSON"), {"type": "webauthn.get"}),
        _mangle(good, ("response", "clientDataJSON"), huge),
        _mangle(good, ("response", "clientDataJSON"), "%%%%"),
        _mangle(good, ("response", "clientDataJSON"), b64url(b"not json")),
        _mangle(good, ("response", "clientDataJSON"), b64url(b"\xff\xfe")),
        _mangle(good, ("response", "clientDataJSON"), b64url(b"[1, 2, 3]")),
        _mangle(good, ("response", "clientDataJSON"), b64url(b"[" * 5000 + b"]" * 5000)),
        _mangle(good, ("response", "clientDataJSON"), _client_data_with(good, challenge=10**12)),
        _mangle(good, ("response", "clientDataJSON"), _client_data_with(good, challenge=-1)),
        _mangle(good, ("response", "clientDataJSON"), _client_data_with(good, challenge=None)),
        _mangle(good, ("response", "clientDataJSON"), _client_data_with(good, challenge="!!")),
        _mangle(good, ("response", "clientDataJSON"), _client_data_with(good, origin=[ORIGIN])),
        _mangle(good, ("response", "clientDataJSON"), _client_data_with(good, origin=None)),
        _mangle(good, ("response", "clientDataJSON"), _client_data_with(good, type=1)),
        _mangle(good, ("response", "clientDataJSON"), _client_data_with(good, crossOrigin="false")),
        _mangle(good, ("clientExtensionResults",), ["credProps"]),
        _mangle(good, ("authenticatorAttachment",), 1),
    ]


async def test_malformed_registration_never_raises(
    service: WebAuthnService, users: dict[str, int], events: RecordingEmitter
) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    template = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    good = key.create(template.options)
    auth_data = b64url_decode(good["response"]["authenticatorData"])
    cases = [
        *_common_cases(good),
        _mangle(good, ("response", "attestationObject"), ...),
        _mangle(good, ("response", "attestationObject"), ""),
        _mangle(good, ("response", "attestationObject"), "A" * 100_000),
        _mangle(good, ("response", "attestationObject"), b64url(b"\xff\x00")),
        _mangle(good, ("response", "attestationObject"), _b64([1, 2, 3])),
        _mangle(
            good, ("response", "attestationObject"), _b64({"fmt": "none", "attStmt": {}, "authData": 10**12})
        ),
        _mangle(
            good, ("response", "attestationObject"), _b64({"fmt": "none", "attStmt": {}, "authData": b"x"})
        ),
        _mangle(
            good, ("response", "attestationObject"), _b64({"fmt": 7, "attStmt": {}, "authData": auth_data})
        ),
        _mangle(
            good,
            ("response", "attestationObject"),
            _b64({"fmt": "none", "attStmt": [], "authData": auth_data}),
        ),
        _mangle(good, ("response", "attestationObject"), b64url(b"\x81" * 20_000)),  # deep nesting
        _mangle(good, ("response", "attestationObject"), b64url(b"\x9b" + b"\xff" * 8)),  # 2**64 items
        # The AT flag without credential data, or credential data without the AT flag.
        _mangle(
            good,
            ("response", "attestationObject"),
            _b64({"fmt": "none", "attStmt": {}, "authData": auth_data[:37]}),
        ),
        _mangle(
            good,
            ("response", "attestationObject"),
            _b64(
                {
                    "fmt": "none",
                    "attStmt": {},
                    "authData": auth_data[:32] + bytes([auth_data[32] & ~0x40]) + auth_data[33:],
                }
            ),
        ),
        _mangle(
            good,
            ("response", "attestationObject"),
            _b64({"fmt": "none", "attStmt": {}, "authData": auth_data + b"\x00"}),
        ),
        # A COSE key that is not one (x, y not on the curve).
        _mangle(
            good,
            ("response", "attestationObject"),
            _b64({"fmt": "none", "attStmt": {}, "authData": auth_data[:-32] + b"\x00" * 32}),
        ),
        _mangle(good, ("response", "transports"), "usb"),
        _mangle(good, ("response", "transports"), [1]),
        _mangle(good, ("response", "transports"), ["usb"] * 100),
    ]
    for number, case in enumerate(cases):
        ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
        if isinstance(case, dict) and isinstance(case.get("response"), dict):
            # Put the new ceremony's challenge in, so what is refused is the damage, not the challenge.
            data = case["response"].get("clientDataJSON")
            if data == good["response"]["clientDataJSON"]:
                case["response"]["clientDataJSON"] = _client_data_with(
                    good, challenge=ceremony.options["challenge"]
                )
        result = await service.finish_registration(uid, ceremony.id, case, name="k")
        assert (result.ok, result.reason) == (False, WebAuthnReason.INVALID), number
    assert not await service.is_enrolled(uid)
    assert {e.get("onegate.reason") for e in events.events} == {"invalid"}
    assert len(events.events) == len(cases)
    # A name of the wrong type or full of control characters is only a label: cleaned, not an error.
    ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    result = await service.finish_registration(
        uid, ceremony.id, key.create(ceremony.options), name="\u202e\x00 "
    )
    assert result.ok and [c.name for c in await service.list(uid)] == ["通行密钥"]


async def test_unsupported_algorithm_is_refused(service: WebAuthnService, users: dict[str, int]) -> None:
    uid = users["zhangwei"]
    ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    good = SoftAuthenticator().create(ceremony.options)
    attestation = cbor.decode(b64url_decode(good["response"]["attestationObject"]))
    auth_data = attestation["authData"]
    cose_start = 37 + 16 + 2 + 32
    key = cbor.decode(auth_data[cose_start:])
    key[3] = -35  # ES384: a fine algorithm, but not one we offered (§7.1 step 22)
    attestation["authData"] = auth_data[:cose_start] + cbor.encode(key)
    forged = _mangle(good, ("response", "attestationObject"), b64url(cbor.encode(attestation)))
    assert (
        refused(await service.finish_registration(uid, ceremony.id, forged, name="k"))
        is WebAuthnReason.INVALID
    )


async def test_malformed_assertion_never_raises(
    service: WebAuthnService, users: dict[str, int], events: RecordingEmitter
) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    await register(service, uid, key)
    template = await service.begin_authentication(uid)
    good = key.get(template.options)
    cases = [
        *_common_cases(good),
        _mangle(good, ("response", "authenticatorData"), ...),
        _mangle(good, ("response", "authenticatorData"), ""),
        _mangle(good, ("response", "authenticatorData"), b64url(b"\x00" * 36)),
        _mangle(good, ("response", "authenticatorData"), "A" * 1_000_000),
        _mangle(
            good,
            ("response", "authenticatorData"),
            b64url(b64url_decode(good["response"]["authenticatorData"]) + b"\x00"),
        ),
        _mangle(good, ("response", "authenticatorData"), 5),
        _mangle(good, ("response", "signature"), ...),
        _mangle(good, ("response", "signature"), ""),
        _mangle(good, ("response", "signature"), "A" * 100_000),
        _mangle(good, ("response", "signature"), ["sig"]),
        _mangle(good, ("response", "userHandle"), 7),
        _mangle(good, ("response", "userHandle"), b64url(b"\x01" * 65)),
        _mangle(good, ("response", "userHandle"), "%%"),
    ]
    events.events.clear()
    for number, case in enumerate(cases):
        ceremony = await service.begin_authentication(uid)
        result = await service.finish_authentication(ceremony.id, case, user_id=uid)
        assert (result.ok, result.reason) == (False, WebAuthnReason.INVALID), number
        passwordless_ceremony = await service.begin_authentication(None)
        result = await service.finish_authentication(passwordless_ceremony.id, case)
        assert not result.ok and result.reason is not None, number
    assert {e.get("onegate.reason") for e in events.events} <= {"invalid", "challenge"}
    # The ceremony id itself, of the wrong type.
    for bad_id in (None, 12, ["x"], b"bytes"):
        result = await service.finish_authentication(bad_id, good, user_id=uid)  # type: ignore[arg-type]
        assert refused(result) is WebAuthnReason.CHALLENGE
    # After all that, the key still works.
    assert (await second_factor(service, uid, key)).ok


# -- management --------------------------------------------------------------------------------


async def test_rename_remove_and_reset(
    service: WebAuthnService, users: dict[str, int], events: RecordingEmitter
) -> None:
    zhang, wang = users["zhangwei"], users["wangfang"]
    keys = [SoftAuthenticator() for _ in range(3)]
    ids = []
    for key in keys:
        result = await register(service, zhang, key)
        assert result.credential_id is not None
        ids.append(result.credential_id)
    theirs = await register(service, wang, SoftAuthenticator())
    assert theirs.credential_id is not None
    events.events.clear()

    assert await service.rename(zhang, ids[0], "  手机\u202e通行密钥\n ")
    assert (await service.list(zhang))[0].name == "手机通行密钥"
    assert await service.rename(zhang, ids[1], "x" * 200)
    assert (await service.list(zhang))[1].name == "x" * 64
    assert await service.rename(zhang, ids[2], "\x00")
    assert (await service.list(zhang))[2].name == "通行密钥"
    assert [e.action for e in events.events] == ["mfa-renamed"] * 3
    assert [e.get("onegate.mfa.credential_id") for e in events.events] == [str(i) for i in ids]
    events.events.clear()
    assert not await service.rename(zhang, theirs.credential_id, "mine now")
    assert not await service.remove(zhang, theirs.credential_id)
    assert not await service.remove(zhang, 10**9)
    assert events.events == []

    assert await service.remove(zhang, ids[0])
    assert not await service.remove(zhang, ids[0])
    [removed] = events.events
    assert removed.action == "mfa-removed" and removed.get("onegate.mfa.credential_id") == str(ids[0])
    assert refused(
        await second_factor(service, zhang, keys[0], credential_id=next(iter(keys[0].credentials)))
    ) is (WebAuthnReason.UNKNOWN_CREDENTIAL)
    events.events.clear()

    assert await service.remove_all(zhang) == 2
    [reset] = events.events
    assert (
        reset.action == "mfa-reset"
        and reset.get("onegate.mfa.removed") == 2
        and reset.get("user.id") == str(zhang)
    )
    assert not await service.is_enrolled(zhang) and await service.list(zhang) == []
    assert await service.remove_all(zhang, emit=False) == 0
    assert len(events.events) == 1
    assert await service.is_enrolled(wang)  # untouched


async def test_events_never_carry_the_challenge_or_signature(
    service: WebAuthnService, users: dict[str, int], events: RecordingEmitter
) -> None:
    uid = users["zhangwei"]
    key = SoftAuthenticator()
    secrets_seen: list[str] = []
    ceremony = await service.begin_registration(uid, username="zhangwei", display_name="张伟")
    secrets_seen.append(ceremony.options["challenge"])
    response = key.create(ceremony.options)
    secrets_seen.append(response["response"]["clientDataJSON"])
    await service.finish_registration(uid, ceremony.id, response, name="k")
    await service.finish_registration(uid, ceremony.id, response, name="k")  # refused: challenge
    for tamper in ({}, {"tamper_signature": True}, {"counter": 0}, {"origin": "https://evil.example.test"}):
        ceremony = await service.begin_authentication(uid)
        answer = key.get(ceremony.options, **tamper)
        secrets_seen += [
            ceremony.id,
            ceremony.options["challenge"],
            answer["response"]["signature"],
            answer["response"]["clientDataJSON"],
            answer["response"]["authenticatorData"],
        ]
        await service.finish_authentication(ceremony.id, answer, user_id=uid)
    assert events.actions() == [
        "mfa-enrolled",
        "mfa-failed",
        "mfa-verified",
        "mfa-failed",
        "mfa-clone-suspected",
        "mfa-failed",
        "mfa-failed",
    ]
    text = json.dumps([e.to_ecs() for e in events.events], default=str)
    for value in secrets_seen:
        assert value not in text
        assert base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex() not in text
    for event in events.events:
        assert not any("challenge" in name or "signature" in name for name in event.flat())


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rp_id": ""}, "webauthn_rp_id"),
        ({"rp_id": "https://idp.example.test"}, "webauthn_rp_id"),
        ({"origins": []}, "webauthn_origins"),
        ({"origins": ["idp.example.test"]}, "webauthn_origins"),
        ({"origins": ["https://idp.example.test/login"]}, "webauthn_origins"),
        ({"origins": ["https://idp.other.test"]}, "not within the RP id"),
        ({"origins": ["https://example.test"]}, "not within the RP id"),
        ({"user_verification": "always"}, "webauthn_user_verification"),
        ({"attestation": "enterprise"}, "webauthn_attestation"),
        ({"aaguid_allowlist": ["yubikey"]}, "webauthn_aaguids"),
        ({"aaguid_allowlist": ["00000000-0000-0000-0000-000000000000"]}, "all-zero"),
        ({"challenge_ttl": 0}, "webauthn_challenge_ttl"),
    ],
)
def test_settings_are_checked_at_start(settings: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"rp_id": RP_ID, "rp_name": "OneGate", "origins": [ORIGIN], **settings}
    with pytest.raises(ValueError, match=message):
        WebAuthnService(async_sessionmaker(), MemoryKV(), **arguments)


def test_origins_are_normalised() -> None:
    service = WebAuthnService(
        async_sessionmaker(),
        MemoryKV(),
        rp_id="localhost",
        rp_name="OneGate",
        origins=["http://LOCALHOST:8000/", "http://idp.localhost:8000"],
    )
    assert service._origin_allowed("http://localhost:8000")
    assert service._origin_allowed("http://idp.localhost:8000")
    assert not service._origin_allowed("http://localhost:8001")
    assert not service._origin_allowed(["http://localhost:8000"])
