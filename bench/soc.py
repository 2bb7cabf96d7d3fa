"""SOC speed: ingest throughput into each event store, streaming detection latency and one
scheduled Sigma rule over a day of events.

Ingest: the path measured is the product's: ``Ingest.accept`` (normalise, append to the spool
with fsync, acknowledge) in batches of ``BATCH`` events from a source task, while the writer task
reads the spool and writes to the store in batches of up to ``soc.ingest_batch`` (its default,
5,000), committing after each write. The figure is events acknowledged *and* stored (spool
drained) per second of wall time, over ``EVENTS`` events shaped like a gateway access event
(about 600 bytes, ids made as the gateway makes them). One event loop (uvloop, as ``onegate
serve`` runs the SOC) on one core; the SQLite store's own thread and the spool's threads run
beside it.

* ``sqlite_ingest_eps``: into a new SQLite store file;
* ``sqlite_ingest_detect_eps``: the same with streaming detections in the writer (all built-in
  rules, their windows in a :class:`~core.kv.MemoryKV`; access events raise no alert);
* ``opensearch_ingest_eps``: into OpenSearch (osmem-server, an in-memory server started here,
  ``OPENSEARCH_EVENTS`` events; null when the package is not installed).

Detection:

* ``detect_p50_ms`` / ``detect_p99_ms``: from the emit (on an :class:`~core.events.EventBus`
  whose batch subscriber is ``Ingest.handle_batch``) of the sign-in failure that completes a
  brute force to the moment its alert and incident are committed to the SQL database (SQLite,
  migrated as the product does it), over ``REPETITIONS`` attacks on different accounts while
  access events flow in the background at ``BACKGROUND_EPS``;
* ``scheduled_rule_s_1m``: one run of a Sigma ``event_count`` correlation (ten failed sign-ins
  of one account within five minutes) over a day of ``DAY_EVENTS`` events in a SQLite store
  (access events and sign-ins, built here in a temporary directory that the run removes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.events import Category, Event, EventBus, Outcome, new_event_id
from core.eventstore import EventStore
from core.kv import MemoryKV
from core.settings import SocSettings
from soc.detections.model import Signal
from soc.ingest import Ingest
from soc.spool import Spool

EVENTS = int(os.environ.get("BENCH_SOC_EVENTS", "100000"))
OPENSEARCH_EVENTS = int(os.environ.get("BENCH_SOC_OPENSEARCH_EVENTS", "20000"))
BATCH = 500
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

REPETITIONS = int(os.environ.get("BENCH_SOC_REPETITIONS", "200"))
BACKGROUND_EPS = 3000
ATTACK_EVERY = 0.1  # seconds between two brute forces (each raises an alert: ~25 ms of SQL)
BRUTE_FORCE = 10  # failures that make one (the built-in rule's threshold)

DAY_EVENTS = int(os.environ.get("BENCH_SOC_DAY_EVENTS", "1000000"))
DAY = datetime(2026, 11, 3, tzinfo=UTC)
SIGMA_RULES = """\
title: Failed Sign-In
id: 9d3c1a7e-1111-4e5b-8c2d-3e4f5a6b7c03
name: onegate_failed_login
status: test
logsource:
    category: authentication
    product: onegate
detection:
    selection:
        event.action: user-login
        event.outcome: failure
    condition: selection
level: low
---
title: Brute Force Against One Account
id: 2c1f0e9d-2222-4a3b-9c8d-7e6f5a4b3c04
status: test
correlation:
    type: event_count
    rules:
        - onegate_failed_login
    group-by:
        - user.name
    timespan: 5m
    condition:
        gte: 10
