"""Versions of the active policy bundle, and the watcher that keeps every instance on the newest.

Every change is a new row (append-only): applying a bundle, and rolling back to an earlier one
(which stores that version's text again, naming the version it restored). The newest row is the
active bundle. Nothing reaches the table without passing :func:`policy.check.check` against the
catalog the caller gives (the directory): a bundle with errors never becomes active.

Version numbers are 1, 2, 3, ... with no gaps, in the order the changes were committed: a change
takes the newest number plus one, and of two changes racing for a number the database's primary
key admits one; the other reads the newest version again and takes the next number.

After a change the store publishes the version number on the KV channel ``policy:changed``;
every :class:`PolicyWatcher` (one per gateway process) loads and compiles the newest version and
swaps its engine in one assignment, so a request sees the old engine or the new one, never a mix.
Publish-subscribe is not durable (a message sent while a watcher reconnects is lost, and Redis
may be down), so each watcher also reads the newest version number every ``poll_interval``
seconds, whatever the state of the channel.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import Category, Event, EventEmitter, Outcome
from core.kv import KV, KVError
from core.kv.follow import ChannelFollower, end_if_cancelled
from policy.check import Catalog, check, check_text, has_errors
from policy.engine import PolicyEngine
from policy.models import PolicyVersion
from policy.rules import Bundle, Finding

__all__ = [
    "CHANNEL",
    "PolicyRejected",
    "PolicyStore",
    "PolicyWatcher",
    "UnknownVersion",
    "Version",
]

log = structlog.get_logger("onegate.policy")

CHANNEL = "policy:changed"
# Tries to take the next version number when other changes keep taking it first.
_ATTEMPTS = 5


class PolicyRejected(Exception):
    """The bundle did not pass check; ``findings`` says why (every finding, errors first)."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        errors = [f for f in findings if f.severity == "error"]
        super().__init__(f"policy bundle rejected: {len(errors)} error(s)\n" + "\n".join(map(str, errors)))


