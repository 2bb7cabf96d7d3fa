"""Drills (attack-defence exercises, after VECTR): plan, tag, score, report coverage.

A drill has a window, the red team's source networks and accounts, and test cases: an ATT&CK
technique, the planned action, and when it was executed. While a drill runs, ingest tags every
event from its sources or accounts with ``onegate.drill_id`` (:class:`DrillTagger`); the
detections raise that drill's alerts apart and the incident store keeps them out of real
incidents.

Each executed test case is scored from the data, over ``[executed_at, executed_at +
detect_within_s]`` and the case's entity (its source address and / or account):

* **blocked** — the gateway denied it: a tagged access event with ``onegate.decision: deny``;
* **alerted** — a drill alert was raised within the time on the case's entity (or, for a case
  without one, for its technique);
* **logged** — tagged events of the entity exist, no alert;
* **none** — nothing was seen.

An analyst may override a case's outcome (with a note). The coverage report gives, per technique
and overall, the outcomes, the share alerted or better, and the mean time to detect.
"""

from __future__ import annotations

import builtins
import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import session_factory
from core.events import Category, Event, EventEmitter, Outcome
from core.eventstore import EventStore, Query
from policy.model import client_address
from soc.alerts.alert import utc
from soc.alerts.models import AlertRecord
from soc.drills.models import OUTCOMES, DrillCaseRecord, DrillRecord

__all__ = ["Case", "Coverage", "Drill", "DrillError", "DrillStore", "DrillTagger", "Scorecard"]

_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_TECHNIQUE = re.compile(r"T\d{4}(\.\d{3})?")
_RANK = {"blocked": 3, "alerted": 2, "logged": 1, "none": 0}


class DrillError(ValueError):
    """A drill or case that cannot be made or changed; ``code``, en message and ``zh``."""

    def __init__(self, code: str, en: str, zh: str, *, status: int = 400) -> None:
        super().__init__(en)
        self.code = code
        self.zh = zh
        self.status = status


@dataclass(frozen=True, slots=True)
class Case:
    seq: int
    technique: str
    action: str
    source: str | None
    account: str | None
    executed_at: datetime | None
    override: str | None
    override_note: str | None
    override_by: str | None


@dataclass(frozen=True, slots=True)
class Drill:
    id: str
    name: str
    description: str
    starts_at: datetime
    ends_at: datetime
    sources: tuple[str, ...]
    accounts: tuple[str, ...]
    detect_within_s: int
    cases: tuple[Case, ...]


@dataclass(frozen=True, slots=True)
class CaseScore:
    case: Case
    measured: str | None  # None: not executed yet
    outcome: str | None  # the override when there is one
    time_to_detect_s: float | None
    events: int
    alert_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Coverage:
    cases: int
    executed: int
    outcomes: Mapping[str, int]
    share_alerted_or_better: float | None
    mean_time_to_detect_s: float | None


@dataclass(frozen=True, slots=True)
class Scorecard:
    drill: Drill
    cases: tuple[CaseScore, ...]
    overall: Coverage
    by_technique: Mapping[str, Coverage] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def coverage(c: Coverage) -> dict[str, Any]:
            return {
                "cases": c.cases,
                "executed": c.executed,
                "outcomes": dict(c.outcomes),
                "share_alerted_or_better": c.share_alerted_or_better,
                "mean_time_to_detect_s": c.mean_time_to_detect_s,
            }

        return {
            "drill": self.drill.id,
            "cases": [
                {
                    "seq": s.case.seq,
                    "technique": s.case.technique,
                    "action": s.case.action,
                    "measured": s.measured,
                    "outcome": s.outcome,
                    "override_note": s.case.override_note,
                    "time_to_detect_s": s.time_to_detect_s,
                    "events": s.events,
                    "alert_ids": list(s.alert_ids),
                }
                for s in self.cases
            ],
            "overall": coverage(self.overall),
            "by_technique": {t: coverage(c) for t, c in self.by_technique.items()},
        }


