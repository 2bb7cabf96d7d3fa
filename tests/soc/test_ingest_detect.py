"""Ingest with streaming detections: alerts as events arrive, and through a KV outage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.eventstore import Query
from core.kv import RedisKV
from soc.detections.engine import Detector
from soc.detections.rules import auth
from soc.ingest import Ingest
from soc.spool import Spool
from soc.stores.sqlite import SqliteEventStore
from tests.redis_server import PrivateRedis
from tests.soc.detection_support import Sink, login


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def pipeline(
    tmp_path: Path, private_redis: PrivateRedis
) -> AsyncIterator[tuple[Ingest, Sink, SqliteEventStore]]:
    spool = Spool(tmp_path / "spool", max_bytes=16 << 20, segment_bytes=1 << 20)
    await spool.open()
    store = SqliteEventStore(tmp_path / "events.db")
    kv = RedisKV(private_redis.url, prefix="soc-test:", connect_timeout=0.5)
    sink = Sink()
    detector = Detector(auth.rules(), kv=kv, sink=sink)
    ingest = Ingest(spool, store, detector=detector, batch_size=100, max_backoff=0.1)
    writer = asyncio.create_task(ingest.run())
    yield ingest, sink, store
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer
    await kv.close()
    await spool.close()
    await store.close()


async def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_an_alert_is_raised_as_the_events_are_ingested(
    pipeline: tuple[Ingest, Sink, SqliteEventStore],
) -> None:
    ingest, sink, store = pipeline
    for i in range(10):
        await ingest.handle(login("zhangwei", ok=False, ip="203.0.113.7", t=i))
    await _until(lambda: len(sink.signals) == 1)
    assert sink.signals[0][0].rule.id == "onegate.brute-force"
    assert await ingest.drain(10)
    assert (await store.search(Query(text="event.action:user-login", size=50))).total == 10


async def test_a_kv_outage_delays_detection_and_loses_nothing(
    pipeline: tuple[Ingest, Sink, SqliteEventStore], private_redis: PrivateRedis
) -> None:
    ingest, sink, store = pipeline
    for i in range(5):
        await ingest.handle(login("wangfang", ok=False, ip="203.0.113.7", t=i))
    assert await ingest.drain(10)
    private_redis.stop()
    for i in range(5, 10):
        await ingest.handle(login("wangfang", ok=False, ip="203.0.113.7", t=i))  # still accepted
    await _until(lambda: ingest.detection_failures >= 2)
    assert sink.signals == []
    private_redis.start()  # the same data directory: the first five failures are still counted
    await _until(lambda: len(sink.signals) == 1)
    assert await ingest.drain(10)
    [(signal, _)] = sink.signals
    assert signal.rule.id == "onegate.brute-force" and signal.values["failures"] == 10
    found = await store.search(Query(text="user.name:wangfang", size=50, ascending=True))
    assert found.total == 10
    assert len({hit["event.id"] for hit in found.hits}) == 10
