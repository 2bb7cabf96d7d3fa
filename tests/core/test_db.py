"""core.db on SQLite and on the local PostgreSQL (a database of this run's own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import (
    DatabaseUnavailable,
    RevisionError,
    check_database,
    create_engine,
    current_revision,
    head_revision,
    migrate,
    session_factory,
)
from idp.directory.models import Department, Group, Membership, User, UserStatus
from onegate.models import metadata

MIGRATIONS = Path(__file__).resolve().parents[2] / "onegate" / "migrations"


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'sub' / 'onegate.db'}"
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


async def test_migrations_reach_head_and_are_idempotent(engine: AsyncEngine) -> None:
    head = head_revision(MIGRATIONS)
    assert head is not None
    assert await current_revision(engine) == head
    await migrate(engine, MIGRATIONS)
    assert await current_revision(engine) == head


async def test_revisions_read_without_alembic_agree_with_alembic(engine: AsyncEngine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert head_revision(MIGRATIONS) == ScriptDirectory.from_config(config).get_current_head()
    async with engine.connect() as conn:
        by_alembic = await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
    assert await current_revision(engine) == by_alembic


async def test_a_fresh_database_has_no_revision(tmp_path: Path) -> None:
    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    try:
        assert await current_revision(eng) is None
    finally:
        await eng.dispose()


def test_head_revision_of_branched_or_empty_scripts(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    assert head_revision(tmp_path) is None
    (versions / "__init__.py").write_text('revision = "ignored"\n')
    (versions / "a.py").write_text('revision = "a"\ndown_revision = None\n')
    (versions / "b.py").write_text('revision: str = "b"\ndown_revision: str | None = "a"\n')
    assert head_revision(tmp_path) == "b"
    (versions / "c.py").write_text('revision = "c"\ndown_revision = "a"\n')
    with pytest.raises(RevisionError, match="more than one head"):
        head_revision(tmp_path)
    (versions / "d.py").write_text('revision = "d"\ndown_revision = ("b", "c")\n')
    assert head_revision(tmp_path) == "d"
    (versions / "e.py").write_text("down_revision = 'd'\n")
    with pytest.raises(RevisionError, match="no revision id"):
        head_revision(tmp_path)


async def test_models_and_migrations_agree(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    assert diff == []


async def test_directory_round_trip_with_chinese_names(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions() as s, s.begin():
        city = Department(code="city", name="市政府", name_en="City government")
        s.add(city)
        await s.flush()
        hr = Department(code="hrss", name="市人力资源和社会保障局", parent_id=city.id)
        group = Group(name="hr-admins")
        s.add_all([hr, group])
        await s.flush()
        user = User(sub="u-1", username="zhangwei", display_name="张伟", department_id=hr.id)
        s.add(user)
        await s.flush()
        s.add(Membership(user_id=user.id, group_id=group.id))
    async with sessions() as s:
        row = (await s.execute(select(User).where(User.username == "zhangwei"))).scalar_one()
        assert row.display_name == "张伟"
        assert row.status is UserStatus.ACTIVE
        assert row.created_at.tzinfo is not None or engine.dialect.name == "sqlite"
        dept = await s.get(Department, row.department_id)
        assert dept is not None and dept.name == "市人力资源和社会保障局"


async def test_unique_username(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions() as s, s.begin():
        s.add(User(sub="a", username="liuyang", display_name="刘洋"))
    with pytest.raises(IntegrityError):
        async with sessions() as s, s.begin():
            s.add(User(sub="b", username="liuyang", display_name="刘洋"))


async def test_foreign_keys_are_enforced(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    with pytest.raises(IntegrityError):
        async with sessions() as s, s.begin():
            s.add(Membership(user_id=999, group_id=999))


async def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    try:
        async with eng.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
        assert mode == "wal"
    finally:
        await eng.dispose()


async def test_unreachable_postgres_is_one_clear_line() -> None:
    eng = create_engine("postgresql+asyncpg://onegate:s3cret-pw@127.0.0.1:1/onegate", connect_timeout=1)
    try:
        with pytest.raises(DatabaseUnavailable) as info:
            await check_database(eng)
        message = str(info.value)
        assert "127.0.0.1:1" in message and "unreachable" in message
        assert "s3cret-pw" not in message
        assert "\n" not in message
    finally:
        await eng.dispose()