def _coverage(scores: Sequence[CaseScore]) -> Coverage:
    done = [s for s in scores if s.outcome is not None]
    outcomes = {name: sum(1 for s in done if s.outcome == name) for name in OUTCOMES}
    good = outcomes["blocked"] + outcomes["alerted"]
    times = [s.time_to_detect_s for s in done if s.time_to_detect_s is not None]
    return Coverage(
        cases=len(scores),
        executed=len(done),
        outcomes=outcomes,
        share_alerted_or_better=round(good / len(done), 4) if done else None,
        mean_time_to_detect_s=round(sum(times) / len(times), 3) if times else None,
    )


class DrillTagger:
    """Which running drill (if any) a document belongs to: its time within a drill's window and
    its source address in the drill's networks or its account among the drill's accounts."""

    def __init__(self, drills: Iterable[Drill]) -> None:
        self._drills = [
            (
                d.id,
                d.starts_at.timestamp(),
                d.ends_at.timestamp(),
                [ipaddress.ip_network(n) for n in d.sources],
                {a.lower() for a in d.accounts},
            )
            for d in drills
        ]

    def __call__(self, doc: Mapping[str, Any]) -> str | None:
        if not self._drills:
            return None
        stamp = doc.get("@timestamp")
        if not isinstance(stamp, str):
            return None
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        address = doc.get("source.ip")
        ip = None
        if isinstance(address, str):
            try:
                ip = client_address(address)  # ::ffff:198.51.100.70 is the IPv4 address
            except ValueError:
                ip = None
        user = doc.get("user.name")
        account = user.lower() if isinstance(user, str) else None
        for drill_id, start, end, networks, accounts in self._drills:
            if not start <= at <= end:
                continue
            if ip is not None and any(ip in n for n in networks):
                return drill_id
            if account is not None and account in accounts:
                return drill_id
        return None


class DrillStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        events: EventEmitter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = session_factory(engine)
        self._events = events
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # -- planning --------------------------------------------------------------------------------

    async def create(
        self,
        drill_id: str,
        name: str,
        *,
        starts_at: datetime,
        ends_at: datetime,
        sources: Sequence[str] = (),
        accounts: Sequence[str] = (),
        detect_within_s: int = 900,
        description: str = "",
        actor: str,
    ) -> Drill:
        if not _ID.fullmatch(drill_id):
            raise DrillError(
                "invalid_id",
                "a drill id is 1-64 lower-case letters, digits and hyphens",
                "演练编号应为 1 到 64 个小写字母、数字或连字符",
            )
        if not name.strip() or len(name) > 300:
            raise DrillError(
                "invalid_name", "a drill needs a name (at most 300 characters)", "演练需要名称（最多 300 字）"
            )
        if starts_at.tzinfo is None or ends_at.tzinfo is None or ends_at <= starts_at:
            raise DrillError(
                "invalid_window",
                "the window needs a time zone and must end after it starts",
                "演练时间窗口无效",
            )
        networks = []
        for source in sources:
            try:
                networks.append(str(ipaddress.ip_network(source.strip(), strict=False)))
            except ValueError:
                raise DrillError(
                    "invalid_source",
                    f"{source[:60]!r} is not an address or network",
                    f"“{source[:60]}”不是有效地址或网段",
                ) from None
        if not networks and not accounts:
            raise DrillError(
                "no_red_team",
                "name the red team's source networks or accounts",
                "请指定红队的来源网段或账号",
            )
        if not 60 <= detect_within_s <= 86400:
            raise DrillError(
                "invalid_detect_within", "detect_within_s is 60 to 86400", "检测时限应在 60 到 86400 秒之间"
            )
        row = DrillRecord(
            id=drill_id,
            name=name.strip(),
            description=description[:4000],
            starts_at=starts_at,
            ends_at=ends_at,
            sources=networks,
            accounts=[a.strip() for a in accounts if a.strip()],
            detect_within_s=detect_within_s,
            created_at=self._now(),
            created_by=actor[:200],
        )
        async with self._sessions() as s, s.begin():
            if await s.get(DrillRecord, drill_id) is not None:
                raise DrillError(
                    "exists", f"a drill {drill_id} exists", f"演练 {drill_id} 已存在", status=409
                )
            s.add(row)
        self._emit("drill-created", drill_id, actor)
        return await self.get(drill_id)

    async def add_case(
        self,
        drill_id: str,
        *,
        technique: str,
        action: str,
        source: str | None = None,
        account: str | None = None,
        actor: str,
    ) -> Case:
        if not _TECHNIQUE.fullmatch(technique):
            raise DrillError(
                "invalid_technique",
                f"{technique[:20]!r} is not an ATT&CK technique id (T1110.003)",
                "ATT&CK 技术编号无效",
            )
        if source is not None:
            try:
                source = str(client_address(source.strip()))
            except ValueError:
                raise DrillError(
                    "invalid_source", f"{source[:60]!r} is not an address", "来源地址无效"
                ) from None
        async with self._sessions() as s, s.begin():
            drill = await s.get(DrillRecord, drill_id)
            if drill is None:
                raise DrillError(
                    "no_drill", f"no drill {drill_id[:64]}", f"演练 {drill_id[:64]} 不存在", status=404
                )
            last = await s.scalar(
                select(DrillCaseRecord.seq)
                .where(DrillCaseRecord.drill_id == drill_id)
                .order_by(DrillCaseRecord.seq.desc())
            )
            row = DrillCaseRecord(
                drill_id=drill_id,
                seq=(last or 0) + 1,
                technique=technique,
                action=action.strip()[:4000] or technique,
                source=source,
                account=account.strip() if account else None,
                executed_at=None,
                override=None,
                override_note=None,
                override_by=None,
            )
            s.add(row)
        self._emit("drill-case-added", drill_id, actor)
        return _case(row)

    async def executed(self, drill_id: str, seq: int, *, at: datetime | None = None, actor: str) -> Case:
        """The red team says the case ran (at ``at``, now by default)."""
        when = at or self._now()
        if when.tzinfo is None:
            raise DrillError("invalid_time", "a time needs a time zone", "时间需要时区")

        def change(row: DrillCaseRecord) -> None:
            row.executed_at = when

        return await self._change(drill_id, seq, change, "drill-case-executed", actor)

    async def override(
        self, drill_id: str, seq: int, outcome: str | None, *, note: str = "", actor: str
    ) -> Case:
        """Set (or with None, clear) an analyst's outcome for the case."""
        if outcome is not None and outcome not in OUTCOMES:
            raise DrillError("invalid_outcome", f"an outcome is one of {', '.join(OUTCOMES)}", "结果取值无效")

        def change(row: DrillCaseRecord) -> None:
            row.override = outcome
            row.override_note = note.strip()[:4000] or None if outcome else None
            row.override_by = actor[:200] if outcome else None

        return await self._change(drill_id, seq, change, "drill-case-overridden", actor)

    async def _change(
        self, drill_id: str, seq: int, change: Callable[[DrillCaseRecord], None], action: str, actor: str
    ) -> Case:
        async with self._sessions() as s, s.begin():
            row = await s.get(DrillCaseRecord, (drill_id, seq))
            if row is None:
                raise DrillError(
                    "no_case",
                    f"no test case {seq} in drill {drill_id[:64]}",
                    f"演练 {drill_id[:64]} 中没有用例 {seq}",
                    status=404,
                )
            change(row)
        self._emit(action, drill_id, actor)
        return _case(row)

    # -- reading ---------------------------------------------------------------------------------

    async def get(self, drill_id: str) -> Drill:
        async with self._sessions() as s:
            row = await s.get(DrillRecord, drill_id)
            if row is None:
                raise DrillError(
                    "no_drill", f"no drill {drill_id[:64]}", f"演练 {drill_id[:64]} 不存在", status=404
                )
            cases = await s.scalars(
                select(DrillCaseRecord)
                .where(DrillCaseRecord.drill_id == drill_id)
                .order_by(DrillCaseRecord.seq)
            )
            return _drill(row, [_case(c) for c in cases])

    async def list(self) -> builtins.list[Drill]:
        async with self._sessions() as s:
            rows = builtins.list(await s.scalars(select(DrillRecord).order_by(DrillRecord.starts_at.desc())))
        return [await self.get(row.id) for row in rows]

    async def tagger(
        self, *, around: datetime | None = None, margin: timedelta = timedelta(days=1)
    ) -> DrillTagger:
        """A tagger for the drills whose window is near ``around`` (now): ingest refreshes it
        every minute or so."""
        moment = around or self._now()
        async with self._sessions() as s:
            rows = await s.scalars(
                select(DrillRecord).where(
                    DrillRecord.ends_at >= moment - margin, DrillRecord.starts_at <= moment + margin
                )
            )
            return DrillTagger([_drill(row, []) for row in rows])

    # -- scoring ---------------------------------------------------------------------------------

    async def score(self, drill_id: str, *, events: EventStore) -> Scorecard:
        """Every case's outcome from the data (events in ``events``, the drill's alerts here)."""
        drill = await self.get(drill_id)
        scores = [await self._score(drill, case, events) for case in drill.cases]
        techniques = sorted({case.technique for case in drill.cases})
        return Scorecard(
            drill=drill,
            cases=tuple(scores),
            overall=_coverage(scores),
            by_technique={t: _coverage([s for s in scores if s.case.technique == t]) for t in techniques},
        )

    async def _score(self, drill: Drill, case: Case, events: EventStore) -> CaseScore:
        if case.executed_at is None:
            return CaseScore(case, None, case.override, None, 0, ())
        start = case.executed_at
        end = start + timedelta(seconds=drill.detect_within_s)
        entity = [f'source.ip:"{case.source}"'] if case.source else []
        if case.account:
            entity.append(f'user.name:"{case.account}"')
        text = " OR ".join(entity) or None
        tagged = {"onegate.drill_id": [drill.id]}
        seen = await events.count(Query(text=text, start=start, end=end, filters=tagged))
        denied = await events.count(
            Query(text=text, start=start, end=end, filters={**tagged, "onegate.decision": ["deny"]})
        )
        alerts = await self._alerts(drill, case, start, end)
        if denied:
            measured = "blocked"
        elif alerts:
            measured = "alerted"
        elif seen:
            measured = "logged"
        else:
            measured = "none"
        ttd = round((alerts[0][1] - start).total_seconds(), 3) if alerts else None
        return CaseScore(
            case, measured, case.override or measured, ttd, seen, tuple(alert_id for alert_id, _ in alerts)
        )

    async def _alerts(
        self, drill: Drill, case: Case, start: datetime, end: datetime
    ) -> builtins.list[tuple[str, datetime]]:
        async with self._sessions() as s:
            rows = await s.scalars(
                select(AlertRecord)
                .where(
                    AlertRecord.drill_id == drill.id,
                    AlertRecord.created_at >= start,
                    AlertRecord.created_at <= end,
                )
                .order_by(AlertRecord.created_at)
            )
            found = []
            for row in rows:
                entity = row.entity or {}
                if case.source or case.account:
                    hit = (case.source and entity.get("source.ip") == case.source) or (
                        case.account and str(entity.get("user.name", "")).lower() == case.account.lower()
                    )
                else:
                    hit = row.technique == case.technique or row.technique.startswith(case.technique + ".")
                if hit:
                    found.append((row.id, utc(row.created_at)))
            return found

    def _emit(self, action: str, drill_id: str, actor: str) -> None:
        if self._events is not None:
            self._events.emit(
                Event(
                    action=action,
                    category=Category.CONFIGURATION,
                    outcome=Outcome.SUCCESS,
                    dataset="onegate.soc",
                    fields={"onegate.drill_id": drill_id, "onegate.actor": actor},
                )
            )


def _case(row: DrillCaseRecord) -> Case:
    return Case(
        seq=row.seq,
        technique=row.technique,
        action=row.action,
        source=row.source,
        account=row.account,
        executed_at=None if row.executed_at is None else utc(row.executed_at),
        override=row.override,
        override_note=row.override_note,
        override_by=row.override_by,
    )


def _drill(row: DrillRecord, cases: Sequence[Case]) -> Drill:
    return Drill(
        id=row.id,
        name=row.name,
        description=row.description,
        starts_at=utc(row.starts_at),
        ends_at=utc(row.ends_at),
        sources=tuple(row.sources),
        accounts=tuple(row.accounts),
        detect_within_s=row.detect_within_s,
        cases=tuple(cases),
    )