class UnknownVersion(LookupError):
    def __init__(self, version: int) -> None:
        super().__init__(f"no policy version {version} / 没有策略版本 {version}")
        self.version = version


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    created_at: datetime
    author: str
    comment: str
    action: str  # apply | rollback
    based_on: int | None  # the version a rollback restored
    digest: str  # sha256 hex of text
    text: str

    @classmethod
    def of(cls, row: PolicyVersion) -> Version:
        created = row.created_at
        # SQLite gives the UTC time back without its zone; PostgreSQL in the session's zone.
        created = created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC)
        return cls(row.id, created, row.author, row.comment, row.action, row.based_on, row.digest, row.text)

    def summary(self) -> dict[str, Any]:
        """Everything but the text (for ``history --json``)."""
        return {
            "version": self.number,
            "created_at": self.created_at.isoformat(),
            "author": self.author,
            "comment": self.comment,
            "action": self.action,
            "based_on": self.based_on,
            "digest": self.digest,
        }


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class PolicyStore:
    """The stored versions (the database) and their announcement (the KV channel)."""

    def __init__(self, sessions: async_sessionmaker[Any], kv: KV, events: EventEmitter) -> None:
        self._sessions = sessions
        self._kv = kv
        self._events = events

    def event(self, action: str, outcome: Outcome, actor: str | None, **fields: Any) -> None:
        """A configuration event about the policy; ``fields`` go under ``onegate.policy.*``
        (``error`` becomes ``error.message``)."""
        values: dict[str, Any] = {"event.type": ["change"]}
        if actor is not None:
            values["labels.actor"] = actor
        if "error" in fields:
            values["error.message"] = str(fields.pop("error"))[:1000]
        values.update({f"onegate.policy.{key}": value for key, value in fields.items() if value is not None})
        self._events.emit(
            Event(
                action=action,
                category=Category.CONFIGURATION,
                outcome=outcome,
                dataset="onegate.policy",
                fields=values,
            )
        )

    # -- reading ---------------------------------------------------------------------------

    async def active(self) -> Version | None:
        """The newest version (the one in force), or None before the first apply."""
        async with self._sessions() as s:
            row = await s.scalar(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(1))
            return Version.of(row) if row is not None else None

    async def newest_number(self) -> int | None:
        async with self._sessions() as s:
            newest: int | None = await s.scalar(select(func.max(PolicyVersion.id)))
            return newest

    async def get(self, number: int) -> Version:
        async with self._sessions() as s:
            row = await s.get(PolicyVersion, number)
            if row is None:
                raise UnknownVersion(number)
            return Version.of(row)

    async def history(self, limit: int = 50) -> list[Version]:
        """The newest ``limit`` versions, newest (active) first."""
        async with self._sessions() as s:
            rows = await s.scalars(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(limit))
            return [Version.of(row) for row in rows]

    async def diff(self, a: int, b: int) -> str:
        """A unified diff from version ``a`` to version ``b`` (labels ``v<a>`` / ``v<b>``); empty
        when the texts are equal."""
        old, new = await self.get(a), await self.get(b)
        lines = difflib.unified_diff(
            old.text.splitlines(keepends=True), new.text.splitlines(keepends=True), f"v{a}", f"v{b}"
        )
        # A last line without a newline would run into the next header.
        return "".join(
            line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
        )

    # -- changing --------------------------------------------------------------------------

    async def apply(
        self,
        bundle: str | Bundle,
        *,
        author: str,
        comment: str = "",
        catalog: Catalog | None = None,
        source: str = "policy.yaml",
    ) -> tuple[Version, list[Finding]]:
        """Check a bundle (its text, or a loaded :class:`Bundle`, whose findings then name its
        files) and make it the active one: ``(version, findings)``, the findings being warnings.

        Raises :class:`PolicyRejected` (nothing stored) when check finds an error. Applying the
        text that is already active stores nothing and returns the active version."""
        if isinstance(bundle, Bundle):
            text, findings = bundle.text, check(bundle, catalog)
        else:
            text, findings = bundle, check_text(bundle, catalog, source)[1]
        return await self._store(text, findings, author=author, comment=comment, action="apply")

    async def rollback(
        self, number: int, *, author: str, comment: str = "", catalog: Catalog | None = None
    ) -> tuple[Version, list[Finding]]:
        """Make version ``number``'s text active again, as a new version (``based_on`` names
        ``number``). It is checked again: a group it names may have been removed since."""
        old = await self.get(number)
        _, findings = check_text(old.text, catalog, f"v{number}")
        return await self._store(
            old.text,
            findings,
            author=author,
            comment=comment or f"rollback to v{number}",
            action="rollback",
            based_on=number,
        )

    async def _store(
        self,
        text: str,
        findings: list[Finding],
        *,
        author: str,
        comment: str,
        action: str,
        based_on: int | None = None,
    ) -> tuple[Version, list[Finding]]:
        digest = digest_of(text)
        if has_errors(findings):
            errors = sum(f.severity == "error" for f in findings)
            self.event(
                "policy-rejected", Outcome.FAILURE, author, digest=digest, errors=errors, restored=based_on
            )
            raise PolicyRejected(findings)
        for _ in range(_ATTEMPTS):
            try:
                async with self._sessions() as s, s.begin():
                    newest = await s.scalar(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(1))
                    if newest is not None and newest.digest == digest:
                        return Version.of(newest), findings  # already active: nothing to do
                    previous = newest.id if newest is not None else None
                    row = PolicyVersion(
                        id=(previous or 0) + 1,
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
                break
            except IntegrityError:
                continue  # another change took this number first: look at the newest again
        else:
            raise RuntimeError(f"policy version not stored: {_ATTEMPTS} concurrent changes took its number")
        self.event(
            "policy-rolled-back" if action == "rollback" else "policy-activated",
            Outcome.SUCCESS,
            author,
            version=version.number,
            previous=previous,
            digest=digest,
            restored=based_on,
        )
        try:
            await self._kv.publish(CHANNEL, str(version.number).encode())
        except KVError as e:  # stored all the same: the watchers' poll picks it up
            log.warning("policy change not published; instances reload on their next poll", error=str(e))
        return version, findings


class PolicyWatcher:
    """Keeps :attr:`engine` on the newest stored version.

    Until a version exists the engine denies every request (fail closed). A version that does
    not load (a row written past the store, or by a release that read bundles differently)
    leaves the engine in use in place, is reported once (log and a ``policy-load-failed``
    event) and is not tried again; a newer version is."""

    def __init__(
        self,
        store: PolicyStore,
        kv: KV,
        *,
        poll_interval: float = 5.0,
        on_reload: Callable[[PolicyEngine], None] | None = None,
    ) -> None:
        self.engine: PolicyEngine = PolicyEngine.deny_all()
        self.failed: int | None = None  # the newest version, when it did not load
        self._store = store
        self._kv = kv
        self._on_reload = on_reload
        self._follower = ChannelFollower(kv, CHANNEL, self.refresh, poll=poll_interval, name="policy-watcher")
        self._lock = asyncio.Lock()

    @property
    def version(self) -> int | None:
        """The version the engine in use was built from (None: nothing loaded, deny all)."""
        return self.engine.version

    async def start(self) -> None:
        """Load the newest version, then follow the channel and poll."""
        await self.refresh()
        self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    async def refresh(self) -> bool:
        """Load the newest version unless it is in use or failed already; True when the engine
        changed. Never raises: a problem is logged and the engine in use stays."""
        async with self._lock:
            try:
                newest = await self._store.newest_number()
                if newest is None or newest in (self.version, self.failed):
                    return False
                version = await self._store.get(newest)
            except Exception as e:  # the database is away: the poll tries again
                end_if_cancelled(e)
                log.warning("policy versions unreadable; keeping the engine in use", error=str(e))
                return False
            try:
                # Compiling a large bundle takes a while: off the event loop.
                engine = await asyncio.to_thread(
                    PolicyEngine.from_text, version.text, f"v{version.number}", version=version.number
                )
            except Exception as e:  # BundleError, or anything else building it: fail closed
                self.failed = version.number
                log.error(
                    "stored policy version does not load; keeping the engine in use",
                    version=version.number,
                    in_use=self.version,
                    error=str(e),
                )
                self._store.event(
                    "policy-load-failed",
                    Outcome.FAILURE,
                    None,
                    version=version.number,
                    digest=version.digest,
                    in_use=self.version,
                    error=e,
                )
                return False
            self.engine, self.failed = engine, None  # one assignment: readers see old or new
        log.info("policy loaded", version=version.number, digest=version.digest)
        if self._on_reload is not None:
            try:
                self._on_reload(engine)
            except Exception as e:
                log.error("policy reload callback failed", error=str(e))
        return True
