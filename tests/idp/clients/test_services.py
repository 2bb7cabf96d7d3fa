"""ClientRegistry on SQLite and PostgreSQL: registration, secrets, cache, changes, events."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.db import create_engine, migrate, session_factory
from core.events import Category, Outcome, RecordingEmitter
from idp.clients import (
    AuthMethod,
    Client,
    ClientError,
    ClientExists,
    ClientNotFound,
    ClientRegistry,
    ClientType,
    Consent,
    InvalidClientMetadata,
)
from idp.directory.models import User
from keyvault import Envelope, MasterKey, MasterKeyring, SecretStore
from keyvault.jws import ES256
from onegate.models import metadata
from onegate.runtime import MIGRATIONS

OA = "https://oa.example.gov.cn/oidc/callback"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'onegate.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    eng = create_engine(url)
    await migrate(eng, MIGRATIONS)
    yield eng
    if request.param == "postgresql":
        async with eng.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[object]:
    return session_factory(engine)


@pytest.fixture
def secret_store(tmp_path: Path) -> SecretStore:
    key = MasterKey(os.urandom(32))
    return SecretStore(tmp_path / "secrets", Envelope(MasterKeyring([key], key.key_id)))


@pytest.fixture
def events() -> RecordingEmitter:
    return RecordingEmitter()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(
    sessions: async_sessionmaker[object], secret_store: SecretStore, events: RecordingEmitter, clock: Clock
) -> ClientRegistry:
    return ClientRegistry(sessions, secret_store, events=events, clock=clock)


async def add_oa(registry: ClientRegistry, **extra: object) -> tuple[object, str | None]:
    return await registry.add(
        client_id="oa-app",
        name="协同办公系统",
        name_en="Office automation",
        redirect_uris=[OA],
        post_logout_redirect_uris=["https://oa.example.gov.cn/"],
        backchannel_logout_uri="https://oa.example.gov.cn/oidc/backchannel-logout",
        actor="cli:chenjing",
        **extra,  # type: ignore[arg-type]
    )


# -- registration -----------------------------------------------------------------------------------


async def test_add_confidential_client_round_trip(registry: ClientRegistry, events: RecordingEmitter) -> None:
    client, secret = await add_oa(registry)
    assert secret is not None and len(secret) >= 43  # 32 random bytes, base64url
    got = await registry.get("oa-app")
    assert got is not None and got == client
    assert hash(got) == hash(client) and len({got, client}) == 1  # usable as a key
    assert got.name == "协同办公系统" and got.display_name("en") == "Office automation"
    assert got.display_name("zh-CN") == "协同办公系统"
    assert got.client_type is ClientType.CONFIDENTIAL
    assert got.token_endpoint_auth_method is AuthMethod.CLIENT_SECRET_BASIC
    assert got.redirect_uris == (OA,)
    assert got.grant_types == ("authorization_code", "refresh_token")
    assert got.scopes == ("openid", "profile", "email")
    assert got.require_pkce and not got.first_party and not got.disabled
    assert got.secret_rotated_at is not None and got.id > 0
    [event] = events.events
    assert event.action == "client-created"
    assert event.category is Category.CONFIGURATION and event.outcome is Outcome.SUCCESS
    assert event.get("onegate.client_id") == "oa-app"
    assert event.get("labels.actor") == "cli:chenjing"
    assert event.get("event.type") == ["creation"]


async def test_secret_is_stored_only_as_a_keyed_hash(
    registry: ClientRegistry, sessions: async_sessionmaker[object]
) -> None:
    client, secret = await add_oa(registry)
    assert secret is not None
    async with sessions() as s:  # type: ignore[attr-defined]
        row = (await s.execute(select(Client).where(Client.client_id == "oa-app"))).scalar_one()
    assert row.secret_hash is not None and len(row.secret_hash) == 64
    assert secret not in row.secret_hash
    assert int(row.secret_hash, 16) >= 0  # hex
    assert "secret_hash" not in repr(client) and row.secret_hash not in repr(client)
    assert "secret_hash" not in client.public_dict() and secret not in str(client.public_dict())
    assert client.public_dict()["has_secret"] is True


async def test_generated_client_id_and_public_client(registry: ClientRegistry) -> None:
    client, secret = await registry.add(
        name="掌上办公", client_type="public", redirect_uris=["http://localhost:8765/cb"]
    )
    assert secret is None
    assert len(client.client_id) >= 20 and client.client_id.replace("-", "").replace("_", "").isalnum()
    assert client.is_public and client.token_endpoint_auth_method is AuthMethod.NONE
    assert client.require_pkce and not client.has_secret
    other, _ = await registry.add(
        name="掌上办公 2", client_type="public", redirect_uris=["http://localhost/cb"]
    )
    assert other.client_id != client.client_id


@pytest.mark.parametrize("client_id", ["ab", "a" * 129, "oa client", "oa/1", "办公", "oa\n"])
async def test_bad_client_ids_are_refused(registry: ClientRegistry, client_id: str) -> None:
    with pytest.raises(InvalidClientMetadata) as info:
        await registry.add(client_id=client_id, name="OA", redirect_uris=[OA])
    assert info.value.field == "client_id"
    assert await registry.list() == []


async def test_duplicate_client_id_and_invalid_metadata_store_nothing(
    registry: ClientRegistry, events: RecordingEmitter
) -> None:
    await add_oa(registry)
    with pytest.raises(ClientExists, match="'oa-app'"):
        await add_oa(registry)
    with pytest.raises(InvalidClientMetadata) as info:
        await registry.add(client_id="hr-app", name="人事系统", redirect_uris=["http://hr.example.gov.cn/cb"])
    assert info.value.field == "redirect_uris[0]"
    assert [c.client_id for c in await registry.list()] == ["oa-app"]
    assert events.actions() == ["client-created"]


async def test_private_key_jwt_client_keeps_public_keys_and_has_no_secret(registry: ClientRegistry) -> None:
    jwk = {**ES256().jwk_members(ec.generate_private_key(ec.SECP256R1()).public_key()), "kid": "k1"}
    client, secret = await registry.add(
        client_id="approvals",
        name="审批系统",
        token_endpoint_auth_method="private_key_jwt",
        redirect_uris=["https://approvals.example.gov.cn/cb"],
        jwks={"keys": [jwk]},
    )
    assert secret is None and not client.has_secret
    got = await registry.get("approvals")
    assert got is not None and got.jwks == {"keys": [jwk]}
    assert [k.kid for k in got.keys] == ["k1"]


# -- secrets ----------------------------------------------------------------------------------------


async def test_verify_secret(registry: ClientRegistry) -> None:
    oa, oa_secret = await add_oa(registry)
    hr, hr_secret = await registry.add(client_id="hr-app", name="人事系统", redirect_uris=[OA])
    public, _ = await registry.add(
        client_id="mobile", name="掌上办公", client_type="public", redirect_uris=[OA]
    )
    assert oa_secret and hr_secret
    assert registry.verify_secret(oa, oa_secret)  # type: ignore[arg-type]
    assert not registry.verify_secret(oa, oa_secret + "x")  # type: ignore[arg-type]
    assert not registry.verify_secret(oa, oa_secret[:-1])  # type: ignore[arg-type]
    assert not registry.verify_secret(oa, hr_secret)  # type: ignore[arg-type] # another client's
    assert not registry.verify_secret(hr, oa_secret)
    assert not registry.verify_secret(oa, "")  # type: ignore[arg-type]
    assert not registry.verify_secret(oa, None)  # type: ignore[arg-type]
    assert not registry.verify_secret(None, oa_secret)  # unknown client
    assert not registry.verify_secret(public, "")
    assert not registry.verify_secret(public, oa_secret)
    assert not registry.verify_secret(oa, "\ud800")  # type: ignore[arg-type] # a lone surrogate


async def test_hash_is_bound_to_the_client(
    registry: ClientRegistry, sessions: async_sessionmaker[object]
) -> None:
    _, oa_secret = await add_oa(registry)
    await registry.add(client_id="hr-app", name="人事系统", redirect_uris=[OA])
    async with sessions() as s, s.begin():  # type: ignore[attr-defined]
        oa_row = (await s.execute(select(Client).where(Client.client_id == "oa-app"))).scalar_one()
        hr_row = (await s.execute(select(Client).where(Client.client_id == "hr-app"))).scalar_one()
        hr_row.secret_hash = oa_row.secret_hash  # an attacker with write access copies a hash
    hr = await registry.require("hr-app")
    assert not registry.verify_secret(hr, oa_secret)


async def test_key_comes_from_the_secret_store(
    registry: ClientRegistry, sessions: async_sessionmaker[object], tmp_path: Path
) -> None:
    client, secret = await add_oa(registry)
    other_key = MasterKey(os.urandom(32))
    other_store = SecretStore(tmp_path / "other", Envelope(MasterKeyring([other_key], other_key.key_id)))
    stranger = ClientRegistry(sessions, other_store)  # type: ignore[arg-type]
    assert not stranger.verify_secret(client, secret)  # type: ignore[arg-type]
    assert (tmp_path / "secrets" / "client-secret-key.bin").exists()


async def test_rotate_secret_invalidates_the_old_one(
    registry: ClientRegistry, events: RecordingEmitter
) -> None:
    _, old = await add_oa(registry)
    before = await registry.get("oa-app")
    assert before is not None
    new = await registry.rotate_secret("oa-app", actor="cli:chenjing")
    assert new != old
    after = await registry.get("oa-app")  # no waiting for the cache: this process changed it
    assert after is not None
    assert registry.verify_secret(after, new)
    assert not registry.verify_secret(after, old)  # type: ignore[arg-type]
    assert after.secret_rotated_at is not None and before.secret_rotated_at is not None
    assert after.secret_rotated_at >= before.secret_rotated_at
    assert events.actions() == ["client-created", "client-secret-rotated"]
    assert events.events[-1].get("onegate.client_id") == "oa-app"
    with pytest.raises(ClientNotFound):
        await registry.rotate_secret("nobody")
    await registry.add(client_id="mobile", name="掌上办公", client_type="public", redirect_uris=[OA])
    with pytest.raises(ClientError, match="not a secret"):
        await registry.rotate_secret("mobile")


async def test_a_deployment_component_sets_its_own_secret(registry: ClientRegistry) -> None:
    _, generated = await add_oa(registry)
    chosen = "k" * 43
    assert await registry.rotate_secret("oa-app", secret=chosen) == chosen
    client = await registry.get("oa-app")
    assert registry.verify_secret(client, chosen)
    assert not registry.verify_secret(client, generated)  # type: ignore[arg-type]
    with pytest.raises(ClientError, match="32 characters"):
        await registry.rotate_secret("oa-app", secret="short")
    assert registry.verify_secret(await registry.get("oa-app"), chosen)  # unchanged by the refusal


# -- cache ------------------------------------------------------------------------------------------


async def test_cache_serves_for_ttl_and_sees_other_processes_after(
    registry: ClientRegistry, sessions: async_sessionmaker[object], secret_store: SecretStore, clock: Clock
) -> None:
    await add_oa(registry)
    first = await registry.get("oa-app")
    assert first is not None
    # Another process (the CLI) renames and rotates behind this registry's back.
    other = ClientRegistry(sessions, secret_store)  # type: ignore[arg-type]
    await other.update("oa-app", name="协同办公系统（新）")
    new_secret = await other.rotate_secret("oa-app")
    clock.now += 4.9
    stale = await registry.get("oa-app")
    assert stale is first  # served from the cache, staleness bounded by the TTL
    clock.now += 0.2
    fresh = await registry.get("oa-app")
    assert fresh is not None and fresh.name == "协同办公系统（新）"
    assert registry.verify_secret(fresh, new_secret)
    # Unknown ids are cached too, and an add in this process is seen at once.
    assert await registry.get("later") is None
    await registry.add(client_id="later", name="稍后", redirect_uris=[OA])
    assert await registry.get("later") is not None


async def test_get_refuses_malformed_ids_without_a_query(registry: ClientRegistry) -> None:
    assert await registry.get("x" * 10_000) is None
    assert await registry.get("") is None
    assert await registry.get("oa' OR '1'='1") is None


# -- changes ----------------------------------------------------------------------------------------


async def test_update_validates_the_whole_and_emits(
    registry: ClientRegistry, events: RecordingEmitter
) -> None:
    _, secret = await add_oa(registry)
    client, new_secret = await registry.update(
        "oa-app",
        redirect_uris=[OA, "https://oa.example.gov.cn/oidc/callback2"],
        scopes=["openid", "profile", "groups", "department"],
        first_party=True,
        access_token_lifetime=300,
        name_en=None,
        actor="cli:admin",
    )
    assert new_secret is None
    assert client.redirect_uris == (OA, "https://oa.example.gov.cn/oidc/callback2")
    assert client.first_party and client.access_token_lifetime == 300 and client.name_en is None
    assert client.name == "协同办公系统"  # untouched
    assert registry.verify_secret(client, secret)  # type: ignore[arg-type] # unchanged
    assert events.actions()[-1] == "client-updated"
    assert events.events[-1].get("onegate.changed") == [
        "access_token_lifetime",
        "first_party",
        "name_en",
        "redirect_uris",
        "scopes",
    ]
    with pytest.raises(InvalidClientMetadata) as info:
        await registry.update("oa-app", grant_types=["authorization_code", "implicit"])
    assert info.value.field == "grant_types"
    with pytest.raises(InvalidClientMetadata) as info:
        await registry.update("oa-app", redirect_uris=[])  # the whole is checked: a code flow needs one
    assert info.value.field == "redirect_uris"
    got = await registry.get("oa-app")
    assert got is not None and got.grant_types == ("authorization_code", "refresh_token")
    with pytest.raises(ClientNotFound):
        await registry.update("nobody", name="x")
    count = len(events.events)
    await registry.update("oa-app", first_party=True)  # no change, no event
    assert len(events.events) == count


async def test_switching_auth_method_creates_or_drops_the_secret(registry: ClientRegistry) -> None:
    _, secret = await add_oa(registry)
    post, none_new = await registry.update("oa-app", token_endpoint_auth_method="client_secret_post")
    assert none_new is None and registry.verify_secret(post, secret)  # type: ignore[arg-type]
    jwk = {**ES256().jwk_members(ec.generate_private_key(ec.SECP256R1()).public_key()), "kid": "k1"}
    jwt_client, _ = await registry.update(
        "oa-app", token_endpoint_auth_method="private_key_jwt", jwks={"keys": [jwk]}
    )
    assert not jwt_client.has_secret and not registry.verify_secret(jwt_client, secret)  # type: ignore[arg-type]
    back, fresh = await registry.update("oa-app", token_endpoint_auth_method="client_secret_basic")
    assert fresh is not None and registry.verify_secret(back, fresh)
    assert not registry.verify_secret(back, secret)  # type: ignore[arg-type]


async def test_disable_enable(registry: ClientRegistry, events: RecordingEmitter) -> None:
    await add_oa(registry)
    disabled = await registry.disable("oa-app", actor="cli:admin")
    assert disabled.disabled
    assert await registry.get("oa-app") is None  # fail closed: callers see no client
    hidden = await registry.get("oa-app", include_disabled=True)
    assert hidden is not None and hidden.disabled
    assert (await registry.enable("oa-app")).disabled is False
    assert await registry.get("oa-app") is not None
    assert events.actions() == ["client-created", "client-updated", "client-updated"]
    assert events.events[1].get("onegate.changed") == ["disabled"]
    with pytest.raises(ClientNotFound):
        await registry.disable("nobody")


async def test_remove_deletes_the_client_and_its_consents(
    registry: ClientRegistry, sessions: async_sessionmaker[object], events: RecordingEmitter
) -> None:
    client, _ = await add_oa(registry)
    async with sessions() as s, s.begin():  # type: ignore[attr-defined]
        user = User(sub="s-1", username="zhangwei", display_name="张伟")
        s.add(user)
        await s.flush()
        s.add(Consent(user_id=user.id, client_pk=client.id, scopes=["openid"]))  # type: ignore[attr-defined]
    assert await registry.get("oa-app") is not None  # cached
    await registry.remove("oa-app", actor="cli:admin")
    assert await registry.get("oa-app") is None
    assert await registry.list() == []
    async with sessions() as s:  # type: ignore[attr-defined]
        assert (await s.execute(select(Consent))).scalars().all() == []
    assert events.actions() == ["client-created", "client-removed"]
    assert events.events[-1].get("event.type") == ["deletion"]
    with pytest.raises(ClientNotFound, match="no client 'oa-app'"):
        await registry.remove("oa-app")


async def test_list_is_sorted_and_includes_disabled(registry: ClientRegistry) -> None:
    await registry.add(
        client_id="zz-reports", name="报表", grant_types=["client_credentials"], scopes=["reports:read"]
    )
    await add_oa(registry)
    await registry.disable("oa-app")
    listed = await registry.list()
    assert [(c.client_id, c.disabled) for c in listed] == [("oa-app", True), ("zz-reports", False)]
    assert listed[1].grant_types == ("client_credentials",) and listed[1].redirect_uris == ()


async def test_merging_redirect_uris_at_once_keeps_every_process_s_callbacks(
    registry: ClientRegistry, sessions: async_sessionmaker[object], secret_store: SecretStore
) -> None:
    # Gateway processes on different ports each add their callback and keep the others': a read
    # outside the write would let the later writer drop the other's (the lost update).
    await add_oa(registry)
    mine = [f"https://oa.example.gov.cn:{8000 + n}/.onegate/callback" for n in range(4)]

    async def register(uri: str) -> None:
        own = ClientRegistry(sessions, secret_store)  # a process of its own: its own cache
        for attempt in range(10):  # as the gateway does: SQLite refuses the later of two writers
            try:
                await own.merge_redirect_uris(
                    "oa-app", lambda current: [uri, *(u for u in current if u != uri)]
                )
                return
            except Exception:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))

    await asyncio.gather(*(register(uri) for uri in mine))
    client = await ClientRegistry(sessions, secret_store).get("oa-app")
    assert client is not None and set(client.redirect_uris) == {OA, *mine}
