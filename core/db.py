"""The SQL database: async SQLAlchemy 2 on SQLite (embedded default) or PostgreSQL.

SQLite runs in WAL mode with foreign keys on and a busy timeout, so one writer and
many readers share the file without "database is locked" errors under normal load.
Schema changes go through Alembic only (``migrate``); tables are declared on
:data:`metadata` by the packages that own them. A server only checks at start-up that the
database is at the newest revision (``current_revision``, ``head_revision``): that reads the
version table and the scripts' revision ids without loading Alembic, which would stay in the
memory of every server process for nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "Base",
    "DatabaseUnavailable",
    "RevisionError",
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
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine, script_location: Path, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with the Alembic scripts at ``script_location``."""
    from alembic import command

    await check_database(engine)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(script_location, sync), revision))


class RevisionError(Exception):
    """The migration scripts or the version table do not name one revision."""


# What Alembic reads as a revision script (alembic.script.base.Script): ``*.py``, not
# ``__init__.py`` and not an editor's lock file.
_SCRIPT = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
VERSION_TABLE = "alembic_version"  # Alembic's default, which migrate() keeps


def _script_ids(path: Path) -> tuple[str, tuple[str, ...]]:
    """``revision`` and ``down_revision`` of one script, read from its module-level assignments."""
    found: dict[str, Any] = {}
    for node in ast.parse(path.read_bytes(), filename=str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError as e:
                raise RevisionError(f"{path}: {target.id} is not a literal") from e
    revision, down = found.get("revision"), found.get("down_revision")
    if not isinstance(revision, str) or not revision:
        raise RevisionError(f"{path}: no revision id")
    downs = (down,) if isinstance(down, str) else tuple(down or ())
    if not all(isinstance(d, str) for d in downs):
        raise RevisionError(f"{path}: down_revision is not a revision id or a list of them")
    return revision, downs


def head_revision(script_location: Path) -> str | None:
    """The newest revision among the Alembic scripts at ``script_location`` (None without any).

    The revision no other script names as its ``down_revision``, as Alembic's
    ``ScriptDirectory.get_current_head()`` finds it; more than one head raises RevisionError.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((script_location / "versions").iterdir()):
        if path.is_file() and _SCRIPT.match(path.name):
            revision, downs = _script_ids(path)
            revisions.add(revision)
            parents.update(downs)
    heads = sorted(revisions - parents)
    if len(heads) > 1:
        raise RevisionError(
            f"the migrations at {script_location} have more than one head: {', '.join(heads)}"
        )
    return heads[0] if heads else None


def _version(connection: Connection) -> str | None:
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()  # noqa: S608 - a constant
    if len(rows) > 1:
        raise RevisionError(f"the version table {VERSION_TABLE} names more than one revision")
    return str(rows[0]) if rows else None


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_version)
