"""Session-wide fixtures: the local services, a database per run, a Redis key prefix per run."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import services as local_services

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to completion on a loop of its own, even when called inside a running loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def services() -> Iterator[local_services.Services]:
    running = local_services.start()
    yield running
    running.close()


@pytest.fixture(scope="session")
def redis_url(services: local_services.Services) -> str:
    return services.redis_url


@pytest.fixture(scope="session")
def postgres_url(services: local_services.Services) -> Iterator[str]:
    """A PostgreSQL database of this run's own (SQLAlchemy asyncpg URL), dropped afterwards."""
    name = f"onegate_test_{secrets.token_hex(6)}"
    _run(local_services.create_database(services.postgres_url, name))
    yield local_services.database_url(services.postgres_url, name)
    _run(local_services.drop_database(services.postgres_url, name))


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to one test; its keys are removed afterwards."""
    import redis

    prefix = f"onegate-test-{secrets.token_hex(6)}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def fresh_postgres_url(services: local_services.Services) -> Iterator[str]:
    """A PostgreSQL database for one test alone (SQLAlchemy asyncpg URL), dropped afterwards."""
    name = f"onegate_test_{secrets.token_hex(6)}"
    _run(local_services.create_database(services.postgres_url, name))
    yield local_services.database_url(services.postgres_url, name)
    _run(local_services.drop_database(services.postgres_url, name))


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A database with every migration applied: a SQLite file, then a PostgreSQL database of the
    test's own (dropped afterwards)."""
    import onegate.runtime
    from core.db import create_engine, migrate

    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'onegate.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    eng = create_engine(url)
    await migrate(eng, onegate.runtime.MIGRATIONS)
    yield eng
    await eng.dispose()
