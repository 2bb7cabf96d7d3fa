"""Versions of the active policy bundle, and the watcher that keeps every instance on the newest.

Every change is a new row (append-only): applying a bundle, and rolling back to an earlier one
(which stores that version's text again, naming the version it restored). The newest row is the
active bundle. Nothing reaches the table without passing :func:`policy.check.check` against the
current directory: a bundle with errors never becomes active.

After a change the store publishes the version number on the KV channel ``policy:changed``;
every :class:`PolicyWatcher` (one per gateway process) loads and compiles the new version and
swaps its engine in one assignment, so a request sees the old engine or the new one, never a mix.
Publish-subscribe is not durable (a message sent while a watcher reconnects is lost), so each
watcher also compares the newest version number every ``poll_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import Category, Event, EventEmitter, Outcome
from core.kv import KV, KVUnavailable
from policy.check import Catalog, check_text, has_errors
from policy.engine import PolicyEngine
from policy.models import PolicyVersion
from policy.rules import BundleError, Finding

__all__ = ["CHANNEL", "PolicyRejected", "PolicyStore", "PolicyWatcher", "UnknownVersion", "Version"]

log = structlog.get_logger("onegate.policy")

CHANNEL = "policy:changed"


class PolicyRejected(Exception):
    """The bundle did not pass check; ``findings`` says why (every error, with lines)."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        errors = [f for f in findings if f.severity == "error"]
        super().__init__(f"policy bundle rejected: {len(errors)} error(s)\n" + "\n".join(map(str, errors)))


class UnknownVersion(LookupError):
    def __init__(self, version: int) -> None:
        super().__init__(f"no policy version {version}")
        self.version = version


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    created_at: datetime
    author: str
    comment: str
    action: str
    based_on: int | None
    digest: str
    text: str

    @classmethod
    def of(cls, row: PolicyVersion) -> Version:
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)  # SQLite
        return cls(row.id, created, row.author, row.comment, row.action, row.based_on, row.digest, row.text)

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.number,
            "created_at": self.created_at.isoformat(),
            "author": self.author,
            "comment": self.comment,
            "action": self.action,
            "based_on": self.based_on,
            "digest": self.digest,
        }


