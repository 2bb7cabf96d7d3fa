"""The SOC role: ingest, detections, alerts, incidents, response and drills, assembled.

:func:`build_soc` opens the event store the settings name (the embedded SQLite store in the data
dir by default) and wires the pipeline: the event bus of this process (``serve --role all``: the
gateway's and IdP's events) -> :class:`~soc.ingest.Ingest` (the durable spool under
``<data dir>/soc/spool``) -> streaming detections -> :class:`~soc.triage.Triage` (alerts,
incidents, automatic responses) and the event store. Background tasks: the ingest writer, the
drill tagger's refresh, the Sigma rules' schedule, retention and triage repair (every minute).
Response actions are carried out through :mod:`onegate.soc_responders`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.eventstore import EventStore
from core.logging import get_logger
from core.settings import Settings
from onegate.runtime import Runtime
from onegate.soc_responders import responders
from soc.alerts import AlertStore
from soc.detections.engine import Detector
from soc.detections.places import Places
from soc.detections.rules import builtin_rules
from soc.drills.services import DrillStore
from soc.incidents.services import IncidentStore
from soc.ingest import Ingest
from soc.response.services import ResponseService
from soc.spool import Spool
from soc.triage import Triage

__all__ = ["Soc", "SocCollector", "build_soc", "open_event_store"]

_log = get_logger("onegate.soc")
TAGGER_REFRESH_SECONDS = 30.0
SIGMA_TICK_SECONDS = 15.0
RETENTION_EVERY_SECONDS = 3600.0
REPAIR_EVERY_SECONDS = 60.0


def open_event_store(settings: Settings) -> EventStore:
    """The event store ``soc.store`` names (not yet connected)."""
    soc = settings.soc
    if soc.store == "sqlite":
        from soc.stores.sqlite import SqliteEventStore

        folder = Path(settings.data_dir) / "soc"
        folder.mkdir(parents=True, exist_ok=True)
        return SqliteEventStore(folder / "events.db")
    if not soc.store_url:
        raise ValueError(f"soc.store is {soc.store}: set soc.store_url")
    if soc.store == "opensearch":
        from soc.stores.search import OpenSearchEventStore

        return OpenSearchEventStore(soc.store_url, prefix=soc.index_prefix)
    from soc.stores.search import ElasticsearchEventStore

    return ElasticsearchEventStore(soc.store_url, prefix=soc.index_prefix)


@dataclass
class Soc:
    """The SOC's services in one process, and the tasks that keep them going."""

    runtime: Runtime
    store: EventStore
    spool: Spool
    ingest: Ingest
    detector: Detector
    alerts: AlertStore
    incidents: IncidentStore
    responses: ResponseService
    drills: DrillStore
    triage: Triage
    sigma: list[Any] = field(default_factory=list)
    sigma_errors: list[Any] = field(default_factory=list)
    scheduler: Any = None
    stream: Any = None  # soc.sources.streams.StreamSource with soc.transport redis
    syslog: Any = None  # soc.sources.syslog.SyslogServer with soc.syslog_port
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def bulk_app(self) -> Any:
        """The HTTP bulk ingest endpoint (NDJSON, a key per source: soc.ingest_keys)."""
        from core.net import TrustedProxies
        from soc.sources.http_bulk import BulkIngest, SourceKeys

        settings = self.runtime.settings
        return BulkIngest(
            self.ingest,
            authenticate=SourceKeys(settings.soc.ingest_keys),
            events=self.runtime.bus,
            trusted_proxies=TrustedProxies(settings.server.trusted_proxies),
        )

    async def start(self) -> None:
        """Open the spool, take this process's events (or the stream's) and start the background
        tasks and receivers."""
        await self.spool.open()
        if self.stream is None:
            self.runtime.bus.subscribe_batch("soc-ingest", self.ingest.handle_batch)
        await self.refresh_drills()
        if self.syslog is not None:
            await self.syslog.start()
        self._tasks = [
            asyncio.create_task(self.ingest.run(), name="soc:ingest"),
            asyncio.create_task(self._every(TAGGER_REFRESH_SECONDS, self.refresh_drills), name="soc:drills"),
            asyncio.create_task(
                self._every(RETENTION_EVERY_SECONDS, self.apply_retention), name="soc:retention"
            ),
            asyncio.create_task(self._every(REPAIR_EVERY_SECONDS, self.repair_triage), name="soc:repair"),
        ]
        if self.stream is not None:
            self._tasks.append(asyncio.create_task(self.stream.run(), name="soc:stream"))
        if self.scheduler is not None and self.scheduler.rules:
            self._tasks.append(
                asyncio.create_task(self._every(SIGMA_TICK_SECONDS, self._run_sigma), name="soc:sigma")
            )

    async def close(self) -> None:
        """Stop the tasks, after the ingest writer has written what the spool holds (briefly)."""
        await self.runtime.bus.drain()  # the events emitted so far are spooled
        if self.syslog is not None:
            await self.syslog.close()
        await self.ingest.drain(5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.stream is not None:
            await self.stream.close()
        await self.spool.close()
        await self.store.close()

    async def refresh_drills(self) -> None:
        self.ingest.tag = await self.drills.tagger()

    async def apply_retention(self) -> None:
        cutoff = datetime.now(UTC) - timedelta(days=self.runtime.settings.soc.retention_days)
        removed = await self.store.delete_before(cutoff)
        if removed:
            _log.info("old events removed", removed=removed, before=cutoff.isoformat())

    async def repair_triage(self) -> None:
        """Finish triage that a crash or an outage left half done (soc.triage.Triage.repair)."""
        await self.triage.repair()

    async def _run_sigma(self) -> None:
        await self.scheduler.run_due()

    @staticmethod
    async def _every(seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` every ``seconds``; a failure is logged and the next round tries again."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a dependency away for a while: try again next round
                _log.warning(
                    "soc background task failed", task=getattr(work, "__name__", "?"), error=str(e)[:300]
                )


class SocCollector:
    """The SOC's figures for ``/metrics``, read when Prometheus scrapes: the spool's backlog and
    fill (the "spool filling" alert fires on ``onegate_soc_spool_fill_ratio``), what ingest
    wrote, refused and failed on, whether the store is down, and the signals raised."""

    def __init__(self, soc: Soc) -> None:
        self._soc = soc

    def describe(self) -> list[Any]:
        return []  # collected on scrape only (values change between scrapes)

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        soc = self._soc
        spool, ingest = soc.spool, soc.ingest

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"onegate_soc_{name}", text, value=value)

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"onegate_soc_{name}", text, value=value)

        yield gauge(
            "spool_backlog_documents", "Documents spooled and not yet in the store.", spool.backlog_documents
        )
        yield gauge("spool_backlog_bytes", "Bytes of the spool's backlog.", spool.backlog_bytes)
        yield gauge("spool_fill_ratio", "Share of soc.spool_max_bytes in use (0-1).", spool.fill_ratio)
        yield gauge(
            "store_up",
            "1 while the event store takes writes, 0 while it is down.",
            0 if ingest.store_down_since else 1,
        )
        yield counter("ingest_written", "Documents written to the event store.", ingest.written)
        yield counter("ingest_duplicates", "Documents the store already had (replays).", ingest.duplicates)
        yield counter("ingest_refused", "Documents the store refused (set aside).", ingest.refused)
        yield counter(
            "store_failures", "Writes that failed because the store was unavailable.", ingest.store_failures
        )
        yield counter(
            "detection_failures",
            "Batches whose detections had to wait (KV or alert store down).",
            ingest.detection_failures,
        )
        yield counter(
            "detection_rule_errors", "A rule's failures on a document (logged, skipped).", soc.detector.errors
        )
        yield counter("signals", "Signals raised by the streaming detections.", soc.detector.signals)


def build_soc(runtime: Runtime, *, clock: Callable[[], float] = time.time) -> Soc:
    """Every SOC service of this process, from its settings (nothing started yet)."""
    settings = runtime.settings
    soc = settings.soc
    store = open_event_store(settings)
    root = Path(settings.data_dir) / "soc"
    spool = Spool(root / "spool", max_bytes=soc.spool_max_bytes)
    events = runtime.bus
    alerts = AlertStore(runtime.engine, events=events, clock=clock)
    incidents = IncidentStore(runtime.engine, events=events, clock=clock, window=soc.incident_window)
    responses = ResponseService(
        runtime.engine,
        responders(runtime),
        events=events,
        clock=clock,
        on_incident=lambda incident_id, actor, note: incidents.responded(incident_id, actor=actor, note=note),
    )
    triage = Triage(alerts, incidents, responses=responses, auto=soc.auto_response, clock=clock)
    rules = builtin_rules()
    enabled = [rule.info.id for rule in rules if rule.info.id not in set(soc.rules_disabled)]
    unknown = set(soc.rules_disabled) - {rule.info.id for rule in rules}
    if unknown:
        raise ValueError(f"soc.rules_disabled names unknown rules: {', '.join(sorted(unknown))}")
    detector = Detector(
        rules,
        kv=runtime.kv,
        sink=triage,
        places=Places.from_config(place.model_dump() for place in soc.places),
        params=soc.rule_params,
        enabled=enabled,
    )
    ingest = Ingest(spool, store, events=events, detector=detector, batch_size=soc.ingest_batch)
    drills = DrillStore(runtime.engine, events=events, clock=clock)
    sigma: list[Any] = []
    errors: list[Any] = []
    scheduler = None
    if soc.sigma_dir is not None:
        from soc.sigma.rules import load_folder
        from soc.sigma.scheduler import ScheduledRunner

        sigma, errors = load_folder(soc.sigma_dir)
        for error in errors:
            _log.error("sigma rule not loaded", error=str(error)[:500])
        scheduler = ScheduledRunner(sigma, store, triage, clock, kv=runtime.kv)
    stream = None
    if soc.transport == "redis":
        if settings.kv.backend != "redis":
            raise ValueError("soc.transport redis needs kv.backend redis (the stream lives there)")
        import socket

        from soc.sources.streams import StreamSource

        stream = StreamSource(
            settings.kv.url,
            ingest,
            prefix=settings.kv.prefix,
            consumer=soc.consumer or socket.gethostname(),
            events=events,
        )
    syslog = None
    if soc.syslog_port is not None:
        from soc.sources.syslog import SyslogServer

        syslog = SyslogServer(
            ingest,
            host=soc.syslog_host,
            port=soc.syslog_port,
            allowed=soc.syslog_allowed or None,
            events=events,
        )
    return Soc(
        runtime=runtime,
        store=store,
        spool=spool,
        ingest=ingest,
        detector=detector,
        alerts=alerts,
        incidents=incidents,
        responses=responses,
        drills=drills,
        triage=triage,
        sigma=sigma,
        sigma_errors=errors,
        scheduler=scheduler,
        stream=stream,
        syslog=syslog,
    )