level: high
x-onegate-lookback: 86400
"""


def _event(n: int) -> dict[str, Any]:
    return {
        "@timestamp": (T0 + timedelta(milliseconds=n * 7))
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z"),
        "event.id": new_event_id(),
        "event.kind": "event",
        "event.category": ["web"],
        "event.action": "access",
        "event.outcome": "success" if n % 9 else "failure",
        "event.dataset": "onegate.gateway",
        "user.name": f"user{n % 997}",  # each user on one session from one address
        "session.id": f"s{n % 997:08d}",
        "source.ip": f"10.{n % 997 % 7}.{n % 997 // 7}.{n % 997 % 13 + 1}",
        "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/130.0",
        "url.path": f"/hr/payroll/{n % 300}",
        "http.request.method": "GET",
        "http.response.status_code": 200 if n % 9 else 403,
        "http.response.bytes": 5000 + n % 4096,
        "onegate.app": "hr",
        "onegate.decision": "allow" if n % 9 else "deny",
        "onegate.rule_ids": ["hr-staff"],
        "event.duration": 1_200_000 + n % 50_000,
    }


async def _through(
    store: EventStore, spool_dir: Path, events: list[dict[str, Any]], *, detector: Any = None
) -> float:
    async with Spool(spool_dir, max_bytes=1 << 30) as spool:
        ingest = Ingest(spool, store, batch_size=SocSettings().ingest_batch, detector=detector)
        writer = asyncio.create_task(ingest.run())
        started = time.perf_counter()
        for i in range(0, len(events), BATCH):
            await ingest.accept(events[i : i + BATCH])
        if not await ingest.drain(600):
            raise RuntimeError("the spool did not drain")
        elapsed = time.perf_counter() - started
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    # A write the store finished after the client gave up is found again as duplicates.
    if ingest.written + ingest.duplicates != len(events) or ingest.refused:
        raise RuntimeError(f"{ingest.written} of {len(events)} events stored")
    return len(events) / elapsed


@contextlib.asynccontextmanager
async def _opensearch(work: Path) -> AsyncIterator[EventStore | None]:
    """The contract suite's OpenSearch store on an osmem-server started here (its indices
    removed afterwards), or None where the test helpers are not available."""
    try:
        from tests.soc import search_servers
        from tests.soc.backends.opensearch import open_store
    except ImportError:
        yield None
        return
    try:
        async with open_store(work) as store:
            yield store
    finally:
        search_servers.stop()


# -- streaming detection --------------------------------------------------------------------------


class _Stopwatch:
    """The sink between the detector and triage: notes when a brute force's alert is stored."""

    def __init__(self, triage: Any, expected: int = 0) -> None:
        self._triage = triage
        self.stored: dict[str, float] = {}  # account -> when its alert was committed
        self.expected = expected
        self.all_stored = asyncio.Event()

    async def raise_signal(self, signal: Signal, *, drill_id: str | None = None) -> Any:
        alert = await self._triage.raise_signal(signal, drill_id=drill_id)
        if signal.rule.id == "onegate.brute-force":
            self.stored.setdefault(str(signal.entity.get("user.name")), time.perf_counter())
            if len(self.stored) >= self.expected:
                self.all_stored.set()
        return alert


def _sign_in_failure(user: str, ip: str, at: datetime) -> Event:
    from idp.events import auth_event

    event = auth_event(
        "user-login",
        success=False,
        reason="bad_password",
        username=user,
        source_ip=ip,
        user_agent="Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/130.0 Safari/537.36",
    )
    return dataclasses.replace(event, timestamp=at)


def _access(n: int) -> Event:
    fields = {k: v for k, v in _event(n).items() if not k.startswith(("@", "event."))}
    outcome = Outcome.SUCCESS if n % 9 else Outcome.FAILURE
    return Event("access", Category.WEB, outcome, dataset="onegate.gateway", fields=fields)


async def _background(bus: EventBus, stop: asyncio.Event) -> float:
    """Access events at about ``BACKGROUND_EPS`` until ``stop``; the rate reached."""
    sent = 0
    started = time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - started) * BACKGROUND_EPS)
        while sent < due:
            bus.emit(_access(sent))
            sent += 1
        await asyncio.sleep(0.005)
    return sent / (time.perf_counter() - started)


