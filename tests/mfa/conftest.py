"""Fixtures for the MFA services: a migrated database (SQLite and PostgreSQL), KV, keys, a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.db import session_factory
from core.events import RecordingEmitter
from core.kv import KV, MemoryKV, RedisKV
from idp.directory.models import User
from keyvault import Envelope, MasterKeyring


class FakeClock:
    """Seconds since the epoch, moved by hand. Starts at the beginning of a 30 s step."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LowCostArgon2:
    """Real argon2id with test parameters, shaped like idp's ``PasswordHashing``."""

    def __init__(self) -> None:
        self._hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        self._dummy = self._hasher.hash("dummy")
        self.verifications = 0

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        self.verifications += 1
        try:
            return self._hasher.verify(stored_hash or self._dummy, password) and stored_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


@pytest.fixture
def db(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return session_factory(engine)


@pytest.fixture
async def users(db: async_sessionmaker[Any]) -> dict[str, int]:
    """Two users of the demo city: 张伟 and 王芳, by user name -> ``users.id``."""
    async with db() as s, s.begin():
        rows = [
            User(sub="sub-zhangwei", username="zhangwei", display_name="张伟"),
            User(sub="sub-wangfang", username="wangfang", display_name="王芳"),
        ]
        s.add_all(rows)
        await s.flush()
        return {u.username: u.id for u in rows}


@pytest.fixture(params=["memory", "redis"])
async def kv(request: pytest.FixtureRequest) -> AsyncIterator[KV]:
    if request.param == "memory":
        store: KV = MemoryKV()
    else:
        store = RedisKV(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    yield store
    await store.close()


@pytest.fixture
def envelope() -> Envelope:
    return Envelope(MasterKeyring.generate())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> RecordingEmitter:
    return RecordingEmitter()


@pytest.fixture
def hasher() -> LowCostArgon2:
    return LowCostArgon2()
