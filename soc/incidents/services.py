"""The incident store: alerts that share an entity within a window join one incident.

**Linking.** :meth:`IncidentStore.attach` is called for every new alert. The alert's entity keys
(``user.name``, ``user.id``, ``source.ip``, ``session.id`` — the fields that name someone or
something; not ``event.dataset``) are looked up among the open incidents' entities last seen
within ``window`` seconds (event time) of the alert: the oldest such incident takes the alert and
the alert's keys; without one, the alert opens a new incident. So a spray from an address, the
brute force on an account from that address, the account's sign-in after it and the account's
mass download become one incident, the way Microsoft Sentinel and Elastic correlate by entity.
Alerts of a drill (``drill_id``) only join incidents of the same drill, never real ones.

**Working an incident.** ``link`` / ``unlink`` move alerts by hand, ``merge`` folds incidents
into one (the others become ``merged`` and point at it), ``set_status`` moves it through
``open -> contained -> resolved`` (and back to ``open``), ``assign`` and ``comment``; every change
is a history entry and an ``incident-*`` event. ``responded`` marks the first response action.

**Figures.** time to detect = first alert raised - earliest evidence (event time); time to
respond = first response action - first alert; time to resolve = resolved - first alert.
"""

from __future__ import annotations

import builtins
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.db import session_factory
from core.events import Category, Event, EventEmitter, Outcome
from soc.alerts.alert import Alert, utc
from soc.alerts.models import AlertRecord
from soc.detections.model import Severity, Text
from soc.incidents.models import IncidentEntityRecord, IncidentHistoryRecord, IncidentRecord

__all__ = ["LINK_FIELDS", "Incident", "IncidentError", "IncidentStore"]

LINK_FIELDS = ("user.name", "user.id", "source.ip", "session.id")
_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}
_MOVES = {
    "open": {"contained", "resolved"},
    "contained": {"open", "resolved"},
    "resolved": {"open"},
    "merged": set(),
}


class IncidentError(ValueError):
    """A change that cannot be made; ``code`` for the API, the message in en and ``zh``."""

    def __init__(self, code: str, en: str, zh: str, *, status: int = 409) -> None:
        super().__init__(en)
        self.code = code
        self.zh = zh
        self.status = status


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


@dataclass(frozen=True, slots=True)
class Incident:
    id: str
    title: Text
    status: str
    severity: Severity
    risk_score: int
    assignee: str | None
    drill_id: str | None
    merged_into: str | None
    first_seen: datetime
    last_seen: datetime
    created_at: datetime
    detected_at: datetime
    responded_at: datetime | None
    resolved_at: datetime | None
    alert_count: int
    entities: tuple[str, ...]
    version: int

    @property
    def time_to_detect(self) -> float | None:
        return _seconds(self.first_seen, self.detected_at)

    @property
    def time_to_respond(self) -> float | None:
        return _seconds(self.detected_at, self.responded_at)

    @property
    def time_to_resolve(self) -> float | None:
        return _seconds(self.detected_at, self.resolved_at)

    def as_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat().replace("+00:00", "Z")

        return {
            "id": self.id,
            "title": self.title.as_dict(),
            "status": self.status,
            "severity": self.severity.value,
            "risk_score": self.risk_score,
            "assignee": self.assignee,
            "drill_id": self.drill_id,
            "merged_into": self.merged_into,
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
            "created_at": iso(self.created_at),
            "detected_at": iso(self.detected_at),
            "responded_at": iso(self.responded_at),
            "resolved_at": iso(self.resolved_at),
            "alert_count": self.alert_count,
            "entities": list(self.entities),
            "time_to_detect_s": self.time_to_detect,
            "time_to_respond_s": self.time_to_respond,
            "time_to_resolve_s": self.time_to_resolve,
            "version": self.version,
        }


def _incident(row: IncidentRecord, entities: Iterable[str]) -> Incident:
    return Incident(
        id=row.id,
        title=Text(row.title_en, row.title_zh),
        status=row.status,
        severity=Severity(row.severity),
        risk_score=row.risk_score,
        assignee=row.assignee,
        drill_id=row.drill_id,
        merged_into=row.merged_into,
        first_seen=utc(row.first_seen),
        last_seen=utc(row.last_seen),
        created_at=utc(row.created_at),
        detected_at=utc(row.detected_at),
        responded_at=None if row.responded_at is None else utc(row.responded_at),
        resolved_at=None if row.resolved_at is None else utc(row.resolved_at),
        alert_count=row.alert_count,
        entities=tuple(sorted(entities)),
        version=row.version,
    )


