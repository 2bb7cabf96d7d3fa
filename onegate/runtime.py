"""The shared state of one OneGate process, opened from settings and checked at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.db import (
    DatabaseUnavailable,
    check_database,
    create_engine,
    current_revision,
    head_revision,
    session_factory,
)
from core.events import EventBus
from core.kv import KV, KVUnavailable, open_kv
from core.settings import Settings
from keyvault import Keyvault, KeyvaultError, open_keyvault

if TYPE_CHECKING:
    from idp.directory.services import Directory
    from mfa.services import MfaServices

__all__ = ["MIGRATIONS", "Runtime", "StartupError", "open_runtime"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StartupError(Exception):
    """A dependency or the data dir is not usable; the message is one line for the operator."""


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[Any]
    kv: KV
    vault: Keyvault
    bus: EventBus

    @cached_property
    def directory(self) -> Directory:
        """The user directory, built on first use (a gateway process never needs it)."""
        from idp.directory.passwords import PasswordHashing
        from idp.directory.policy import PasswordPolicy
        from idp.directory.services import Directory

        policy = PasswordPolicy(min_length=self.settings.idp.password_min_length)
        return Directory(self.sessions, hashing=PasswordHashing(), policy=policy)

    @cached_property
    def mfa(self) -> MfaServices:
        """Second factors (TOTP, WebAuthn, recovery codes) for administration: resets, status.
        Built on first use; nothing here starts a WebAuthn ceremony, so only the RP id depends on
        the issuer."""
        from mfa.services import MfaServices

        settings = self.settings
        return MfaServices.build(
            settings.mfa,
            issuer=settings.idp.issuer or "http://idp.localhost",
            db=self.sessions,
            kv=self.kv,
            envelope=self.vault.envelope,
            hasher=self.directory.hashing,
            events=self.bus,
        )

    async def check_database(self) -> None:
        await check_database(self.engine)

    async def check_kv(self) -> None:
        await self.kv.ping()

    async def close(self) -> None:
        await self.bus.stop()
        await self.kv.close()
        await self.engine.dispose()


def open_vault(settings: Settings) -> Keyvault:
    options = settings.keyvault
    return open_keyvault(
        settings.data_dir,
        suite=options.suite,
        signing_alg=options.signing_alg,
        prepublish_seconds=options.prepublish_seconds,
        retire_after_seconds=options.retire_after_seconds,
    )


async def open_runtime(settings: Settings, *, require_schema: bool = True) -> Runtime:
    """Open and check every dependency, or raise :class:`StartupError` naming the first problem."""
    db = settings.database
    engine = create_engine(
        settings.database_url, pool_size=db.pool_size, connect_timeout=db.connect_timeout, echo=db.echo
    )
    kv = open_kv(settings.kv)
    try:
        await check_database(engine)
        if require_schema:
            revision, head = await current_revision(engine), head_revision(MIGRATIONS)
            if revision != head:
                raise StartupError(
                    f"database schema is at {revision or 'nothing'}, this version needs {head}: "
                    f"run `onegate init --data-dir {settings.data_dir}`"
                )
        await kv.ping()
        vault = open_vault(settings)
    except (DatabaseUnavailable, KVUnavailable, KeyvaultError) as e:
        await kv.close()
        await engine.dispose()
        raise StartupError(str(e)) from e
    except StartupError:
        await kv.close()
        await engine.dispose()
        raise
    sessions = session_factory(engine)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        kv=kv,
        vault=vault,
        bus=EventBus(),
    )
