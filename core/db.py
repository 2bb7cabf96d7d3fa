"""The SQL database: async SQLAlchemy 2 on SQLite (embedded default) or PostgreSQL.

SQLite runs in WAL mode with foreign keys on and a busy timeout, so one writer and
many readers share the file without "database is locked" errors under normal load.
Schema changes go through Alembic only (``migrate``); tables are declared on
:data:`metadata` by the packages that own them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

__all__ = [
    "Base",
    "DatabaseUnavailable",
    "check_database",
    "create_engine",
    "current_revision",
    "head_revision",
    "metadata",
    "migrate",
    "session_factory",
]

# Stable constraint names, so Alembic migrations can refer to them on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    """Declarative base for every OneGate table."""

    metadata = metadata


class DatabaseUnavailable(Exception):
    """The configured database cannot be reached; the message is safe to show operators."""


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode across application crashes
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def create_engine(
    url: str, *, pool_size: int = 10, connect_timeout: float = 5.0, echo: bool = False
) -> AsyncEngine:
    """An engine for ``url`` (``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": connect_timeout})
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        return engine
    return create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        pool_pre_ping=True,
        connect_args={"timeout": connect_timeout},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[Any]:
    """Sessions that keep loaded attributes after commit (no implicit I/O afterwards)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _describe(engine: AsyncEngine, error: Exception) -> str:
    # Never show the password of the URL.
    where = engine.url.render_as_string(hide_password=True)
    reason = (
        str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        if str(error)
        else type(error).__name__
    )
    return f"database {where} is unreachable: {reason}"


async def check_database(engine: AsyncEngine) -> None:
    """Raise :class:`DatabaseUnavailable` unless a trivial query answers."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (OSError, DBAPIError, OperationalError, TimeoutError) as e:
        raise DatabaseUnavailable(_describe(engine, e)) from e


def _alembic_config(script_location: Path, connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine, script_location: Path, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with the Alembic scripts at ``script_location``."""
    await check_database(engine)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(script_location, sync), revision))


def head_revision(script_location: Path) -> str | None:
    """The newest revision among the Alembic scripts at ``script_location``."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    return ScriptDirectory.from_config(config).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