def entity_keys(entity: Mapping[str, str], fields: Iterable[str] = LINK_FIELDS) -> list[str]:
    """The keys an alert's entity links by: ``["source.ip=203.0.113.7", "user.name=wangfang"]``."""
    return sorted(f"{name}={entity[name]}"[:300] for name in fields if entity.get(name))


class IncidentStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        events: EventEmitter | None = None,
        clock: Callable[[], float] = time.time,
        window: float = 86400.0,
        link_fields: Iterable[str] = LINK_FIELDS,
    ) -> None:
        self._sessions = session_factory(engine)
        self._events = events
        self._clock = clock
        self._window = timedelta(seconds=window)
        self._fields = tuple(link_fields)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # -- linking ---------------------------------------------------------------------------------

    async def attach(self, alert: Alert) -> Incident:
        """The incident ``alert`` belongs to: the one it is already in, the open one that shares
        an entity with it within the window, or a new one."""
        async with self._sessions() as s, s.begin():
            row = await s.get(AlertRecord, alert.id)
            if row is None:
                raise IncidentError("no_alert", f"no alert {alert.id}", f"告警 {alert.id} 不存在", status=404)
            if row.incident_id is not None:
                incident = await s.get(IncidentRecord, row.incident_id)
                if incident is not None:
                    return await self._read(s, incident)
            keys = entity_keys(alert.entity, self._fields)
            incident = await self._match(s, keys, alert)
            created = incident is None
            if incident is None:
                incident = self._open(alert)
                s.add(incident)
                await s.flush()
                self._history(s, incident, "created", "system", alert_id=alert.id, to_status="open")
            else:
                self._grow(incident, alert)
                self._history(s, incident, "alert-linked", "system", alert_id=alert.id)
            await self._remember(s, incident.id, keys, alert.last_seen)
            await s.execute(
                update(AlertRecord).where(AlertRecord.id == alert.id).values(incident_id=incident.id)
            )
            result = await self._read(s, incident)
        self._emit("incident-created" if created else "incident-alert-linked", result, "system", alert.id)
        return result

    async def _match(self, s: AsyncSession, keys: list[str], alert: Alert) -> IncidentRecord | None:
        if not keys:
            return None
        since = alert.first_seen - self._window
        query = (
            select(IncidentRecord)
            .join(IncidentEntityRecord, IncidentEntityRecord.incident_id == IncidentRecord.id)
            .where(
                IncidentEntityRecord.key.in_(keys),
                IncidentEntityRecord.last_seen >= since,
                IncidentRecord.status.in_(("open", "contained")),
            )
            .order_by(IncidentRecord.created_at, IncidentRecord.id)
            .limit(1)
        )
        if alert.drill_id is None:
            query = query.where(IncidentRecord.drill_id.is_(None))
        else:
            query = query.where(IncidentRecord.drill_id == alert.drill_id)
        found: IncidentRecord | None = await s.scalar(query)
        return found

    def _open(self, alert: Alert) -> IncidentRecord:
        now = self._now()
        main = next((f"{k}={alert.entity[k]}" for k in self._fields if alert.entity.get(k)), "")
        digest = hashlib.sha256(f"incident\x1f{alert.id}".encode()).hexdigest()[:32]
        return IncidentRecord(
            id=digest,
            title_en=f"{alert.rule_name.en}: {main}" if main else alert.rule_name.en,
            title_zh=f"{alert.rule_name.zh}：{main}" if main else alert.rule_name.zh,
            status="open",
            severity=alert.severity.value,
            risk_score=alert.risk_score,
            assignee=None,
            drill_id=alert.drill_id,
            merged_into=None,
            first_seen=alert.first_seen,
            last_seen=alert.last_seen,
            created_at=now,
            detected_at=alert.created_at,
            responded_at=None,
            resolved_at=None,
            updated_at=now,
            alert_count=1,
            version=0,
        )

    def _grow(self, incident: IncidentRecord, alert: Alert) -> None:
        if _RANK[alert.severity] > _RANK[Severity(incident.severity)]:
            incident.severity = alert.severity.value
        incident.risk_score = max(incident.risk_score, alert.risk_score)
        incident.first_seen = min(utc(incident.first_seen), alert.first_seen)
        incident.last_seen = max(utc(incident.last_seen), alert.last_seen)
        incident.detected_at = min(utc(incident.detected_at), alert.created_at)
        incident.alert_count += 1
        incident.updated_at = self._now()

    async def _remember(self, s: AsyncSession, incident_id: str, keys: Iterable[str], seen: datetime) -> None:
        for key in keys:
            row = await s.get(IncidentEntityRecord, (incident_id, key))
            if row is None:
                s.add(IncidentEntityRecord(incident_id=incident_id, key=key, last_seen=seen))
            elif utc(row.last_seen) < seen:
                row.last_seen = seen

    def _history(
        self,
        s: AsyncSession,
        incident: IncidentRecord,
        action: str,
        actor: str,
        *,
        alert_id: str | None = None,
        from_status: str | None = None,
        to_status: str | None = None,
        note: str | None = None,
    ) -> None:
        incident.version += 1
        incident.updated_at = self._now()
        s.add(
            IncidentHistoryRecord(
                incident_id=incident.id,
                seq=incident.version,
                at=self._now(),
                actor=actor[:200],
                action=action,
                alert_id=alert_id,
                from_status=from_status,
                to_status=to_status,
                note=note,
            )
        )

    async def _read(self, s: AsyncSession, row: IncidentRecord) -> Incident:
        await s.flush()
        keys = await s.scalars(
            select(IncidentEntityRecord.key).where(IncidentEntityRecord.incident_id == row.id)
        )
        return _incident(row, keys)

    # -- reading ---------------------------------------------------------------------------------

    async def get(self, incident_id: str) -> Incident:
        async with self._sessions() as s:
            row = await self._row(s, incident_id)
            return await self._read(s, row)

    async def _row(self, s: AsyncSession, incident_id: str) -> IncidentRecord:
        row = await s.get(IncidentRecord, incident_id)
        if row is None:
            raise IncidentError(
                "no_incident",
                f"no incident {incident_id[:40]}",
                f"事件 {incident_id[:40]} 不存在",
                status=404,
            )
        return row

    async def list(
        self,
        *,
        status: Iterable[str] | None = None,
        drill_id: str | None = None,
        drills: bool = False,
        size: int = 50,
    ) -> builtins.list[Incident]:
        """Newest first. Without ``drill_id``, real incidents only (``drills`` adds the drills')."""
        query = (
            select(IncidentRecord).order_by(IncidentRecord.created_at.desc(), IncidentRecord.id).limit(size)
        )
        if status is not None:
            query = query.where(IncidentRecord.status.in_(builtins.list(status)))
        if drill_id is not None:
            query = query.where(IncidentRecord.drill_id == drill_id)
        elif not drills:
            query = query.where(IncidentRecord.drill_id.is_(None))
        async with self._sessions() as s:
            rows = builtins.list(await s.scalars(query))
            return [await self._read(s, row) for row in rows]

    async def alert_ids(self, incident_id: str) -> builtins.list[str]:
        async with self._sessions() as s:
            await self._row(s, incident_id)
            ids = await s.scalars(
                select(AlertRecord.id)
                .where(AlertRecord.incident_id == incident_id)
                .order_by(AlertRecord.created_at, AlertRecord.id)
            )
            return builtins.list(ids)

    async def history(self, incident_id: str) -> builtins.list[dict[str, Any]]:
        async with self._sessions() as s:
            await self._row(s, incident_id)
            rows = await s.scalars(
                select(IncidentHistoryRecord)
                .where(IncidentHistoryRecord.incident_id == incident_id)
                .order_by(IncidentHistoryRecord.seq)
            )
            return [
                {
                    "seq": r.seq,
                    "at": utc(r.at).isoformat().replace("+00:00", "Z"),
                    "actor": r.actor,
                    "action": r.action,
                    "alert_id": r.alert_id,
                    "from_status": r.from_status,
                    "to_status": r.to_status,
                    "note": r.note,
                }
                for r in rows
            ]

    # -- working it ------------------------------------------------------------------------------

    async def _change(
        self,
        incident_id: str,
        actor: str,
        expected: int | None,
        work: Callable[[AsyncSession, IncidentRecord], Any],
    ) -> Incident:
        async with self._sessions() as s, s.begin():
            row = await self._row(s, incident_id)
            if expected is not None and row.version != expected:
                raise IncidentError(
                    "version_conflict",
                    f"the incident changed (version {row.version}, not {expected}); reload it",
                    f"事件已被修改（当前版本 {row.version}，而非 {expected}），请刷新后重试",
                    status=412,
                )
            if row.status == "merged":
                raise IncidentError(
                    "merged",
                    f"the incident was merged into {row.merged_into}",
                    f"该事件已合并至 {row.merged_into}",
                )
            action = await work(s, row)
            result = await self._read(s, row)
        self._emit(f"incident-{action}", result, actor)
        return result

    async def set_status(
        self,
        incident_id: str,
        status: str,
        *,
        actor: str,
        note: str | None = None,
        expected_version: int | None = None,
    ) -> Incident:
        async def work(s: AsyncSession, row: IncidentRecord) -> str:
            if status not in _MOVES.get(row.status, set()):
                raise IncidentError(
                    "invalid_status",
                    f"an incident that is {row.status} cannot become {status}",
                    f"事件当前状态为 {row.status}，不能变为 {status}",
                )
            before = row.status
            row.status = status
            row.resolved_at = self._now() if status == "resolved" else None
            self._history(s, row, "status", actor, from_status=before, to_status=status, note=note)
            return status

        return await self._change(incident_id, actor, expected_version, work)

    async def assign(
        self, incident_id: str, assignee: str | None, *, actor: str, expected_version: int | None = None
    ) -> Incident:
        async def work(s: AsyncSession, row: IncidentRecord) -> str:
            row.assignee = assignee
            self._history(s, row, "assigned", actor, note=assignee)
            return "assigned"

        return await self._change(incident_id, actor, expected_version, work)

    async def comment(
        self, incident_id: str, text: str, *, actor: str, expected_version: int | None = None
    ) -> Incident:
        if not 1 <= len(text.strip()) <= 4000:
            raise IncidentError(
                "invalid_comment",
                "a comment has 1 to 4000 characters",
                "备注应为 1 到 4000 个字符",
                status=400,
            )

        async def work(s: AsyncSession, row: IncidentRecord) -> str:
            self._history(s, row, "commented", actor, note=text.strip())
            return "commented"

        return await self._change(incident_id, actor, expected_version, work)

    async def responded(self, incident_id: str, *, actor: str, note: str) -> Incident:
        """A response action was run for the incident (the first one sets ``responded_at``)."""

        async def work(s: AsyncSession, row: IncidentRecord) -> str:
            if row.responded_at is None:
                row.responded_at = self._now()
            self._history(s, row, "response", actor, note=note[:4000])
            return "response"

        return await self._change(incident_id, actor, None, work)

    async def link(
        self, incident_id: str, alert_id: str, *, actor: str, expected_version: int | None = None
    ) -> Incident:
        """Move an alert into this incident (from the one it was in, if any)."""

        async def work(s: AsyncSession, row: IncidentRecord) -> str:
            alert = await s.get(AlertRecord, alert_id)
            if alert is None:
                raise IncidentError(
                    "no_alert", f"no alert {alert_id[:40]}", f"告警 {alert_id[:40]} 不存在", status=404
                )
            if alert.incident_id == row.id:
                return "alert-linked"
            if alert.drill_id != row.drill_id:
                raise IncidentError(
                    "drill_mismatch",
                    "drill alerts and real alerts are never linked together",
                    "演练告警与真实告警不能关联到同一事件",
                )
            if alert.incident_id is not None:
                old = await s.get(IncidentRecord, alert.incident_id)
                if old is not None:
                    old.alert_count -= 1
                    self._history(s, old, "alert-unlinked", actor, alert_id=alert_id, note=f"-> {row.id}")
            alert.incident_id = row.id
            row.alert_count += 1
            row.first_seen = min(utc(row.first_seen), utc(alert.first_seen))
            row.last_seen = max(utc(row.last_seen), utc(alert.last_seen))
            await self._remember(s, row.id, entity_keys(alert.entity, self._fields), utc(alert.last_seen))
            self._history(s, row, "alert-linked", actor, alert_id=alert_id)
            return "alert-linked"

        return await self._change(incident_id, actor, expected_version, work)

    async def unlink(
        self, incident_id: str, alert_id: str, *, actor: str, expected_version: int | None = None
    ) -> Incident:
        async def work(s: AsyncSession, row: IncidentRecord) -> str:
            alert = await s.get(AlertRecord, alert_id)
            if alert is None or alert.incident_id != row.id:
                raise IncidentError(
                    "not_linked",
                    f"alert {alert_id[:40]} is not in this incident",
                    f"告警 {alert_id[:40]} 不在该事件中",
                )
            alert.incident_id = None
            row.alert_count -= 1
            self._history(s, row, "alert-unlinked", actor, alert_id=alert_id)
            return "alert-unlinked"

        return await self._change(incident_id, actor, expected_version, work)

    async def merge(
        self, into: str, others: Iterable[str], *, actor: str, expected_version: int | None = None
    ) -> Incident:
        """Fold ``others`` into ``into``: their alerts and entities move, they become ``merged``."""
        sources = [o for o in dict.fromkeys(others) if o != into]
        if not sources:
            raise IncidentError(
                "nothing_to_merge", "name other incidents to merge", "请指定要合并的其他事件", status=400
            )

        async def work(s: AsyncSession, row: IncidentRecord) -> str:
            for source_id in sources:
                source = await self._row(s, source_id)
                if source.status == "merged":
                    raise IncidentError(
                        "merged", f"{source_id} was already merged", f"事件 {source_id} 已被合并"
                    )
                if source.drill_id != row.drill_id:
                    raise IncidentError(
                        "drill_mismatch",
                        "drill incidents and real incidents are never merged",
                        "演练事件与真实事件不能合并",
                    )
                moved = await s.execute(
                    update(AlertRecord).where(AlertRecord.incident_id == source_id).values(incident_id=row.id)
                )
                row.alert_count += int(moved.rowcount or 0)  # type: ignore[attr-defined]
                keys = await s.scalars(
                    select(IncidentEntityRecord).where(IncidentEntityRecord.incident_id == source_id)
                )
                for entity in builtins.list(keys):
                    await self._remember(s, row.id, [entity.key], utc(entity.last_seen))
                row.first_seen = min(utc(row.first_seen), utc(source.first_seen))
                row.last_seen = max(utc(row.last_seen), utc(source.last_seen))
                row.detected_at = min(utc(row.detected_at), utc(source.detected_at))
                if _RANK[Severity(source.severity)] > _RANK[Severity(row.severity)]:
                    row.severity = source.severity
                row.risk_score = max(row.risk_score, source.risk_score)
                before = source.status
                source.status, source.merged_into, source.alert_count = "merged", row.id, 0
                self._history(s, source, "merged", actor, from_status=before, to_status="merged", note=row.id)
                self._history(s, row, "merged", actor, note=source_id)
            return "merged"

        return await self._change(into, actor, expected_version, work)

    async def counts(self) -> dict[str, int]:
        """Real incidents per status."""
        async with self._sessions() as s:
            rows = await s.execute(
                select(IncidentRecord.status, func.count())
                .where(IncidentRecord.drill_id.is_(None))
                .group_by(IncidentRecord.status)
            )
            return {status: int(n) for status, n in rows}

    def _emit(self, action: str, incident: Incident, actor: str, alert_id: str | None = None) -> None:
        if self._events is None:
            return
        fields: dict[str, Any] = {
            "onegate.incident_id": incident.id,
            "onegate.actor": actor,
            "onegate.incident_status": incident.status,
        }
        if alert_id is not None:
            fields["onegate.alert_id"] = alert_id
        self._events.emit(
            Event(
                action=action,
                category=Category.INTRUSION_DETECTION,
                outcome=Outcome.SUCCESS,
                dataset="onegate.soc",
                fields=fields,
            )
        )
