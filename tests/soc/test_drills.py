"""Drills: a red-team exercise through the whole SOC pipeline (ingest with drill tagging, the
built-in detections, alerts, incidents) and its scorecard: five executed test cases, some
detected and some not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from core.events import Event
from core.kv import MemoryKV
from soc.alerts import AlertStore
from soc.detections.engine import Detector
from soc.detections.rules import builtin_rules
from soc.drills.services import DrillError, DrillStore
from soc.incidents.services import IncidentStore
from soc.ingest import Ingest
from soc.spool import Spool
from soc.stores.sqlite import SqliteEventStore
from soc.triage import Triage
from tests.soc.detection_support import T0, access, login

RED = "198.51.100.66"
REAL_ATTACKER = "203.0.113.7"


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


@dataclass
class Pipeline:
    ingest: Ingest
    store: SqliteEventStore
    drills: DrillStore
    incidents: IncidentStore
    alerts: AlertStore
    clock: Clock

    async def feed(self, *events: Event) -> None:
        """Ingest ``events`` and wait until they are detected and stored; the stores' wall clock
        follows the events (alerts raised two seconds after the last one)."""
        self.clock.now = max(e.timestamp.timestamp() for e in events) + 2
        await self.ingest.accept([e.flat() for e in events])
        assert await self.ingest.drain(10)


@pytest.fixture
async def pipeline(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Pipeline]:
    clock = Clock()
    spool = Spool(tmp_path / "spool", max_bytes=16 << 20, segment_bytes=1 << 20)
    await spool.open()
    store = SqliteEventStore(tmp_path / "events.db")
    alerts = AlertStore(engine, clock=clock)
    incidents = IncidentStore(engine, clock=clock)
    drills = DrillStore(engine, clock=clock)
    detector = Detector(builtin_rules(), kv=MemoryKV(), sink=Triage(alerts, incidents))
    ingest = Ingest(spool, store, detector=detector, batch_size=200, max_backoff=0.1)
    writer = asyncio.create_task(ingest.run())
    yield Pipeline(ingest, store, drills, incidents, alerts, clock)
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer
    await spool.close()
    await store.close()


async def test_a_drill_of_five_cases_is_scored_from_the_data(pipeline: Pipeline) -> None:
    drills = pipeline.drills
    await drills.create(
        "2026-q4-red-team",
        "2026 第四季度攻防演练",
        starts_at=T0,
        ends_at=T0 + timedelta(hours=4),
        sources=["198.51.100.64/29"],
        accounts=["redteam01"],
        actor="lina",
    )
    plan = [
        ("T1110.003", "spray ten accounts from the red team's address", RED, None),
        ("T1110.001", "brute force the red team's own account", None, "redteam01"),
        ("T1595.003", "probe forbidden applications", RED, None),
        ("T1078", "sign in with a valid account from a new address", None, "redteam01"),
        ("T1213", "download the HR archive", None, "redteam01"),
        ("T1098.007", "add the account to an admin group (not run)", None, "redteam01"),
    ]
    for technique, action, source, account in plan:
        await drills.add_case(
            "2026-q4-red-team",
            technique=technique,
            action=action,
            source=source,
            account=account,
            actor="red",
        )
    pipeline.ingest.tag = await drills.tagger(around=T0)

    # 1: the spray is alerted.
    await drills.executed("2026-q4-red-team", 1, at=T0 + timedelta(seconds=60), actor="red")
    await pipeline.feed(*(login(f"staff{i:02d}", ok=False, ip=RED, t=60 + i) for i in range(10)))
    # Meanwhile a real attacker sprays too: a real alert, a real incident.
    await pipeline.feed(*(login(f"clerk{i:02d}", ok=False, ip=REAL_ATTACKER, t=100 + i) for i in range(10)))
    # 2: brute force on the red team's account from an address outside its networks (tagged by account).
    await drills.executed("2026-q4-red-team", 2, at=T0 + timedelta(seconds=600), actor="red")
    await pipeline.feed(*(login("redteam01", ok=False, ip="198.51.100.90", t=600 + i) for i in range(10)))
    # 3: five refused requests: blocked by the gateway (no alert: the spike needs twenty).
    await drills.executed("2026-q4-red-team", 3, at=T0 + timedelta(seconds=1200), actor="red")
    await pipeline.feed(*(access(None, ip=RED, app="permits", decision="deny", t=1200 + i) for i in range(5)))
    # 4: a quiet, valid sign-in: logged, nothing raised.
    await drills.executed("2026-q4-red-team", 4, at=T0 + timedelta(seconds=1800), actor="red")
    await pipeline.feed(login("redteam01", ok=True, ip="198.51.100.91", t=1800))
    # 5: executed, but nothing reached us.
    await drills.executed("2026-q4-red-team", 5, at=T0 + timedelta(seconds=2400), actor="red")

    card = await drills.score("2026-q4-red-team", events=pipeline.store)
    assert [s.outcome for s in card.cases] == ["alerted", "alerted", "blocked", "logged", "none", None]
    assert [s.time_to_detect_s for s in card.cases[:2]] == [11.0, 11.0]
    assert card.cases[0].events == 10 and card.cases[2].events == 5
    overall = card.overall
    assert (overall.cases, overall.executed) == (6, 5)
    assert overall.outcomes == {"blocked": 1, "alerted": 2, "logged": 1, "none": 1}
    assert overall.share_alerted_or_better == 0.6
    assert overall.mean_time_to_detect_s == 11.0
    assert card.by_technique["T1110.003"].share_alerted_or_better == 1.0
    assert card.by_technique["T1213"].outcomes["none"] == 1
    assert card.by_technique["T1098.007"].executed == 0

    # The drill's alerts and incidents stay apart from the real ones.
    real = await pipeline.incidents.list()
    assert len(real) == 1 and f"source.ip={REAL_ATTACKER}" in real[0].entities
    drill_incidents = await pipeline.incidents.list(drill_id="2026-q4-red-team")
    assert drill_incidents and all(i.drill_id == "2026-q4-red-team" for i in drill_incidents)
    tagged = await pipeline.alerts.list(drill_id="2026-q4-red-team")
    assert {a.rule_id for a in tagged.alerts} >= {"onegate.password-spraying", "onegate.brute-force"}

    # An analyst saw case 4 in the logs in time and says so: the coverage follows.
    await drills.override(
        "2026-q4-red-team", 4, "alerted", note="analyst spotted it in the timeline", actor="lina"
    )
    card = await drills.score("2026-q4-red-team", events=pipeline.store)
    assert card.cases[3].measured == "logged" and card.cases[3].outcome == "alerted"
    assert card.overall.share_alerted_or_better == 0.8
    assert card.as_dict()["cases"][3]["override_note"] == "analyst spotted it in the timeline"


async def test_drill_input_is_checked(pipeline: Pipeline) -> None:
    drills = pipeline.drills
    window = {"starts_at": T0, "ends_at": T0 + timedelta(hours=1)}
    with pytest.raises(DrillError, match="drill id"):
        await drills.create("Bad Id", "x", **window, sources=[RED], actor="a")
    with pytest.raises(DrillError, match="red team"):
        await drills.create("d1", "x", **window, actor="a")
    with pytest.raises(DrillError, match="not an address"):
        await drills.create("d1", "x", **window, sources=["nowhere"], actor="a")
    with pytest.raises(DrillError, match="window") as refused:
        await drills.create("d1", "x", starts_at=T0, ends_at=T0, sources=[RED], actor="a")
    assert refused.value.zh
    await drills.create("d1", "x", **window, sources=[RED], actor="a")
    with pytest.raises(DrillError, match="exists"):
        await drills.create("d1", "x", **window, sources=[RED], actor="a")
    with pytest.raises(DrillError, match="ATT&CK"):
        await drills.add_case("d1", technique="brute force", action="x", actor="a")
    with pytest.raises(DrillError, match="no test case"):
        await drills.executed("d1", 9, actor="a")
    with pytest.raises(DrillError, match="outcome"):
        await drills.add_case("d1", technique="T1110", action="x", actor="a")
        await drills.override("d1", 1, "maybe", actor="a")


async def test_the_tagger_follows_the_window_sources_and_accounts(pipeline: Pipeline) -> None:
    await pipeline.drills.create(
        "d2",
        "x",
        starts_at=T0,
        ends_at=T0 + timedelta(hours=1),
        sources=["198.51.100.64/29"],
        accounts=["RedTeam01"],
        actor="a",
    )
    tag = await pipeline.drills.tagger(around=T0)
    assert tag(login("someone", ok=False, ip="198.51.100.70", t=10).flat()) == "d2"
    # as a dual-stack socket reports an IPv4 client: the same red-team address
    assert tag(login("someone", ok=False, ip="::ffff:198.51.100.70", t=10).flat()) == "d2"
    assert tag(login("someone", ok=False, ip="::ffff:198.51.100.72", t=10).flat()) is None
    assert tag(login("redteam01", ok=False, ip="10.0.0.1", t=10).flat()) == "d2"
    assert tag(login("someone", ok=False, ip="198.51.100.72", t=10).flat()) is None  # outside the /29
    assert tag(login("redteam01", ok=False, ip="10.0.0.1", t=3700).flat()) is None  # after the window