class PolicyStore:
    def __init__(self, sessions: async_sessionmaker[Any], kv: KV, events: EventEmitter) -> None:
        self._sessions = sessions
        self._kv = kv
        self._events = events

    def _event(self, action: str, outcome: Outcome, author: str, **fields: Any) -> None:
        values = {"labels.actor": author, "event.type": ["change"]}
        values.update({f"onegate.policy.{key}": value for key, value in fields.items()})
        self._events.emit(
            Event(
                action=action,
                category=Category.CONFIGURATION,
                outcome=outcome,
                dataset="onegate.policy",
                fields=values,
            )
        )

    async def active(self) -> Version | None:
        async with self._sessions() as s:
            row = await s.scalar(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(1))
            return Version.of(row) if row is not None else None

    async def newest_number(self) -> int | None:
        async with self._sessions() as s:
            return await s.scalar(select(func.max(PolicyVersion.id)))  # type: ignore[no-any-return]

    async def get(self, number: int) -> Version:
        async with self._sessions() as s:
            row = await s.get(PolicyVersion, number)
            if row is None:
                raise UnknownVersion(number)
            return Version.of(row)

    async def history(self, limit: int = 50) -> list[Version]:
        async with self._sessions() as s:
            rows = await s.scalars(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(limit))
            return [Version.of(row) for row in rows]

    async def diff(self, a: int, b: int) -> str:
        old, new = await self.get(a), await self.get(b)
        return "".join(
            difflib.unified_diff(
                old.text.splitlines(keepends=True), new.text.splitlines(keepends=True), f"v{a}", f"v{b}"
            )
        )

    async def apply(
        self, text: str, *, author: str, comment: str = "", catalog: Catalog | None = None
    ) -> tuple[Version, list[Finding]]:
        """Check ``text`` and make it the active bundle: ``(version, warnings)``. Raises
        :class:`PolicyRejected` (nothing stored) when check finds an error. Applying the text that
        is already active stores nothing and returns the active version."""
        return await self._store(text, author=author, comment=comment, catalog=catalog, action="apply")

    async def rollback(
        self, number: int, *, author: str, comment: str = "", catalog: Catalog | None = None
    ) -> tuple[Version, list[Finding]]:
        """Make version ``number``'s text active again, as a new version. It is checked again: a
        group it names may have been removed since."""
        old = await self.get(number)
        return await self._store(
            old.text,
            author=author,
            comment=comment or f"rollback to v{number}",
            catalog=catalog,
            action="rollback",
            based_on=number,
        )

    async def _store(
        self,
        text: str,
        *,
        author: str,
        comment: str,
        catalog: Catalog | None,
        action: str,
        based_on: int | None = None,
    ) -> tuple[Version, list[Finding]]:
        _, findings = check_text(text, catalog)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if has_errors(findings):
            errors = sum(f.severity == "error" for f in findings)
            self._event("policy-rejected", Outcome.FAILURE, author, digest=digest, errors=errors)
            raise PolicyRejected(findings)
        active = await self.active()
        if active is not None and active.digest == digest:
            return active, findings
        async with self._sessions() as s, s.begin():
            row = PolicyVersion(
                author=author[:200],
                comment=comment[:1000],
                action=action,
                based_on=based_on,
                text=text,
                digest=digest,
            )
            s.add(row)
            await s.flush()
            version = Version.of(row)
        self._event(
            "policy-rolled-back" if action == "rollback" else "policy-activated",
            Outcome.SUCCESS,
            author,
            version=version.number,
            digest=digest,
            **({"restored": based_on} if based_on is not None else {}),
        )
        try:
            await self._kv.publish(CHANNEL, str(version.number).encode())
        except KVUnavailable as e:  # the watchers' poll picks it up
            log.warning("policy change not published; instances reload on their next poll", error=str(e))
        return version, findings


class PolicyWatcher:
    """Keeps :attr:`engine` on the newest stored version. Until a version exists, and if none can be
    loaded, the engine denies every request (fail closed)."""

    def __init__(
        self,
        store: PolicyStore,
        kv: KV,
        *,
        poll_interval: float = 5.0,
        on_reload: Callable[[PolicyEngine], None] | None = None,
    ) -> None:
        self.engine: PolicyEngine = PolicyEngine.deny_all()
        self.version: int | None = None
        self._store = store
        self._kv = kv
        self._poll = poll_interval
        self._on_reload = on_reload
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="policy-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> bool:
        """Load the newest version if it is not the one in use; True when the engine changed."""
        async with self._lock:
            try:
                newest = await self._store.newest_number()
                if newest is None or newest == self.version:
                    return False
                version = await self._store.get(newest)
            except SQLAlchemyError as e:
                log.warning("policy versions unreadable; keeping the engine in use", error=str(e))
                return False
            try:
                # Compiling a large bundle takes a while: off the event loop.
                engine = await asyncio.to_thread(PolicyEngine.from_text, version.text, version=version.number)
            except BundleError as e:
                log.error(
                    "stored policy version does not load; keeping the engine in use",
                    version=newest,
                    error=str(e),
                )
                self.version = newest  # do not retry the same broken version on every poll
                return False
            self.engine, self.version = engine, version.number
        log.info("policy loaded", version=version.number, digest=version.digest)
        if self._on_reload is not None:
            self._on_reload(engine)
        return True

    async def _run(self) -> None:
        while True:
            try:
                async with self._kv.subscribe(CHANNEL) as subscription:
                    await self.refresh()  # a change made while (re)subscribing
                    while True:
                        await subscription.get(timeout=self._poll)
                        await self.refresh()  # on a message, and at least every poll_interval
            except KVUnavailable as e:
                log.warning("policy change channel unavailable; polling", error=str(e))
                await asyncio.sleep(self._poll)
                await self.refresh()