async def _detection(work: Path) -> dict[str, Any]:
    import onegate.runtime
    from core.db import create_engine, migrate
    from soc.alerts import AlertStore
    from soc.detections.engine import Detector
    from soc.detections.rules import builtin_rules
    from soc.incidents.services import IncidentStore
    from soc.stores.sqlite import SqliteEventStore
    from soc.triage import Triage

    engine = create_engine(f"sqlite+aiosqlite:///{work / 'onegate.db'}")
    await migrate(engine, onegate.runtime.MIGRATIONS)
    store = SqliteEventStore(work / "events-detect.db")
    kv = MemoryKV()
    watch = _Stopwatch(Triage(AlertStore(engine), IncidentStore(engine)), REPETITIONS)
    bus = EventBus()
    try:
        async with Spool(work / "spool-detect", max_bytes=1 << 30) as spool:
            detector = Detector(builtin_rules(), kv=kv, sink=watch)
            ingest = Ingest(spool, store, detector=detector)
            bus.subscribe_batch("soc-ingest", ingest.handle_batch)
            await bus.start()
            writer = asyncio.create_task(ingest.run())
            stop = asyncio.Event()
            background = asyncio.create_task(_background(bus, stop))
            emitted: dict[str, float] = {}
            try:
                await asyncio.sleep(1.0)  # the background traffic settles
                # Each attack happens two hours of event time after the one before: otherwise
                # hundreds of accounts failing within minutes are a password spray (and raise
                # spraying alerts too), not a series of brute forces.
                first = datetime.now(UTC) - timedelta(hours=2 * REPETITIONS + 1)
                for r in range(REPETITIONS):
                    user, ip = f"target{r}", f"198.51.{r // 250}.{r % 250 + 1}"
                    at = first + timedelta(hours=2 * r)
                    for i in range(BRUTE_FORCE - 1):
                        bus.emit(_sign_in_failure(user, ip, at + timedelta(seconds=i)))
                    await asyncio.sleep(ATTACK_EVERY / 2)
                    emitted[user] = time.perf_counter()
                    # The failure that completes the brute force.
                    bus.emit(_sign_in_failure(user, ip, at + timedelta(seconds=BRUTE_FORCE)))
                    await asyncio.sleep(ATTACK_EVERY / 2)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.all_stored.wait(), 60)
            finally:
                stop.set()
                background_eps = await background
                await bus.stop()
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
    finally:
        await store.close()
        await kv.close()
        await engine.dispose()
    if len(watch.stored) < REPETITIONS:
        raise RuntimeError(
            f"{len(watch.stored)} of {REPETITIONS} brute forces raised an alert "
            f"(detection failures {ingest.detection_failures}, rule errors {detector.errors}, "
            f"signals {detector.signals}, stored {ingest.written}, backlog {spool.backlog_documents})"
        )
    latencies = sorted((watch.stored[user] - at) * 1000 for user, at in emitted.items())
    return {
        "detect_p50_ms": round(statistics.median(latencies), 1),
        "detect_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        "detect_repetitions": REPETITIONS,
        "detect_background_eps": round(background_eps),
    }


# -- one scheduled rule over a day -----------------------------------------------------------------


