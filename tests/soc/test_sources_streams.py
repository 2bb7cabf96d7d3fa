"""soc.sources.streams: events published on a real Redis stream reach the SQLite store once each,
through a consumer killed before its acknowledgement, a dead consumer and a killed producer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.events import Category, Event, EventBus, Outcome
from core.eventstream import StreamPublisher
from soc.sources.streams import StreamSource
from soc.spool import SpoolFull
from tests.soc.sources_support import Pipeline, Recording, eventually

REPO = Path(__file__).resolve().parents[2]


def access(i: int) -> Event:
    return Event(
        action="access", category=Category.WEB, outcome=Outcome.SUCCESS, fields={"user.name": f"u{i}"}
    )


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    running = await Pipeline(tmp_path).start()
    yield running
    await running.stop()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


def source(client: aioredis.Redis, prefix: str, ingest: Any, **options: Any) -> StreamSource:
    options.setdefault("block", 0.1)
    return StreamSource(client, ingest, prefix=prefix, **options)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_published_events_are_stored_once_in_order(
    pipeline: Pipeline, client: aioredis.Redis, redis_prefix: str
) -> None:
    publisher = StreamPublisher(client, prefix=redis_prefix)
    bus = EventBus()
    bus.subscribe_batch("stream", publisher.publish, max_batch=64)
    await bus.start()
    recording = Recording(pipeline.ingest)
    consumer = source(client, redis_prefix, recording, consumer="soc-1")
    task = asyncio.create_task(consumer.run())
    try:
        sent = [access(i) for i in range(600)]
        for i, e in enumerate(sent):
            bus.emit(e)
            if i % 100 == 0:
                await asyncio.sleep(0)  # let the publisher and the consumer run alongside
        await bus.drain()
        stored = await pipeline.wait_stored(600)
        await eventually(lambda: consumer.acknowledged == 600, what="every entry acknowledged")
    finally:
        await stop(task)
        await bus.stop()
    assert recording.accepted == [e.id for e in sent]  # in publication order
    assert stored == [e.id for e in sorted(sent, key=lambda e: (e.timestamp, e.id))]
    assert pipeline.ingest.duplicates == 0 and publisher.published == 600
    await consumer.refresh()
    assert consumer.pending == 0 and consumer.lag == 0
    # The stream layout custom producers follow: one field, the flat ECS JSON.
    first = (await client.xrange(publisher.key, count=1))[0][1]
    assert list(first) == [b"event"] and json.loads(first[b"event"]) == sent[0].flat()


async def test_a_consumer_killed_before_its_acknowledgement_replays_once(
    pipeline: Pipeline, client: aioredis.Redis, redis_prefix: str
) -> None:
    publisher = StreamPublisher(client, prefix=redis_prefix)
    sent = [access(i) for i in range(50)]
    await publisher.publish(sent)
    recording = Recording(pipeline.ingest)
    recording.hold_after = True  # accepted (on disk), then "killed" before XACK
    first = source(client, redis_prefix, recording, consumer="soc-1")
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(recording.held.wait(), 10)
    await stop(task)
    assert first.acknowledged == 0
    await first.refresh()
    assert first.pending == 50

    again = source(client, redis_prefix, pipeline.ingest, consumer="soc-1")  # the same consumer, restarted
    task = asyncio.create_task(again.run())
    try:
        stored = await pipeline.wait_stored(50)
        await eventually(lambda: again.acknowledged == 50, what="the replay acknowledged")
    finally:
        await stop(task)
    assert again.replayed == 50
    assert sorted(stored) == sorted(e.id for e in sent) and len(stored) == 50  # once each
    assert pipeline.ingest.duplicates == 50  # the replay was spooled again and stored nothing twice
    await again.refresh()
    assert again.pending == 0


async def test_a_live_consumer_claims_the_entries_of_a_dead_one(
    pipeline: Pipeline, client: aioredis.Redis, redis_prefix: str
) -> None:
    publisher = StreamPublisher(client, prefix=redis_prefix)
    sent = [access(i) for i in range(120)]
    await publisher.publish(sent)
    dead = Recording(pipeline.ingest)
    dead.hold_before = True  # read, never accepted: the process died
    task = asyncio.create_task(source(client, redis_prefix, dead, consumer="soc-dead", count=200).run())
    await asyncio.wait_for(dead.held.wait(), 10)
    await stop(task)

    live = source(client, redis_prefix, pipeline.ingest, consumer="soc-live", claim_idle=0.2, claim_every=0.1)
    task = asyncio.create_task(live.run())
    try:
        stored = await pipeline.wait_stored(120)
        await eventually(lambda: live.acknowledged == 120, what="the claimed entries acknowledged")
    finally:
        await stop(task)
    assert live.claimed == 120 and live.replayed == 0
    assert sorted(stored) == sorted(e.id for e in sent)
    await live.refresh()
    assert live.pending == 0


async def test_refused_entries_are_set_aside_and_the_rest_stored(
    pipeline: Pipeline, client: aioredis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}onegate:events"
    good = [access(i) for i in range(3)]
    await client.xadd(key, {"event": json.dumps(good[0].flat())})
    await client.xadd(key, {"event": b"{not json"})
    await client.xadd(key, {"event": json.dumps({"@timestamp": "yesterday", "message": "x"})})
    await client.xadd(key, {"something": b"else"})
    await client.xadd(key, {"event": json.dumps(good[1].flat())})
    # A custom producer's nested document without a time: the entry id's time stands in.
    custom = await client.xadd(key, {"event": json.dumps({"event": {"id": "c1"}, "message": "hello"})})
    await client.xadd(key, {"event": json.dumps(good[2].flat())})
    consumer = source(client, redis_prefix, pipeline.ingest, consumer="soc-1", events=pipeline.emitted)
    task = asyncio.create_task(consumer.run())
    try:
        stored = await pipeline.wait_stored(4)
        await eventually(lambda: consumer.acknowledged == 7, what="all acknowledged")
    finally:
        await stop(task)
    assert sorted(stored) == sorted([*(e.id for e in good), "c1"])
    documents = {d["event.id"]: d for d in await pipeline.stored()}
    millis = int(custom.decode().split("-")[0])
    assert documents["c1"]["@timestamp"].startswith(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime(millis / 1000))
    )
    assert consumer.refused == 3
    aside = await client.xrange(consumer.dead_letter_key)
    reasons = [fields[b"reason"].decode() for _id, fields in aside]
    assert reasons[0].startswith("not JSON") and "RFC 3339" in reasons[1] and "no 'event' field" in reasons[2]
    assert aside[1][1][b"event"] == json.dumps({"@timestamp": "yesterday", "message": "x"}).encode()
    assert pipeline.emitted.actions().count("stream-entry-refused") == 3
    await consumer.refresh()
    assert consumer.pending == 0


async def test_a_full_spool_leaves_entries_unacknowledged_until_there_is_room(
    pipeline: Pipeline, client: aioredis.Redis, redis_prefix: str
) -> None:
    class FullForAWhile:
        refusals = 0

        async def accept(self, documents: Any, *, received: Any = None) -> int:
            if self.refusals < 3:
                self.refusals += 1
                raise SpoolFull("full")
            return await pipeline.ingest.accept(documents)

    await StreamPublisher(client, prefix=redis_prefix).publish([access(i) for i in range(10)])
    consumer = source(client, redis_prefix, FullForAWhile(), consumer="soc-1")
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: consumer.spool_full_waits >= 1, what="the full spool")
        await consumer.refresh()
        assert consumer.pending == 10 and consumer.acknowledged == 0
        await pipeline.wait_stored(10)
        await eventually(lambda: consumer.acknowledged == 10, what="the entries acknowledged")
    finally:
        await stop(task)
    assert consumer.spool_full_waits == 3


async def test_entries_trimmed_before_ingest_are_reported_lost(
    pipeline: Pipeline, client: aioredis.Redis, redis_prefix: str
) -> None:
    publisher = StreamPublisher(client, prefix=redis_prefix)
    await publisher.publish([access(i) for i in range(5)])
    dead = Recording(pipeline.ingest)
    dead.hold_before = True
    task = asyncio.create_task(source(client, redis_prefix, dead, consumer="soc-1").run())
    await asyncio.wait_for(dead.held.wait(), 10)
    await stop(task)
    await client.xtrim(publisher.key, maxlen=0)  # a stream trimmed past the pending entries
    again = source(client, redis_prefix, pipeline.ingest, consumer="soc-1", events=pipeline.emitted)
    task = asyncio.create_task(again.run())
    try:
        await eventually(lambda: again.lost == 5, what="the lost entries")
    finally:
        await stop(task)
    assert "stream-entry-lost" in pipeline.emitted.actions()
    await again.refresh()
    assert again.pending == 0


def test_a_killed_producer_loses_nothing_it_had_published(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    published: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "tests.soc.stream_publisher_child", redis_url, redis_prefix],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        deadline = time.monotonic() + 30
        while len(published) < 1000:
            line = child.stdout.readline()
            assert line, child.stderr.read()
            published += line.split()
            assert time.monotonic() < deadline
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        published += child.stdout.read().split()  # whole lines written before the kill

    async def consume() -> list[str]:
        pipeline = await Pipeline(tmp_path).start()
        client = aioredis.Redis.from_url(redis_url)
        consumer = source(client, redis_prefix, pipeline.ingest, consumer="soc-1")
        task = asyncio.create_task(consumer.run())
        try:
            length = await client.xlen(f"{redis_prefix}onegate:events")
            assert length >= len(published)
            return await pipeline.wait_stored(length, timeout=30)
        finally:
            await stop(task)
            await client.aclose()
            await pipeline.stop()

    stored = asyncio.run(consume())
    assert len(stored) == len(set(stored))
    assert set(published) <= set(stored)
