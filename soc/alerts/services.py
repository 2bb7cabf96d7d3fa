"""The alert store: signals in, alerts out, and the analysts' triage of them.

**Raising.** :meth:`AlertStore.raise_signal` turns a detection's :class:`~soc.detections.model.Signal`
into an alert, one per suppression key and window (Elastic Security's alert suppression): an
alert of the same rule and key (and the same drill, or none) that is not closed and whose
``first_seen`` lies within the rule's ``suppress_for`` seconds of the signal's time takes the
signal — its evidence, ``event_count``, ``signal_count`` and ``last_seen`` grow and its history
gets a ``signal`` entry. A signal that arrives late (event time before the alert's
``first_seen``, still within the window) joins too and moves ``first_seen`` back. Otherwise a new
alert is raised and ``alert-created`` emitted.

Raising is idempotent: a signal whose completing event (``signal.events[-1]``) is already
evidence of an alert of its rule changes nothing, so a detection engine that replays its input
after a crash does not duplicate alerts. A new alert's id is derived from the rule, the
suppression key and the completing event, so two processes replaying the same signal at once
insert one row: the other's insert fails on the primary key, and on its retry it finds the alert.
Signals of one key are taken one at a time in a process (a lock per key stripe); across processes
two signals of one key arriving in the same instant may raise two alerts.

**Triage.** ``acknowledge``, ``close``, ``reopen``, ``assign`` and ``comment`` each write the
alert and a history entry in one transaction and emit an event naming the actor
(``onegate.actor``; ``user.name`` stays the alert's subject). Every change increments the
alert's ``version``, which equals the ``seq`` of its newest history entry; a caller that passes
``expected_version`` (the API's If-Match) is refused with :class:`AlertConflict` when the alert
has changed since. A change that does not apply to the alert as it is raises
:class:`TransitionRefused` with a reason in both languages (the statuses and what each change
does: :mod:`soc.alerts.triage`). :meth:`AlertStore.bulk` applies one change to many alerts in one
transaction and reports, per alert, whether it changed or why not. The lists, their filters and
pages: :mod:`soc.alerts.listing`; the events: :mod:`soc.alerts.events`.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from core.db import session_factory
from core.events import Event, EventEmitter
from soc.alerts import listing
from soc.alerts.alert import (
    ALERT_ID,
    NO_DRILL,
    Alert,
    AlertPage,
    BulkResult,
    CloseReason,
    HistoryAction,
    HistoryEntry,
    Refusal,
    Status,
    utc,
)
from soc.alerts.errors import AlertConflict, AlertError, AlertInvalid, AlertNotFound, TransitionRefused
from soc.alerts.events import alert_changed, alert_created
from soc.alerts.models import AlertEventRecord, AlertHistoryRecord, AlertRecord
from soc.alerts.sla import DEFAULT_SLA, Sla, SlaTargets
from soc.alerts.triage import ACTIONS, Request, check_actor, check_request, transition
from soc.detections.model import Severity, Signal

__all__ = ["MAX_BULK", "AlertStore"]

MAX_BULK = 1000
_ATTEMPTS = 5
_LOCK_STRIPES = 64
_DRILL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Change:
    """A change applied to an alert: the alert after it and the history entry it wrote."""

    alert: Alert
    entry: HistoryEntry


class AlertStore:
    """Alerts in the SQL database (SQLite or PostgreSQL).

    ``events``: where the ``alert-*`` events go (None: nowhere). ``clock``: epoch seconds, the
    wall clock of ``created_at`` and the other triage times and of the SLA figures. ``sla``:
    the response targets per severity."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        events: EventEmitter | None = None,
        clock: Callable[[], float] = time.time,
        sla: SlaTargets = DEFAULT_SLA,
    ) -> None:
        self._sessions = session_factory(engine)
        self._events = events
        self._clock = clock
        self.sla_targets = sla
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]
        # Changes to one alert from this process wait for each other here rather than race in
        # the database and retry (other processes' changes still meet the version check).
        self._change_locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def sla(self, alert: Alert) -> Sla:
        """Where ``alert`` stands against the targets now."""
        return self.sla_targets.of(
            alert.severity, alert.created_at, alert.acknowledged_at, alert.closed_at, self._now()
        )

    def _alert(self, row: AlertRecord, now: datetime) -> Alert:
        sla = self.sla_targets.of(
            Severity(row.severity),
            utc(row.created_at),
            None if row.acknowledged_at is None else utc(row.acknowledged_at),
            None if row.closed_at is None else utc(row.closed_at),
            now,
        )
        return Alert.of(row, sla)

    def _emit(self, event: Event) -> None:
        if self._events is not None:
            self._events.emit(event)

    async def _apply(
        self,
        s: AsyncSession,
        row: AlertRecord,
        change: Request,
        *,
        actor: str,
        expected: int | None,
        now: datetime,
    ) -> _Change:
        """Check ``change`` against the alert, write it and its history entry."""
        action, entry = transition(row, change, expected=expected, now=now)
        record = await self._touch(s, row, now, actor, action, **entry)
        return _Change(self._alert(row, now), HistoryEntry.of(record))

    async def _transaction(
        self, work: Callable[[AsyncSession], Awaitable[_T]], *, retry_integrity: bool = False
    ) -> _T:
        """Run ``work`` in a transaction; again when another writer went first."""
        for attempt in range(_ATTEMPTS):
            try:
                async with self._sessions() as s, s.begin():
                    return await work(s)
            except StaleDataError:  # another change went first: read again
                continue
            except IntegrityError:
                if not retry_integrity:
                    raise
                continue  # another process inserted the same alert: the retry finds it
            except OperationalError as e:
                if "locked" not in str(e):  # SQLite: another writer holds the database
                    raise
                await asyncio.sleep(0.02 * (attempt + 1))
        raise AlertError(
            "concurrent_change",
            f"alert change not stored: {_ATTEMPTS} concurrent changes went first; try again",
            f"告警变更未保存：{_ATTEMPTS} 个并发变更抢先，请重试",
        )

    # -- raising ---------------------------------------------------------------------------------

    async def raise_signal(self, signal: Signal, *, drill_id: str | None = None) -> tuple[Alert, bool]:
        """The alert that took ``signal``, and whether it was created for it. ``drill_id``: the
        drill the signal's events belong to (a drill's alerts never join others)."""
        if drill_id is not None and (not _DRILL.fullmatch(drill_id) or drill_id == NO_DRILL):
            raise AlertInvalid("invalid_drill", f"invalid drill id {drill_id[:64]!r}", "演练编号无效")
        if len(signal.rule.id) > 128:
            raise AlertInvalid(
                "invalid_rule", "a rule id has at most 128 characters", "规则编号最多 128 个字符"
            )
        if any(not isinstance(e, str) or not 1 <= len(e) <= 128 for e in signal.events):
            raise AlertInvalid(
                "invalid_event_id", "event ids have 1 to 128 characters", "事件编号应为 1 到 128 个字符"
            )
        lock = self._locks[int(signal.suppression_hash[:8], 16) % _LOCK_STRIPES]
        async with lock:
            alert, created = await self._transaction(
                lambda s: self._take(s, signal, drill_id), retry_integrity=True
            )
        if created:
            self._emit(alert_created(alert))
        return alert, created

    async def _take(self, s: AsyncSession, signal: Signal, drill_id: str | None) -> tuple[Alert, bool]:
        now = self._now()
        rule = signal.rule
        completing = signal.events[-1]
        done = await s.scalar(
            select(AlertRecord)
            .join(AlertEventRecord, AlertEventRecord.alert_id == AlertRecord.id)
            .where(AlertEventRecord.event_id == completing, AlertRecord.rule_id == rule.id)
            .limit(1)
        )
        if done is not None:
            return self._alert(done, now), False  # a replay: taken already
        at = datetime.fromtimestamp(signal.at, UTC)
        window = timedelta(seconds=rule.suppress_for)
        candidates = list(
            await s.scalars(
                select(AlertRecord)
                .where(
                    AlertRecord.suppression_hash == signal.suppression_hash,
                    AlertRecord.rule_id == rule.id,
                    AlertRecord.status != Status.CLOSED.value,
                    AlertRecord.first_seen >= at - window,
                    AlertRecord.first_seen <= at + window,
                    AlertRecord.drill_id.is_(None) if drill_id is None else AlertRecord.drill_id == drill_id,
                )
                .order_by(AlertRecord.first_seen.desc(), AlertRecord.id)
                .limit(10)
                .with_for_update()
            )
        )
        # The newest alert whose window holds the signal; else the earliest that starts after it.
        before = [row for row in candidates if utc(row.first_seen) <= at]
        row = before[0] if before else (candidates[-1] if candidates else None)
        events = list(dict.fromkeys(signal.events))  # once each, in order
        actor = f"rule:{rule.id}"
        if row is None:
            return await self._create(
                s, signal, drill_id=drill_id, at=at, events=events, actor=actor, now=now
            ), True
        known = set(
            await s.scalars(
                select(AlertEventRecord.event_id).where(
                    AlertEventRecord.alert_id == row.id, AlertEventRecord.event_id.in_(events)
                )
            )
        )
        new = [event for event in events if event not in known]
        count = row.event_count
        row.first_seen = min(utc(row.first_seen), at)
        row.last_seen = max(utc(row.last_seen), at)
        row.event_count = count + len(new)
        row.signal_count += 1
        await self._touch(s, row, now, actor, HistoryAction.SIGNAL)
        s.add_all(
            AlertEventRecord(alert_id=row.id, event_id=event, seq=count + i, at=now)
            for i, event in enumerate(new, 1)
        )
        await s.flush()
        return self._alert(row, now), False

    async def _create(
        self,
        s: AsyncSession,
        signal: Signal,
        *,
        drill_id: str | None,
        at: datetime,
        events: builtins.list[str],
        actor: str,
        now: datetime,
    ) -> Alert:
        rule = signal.rule
        key = "\x1f".join((rule.id, signal.suppression_hash, signal.events[-1]))
        row = AlertRecord(
            id=hashlib.sha256(key.encode()).hexdigest()[:32],
            rule_id=rule.id,
            rule_name_en=rule.name.en[:300],
            rule_name_zh=rule.name.zh[:300],
            severity=Severity(rule.severity).value,
            risk_score=rule.risk_score,
            technique=rule.technique[:32],
            tactic=rule.tactic[:64],
            status=Status.OPEN.value,
            close_reason=None,
            assignee=None,
            suppression_hash=signal.suppression_hash,
            entity=dict(signal.entity),
            reason_en=signal.reason.en,
            reason_zh=signal.reason.zh,
            values=dict(signal.values),
            first_seen=at,
            last_seen=at,
            created_at=now,
            updated_at=now,
            acknowledged_at=None,
            closed_at=None,
            event_count=len(events),
            signal_count=1,
            incident_id=None,
            drill_id=drill_id,
            version=1,
        )
        s.add(row)
        await s.flush()  # the alert before the rows that refer to it
        s.add(
            AlertHistoryRecord(
                alert_id=row.id,
                seq=1,
                at=now,
                actor=actor,
                action=HistoryAction.CREATED.value,
                to_status=Status.OPEN.value,
            )
        )
        s.add_all(
            AlertEventRecord(alert_id=row.id, event_id=event, seq=i, at=now)
            for i, event in enumerate(events, 1)
        )
        await s.flush()
        return self._alert(row, now)

    async def _touch(
        self,
        s: AsyncSession,
        row: AlertRecord,
        now: datetime,
        actor: str,
        action: HistoryAction,
        **entry: Any,
    ) -> AlertHistoryRecord:
        """Write the changes made to ``row`` as its next version, then its history entry.

        The update names the version read (``UPDATE ... WHERE version = read``): after a
        concurrent change it matches no row and raises ``StaleDataError`` (the transaction is
        tried again). It is flushed before the entry is added, so the entry's number is only
        taken by the change that won."""
        row.version += 1
        row.updated_at = now
        await s.flush()
        record = AlertHistoryRecord(
            alert_id=row.id, seq=row.version, at=now, actor=actor, action=action.value, **entry
        )
        s.add(record)
        return record

    # -- reading ---------------------------------------------------------------------------------

    async def get(self, alert_id: str) -> Alert:
        async with self._sessions() as s:
            row = await s.get(AlertRecord, alert_id) if ALERT_ID.fullmatch(alert_id) else None
            if row is None:
                raise AlertNotFound(alert_id)
            return self._alert(row, self._now())

    async def evidence(self, alert_id: str) -> builtins.list[str]:
        """The ids of the alert's events, in the order they came in."""
        async with self._sessions() as s:
            await self._exists(s, alert_id)
            rows = await s.scalars(
                select(AlertEventRecord.event_id)
                .where(AlertEventRecord.alert_id == alert_id)
                .order_by(AlertEventRecord.seq)
            )
            return builtins.list(rows)

    async def history(self, alert_id: str) -> builtins.list[HistoryEntry]:
        """Every change of the alert, oldest first."""
        async with self._sessions() as s:
            await self._exists(s, alert_id)
            rows = await s.scalars(
                select(AlertHistoryRecord)
                .where(AlertHistoryRecord.alert_id == alert_id)
                .order_by(AlertHistoryRecord.seq)
            )
            return [HistoryEntry.of(row) for row in rows]

    async def unlinked(self, *, before: datetime, limit: int = 500) -> builtins.list[Alert]:
        """Alerts raised before ``before`` that belong to no incident, oldest first: what a crash
        between raising an alert and linking it left (:meth:`soc.triage.Triage.repair`)."""
        query = (
            select(AlertRecord)
            .where(AlertRecord.incident_id.is_(None), AlertRecord.created_at < before)
            .order_by(AlertRecord.created_at, AlertRecord.id)
            .limit(limit)
        )
        now = self._now()
        async with self._sessions() as s:
            return [self._alert(row, now) for row in await s.scalars(query)]

    async def _exists(self, s: AsyncSession, alert_id: str) -> None:
        found = ALERT_ID.fullmatch(alert_id) and await s.scalar(
            select(AlertRecord.id).where(AlertRecord.id == alert_id)
        )
        if not found:
            raise AlertNotFound(alert_id)

    async def list(
        self,
        *,
        status: Collection[Status | str] | None = None,
        severity: Collection[Severity | str] | None = None,
        rule_id: str | None = None,
        assignee: str | None = None,
        entity: Mapping[str, str] | None = None,
        incident_id: str | None = None,
        drill_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        overdue: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> AlertPage:
        """Alerts newest first (by ``created_at``), ``limit`` at a time.

        ``status`` / ``severity``: any of these. ``assignee``: a username, or
        :data:`UNASSIGNED`. ``entity``: the alert is about these values
        (``{"user.name": "zhangwei"}``). ``drill_id``: a drill, or :data:`NO_DRILL`.
        ``since`` / ``until``: ``created_at`` from (inclusive) and to (exclusive). ``overdue``:
        only alerts whose pending response is past its target now. ``cursor``: the previous
        page's, for the next."""
        if not 1 <= limit <= listing.MAX_PAGE:
            raise listing.bad_filter("limit", f"1-{listing.MAX_PAGE}")
        now = self._now()
        where = listing.filters(
            status=status,
            severity=severity,
            rule_id=rule_id,
            assignee=assignee,
            entity=entity,
            incident_id=incident_id,
            drill_id=drill_id,
            since=since,
            until=until,
        )
        if overdue:
            where.append(listing.overdue(self.sla_targets, now))
        query = select(AlertRecord).where(*where)
        if cursor is not None:
            created, last_id = listing.decode_cursor(cursor)
            query = query.where(
                or_(
                    AlertRecord.created_at < created,
                    and_(AlertRecord.created_at == created, AlertRecord.id < last_id),
                )
            )
        query = query.order_by(AlertRecord.created_at.desc(), AlertRecord.id.desc()).limit(limit + 1)
        async with self._sessions() as s:
            total = await s.scalar(select(func.count()).select_from(AlertRecord).where(*where)) or 0
            rows = builtins.list(await s.scalars(query))
        alerts = [self._alert(row, now) for row in rows[:limit]]
        more = len(rows) > limit
        return AlertPage(alerts, total, listing.encode_cursor(alerts[-1]) if more and alerts else None)

    # -- triage ----------------------------------------------------------------------------------

    async def acknowledge(
        self, alert_id: str, *, actor: str, expected_version: int | None = None, note: str | None = None
    ) -> Alert:
        """open -> acknowledged."""
        return await self._one(alert_id, check_request("acknowledge", note=note), actor, expected_version)

    async def close(
        self,
        alert_id: str,
        reason: CloseReason | str | None,
        *,
        actor: str,
        note: str | None = None,
        expected_version: int | None = None,
    ) -> Alert:
        """open or acknowledged -> closed, for ``reason`` (required)."""
        request = check_request("close", reason=reason, note=note)
        return await self._one(alert_id, request, actor, expected_version)

    async def reopen(
        self, alert_id: str, *, actor: str, expected_version: int | None = None, note: str | None = None
    ) -> Alert:
        """acknowledged or closed -> open. The first response stays on record (the SLA's
        acknowledgement); the close and its reason are cleared."""
        return await self._one(alert_id, check_request("reopen", note=note), actor, expected_version)

    async def assign(
        self, alert_id: str, username: str | None, *, actor: str, expected_version: int | None = None
    ) -> Alert:
        """Give the alert to ``username``; None takes it from its assignee."""
        return await self._one(alert_id, check_request("assign", assignee=username), actor, expected_version)

    async def comment(
        self, alert_id: str, text: str, *, actor: str, expected_version: int | None = None
    ) -> Alert:
        """Add a comment (1-4000 characters) to the alert's history."""
        return await self._one(alert_id, check_request("comment", note=text), actor, expected_version)

    async def _one(self, alert_id: str, request: Request, actor: str, expected: int | None) -> Alert:
        actor = check_actor(actor)

        async def work(s: AsyncSession) -> _Change:
            now = self._now()
            row = None
            if ALERT_ID.fullmatch(alert_id):
                row = await s.scalar(select(AlertRecord).where(AlertRecord.id == alert_id).with_for_update())
            if row is None:
                raise AlertNotFound(alert_id)
            change = await self._apply(s, row, request, actor=actor, expected=expected, now=now)
            await s.flush()
            return change

        async with self._change_locks[hash(alert_id) % _LOCK_STRIPES]:
            change = await self._transaction(work)
        self._emit(alert_changed(change.alert, change.entry))
        return change.alert

    async def bulk(
        self,
        alert_ids: Sequence[str],
        action: str,
        *,
        actor: str,
        reason: CloseReason | str | None = None,
        note: str | None = None,
        assignee: str | None = None,
        text: str | None = None,
        expected_versions: Mapping[str, int] | None = None,
    ) -> BulkResult:
        """Apply ``action`` (one of :data:`ACTIONS`) to every alert of ``alert_ids`` in one
        transaction: ``close`` takes ``reason`` and ``note``, ``acknowledge`` / ``reopen`` a
        ``note``, ``assign`` the ``assignee`` (None: unassign), ``comment`` the ``text``.
        ``expected_versions``: alert id -> the version the caller read (If-Match per alert).

        An alert the change does not apply to (not found, stale, already in that state) is left
        as it is and listed in ``refused`` with the reason; the others change. A wrong request
        (an unknown action, a missing close reason, too many ids) refuses the whole call."""
        actor = check_actor(actor)
        if action not in ACTIONS:
            raise AlertInvalid(
                "unknown_action",
                f"unknown bulk action {action[:32]!r} (one of {', '.join(ACTIONS)})",
                f"未知的批量操作 {action[:32]!r}（可用：{', '.join(ACTIONS)}）",
            )
        if action == "comment":
            request = check_request(action, note=text)
        else:
            request = check_request(action, reason=reason, note=note, assignee=assignee)
        ids = builtins.list(dict.fromkeys(alert_ids))
        if len(ids) > MAX_BULK:
            raise AlertInvalid(
                "too_many_alerts",
                f"at most {MAX_BULK} alerts in one bulk change",
                f"一次批量操作最多 {MAX_BULK} 条告警",
            )
        expected = dict(expected_versions or {})

        async def work(s: AsyncSession) -> tuple[builtins.list[_Change], builtins.list[Refusal]]:
            now = self._now()
            wanted = sorted(i for i in ids if ALERT_ID.fullmatch(i))
            # Locked in id order, so two bulk changes over the same alerts cannot deadlock.
            rows = {
                row.id: row
                for row in await s.scalars(
                    select(AlertRecord)
                    .where(AlertRecord.id.in_(wanted))
                    .order_by(AlertRecord.id)
                    .with_for_update()
                )
            }
            changes: builtins.list[_Change] = []
            refused: builtins.list[Refusal] = []
            for alert_id in ids:
                row = rows.get(alert_id)
                try:
                    if row is None:
                        raise AlertNotFound(alert_id)
                    changes.append(
                        await self._apply(
                            s, row, request, actor=actor, expected=expected.get(alert_id), now=now
                        )
                    )
                except (AlertNotFound, AlertConflict, TransitionRefused) as e:
                    refused.append(Refusal.of(alert_id, e))
            await s.flush()
            return changes, refused

        changes, refused = await self._transaction(work)
        for change in changes:
            self._emit(alert_changed(change.alert, change.entry))
        return BulkResult([c.alert for c in changes], refused)