def _day(n: int, total: int) -> dict[str, Any]:
    """Event ``n`` of ``total`` spread evenly over :data:`DAY`: nine in ten are access events, the
    rest sign-ins, one in twenty of those failing; in ten stretches of 2,000 events (of a
    million: about three minutes) every sign-in is a failure of one attacked account."""
    stamp = (DAY + timedelta(microseconds=n * 86_400_000_000 // total)).isoformat(timespec="microseconds")
    document: dict[str, Any] = {"@timestamp": stamp.replace("+00:00", "Z"), "event.id": new_event_id()}
    if n % 10:
        document.update(_event(n))
        document["@timestamp"] = stamp.replace("+00:00", "Z")
        return document
    attacked = n // 2000 % 50 == 0  # ten stretches of about three minutes a day
    failed = attacked or n % 200 == 0
    user = f"target{n // 100_000}" if attacked else f"user{n % 997}"
    if failed:
        document["onegate.reason"] = "bad_password"
    document.update(
        {
            "event.kind": "event",
            "event.category": ["authentication"],
            "event.action": "user-login",
            "event.outcome": "failure" if failed else "success",
            "event.dataset": "onegate.idp",
            "user.name": user,
            "source.ip": f"10.{n % 7}.{n % 251}.{n % 253}",
            "user_agent.original": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/130.0",
        }
    )
    return document


def _day_batches(total: int, size: int) -> Iterator[list[dict[str, Any]]]:
    for first in range(0, total, size):
        yield [_day(n, total) for n in range(first, min(total, first + size))]


async def _scheduled(work: Path) -> dict[str, Any]:
    from soc.sigma import ScheduledRunner, load_folder
    from soc.stores.sqlite import SqliteEventStore

    folder = work / "sigma"
    folder.mkdir()
    (folder / "brute-force.yml").write_text(SIGMA_RULES, encoding="utf-8")
    rules, errors = load_folder(folder)
    if errors:
        raise RuntimeError("; ".join(str(e) for e in errors))
    [rule] = [r for r in rules if r.correlation is not None]
    store = SqliteEventStore(work / "day.db")
    signals: list[Signal] = []

    class Collect:
        async def raise_signal(self, signal: Signal, *, drill_id: str | None = None) -> None:
            signals.append(signal)

    try:
        built = time.perf_counter()
        for batch in _day_batches(DAY_EVENTS, 10_000):
            await store.write(batch)
        build_s = time.perf_counter() - built
        end = (DAY + timedelta(days=1)).timestamp()
        runner = ScheduledRunner([rule], store, Collect(), clock=lambda: end, kv=MemoryKV())
        started = time.perf_counter()
        await runner.run_rule(rule)
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    return {
        "scheduled_rule_s_1m": round(elapsed, 2),
        "scheduled_rule_events": DAY_EVENTS,
        "scheduled_rule_signals": len(signals),
        "day_build_s": round(build_s, 1),
    }


async def _run() -> dict[str, Any]:
    from soc.detections.engine import Detector
    from soc.detections.rules import builtin_rules
    from soc.stores.sqlite import SqliteEventStore

    work = Path(tempfile.mkdtemp(prefix="onegate-bench-soc-"))
    try:
        events = [_event(n) for n in range(EVENTS)]
        store = SqliteEventStore(work / "events.db")
        try:
            sqlite_eps = await _through(store, work / "spool-sqlite", events)
        finally:
            await store.close()
        events = [_event(n) for n in range(EVENTS)]  # new event ids
        store = SqliteEventStore(work / "events-rules.db")
        kv = MemoryKV()
        try:
            detector = Detector(builtin_rules(), kv=kv, sink=_Stopwatch(None))
            detect_eps = await _through(store, work / "spool-rules", events, detector=detector)
            if detector.signals:
                raise RuntimeError(f"access events raised {detector.signals} signals")
        finally:
            await store.close()
            await kv.close()
        opensearch_eps = None
        async with _opensearch(work) as search:
            if search is not None:
                opensearch_eps = await _through(
                    search, work / "spool-opensearch", [_event(n) for n in range(OPENSEARCH_EVENTS)]
                )
        detection = await _detection(work)
        scheduled = await _scheduled(work)
        return {
            "sqlite_ingest_eps": round(sqlite_eps),
            "sqlite_ingest_detect_eps": round(detect_eps),
            "opensearch_ingest_eps": round(opensearch_eps) if opensearch_eps else None,
            **detection,
            **scheduled,
            "events": EVENTS,
            "opensearch_events": OPENSEARCH_EVENTS,
            "batch": BATCH,
            "cpus": os.cpu_count(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run() -> dict[str, Any]:
    import uvloop  # the event loop `onegate serve` runs the SOC on (onegate.command.run)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run())
